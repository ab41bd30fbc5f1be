//! Engine and Raft outcomes as wire replies, in one place: what a client, a copying peer or
//! the manager is told when the node's engine or Raft layer says no.
//!
//! Owns: the mapping from [`tessera_engine::Error`] to data-plane [`Reply`]s, and from the
//! Raft node's answers to control-plane [`StorageReply`]s and [`ControlError`]s. Must never
//! lose the distinction a caller acts on: a corrupt block ([`Reply::Corrupt`]: read another
//! replica), a range past the end ([`Reply::OutOfRange`]), a node that does not lead
//! ([`ControlError::Unavailable`], [`StorageReply::NotLeader`]: ask elsewhere), a group not
//! hosted ([`ControlError::NotFound`]). Everything else is an I/O or internal failure.

use tessera_proto::control::{ControlError, MembershipState, StorageReply};
use tessera_proto::data::Reply;
use tessera_raft::MembershipError;

/// A failed read of the chunk store, as the data-plane reply.
pub(crate) fn engine_error(e: tessera_engine::Error) -> Reply {
    match e {
        tessera_engine::Error::Corrupt(m) => Reply::Corrupt(m),
        tessera_engine::Error::OutOfRange(m) => Reply::OutOfRange(m),
        e => Reply::Io(e.to_string()),
    }
}

/// A blocking task that ended without an answer (it panicked or was cancelled).
pub(crate) fn lost_task(e: tokio::task::JoinError) -> Reply {
    Reply::Io(e.to_string())
}

/// The Raft node's answer to dropping chunks of group `group_id` on node `node_id`
/// (`None`: the node shut down before it answered).
pub(crate) fn chunks_dropped(
    node_id: u64,
    group_id: u64,
    answer: Option<Reply>,
) -> Result<StorageReply, ControlError> {
    match answer {
        Some(Reply::Ok(_)) => Ok(StorageReply::Done),
        Some(Reply::NotLeader { hint }) => Err(ControlError::Unavailable(format!(
            "node {node_id} does not lead group {group_id} (leader hint {hint})"
        ))),
        Some(other) => Err(ControlError::Internal(format!("{other:?}"))),
        None => Err(ControlError::Unavailable("node shutting down".into())),
    }
}

/// The Raft node's answer to the group operations of group `group_id` (`None`: the node
/// shut down before it answered).
pub(crate) fn ops_applied(
    group_id: u64,
    answer: Option<Reply>,
) -> Result<StorageReply, ControlError> {
    match answer {
        Some(Reply::Ok(_)) => Ok(StorageReply::Done),
        Some(Reply::NotLeader { hint }) => Ok(StorageReply::NotLeader { hint }),
        Some(Reply::GroupNotFound) => Err(ControlError::NotFound(format!(
            "group {group_id} is not hosted here"
        ))),
        Some(Reply::BadRequest(m)) => Err(ControlError::Invalid(m)),
        Some(Reply::Unavailable(m)) => Err(ControlError::Unavailable(m)),
        Some(other) => Err(ControlError::Internal(format!("{other:?}"))),
        None => Err(ControlError::Unavailable("node shutting down".into())),
    }
}

/// The Raft node's answer to a membership operation of group `group_id` (`None`: the node
/// shut down before it answered).
pub(crate) fn membership(
    group_id: u64,
    answer: Option<Result<MembershipState, MembershipError>>,
) -> Result<StorageReply, ControlError> {
    match answer {
        Some(Ok(state)) => Ok(StorageReply::Members(state)),
        Some(Err(MembershipError::NotLeader(hint))) => Ok(StorageReply::NotLeader { hint }),
        Some(Err(MembershipError::GroupNotFound)) => Err(ControlError::NotFound(format!(
            "group {group_id} is not hosted here"
        ))),
        Some(Err(MembershipError::ShuttingDown)) | None => {
            Err(ControlError::Unavailable("node shutting down".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_what_the_caller_acts_on() {
        let corrupt = tessera_engine::Error::Corrupt("block 3".into());
        assert_eq!(engine_error(corrupt), Reply::Corrupt("block 3".into()));
        let past = tessera_engine::Error::OutOfRange("block 9".into());
        assert_eq!(engine_error(past), Reply::OutOfRange("block 9".into()));
        let io = tessera_engine::Error::Io(std::io::Error::other("disk gone"));
        assert!(matches!(engine_error(io), Reply::Io(m) if m.contains("disk gone")));
    }

    #[test]
    fn raft_answers_become_control_replies() {
        assert_eq!(
            chunks_dropped(1, 7, Some(Reply::Ok(Default::default()))),
            Ok(StorageReply::Done)
        );
        assert!(matches!(
            chunks_dropped(1, 7, Some(Reply::NotLeader { hint: 2 })),
            Err(ControlError::Unavailable(m)) if m.contains("group 7")
        ));
        assert!(matches!(
            chunks_dropped(1, 7, None),
            Err(ControlError::Unavailable(_))
        ));
        assert_eq!(
            membership(7, Some(Err(MembershipError::NotLeader(3)))),
            Ok(StorageReply::NotLeader { hint: 3 })
        );
        assert!(matches!(
            membership(7, Some(Err(MembershipError::GroupNotFound))),
            Err(ControlError::NotFound(m)) if m.contains("group 7")
        ));
        assert!(matches!(
            membership(7, None),
            Err(ControlError::Unavailable(_))
        ));
    }
}
