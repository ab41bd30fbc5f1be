//! The spare segment: zero-filled on a helper thread while the current one is in use.

use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tracing::warn;

use super::segments::create_zeroed;

/// A helper thread that zero-fills the next segment while the current one is in use, so
/// rolling does not stall the write path when no recycled file is available.
pub(super) struct Preallocator {
    requests: Option<mpsc::Sender<(PathBuf, u64)>>,
    results: mpsc::Receiver<io::Result<PathBuf>>,
    pending: bool,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    pub(super) fn spawn() -> Preallocator {
        let (req_tx, req_rx) = mpsc::channel::<(PathBuf, u64)>();
        let (res_tx, res_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tessera-log-prealloc".into())
            .spawn(move || {
                for (path, len) in req_rx {
                    // Lets tests make this thread slow, as it is on a loaded machine.
                    fail::fail_point!("log::prealloc");
                    let _ = std::fs::remove_file(&path);
                    let r = create_zeroed(&path, len).map(|_| path);
                    if res_tx.send(r).is_err() {
                        break;
                    }
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(error = %e, "cannot start the log preallocation thread; segments will be created inline");
                None
            }
        };
        Preallocator {
            requests: thread.as_ref().map(|_| req_tx),
            results: res_rx,
            pending: false,
            thread,
        }
    }

    pub(super) fn request(&mut self, path: PathBuf, len: u64) {
        if self.pending {
            return;
        }
        if let Some(tx) = &self.requests {
            self.pending = tx.send((path, len)).is_ok();
        }
    }

    /// The spare file, waiting for it if it is still being written.
    pub(super) fn take(&mut self) -> Option<PathBuf> {
        if !std::mem::take(&mut self.pending) {
            return None;
        }
        match self.results.recv() {
            Ok(Ok(path)) => Some(path),
            Ok(Err(e)) => {
                warn!(error = %e, "preallocating a log segment failed");
                None
            }
            Err(_) => None,
        }
    }

    pub(super) fn stop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
