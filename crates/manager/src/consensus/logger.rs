//! The slog adapter: raft-rs logs through `slog`; this forwards its records to `tracing`.
//!
//! Must never log at a louder level than raft-rs meant, and demotes raft's info level
//! (election chatter) to debug.

use tracing::{debug, error, warn};

/// raft-rs logs through `slog`; this forwards to `tracing` (raft's info level is election
/// chatter: debug here).
pub(super) fn logger(id: u64) -> slog::Logger {
    use slog::Drain;
    struct TracingDrain;
    impl Drain for TracingDrain {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            match r.level() {
                slog::Level::Critical | slog::Level::Error => {
                    error!(target: "manager_raft", "{}", r.msg())
                }
                slog::Level::Warning => warn!(target: "manager_raft", "{}", r.msg()),
                slog::Level::Info => debug!(target: "manager_raft", "{}", r.msg()),
                _ => tracing::trace!(target: "manager_raft", "{}", r.msg()),
            }
            Ok(())
        }
    }
    slog::Logger::root(TracingDrain.fuse(), slog::o!("manager" => id))
}
