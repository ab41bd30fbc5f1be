//! raft-rs logs through `slog`; Tessera logs through `tracing`. This drain forwards one to
//! the other (raft's info level is per-election chatter: it goes to debug).

use slog::{Drain, Level, OwnedKVList, Record};

struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, _values: &OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{}", record.msg()),
            Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

pub(crate) fn logger(group: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("group" => group))
}
