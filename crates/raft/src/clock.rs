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
        static SIMULATED: Cell<bool> = const { Cell::new(false) };
    }

    /// Whether this thread runs the deterministic simulation (`poller/sim.rs`), whose groups
    /// get a fixed election timeout per node id (raft-rs draws its own from a thread RNG no
    /// seed controls), tiny in-memory log tails (so a briefly lagging peer needs a
    /// snapshot), and a short stall timeout for snapshot copies (its runs last seconds).
    pub(crate) fn simulated() -> bool {
        SIMULATED.with(|c| c.get())
    }

    pub(crate) fn set_simulated(on: bool) {
        SIMULATED.with(|c| c.set(on));
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
