//! The time the poller and its groups go by: real time, or in this crate's tests a virtual
//! clock that the test advances (so that a simulated cluster's leases, elections and
//! timeouts follow one timeline, however fast the test runs).

#[cfg(not(test))]
pub(crate) fn now() -> std::time::Instant {
    std::time::Instant::now()
}

#[cfg(test)]
pub(crate) use virtual_clock::now;

#[cfg(test)]
pub(crate) mod virtual_clock {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    thread_local! {
        static AT: Cell<Option<Instant>> = const { Cell::new(None) };
        static FIXED_ELECTIONS: Cell<bool> = const { Cell::new(false) };
    }

    /// Whether groups created on this thread get fixed election timeouts (one per node id)
    /// instead of raft-rs's random ones, which no seed controls.
    pub(crate) fn fixed_elections() -> bool {
        FIXED_ELECTIONS.with(|c| c.get())
    }

    /// Whether groups on this thread keep tiny in-memory log tails (see
    /// `Group::compactable`), so that a briefly lagging peer needs a snapshot.
    pub(crate) fn small_log_tails() -> bool {
        FIXED_ELECTIONS.with(|c| c.get())
    }

    /// The deterministic simulation's settings for this thread: fixed election timeouts
    /// and small log tails.
    pub(crate) fn set_fixed_elections(on: bool) {
        FIXED_ELECTIONS.with(|c| c.set(on));
    }

    /// The virtual time if this thread set one, else the real time.
    pub(crate) fn now() -> Instant {
        AT.with(|c| c.get()).unwrap_or_else(Instant::now)
    }

    /// This thread's clock starts at the real time now and moves only when advanced.
    pub(crate) fn start() -> Instant {
        let t = Instant::now();
        AT.with(|c| c.set(Some(t)));
        t
    }

    pub(crate) fn advance(d: Duration) -> Instant {
        AT.with(|c| {
            let t = c.get().unwrap_or_else(Instant::now) + d;
            c.set(Some(t));
            t
        })
    }
}
