//! A read-write attachment held by this client: its writer epoch, the background renewal
//! of its lease, and letting go of it when its last handle is dropped. Every handle of one
//! [`Client`] to one volume shares one `Attachment`.
//!
//! Must never: keep renewing after the manager said the attachment ended (a forced detach,
//! or another client took the volume after the lease ran out); write after learning that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest};

use crate::{Client, Error};

pub(crate) struct Attachment {
    client: Client,
    name: String,
    volume_id: u64,
    pub(crate) epoch: u64,
    /// Set once every group of the volume has this epoch (see `Volume::fence_all`).
    pub(crate) fenced: tokio::sync::OnceCell<()>,
    /// Why the attachment ended, once this client learns it did.
    ended: Mutex<Option<String>>,
    /// Per chunk: until when an abandoned change may still be proposed (see `quiet`).
    held_back: Mutex<HashMap<u64, Instant>>,
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Attachment {
    /// The attachment of `name` (id `volume_id`) with writer epoch `epoch` the manager just
    /// granted `client`, shared with this client's other handles of the volume if they hold
    /// the same one. Renewed every third of `lease` from now on.
    pub(crate) fn share(
        client: &Client,
        name: &str,
        volume_id: u64,
        epoch: u64,
        lease: Duration,
    ) -> Arc<Attachment> {
        // An older attachment found in the map is dropped after the lock is released: if
        // it was its last reference, its `Drop` takes the same lock.
        let mut stale = None;
        let a = {
            let Ok(mut map) = client.inner.attached.lock() else {
                return Attachment::start(client, name, volume_id, epoch, lease);
            };
            match map.get(name).and_then(Weak::upgrade) {
                // (Not one being detached by `Volume::close`.)
                Some(a) if a.epoch == epoch && a.volume_id == volume_id && a.ended().is_none() => a,
                other => {
                    stale = other;
                    let a = Attachment::start(client, name, volume_id, epoch, lease);
                    map.insert(name.to_string(), Arc::downgrade(&a));
                    a
                }
            }
        };
        drop(stale);
        a
    }

    /// Whether another live attachment of this client holds `name` with this epoch (two
    /// handles' lives overlapped around an attach): then it is not this one's to end.
    fn superseded(&self) -> bool {
        let Ok(map) = self.client.inner.attached.lock() else {
            return false;
        };
        map.get(&self.name)
            .and_then(Weak::upgrade)
            .is_some_and(|a| !std::ptr::eq(Arc::as_ptr(&a), self) && a.epoch == self.epoch)
    }

    fn start(
        client: &Client,
        name: &str,
        volume_id: u64,
        epoch: u64,
        lease: Duration,
    ) -> Arc<Attachment> {
        let a = Arc::new(Attachment {
            client: client.clone(),
            name: name.to_string(),
            volume_id,
            epoch,
            fenced: tokio::sync::OnceCell::new(),
            ended: Mutex::new(None),
            held_back: Mutex::new(HashMap::new()),
            renewer: Mutex::new(None),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(renew(Arc::downgrade(&a), lease));
            if let Ok(mut r) = a.renewer.lock() {
                *r = Some(task);
            }
        }
        a
    }

    /// A change to `chunk` was abandoned (its NBD client hung up, or it failed) with an
    /// attempt that may sit in a node's queue until `until`, when its deadline has passed.
    pub(crate) fn hold_back(&self, chunk: u64, until: Instant) {
        if let Ok(mut m) = self.held_back.lock() {
            let at = m.entry(chunk).or_insert(until);
            *at = (*at).max(until);
        }
    }

    /// Waits until no abandoned change to `chunk` can be proposed any more: a later write
    /// (from this connection or the next one of the same client) is never overtaken by it.
    /// Attempts of one connection reach a node in order; one left waiting in a node's
    /// queue could otherwise be read after a newer write sent on a new connection.
    pub(crate) async fn quiet(&self, chunk: u64) {
        if cfg!(tessera_unfixed = "abandoned_writes") {
            return;
        }
        let until = {
            let Ok(mut m) = self.held_back.lock() else {
                return;
            };
            let now = Instant::now();
            m.retain(|_, t| *t > now);
            m.get(&chunk).copied()
        };
        if let Some(t) = until {
            tracing::debug!(chunk, "a write waits for an abandoned one's deadline");
            tokio::time::sleep_until(t.into()).await;
        }
    }

    /// Why the attachment ended (`None`: it still holds, as far as this client knows).
    pub(crate) fn ended(&self) -> Option<String> {
        self.ended.lock().ok().and_then(|e| e.clone())
    }

    /// Detaches now (waiting for the manager) if `this` is the only reference left: for a
    /// process about to exit, where the detach of the last handle's drop would not run.
    /// Decided under the attach gate, so no `open` can take a share meanwhile.
    pub(crate) async fn detach_if_last(this: Arc<Attachment>) -> crate::Result<()> {
        let _gate = this.client.inner.attach_gate.lock().await;
        if Arc::strong_count(&this) > 1 || this.ended().is_some() || this.superseded() {
            return Ok(());
        }
        // Not shared from here on (see `share`), and its drop will not detach again.
        this.end("closed");
        let req = ManagerRequest::DetachVolume {
            name: this.name.clone(),
            epoch: this.epoch,
            force: false,
        };
        this.client.call(&req).await?;
        Ok(())
    }

    pub(crate) fn end(&self, why: &str) {
        if let Ok(mut e) = self.ended.lock()
            && e.is_none()
        {
            tracing::warn!(
                volume = %self.name,
                epoch = self.epoch,
                "read-write attachment ended: {why}"
            );
            *e = Some(why.to_string());
        }
    }
}

impl Drop for Attachment {
    /// The last handle is gone: stop renewing and detach (in the background, on the
    /// runtime if there is one; else the lease runs out).
    fn drop(&mut self) {
        if let Some(t) = self.renewer.lock().ok().and_then(|mut r| r.take()) {
            t.abort();
        }
        if let Ok(mut map) = self.client.inner.attached.lock()
            && map
                .get(&self.name)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), self))
        {
            map.remove(&self.name);
        }
        if self.ended().is_some() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The detach goes before any later attach of this client (which would get the same
        // epoch back, and lose it to this detach). If an attach is under way right now, it
        // may be this volume's: leave the attachment to it (or to its lease).
        let Ok(gate) = self.client.inner.attach_gate.clone().try_lock_owned() else {
            return;
        };
        let (client, name, epoch) = (self.client.clone(), self.name.clone(), self.epoch);
        rt.spawn(async move {
            let _gate = gate;
            // An open of this client may have taken the same epoch back between this
            // attachment's last reference going and the gate: that one holds it now.
            let live = client.inner.attached.lock().ok().is_some_and(|m| {
                m.get(&name)
                    .and_then(Weak::upgrade)
                    .is_some_and(|a| a.epoch == epoch)
            });
            if live {
                return;
            }
            let req = ManagerRequest::DetachVolume {
                name: name.clone(),
                epoch,
                force: false,
            };
            match client.call(&req).await {
                Ok(_) => tracing::debug!(volume = %name, epoch, "detached"),
                Err(e) => tracing::warn!(volume = %name, epoch,
                                         "could not detach (the lease will run out): {e}"),
            }
        });
    }
}

/// Renews the lease every third of `lease` while the attachment lives and holds.
async fn renew(a: Weak<Attachment>, lease: Duration) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let Some(att) = a.upgrade() else {
            return;
        };
        let req = ManagerRequest::RenewAttachment {
            volume_id: att.volume_id,
            epoch: att.epoch,
        };
        let client = att.client.clone();
        // Not holding the attachment across the call: its last handle may go meanwhile.
        drop(att);
        let res = client.call(&req).await;
        let Some(att) = a.upgrade() else {
            return;
        };
        match res {
            Ok(ManagerReply::Renewed { .. }) => {}
            Err(Error::Control(ControlError::Conflict(why) | ControlError::NotFound(why))) => {
                att.end(&why);
                return;
            }
            Ok(other) => tracing::warn!(epoch = att.epoch, "unexpected renewal answer {other:?}"),
            // The managers electing a leader, or unreachable: try again. If the lease runs
            // out meanwhile, another client may take the volume; its fence then refuses
            // this one's writes.
            Err(e) => tracing::warn!(epoch = att.epoch, "could not renew the attachment: {e}"),
        }
    }
}
