//! The client library's errors, named after what the caller can do about them, and their
//! classes ([`ErrorClass`]): what a program (the CLI's exit code, a retry loop) decides on.
//!
//! Must never: class an error whose cause is unknown as anything but
//! [`ErrorClass::Failed`] (a caller would act on a guess).

use tessera_net::NetError;
use tessera_proto::control::{ControlError, ManagerReply};

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No volume has this name.
    #[error("volume \"{0}\" not found")]
    VolumeNotFound(String),
    /// What a snapshot request names does not exist: the volume, or its snapshot (the
    /// manager's message says which).
    #[error("{0}")]
    NotFound(String),
    /// A volume (or snapshot) of this name exists already (the manager's message names it).
    #[error("{0}")]
    AlreadyExists(String),
    /// A request reaches past the end of the volume.
    #[error("range {offset}+{len} is past the end of volume \"{volume}\" ({size} bytes)")]
    OutOfRange {
        /// The volume's name.
        volume: String,
        /// Where the request starts, in bytes.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// The volume's size in bytes.
        size: u64,
    },
    /// A storage node has no space left for the write.
    #[error("no space left: {0}")]
    DiskFull(String),
    /// A storage node found the data corrupt (a checksum mismatch).
    #[error("data corrupt: {0}")]
    Corrupt(String),
    /// A storage node failed the request, or a task of it failed.
    #[error("i/o error: {0}")]
    Io(String),
    /// Transient failures went on for longer than the client retries (see
    /// [`crate::RETRY_FOR`]): try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (bad arguments): repeating it cannot help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Another client holds the volume's read-write attachment.
    #[error("volume in use: {0}")]
    InUse(String),
    /// This handle's attachment was ended (another client attached the volume, or an
    /// operator detached it): its writes are refused, and were not applied.
    #[error("volume fenced: {0}")]
    Fenced(String),
    /// A write through a handle opened read-only.
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// The manager answered a request with a reply of another kind: a manager of another
    /// version, or a bug. Never ignored.
    #[error("the manager answered {request} with an unexpected {reply} reply")]
    UnexpectedReply {
        /// The request's kind.
        request: &'static str,
        /// The reply's kind.
        reply: String,
    },
    /// Reading the source of an import, or writing the target of an export.
    #[error("{what}: {source}")]
    Local {
        /// What was being done, and where.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The manager refused a control-plane request.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The network failed under a call.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// A client call's result.
pub type Result<T> = std::result::Result<T, Error>;

/// What kind of failure an [`Error`] is, for a program deciding what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is wrong (bad arguments, out of range): do not repeat it as is.
    Invalid,
    /// What it names (a volume, a node) does not exist.
    NotFound,
    /// What it would create exists already.
    AlreadyExists,
    /// Refused because of someone else's claim: the volume is attached by another client,
    /// this client's attachment was ended, or the handle is read-only.
    Refused,
    /// Transient: the cluster (a manager, storage nodes, the network) did not answer in
    /// time. The same request may succeed later.
    Unavailable,
    /// A storage node is out of space.
    NoSpace,
    /// Anything else: local I/O, corrupt data, an internal error, an unexpected reply.
    Failed,
}

impl Error {
    /// This error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::VolumeNotFound(_) | Error::NotFound(_) => ErrorClass::NotFound,
            Error::AlreadyExists(_) => ErrorClass::AlreadyExists,
            Error::OutOfRange { .. } | Error::Invalid(_) => ErrorClass::Invalid,
            Error::InUse(_) | Error::Fenced(_) | Error::ReadOnly(_) => ErrorClass::Refused,
            Error::Unavailable(_) => ErrorClass::Unavailable,
            Error::DiskFull(_) => ErrorClass::NoSpace,
            Error::Corrupt(_)
            | Error::Io(_)
            | Error::UnexpectedReply { .. }
            | Error::Local { .. } => ErrorClass::Failed,
            Error::Control(e) => control_class(e),
            Error::Net(e) => net_class(e),
        }
    }
}

fn control_class(e: &ControlError) -> ErrorClass {
    match e {
        ControlError::NotFound(_) => ErrorClass::NotFound,
        ControlError::AlreadyExists(_) => ErrorClass::AlreadyExists,
        ControlError::Invalid(_) => ErrorClass::Invalid,
        ControlError::Conflict(_) | ControlError::Unauthorized(_) => ErrorClass::Refused,
        ControlError::Unavailable(_) | ControlError::NotLeader(_) => ErrorClass::Unavailable,
        ControlError::Internal(_) => ErrorClass::Failed,
    }
}

fn net_class(e: &NetError) -> ErrorClass {
    match e {
        NetError::Connect { .. }
        | NetError::Io(_)
        | NetError::Closed
        | NetError::Timeout { .. }
        | NetError::Stalled { .. }
        | NetError::NoLeader { .. } => ErrorClass::Unavailable,
        // Another process on the address: as good as unreachable until it moves back.
        NetError::WrongPeer { .. } => ErrorClass::Unavailable,
        NetError::Control(e) => control_class(e),
        // A peer that sends what cannot be decoded is not going to get better by waiting.
        NetError::Decode(_) | NetError::UnexpectedKind(_) => ErrorClass::Failed,
        // Certificates that do not go together stay so until an operator changes them.
        NetError::Handshake { .. } | NetError::SpeaksTls => ErrorClass::Refused,
    }
}

/// A manager's refusal of a request about volume `name`, in the caller's terms.
pub(crate) fn volume_error(name: &str, e: Error) -> Error {
    match e {
        Error::Control(ControlError::NotFound(_)) => Error::VolumeNotFound(name.into()),
        Error::Control(ControlError::AlreadyExists(m)) => Error::AlreadyExists(m),
        Error::Control(ControlError::Conflict(m)) => Error::InUse(m),
        e => e,
    }
}

/// A manager's refusal of a request about a snapshot or a clone, in the caller's terms:
/// the manager's message names the volume or snapshot missing or taken, and a conflict
/// (clones of a snapshot, a writer attached) is kept as it is, a refusal whose message
/// says what stands in the way.
pub(crate) fn snapshot_error(e: Error) -> Error {
    match e {
        Error::Control(ControlError::NotFound(m)) => Error::NotFound(m),
        Error::Control(ControlError::AlreadyExists(m)) => Error::AlreadyExists(m),
        e => e,
    }
}

/// A manager's refusal of a backup, restore or store request, in the caller's terms: the
/// manager's message names what is missing (a volume, snapshot, store or backup) or taken
/// (the restored volume's name); an invalid request (a snapshot or backup not ready, a copy
/// to its own store) and a refusal because of what is in use are kept as they are.
pub(crate) fn backup_error(e: Error) -> Error {
    snapshot_error(e)
}

/// The error for a manager answering `request` with `reply`, a reply of another kind.
pub(crate) fn unexpected(request: &'static str, reply: &ManagerReply) -> Error {
    Error::UnexpectedReply {
        request,
        reply: kind_of(reply),
    }
}

/// The kind of a message (its variant's name), for errors: the whole of it may be large.
pub(crate) fn kind_of(msg: &impl std::fmt::Debug) -> String {
    let s = format!("{msg:?}");
    s.split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_what_the_caller_can_do() {
        let not_found = Error::Control(ControlError::NotFound("node 9 not found".into()));
        assert_eq!(not_found.class(), ErrorClass::NotFound);
        assert_eq!(
            Error::Control(ControlError::NotLeader(None)).class(),
            ErrorClass::Unavailable
        );
        assert_eq!(
            Error::Net(NetError::Closed).class(),
            ErrorClass::Unavailable
        );
        assert_eq!(
            Error::Net(NetError::Control(ControlError::Conflict("held".into()))).class(),
            ErrorClass::Refused
        );
        assert_eq!(
            Error::DiskFull("node 1".into()).class(),
            ErrorClass::NoSpace
        );
        assert_eq!(Error::InUse("vm1".into()).class(), ErrorClass::Refused);
        assert_eq!(Error::Corrupt("chunk 3".into()).class(), ErrorClass::Failed);
    }

    #[test]
    fn an_unexpected_reply_names_both_kinds_only() {
        let e = unexpected("DeleteVolume", &ManagerReply::Detached { fence_epoch: 3 });
        assert_eq!(
            e.to_string(),
            "the manager answered DeleteVolume with an unexpected Detached reply"
        );
        assert_eq!(kind_of(&ManagerReply::Deleted), "Deleted");
        assert_eq!(e.class(), ErrorClass::Failed);
    }
}
