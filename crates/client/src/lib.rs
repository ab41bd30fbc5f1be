//! The Tessera client library: volume handles, routing, retries, pipelined requests.
//!
//! - [`Client::connect`] with the manager address(es), then [`Client::open`] a volume by name
//!   to write it (a read-write **attachment**: one client at a time, see below), or
//!   [`Client::open_read_only`] to read it (any number of readers).
//! - [`Volume::read`], [`Volume::write`], [`Volume::write_zeroes`], [`Volume::discard`],
//!   [`Volume::flush`] at any byte offset and length; a [`Volume`] is cheap to clone and
//!   safe to use from many tasks at once (requests are pipelined on one connection per
//!   storage node).
//! - Administration, one typed call per manager request: [`Client::create_volume`],
//!   [`Client::list_volumes`], [`Client::volume_info`], [`Client::volume_usage`],
//!   [`Client::resize_volume`], [`Client::delete_volume`], [`Client::detach`],
//!   [`Client::cluster_status`], [`Client::drain_node`], [`Client::add_manager`],
//!   [`Client::scrub_status`], [`Client::scrub_control`]. A reply of the wrong kind is
//!   [`Error::UnexpectedReply`], never ignored.
//! - Snapshots and clones: [`Client::create_snapshot`], [`Client::list_snapshots`],
//!   [`Client::snapshot_info`], [`Client::delete_snapshot`], [`Client::clone_volume`],
//!   [`Client::rollback_volume`], [`Client::flatten_volume`]; [`Client::open_snapshot`]
//!   (or [`Client::open_read_only`] of `"VOL@SNAP"`) reads one; [`Volume::block_status`]
//!   tells holes, zeroes and data apart.
//! - Backups in object storage: [`Client::create_backup`], [`Client::list_backups`],
//!   [`Client::backup_info`], [`Client::delete_backup`], [`Client::copy_backup`],
//!   [`Client::list_stores`]; volumes from a backup: [`Client::restore_volume`],
//!   [`Client::prewarm_volume`]. The manager answers at once and works in the background:
//!   poll [`Client::backup_info`], or [`Client::volume_info`]'s `restore`.
//! - Whole-volume copies: [`Client::import_from`] a reader, [`Volume::export_to`] a file.
//! - Every [`Error`] has an [`ErrorClass`] (what the caller can do: retry later, give up,
//!   fix the request), which the `tessera` binary turns into its exit code.
//!
//! A request is split at chunk boundaries (and at [`MAX_IO`]); each piece goes to the
//! leader of the chunk's replica group. Routes come from the manager when first needed, a
//! bounded page of consecutive mapped chunks at a time (no answer grows with the volume),
//! and are cached;
//! a wrong-leader answer carries a hint that is followed at once, and other transient
//! failures (a dead node, an election in progress, a group still being created) are retried
//! with bounded back-off until [`RETRY_FOR`] has passed. The application sees latency, not
//! errors, across a leader change.
//!
//! **Attachments.** Opening a volume read-write asks the manager for its attachment: granted
//! with a writer epoch and a lease when no other client holds it (else
//! [`Error::InUse`], naming the holder). Before the handle is returned, every replica group
//! holding the volume's chunks is fenced with the epoch, so no write of an earlier holder
//! can land after this one's first write; every write carries the epoch. The lease is
//! renewed in the background every third of its length; the attachment ends when the last
//! handle of this client to the volume is dropped (or when the lease runs out, if the
//! process dies). A holder whose attachment was ended (an operator's forced detach, or its
//! lease lost while it was cut off) gets [`Error::Fenced`] for its writes. Handles of one
//! [`Client`] to one volume share one attachment.
//!
//! **Snapshot sequences.** Every write carries the volume's snapshot sequence as this client
//! knows it (from the volume's record at open, raised by every route and by every group
//! that refuses a write as older than a snapshot it was fenced with): one per volume,
//! shared by every handle of this client, only ever raised. A refused write is resent at
//! once with the new sequence, so taking a snapshot costs a writer one round trip, never
//! an error (see `volume/retry.rs`).
//!
//! Must never: acknowledge a write before the storage node did; turn a definite storage
//! answer (disk full, corrupt data, out of range) into a silent retry loop; answer a write
//! with an error while it may still land: an attempt whose outcome is unknown is settled by
//! retrying it under the same request id before the write fails (for up to 80 s, within the
//! storage nodes' memory of applied ids; past that, the error says the outcome is unknown).
//!
//! Modules (new code goes to the one owning its idea):
//! - `lib.rs`: [`Client`]: connecting, control-plane calls, opening volumes.
//! - `admin`: typed administrative calls to the manager.
//! - `backups`: typed calls for backups, stores and restores.
//! - `scrub`: typed calls for the nodes' scrubbing (status, start, pause).
//! - `transfer`: whole-volume import and export.
//! - `error`: [`Error`] and its [`ErrorClass`].
//! - `attachment`: a read-write attachment: its epoch, lease renewal, detaching.
//! - `capability`: the signed capabilities presented to storage nodes, per volume and
//!   writer epoch.
//! - `conn`: one pipelined connection to a storage node.
//! - `volume`: an open [`Volume`]: splitting I/O into pieces (`volume/mod.rs`), routes
//!   (`volume/routes.rs`), one piece's attempts and retries (`volume/retry.rs`).

#![warn(missing_docs)]

mod admin;
mod attachment;
mod backups;
mod capability;
mod conn;
mod error;
mod revocation;
mod scrub;
#[cfg(test)]
mod testing;
mod transfer;
mod volume;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tessera_proto::control::{ManagerReply, ManagerRequest, SnapshotState};
use tessera_proto::data::MAX_IO as WIRE_MAX_IO;

use crate::error::{snapshot_error, unexpected, volume_error};

pub use admin::ManagerMembers;
pub use error::{Error, ErrorClass, Result};
pub use transfer::Copied;
pub use volume::{Extent, Volume};

/// Largest piece sent in one request.
pub const MAX_IO: u64 = WIRE_MAX_IO as u64;
/// How long transient failures are retried before an error reaches the caller.
pub const RETRY_FOR: Duration = Duration::from_secs(60);
/// Deadline of one control-plane call and of one data-plane attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a control-plane call the manager answers only after proposing operations
/// in every group of a volume (snapshot, clone, rollback), or once a restored volume's
/// chunks are placed, for up to 20 s: a shorter one would give up on requests the manager
/// then completes.
const GROUP_OPS_CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// A connection to a Tessera cluster. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    managers: Vec<String>,
    /// How this client dials managers and storage nodes.
    security: tessera_net::Security,
    /// Open connections by `(node id, address)`: one opened to a node is never used for
    /// another that a newer route places at the same address.
    conns: Mutex<HashMap<(u64, String), Arc<conn::NodeConn>>>,
    /// Who this client is to the manager: its label and a random instance id.
    name: String,
    /// The volumes this client holds read-write, by name: one attachment per volume,
    /// shared by every handle.
    attached: Mutex<HashMap<String, Weak<attachment::Attachment>>>,
    /// Held across an attach, and by a detach from when it is decided until it is done:
    /// the two never cross.
    attach_gate: Arc<tokio::sync::Mutex<()>>,
    /// Each open volume's snapshot sequence, by volume id, shared by every handle of this
    /// client to it (see the crate doc).
    seqs: Mutex<HashMap<u64, Weak<AtomicU64>>>,
    /// The capabilities this client presents to storage nodes (see `capability`).
    caps: capability::Caps,
}

impl Client {
    /// A client of the cluster managed at `managers`: one address, or every manager of a
    /// highly available control plane (requests go to whichever leads). Checks that a
    /// manager answers. Plain TCP: for an `--insecure` cluster (see [`Client::connect_with`]).
    pub async fn connect(managers: Vec<String>) -> Result<Client> {
        Client::connect_as(managers, "client").await
    }

    /// [`Client::connect`], naming this client `label` in the attachments it holds (what
    /// `tessera volume info` shows, and what a refused client is told): say what and where,
    /// e.g. `nbd gateway 10.0.0.7:10809`. The host, process id and a random instance id
    /// are added. Plain TCP, like [`Client::connect`].
    pub async fn connect_as(managers: Vec<String>, label: &str) -> Result<Client> {
        Client::connect_with(managers, label, tessera_net::Security::insecure()).await
    }

    /// [`Client::connect_as`], dialling every manager and storage node as `security` says:
    /// mutual TLS with this client's certificate, whose role the cluster enforces.
    pub async fn connect_with(
        managers: Vec<String>,
        label: &str,
        security: tessera_net::Security,
    ) -> Result<Client> {
        if managers.is_empty() {
            return Err(Error::Invalid("no manager address given".into()));
        }
        let c = Client {
            inner: Arc::new(ClientInner {
                managers,
                security,
                conns: Mutex::new(HashMap::new()),
                name: client_name(label),
                attached: Mutex::new(HashMap::new()),
                attach_gate: Arc::default(),
                seqs: Mutex::new(HashMap::new()),
                caps: Default::default(),
            }),
        };
        c.list_volumes().await?;
        if c.inner.security.is_secure() {
            revocation::follow(Arc::downgrade(&c.inner));
        }
        Ok(c)
    }

    /// A client of no cluster, for unit tests that give volumes their routes by hand.
    #[cfg(test)]
    pub(crate) fn offline() -> Client {
        Client::offline_as(tessera_net::Security::insecure())
    }

    /// [`Client::offline`] dialling as `security`.
    #[cfg(test)]
    pub(crate) fn offline_as(security: tessera_net::Security) -> Client {
        Client {
            inner: Arc::new(ClientInner {
                managers: vec![],
                security,
                conns: Mutex::new(HashMap::new()),
                name: "test".into(),
                attached: Mutex::new(HashMap::new()),
                attach_gate: Arc::default(),
                seqs: Mutex::new(HashMap::new()),
                caps: Default::default(),
            }),
        }
    }

    /// The name this client holds attachments under.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// One control-plane call, to the manager leader (hints followed, unreachable managers
    /// skipped, retried for up to [`tessera_net::MANAGER_RETRY_FOR`]).
    pub async fn call(&self, req: &ManagerRequest) -> Result<ManagerReply> {
        let timeout = match req {
            ManagerRequest::CreateSnapshot { .. }
            | ManagerRequest::CloneVolume { .. }
            | ManagerRequest::RollbackVolume { .. }
            | ManagerRequest::RestoreVolume { .. } => GROUP_OPS_CALL_TIMEOUT,
            _ => CALL_TIMEOUT,
        };
        tessera_net::call_managers::<_, ManagerReply>(
            &self.inner.security,
            &self.inner.managers,
            req,
            timeout,
        )
        .await
        .map_err(|e| match e {
            tessera_net::NetError::Control(e) => Error::Control(e),
            e => Error::Net(e),
        })
    }

    /// The snapshot sequence of volume `id` shared by this client's handles to it, raised
    /// to at least `seen`.
    pub(crate) fn volume_seq(&self, id: u64, seen: u64) -> Arc<AtomicU64> {
        let Ok(mut m) = self.inner.seqs.lock() else {
            return Arc::new(AtomicU64::new(seen));
        };
        let seq = match m.get(&id).and_then(Weak::upgrade) {
            Some(seq) => seq,
            None => {
                m.retain(|_, w| w.strong_count() > 0);
                let seq = Arc::new(AtomicU64::new(seen));
                m.insert(id, Arc::downgrade(&seq));
                seq
            }
        };
        seq.fetch_max(seen, Ordering::AcqRel);
        seq
    }

    /// Opens `name` to read and write it: attaches it (see the crate doc), fences its
    /// groups with the new writer epoch, and returns once writes are safe to send.
    /// [`Error::InUse`] while another client holds it; [`Error::ReadOnly`] for a snapshot
    /// (`VOL@SNAP`).
    pub async fn open(&self, name: &str) -> Result<Volume> {
        if name.contains('@') {
            return Err(Error::ReadOnly(format!(
                "\"{name}\" names a snapshot, which is read-only"
            )));
        }
        let req = ManagerRequest::AttachVolume {
            name: name.into(),
            client: self.inner.name.clone(),
            paged: true,
            holder: String::new(),
        };
        let gate = self.inner.attach_gate.lock().await;
        // The manager answers a client that holds the volume already with its epoch (and
        // the volume's current size, and routes to its first groups).
        let (volume, chunks, epoch, lease_ms) = match self.call(&req).await {
            Ok(ManagerReply::Attached {
                volume,
                chunks,
                epoch,
                lease_ms,
                ..
            }) => (volume, chunks, epoch, lease_ms),
            Ok(other) => return Err(unexpected("AttachVolume", &other)),
            Err(e) => return Err(volume_error(name, e)),
        };
        let lease = Duration::from_millis(lease_ms.max(300));
        let a = attachment::Attachment::share(self, name, volume.id, epoch, lease);
        drop(gate);
        let v = Volume::attached(self.clone(), volume, chunks, a);
        v.fence_all().await?;
        Ok(v)
    }

    /// Opens `name` to read it: no attachment, any number of readers; writes fail with
    /// [`Error::ReadOnly`]. `VOL@SNAP` opens snapshot `SNAP` of volume `VOL` (see
    /// [`Client::open_snapshot`]).
    pub async fn open_read_only(&self, name: &str) -> Result<Volume> {
        if name.contains('@') {
            let (volume, snapshot) = split_snapshot_name(name)?;
            return self.open_snapshot(volume, snapshot).await;
        }
        match self
            .call(&ManagerRequest::OpenVolume {
                name: name.into(),
                paged: true,
            })
            .await
        {
            Ok(ManagerReply::Opened { volume, chunks, .. }) => {
                Ok(Volume::read_only(self.clone(), volume, chunks))
            }
            Ok(other) => Err(unexpected("OpenVolume", &other)),
            Err(e) => Err(volume_error(name, e)),
        }
    }

    /// Opens snapshot `snapshot` of `volume` to read it, as it was when it was taken (its
    /// size then, too): any number of readers, writes fail with [`Error::ReadOnly`].
    /// [`Error::NotFound`] if either does not exist, [`Error::Unavailable`] while the
    /// snapshot is still being created (taking it again with the same name finishes it).
    pub async fn open_snapshot(&self, volume: &str, snapshot: &str) -> Result<Volume> {
        let snap = self.snapshot_info(volume, snapshot).await?;
        if snap.state != SnapshotState::Ready {
            return Err(Error::Unavailable(format!(
                "snapshot \"{volume}@{snapshot}\" is still being created (take it again to \
                 finish it)"
            )));
        }
        match self
            .call(&ManagerRequest::OpenVolume {
                name: volume.into(),
                paged: true,
            })
            .await
        {
            // The same volume, not one deleted and made again under its name.
            Ok(ManagerReply::Opened { volume: info, .. }) if info.id != snap.volume_id => {
                Err(Error::NotFound(format!(
                    "snapshot \"{volume}@{snapshot}\" not found (the volume was replaced)"
                )))
            }
            Ok(ManagerReply::Opened {
                volume: info,
                chunks,
                ..
            }) => Ok(Volume::snapshot(self.clone(), info, chunks, snap)),
            Ok(other) => Err(unexpected("OpenVolume", &other)),
            Err(e) => Err(snapshot_error(e)),
        }
    }

    /// The live connection to storage node `node` at `addr`, opened if needed.
    async fn node(&self, node: u64, addr: &str) -> Result<Arc<conn::NodeConn>> {
        let key = (node, addr.to_string());
        if let Some(c) = self
            .inner
            .conns
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
            && !c.is_dead()
        {
            return Ok(c);
        }
        let c = conn::NodeConn::open(&self.inner.security, node, addr, CALL_TIMEOUT).await?;
        if let Ok(mut m) = self.inner.conns.lock() {
            // Another task may have raced us here; keep whichever is alive.
            if let Some(existing) = m.get(&key)
                && !existing.is_dead()
            {
                return Ok(existing.clone());
            }
            m.insert(key, c.clone());
        }
        Ok(c)
    }
}

/// Splits `VOL@SNAP` into the volume's and the snapshot's names: exactly one `@`, with a
/// name on each side ([`Error::Invalid`] otherwise, saying what is wrong). The names
/// themselves are the manager's to check.
pub fn split_snapshot_name(spec: &str) -> Result<(&str, &str)> {
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "\"{spec}\" is not VOLUME@SNAPSHOT: {why}"
        )))
    };
    match spec.split_once('@') {
        None => bad("no '@'"),
        Some((_, snap)) if snap.contains('@') => bad("more than one '@'"),
        Some(("", _)) => bad("the volume name is empty"),
        Some((_, "")) => bad("the snapshot name is empty"),
        Some(parts) => Ok(parts),
    }
}

/// `label` on this host and process, with a random instance id: two clients never share
/// a name, so the manager never takes one for the other.
fn client_name(label: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{label} on {host} (pid {}, {:08x})",
        std::process::id(),
        h.finish() as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_need_exactly_one_at_with_a_name_on_each_side() {
        assert_eq!(
            split_snapshot_name("db1@monday").unwrap(),
            ("db1", "monday")
        );
        for (bad, why) in [
            ("db1", "no '@'"),
            ("db1@a@b", "more than one '@'"),
            ("@monday", "volume name is empty"),
            ("db1@", "snapshot name is empty"),
            ("@", "volume name is empty"),
        ] {
            let e = split_snapshot_name(bad).unwrap_err();
            assert!(
                matches!(&e, Error::Invalid(m) if m.contains(why)),
                "{bad}: {e}"
            );
            assert_eq!(e.class(), ErrorClass::Invalid);
        }
    }

    #[tokio::test]
    async fn handles_of_one_volume_share_one_sequence_that_only_rises() {
        let c = Client::offline();
        let a = c.volume_seq(7, 3);
        let b = c.volume_seq(7, 2);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(b.load(Ordering::Acquire), 3);
        c.volume_seq(7, 5);
        assert_eq!(a.load(Ordering::Acquire), 5);
        assert_eq!(c.volume_seq(8, 1).load(Ordering::Acquire), 1);
        drop((a, b));
        // Forgotten with its last handle.
        assert_eq!(c.volume_seq(7, 1).load(Ordering::Acquire), 1);
    }

    #[tokio::test]
    async fn a_snapshot_cannot_be_attached() {
        let e = Client::offline().open("db1@monday").await.err().unwrap();
        assert!(matches!(e, Error::ReadOnly(_)), "{e}");
    }
}
