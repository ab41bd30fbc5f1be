//! The binary's exit codes: one per class of error, so a script can tell "retry later"
//! from "no such volume" without reading messages. The only place errors become codes.
//!
//! Success is 0, as everywhere. Must never: reuse a code for another class (scripts depend on them); exit 0 on error.

use tessera_client::ErrorClass;

/// Anything not in a class below: local I/O, bad configuration, corrupt data, an internal
/// error, a daemon that stopped, a backup that failed.
pub const FAILED: i32 = 1;
/// Bad command line (as clap reports it), or a request the cluster refused as invalid
/// (shrinking a volume, a range past its end).
pub const USAGE: i32 = 2;
/// What the command names (a volume, a snapshot, a node, a backup, a store) does not exist.
pub const NOT_FOUND: i32 = 3;
/// What the command would create exists already.
pub const ALREADY_EXISTS: i32 = 4;
/// Refused because of another client's claim: the volume is attached read-write by
/// someone else (its lease still runs), or this client's attachment was ended; or what it
/// would delete is still in use (a snapshot with clones, or read by a backup, a restore or
/// a copy), or what it would change is (a volume still being restored takes no snapshot,
/// clone, rollback or backup until filled, which may take hours).
pub const REFUSED: i32 = 5;
/// Transient: the managers or storage nodes did not answer in time. Retry later.
pub const UNAVAILABLE: i32 = 6;
/// A storage node is out of space.
pub const NO_SPACE: i32 = 7;

/// The exit codes as `tessera --help` lists them.
pub const HELP: &str = "\
Exit codes:
  0  success
  1  failed (local I/O, configuration, corrupt data, internal error, a failed backup)
  2  usage error, or a request the cluster refused as invalid
  3  not found (volume, snapshot, node, backup, store)
  4  already exists
  5  refused: attached by another client, this client's attachment ended, or in use
     (a snapshot with clones; what a backup, restore or copy reads; a volume still
     being restored takes no snapshot, clone, rollback or backup)
  6  unavailable: the cluster did not answer in time; retry later
  7  no space left on the storage nodes";

/// The exit code for `e`: the class of the first client error in its chain of causes.
pub fn code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<tessera_client::Error>())
        .map_or(FAILED, |e| class_code(e.class()))
}

fn class_code(class: ErrorClass) -> i32 {
    match class {
        ErrorClass::Invalid => USAGE,
        ErrorClass::NotFound => NOT_FOUND,
        ErrorClass::AlreadyExists => ALREADY_EXISTS,
        ErrorClass::Refused => REFUSED,
        ErrorClass::Unavailable => UNAVAILABLE,
        ErrorClass::NoSpace => NO_SPACE,
        ErrorClass::Failed => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;
    use tessera_client::Error;

    use super::*;

    #[test]
    fn a_client_error_under_context_keeps_its_code() {
        let e = Err::<(), _>(Error::VolumeNotFound("db1".into()))
            .context("importing ./disk.img into volume \"db1\"")
            .unwrap_err();
        assert_eq!(code(&e), NOT_FOUND);
        let e = anyhow::Error::new(Error::Unavailable("chunk 3".into()));
        assert_eq!(code(&e), UNAVAILABLE);
        assert_eq!(code(&anyhow::anyhow!("reading config")), FAILED);
    }

    #[test]
    fn every_class_has_its_own_code_and_the_help_lists_it() {
        let classes = [
            ErrorClass::Invalid,
            ErrorClass::NotFound,
            ErrorClass::AlreadyExists,
            ErrorClass::Refused,
            ErrorClass::Unavailable,
            ErrorClass::NoSpace,
            ErrorClass::Failed,
        ];
        let mut codes: Vec<i32> = classes.iter().map(|c| class_code(*c)).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), classes.len());
        for c in [0].iter().chain(&codes) {
            assert!(
                HELP.contains(&format!("\n  {c}  ")),
                "code {c} not in the help"
            );
        }
    }
}
