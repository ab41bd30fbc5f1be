//! The thread a pass's paced scans hash on: one per node, started at the first such scan,
//! at the idle CPU policy (`SCHED_IDLE`) and the idle I/O class, so that a client's
//! request never waits behind scrub hashing for a core. Urgent scans (a read repair, a
//! client's read waiting) do not come here, nor do the reads (they hold the chunk's read
//! lock, which the apply's writes wait for: starved at idle priority while holding it,
//! they would stall the group).
//!
//! Owns the thread and its queue. Must never: run anything holding a lock or a slot others
//! wait for, or anything a client waits for (anything queued behind a starved job starves
//! with it); fail a job because the priorities could not be set (logged, it runs at normal
//! priority) or the thread could not start (it runs on the blocking pool).

use std::sync::OnceLock;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// Whether the last idle thread started got the idle CPU policy (for tests).
static IDLE_SET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The idle thread's queue (`None`: it could not be started).
#[derive(Default)]
pub(crate) struct IdleThread {
    queue: OnceLock<Option<mpsc::Sender<Job>>>,
}

impl IdleThread {
    /// Runs `f` on the idle thread (starting it if need be) and waits for its result; on
    /// the blocking pool if the thread could not start. `None`: `f` panicked.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // Its waiter gave up (a scan past its deadline): nothing to do.
            if !tx.is_closed() {
                let _ = tx.send(f());
            }
        });
        let queue = self.queue.get_or_init(start);
        let refused = match queue {
            Some(q) => q.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = refused {
            // No thread: the blocking pool, at normal priority.
            tokio::task::spawn_blocking(job).await.ok()?;
        }
        rx.await.ok()
    }
}

fn start() -> Option<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("scrub-scan".into())
        .spawn(move || {
            IDLE_SET.store(lower_priority(), std::sync::atomic::Ordering::Relaxed);
            while let Ok(job) = rx.recv() {
                // A scan that panics answers nothing (its waiter sees `None`), and the
                // thread goes on with the next.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!("scrub scans run on the blocking pool: starting their thread: {e}");
            None
        }
    }
}

/// The calling thread at `SCHED_IDLE` and the idle I/O class (Linux), for good (a thread
/// leaves `SCHED_IDLE` only within its `RLIMIT_NICE`, 0 by default). Whether the CPU
/// policy was set.
fn lower_priority() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) on the calling thread (0) with a valid parameter.
    let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
    if !idle {
        tracing::warn!(
            "scrub scans at normal CPU priority: sched_setscheduler: {}",
            std::io::Error::last_os_error()
        );
    }
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: ioprio_set(2) on the calling thread (0), no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if r != 0 {
        tracing::warn!(
            "scrub scans at normal I/O priority: ioprio_set: {}",
            std::io::Error::last_os_error()
        );
    }
    idle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scans_run_on_one_thread_at_the_idle_policy() {
        let idle = IdleThread::default();
        let seen = |_: ()| {
            // SAFETY: reads the calling thread's policy.
            let policy = unsafe { libc::sched_getscheduler(0) };
            (std::thread::current().name().map(String::from), policy)
        };
        let a = idle.run(move || seen(())).await.expect("ran");
        let b = idle.run(move || seen(())).await.expect("ran");
        assert_eq!(a.0.as_deref(), Some("scrub-scan"));
        // Where the policy is refused (a sandbox), the thread runs at normal priority.
        if IDLE_SET.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(a.1, libc::SCHED_IDLE);
        }
        assert_eq!(a, b);
        // A panicking scan does not take the next ones down.
        assert_eq!(idle.run(|| -> u8 { panic!("a bad scan") }).await, None);
        assert_eq!(idle.run(|| 7).await, Some(7));
    }
}
