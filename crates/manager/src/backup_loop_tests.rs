//! The backup loops against a stand-in storage node and a directory store: the uploader
//! stores segments and a root naming them and records the backup ready; an incremental
//! backup keeps its base's segment for an unchanged chunk; the merge of a chunk's answer
//! into its base's segment. The harness here serves the collector's and the restore's
//! tests too.

use std::sync::Mutex;
use std::time::Duration;

use tessera_backup::manifest::Segment;
use tessera_backup::region;
use tessera_net::{FrameReader, rpc_reply, write_frame};
use tessera_proto::control::{
    self, BackupChunkRequest, ChunkUpload, ControlError, RegionRef, StoreKind,
};
use tessera_proto::frame::Kind;
use tokio::io::AsyncWriteExt;

use super::*;
use crate::backup_jobs::unix_now;
use crate::consensus::{Consensus, Options, RaftTask};
use crate::db::Db;
use crate::liveness::Liveness;
use crate::raft_log::RaftLog;
use crate::state::{BackupRecord, GroupRecord, NodeRecord, SnapshotRecord, VolumeRecord};

/// Bytes of a test chunk: two regions.
pub(crate) const CHUNK: u64 = 2 * REGION_BYTES;
/// Three chunks.
pub(crate) const SIZE: u64 = 3 * CHUNK;

/// What the stand-in node answers for one chunk request: `(region, its bytes)`, `None`:
/// zeroes.
pub(crate) type Content = Arc<dyn Fn(&BackupChunkRequest) -> Vec<(u32, Option<u8>)> + Send + Sync>;

/// A manager leading alone, a stand-in node hosting group 1, a directory store.
pub(crate) struct Harness {
    pub service: Shared,
    pub stores: Stores,
    pub store: Store,
    /// The restore's calls (`HydrateChunk` and `Apply`), in the order they came.
    pub restore_calls: Arc<Mutex<Vec<StorageRequest>>>,
    pub asked: Arc<Mutex<Vec<BackupChunkRequest>>>,
    raft: Option<RaftTask>,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub async fn stop(mut self) {
        if let Some(r) = self.raft.take() {
            r.stop().await;
        }
    }

    /// A second directory store, `other`, beside `local`: both stores, and its client.
    pub fn with_other_store(&self) -> (Stores, Store) {
        let spec = StoreSpec {
            name: "other".into(),
            zone: "z2".into(),
            kind: StoreKind::Dir {
                path: self.dir.path().join("other").to_string_lossy().into_owned(),
            },
        };
        let store = Store::open(&spec).unwrap();
        let mut all = (*self.stores).clone();
        all.insert("other".into(), (spec, store.clone()));
        (Arc::new(all), store)
    }

    pub async fn commit(&self, m: Mutation) {
        commit(&self.service, m).await.unwrap();
    }

    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Service) -> T + Send + 'static,
    ) -> T {
        locked(&self.service, move |s| Ok(f(s))).await.unwrap()
    }

    /// Waits (at most 20 s) until `f` holds of the service.
    pub async fn until(&self, what: &str, f: impl Fn(&Service) -> bool + Send + Sync + 'static) {
        let f = Arc::new(f);
        let t = Instant::now();
        loop {
            let f = f.clone();
            if self.read(move |s| f(s)).await {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records backup `id` of volume 1 as of `seq`, incremental to `base`.
    pub async fn create_backup(&self, id: u64, seq: u64, base: Option<(u64, u64)>) {
        self.commit(Mutation::CreateBackup(backup_record(id, seq, base)))
            .await;
    }

    /// Starts the uploader: stopped by sending `true`.
    pub fn uploader(&self) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            self.service.clone(),
            self.stores.clone(),
            Settings::new(2, 2),
            Arc::new(Pace::new(1 << 40)),
            stopped,
        ));
        (stop, task)
    }

    /// Runs the uploader until backup `id` is ready; its root.
    pub async fn back_up(&self, id: u64) -> Hash {
        let (stop, task) = self.uploader();
        self.until("backup ready", move |s| {
            s.state()
                .backup(id)
                .is_some_and(|b| b.state != BackupState::Uploading)
        })
        .await;
        let _ = stop.send(true);
        task.await.unwrap();
        let b = self
            .read(move |s| s.state().backup(id).cloned())
            .await
            .unwrap();
        assert_eq!(b.state, BackupState::Ready, "{:?}", b.error);
        b.root.unwrap()
    }
}

/// Backup `id` of volume 1 as of `seq`, incremental to `base`, uploading to `local`.
pub(crate) fn backup_record(id: u64, seq: u64, base: Option<(u64, u64)>) -> BackupRecord {
    BackupRecord {
        id,
        volume: "vol".into(),
        volume_id: 1,
        snapshot: format!("s{seq}"),
        seq,
        store: "local".into(),
        base: base.map(|b| b.0),
        base_seq: base.map_or(0, |b| b.1),
        copied_from: None,
        size: SIZE,
        chunk_size: CHUNK,
        chunks_total: 3,
        created_unix: 100 + id,
        finished_unix: None,
        state: BackupState::Uploading,
        root: None,
        error: None,
        stats: BackupStats::default(),
        reads: Default::default(),
    }
}

/// 1 MiB of `byte` (a region's object depends only on it).
pub(crate) fn region_of(byte: u8) -> Vec<u8> {
    vec![byte; REGION_BYTES as usize]
}

/// The object name of a region of `byte`s.
pub(crate) fn object_of(byte: u8) -> Hash {
    region::encode(&region_of(byte)).unwrap().hash
}

pub(crate) async fn harness(content: Content) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let spec = StoreSpec {
        name: "local".into(),
        zone: "z1".into(),
        kind: StoreKind::Dir {
            path: dir.path().join("store").to_string_lossy().into_owned(),
        },
    };
    let store = Store::open(&spec).unwrap();
    let restore_calls = Arc::default();
    let asked = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(stand_in(
        listener,
        content,
        Arc::clone(&restore_calls),
        Arc::clone(&asked),
    ));

    let (db, state) = Db::open(&dir.path().join("mgr")).unwrap();
    let (log, loaded) = RaftLog::open(db.database(), db.path()).unwrap();
    let opts = Options {
        id: 1,
        members: vec![crate::config::ManagerPeer {
            id: 1,
            addr: "127.0.0.1:1".into(),
        }],
        join: false,
        log_keep: 1000,
        security: Default::default(),
    };
    let (consensus, raft): (Consensus, RaftTask) = Consensus::start(opts, log, loaded, 0).unwrap();
    let live = Liveness::new(
        Instant::now(),
        Duration::from_secs(5),
        Duration::from_secs(30),
    );
    let service = Arc::new(Mutex::new(Service::new(
        db, state, live, 1, 1, consensus, 0,
    )));
    let t = Instant::now();
    while locked(&service, |s| s.lead()).await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "never led");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = Harness {
        service,
        stores: Arc::new(BTreeMap::from([(
            "local".to_string(),
            (spec, store.clone()),
        )])),
        store,
        restore_calls,
        asked,
        raft: Some(raft),
        dir,
    };
    h.commit(Mutation::PutNode(NodeRecord {
        id: 1,
        zone: "z1".into(),
        rack: "r1".into(),
        addr,
        capacity_bytes: 1 << 40,
        used_bytes: 0,
        draining: false,
        disk: 0,
    }))
    .await;
    h.commit(Mutation::AddGroups(vec![GroupRecord {
        id: 1,
        members: vec![1],
        ..GroupRecord::default()
    }]))
    .await;
    // Snapshots s1 and s2 (sequences 1 and 2), ready: the backups' sources.
    let snapshots = (1..=2)
        .map(|seq| SnapshotRecord {
            name: format!("s{seq}"),
            seq,
            created_unix: 0,
            state: control::SnapshotState::Ready,
            size: SIZE,
        })
        .collect();
    h.commit(Mutation::PutVolume(VolumeRecord {
        snap_seq: 3,
        snapshots,
        ..VolumeRecord::new(1, "vol", SIZE, CHUNK, 0)
    }))
    .await;
    h.commit(Mutation::MapChunks {
        volume_id: 1,
        chunks: vec![(0, 1), (1, 1), (2, 1)],
    })
    .await;
    h
}

/// A storage node leading group 1: uploads what `content` says, records a restore's calls.
async fn stand_in(
    listener: tokio::net::TcpListener,
    content: Content,
    restore_calls: Arc<Mutex<Vec<StorageRequest>>>,
    asked: Arc<Mutex<Vec<BackupChunkRequest>>>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (content, calls, asked) = (content.clone(), restore_calls.clone(), asked.clone());
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut reader = FrameReader::new(r);
            while let Ok(Some(f)) = reader.next().await {
                assert_eq!(f.kind, Kind::Rpc);
                let req: StorageRequest = control::decode(&f.body).unwrap();
                let reply = match req {
                    StorageRequest::BackupChunk(req) => {
                        asked.lock().unwrap().push(req.clone());
                        upload(&req, content(&req)).await
                    }
                    StorageRequest::HydrateChunk(_) | StorageRequest::Apply { .. } => {
                        calls.lock().unwrap().push(req);
                        Ok(StorageReply::Done)
                    }
                    other => Err(ControlError::Invalid(format!("not served: {other:?}"))),
                };
                write_frame(&mut w, &rpc_reply(f.request_id, &reply))
                    .await
                    .unwrap();
                w.flush().await.unwrap();
            }
        });
    }
}

async fn upload(
    req: &BackupChunkRequest,
    regions: Vec<(u32, Option<u8>)>,
) -> Result<StorageReply, ControlError> {
    let store = Store::open(&req.store).unwrap();
    // The access record: chunk c was read 10 * c times.
    let mut up = ChunkUpload {
        reads: req.chunk * 10,
        ..ChunkUpload::default()
    };
    for (region, byte) in regions {
        up.read_bytes += REGION_BYTES;
        let object = match byte.and_then(|b| region::encode(&region_of(b))) {
            Some(enc) => {
                let len = enc.bytes.len() as u64;
                let put = store
                    .put_if_missing(&keys::object(&enc.hash), enc.bytes, req.force)
                    .await
                    .map_err(|e| ControlError::Unavailable(e.to_string()))?;
                if put {
                    up.uploaded_objects += 1;
                    up.uploaded_bytes += len;
                } else {
                    up.present_objects += 1;
                }
                Some(enc.hash)
            }
            None => None,
        };
        up.regions.push(RegionRef { region, object });
    }
    Ok(StorageReply::BackupChunk(up))
}

/// The first backup's content: chunk 0 has data in region 0; chunk 1 is zeroes; chunk 2
/// has two regions of data. After sequence 1 (the second backup), only chunk 2's region 1
/// changed.
pub(crate) fn two_backups() -> Content {
    Arc::new(|req: &BackupChunkRequest| {
        if req.after == 0 {
            match req.chunk {
                0 => vec![(0, Some(1)), (1, None)],
                1 => vec![(0, None), (1, None)],
                _ => vec![(0, Some(2)), (1, Some(3))],
            }
        } else if req.chunk == 2 {
            vec![(1, Some(4))]
        } else {
            Vec::new()
        }
    })
}

async fn segment(store: &Store, h: &Hash) -> Segment {
    read_segment(store, h).await.unwrap()
}

/// A full backup: segments for the chunks holding data (none for the zero chunk), each
/// naming its regions' objects, and a root naming them, stored and recorded ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_stores_its_segments_then_its_root_and_is_recorded_ready() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    let root = h.back_up(1).await;
    let bytes = h.store.get(&keys::root(&root)).await.unwrap();
    let r = Root::decode("local", &root, &bytes).unwrap();
    assert_eq!((r.backup_id, r.volume_id, r.seq), (1, 1, 1));
    assert_eq!(
        (r.size, r.chunk_size, r.region_bytes),
        (SIZE, CHUNK, REGION_BYTES)
    );
    let chunks: Vec<u64> = r.segments.iter().map(|(c, _)| *c).collect();
    assert_eq!(chunks, [0, 2], "the zero chunk has no segment");
    let recorded = h.read(|s| s.state().backup_segments(1)).await;
    assert_eq!(r.segments, recorded.into_iter().collect::<Vec<_>>());
    assert_eq!(
        segment(&h.store, &r.segments[0].1).await.regions,
        [(0, object_of(1))]
    );
    assert_eq!(
        segment(&h.store, &r.segments[1].1).await.regions,
        [(0, object_of(2)), (1, object_of(3))]
    );
    for byte in [1, 2, 3] {
        assert!(
            h.store
                .exists(&keys::object(&object_of(byte)))
                .await
                .unwrap()
        );
    }
    let stats = h.read(|s| s.state().backup(1).unwrap().stats).await;
    assert_eq!(stats.read_bytes, SIZE);
    assert_eq!(stats.uploaded_objects, 3);
    assert!(
        h.asked
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.after == 0 && !r.force)
    );
    h.stop().await;
}

/// An incremental backup asks only for what changed after its base's snapshot: a chunk
/// with no change keeps the base's segment (same name, not put again); a changed region
/// replaces its object and the rest keeps the base's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_incremental_backup_keeps_the_base_segment_of_an_unchanged_chunk() {
    let h = harness(two_backups()).await;
    h.create_backup(1, 1, None).await;
    h.back_up(1).await;
    h.create_backup(2, 2, Some((1, 1))).await;
    h.back_up(2).await;
    let first = h.read(|s| s.state().backup_segments(1)).await;
    let second = h.read(|s| s.state().backup_segments(2)).await;
    assert_eq!(second.keys().copied().collect::<Vec<_>>(), [0, 2]);
    assert_eq!(second[&0], first[&0], "unchanged chunk: the base's segment");
    assert_ne!(second[&2], first[&2]);
    assert_eq!(
        segment(&h.store, &second[&2]).await.regions,
        [(0, object_of(2)), (1, object_of(4))]
    );
    let asked = h.asked.lock().unwrap().clone();
    assert!(asked.iter().filter(|r| r.seq == 2).all(|r| r.after == 1));
    h.stop().await;
}

/// Merging an answer: answered regions replace or remove the base's, the rest stay; a
/// region outside the chunk is refused, not trusted.
#[test]
fn an_answer_merges_into_the_base_segment() {
    let base = Segment {
        format: FORMAT,
        chunk: 4,
        regions: vec![(0, Hash([1; 32])), (1, Hash([2; 32]))],
    };
    let answered = [
        RegionRef {
            region: 1,
            object: None,
        },
        RegionRef {
            region: 2,
            object: Some(Hash([3; 32])),
        },
    ];
    let m = merge(Some(&base), 4, 3 * REGION_BYTES, &answered).unwrap();
    assert_eq!(m.regions, [(0, Hash([1; 32])), (2, Hash([3; 32]))]);
    assert_eq!(merge(Some(&base), 4, 3 * REGION_BYTES, &[]).unwrap(), base);
    assert!(merge(None, 4, 2 * REGION_BYTES, &answered).is_err());
}

/// `two_backups`, each answer taking `ms` (the node reading and uploading).
pub(crate) fn slow(ms: u64) -> Content {
    let inner = two_backups();
    Arc::new(move |req: &BackupChunkRequest| {
        std::thread::sleep(Duration::from_millis(ms));
        inner(req)
    })
}

/// `n` roots of deleted backups of `local`: garbage the collector may claim.
pub(crate) async fn garbage_roots(h: &Harness, n: u8) -> Vec<Hash> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = 1000 + u64::from(i);
        h.create_backup(id, 1, None).await;
        let root = Hash([i; 32]);
        let rec = h
            .read(move |s| s.state().backup(id).cloned())
            .await
            .unwrap();
        h.commit(Mutation::DeleteBackup { id, now_unix: 0 }).await;
        h.commit(Mutation::CreateBackup(BackupRecord {
            state: BackupState::Ready,
            root: Some(root),
            ..rec
        }))
        .await;
        h.commit(Mutation::DeleteBackup { id, now_unix: 0 }).await;
        out.push(root);
    }
    out
}

/// The volume deleted while its chunks are uploaded (its node then answers no regions):
/// the backup is never made ready from those empty answers, but fails, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_whose_volume_is_deleted_meanwhile_fails_naming_it() {
    let empty: Content = Arc::new(|_: &BackupChunkRequest| {
        std::thread::sleep(Duration::from_millis(300));
        Vec::new()
    });
    let h = harness(empty).await;
    h.create_backup(1, 1, None).await;
    let (stop, task) = h.uploader();
    let asked = h.asked.clone();
    let t = Instant::now();
    while asked.lock().unwrap().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.commit(Mutation::DeleteVolume { id: 1 }).await;
    h.until("backup ended", |s| {
        s.state()
            .backup(1)
            .is_some_and(|b| b.state != BackupState::Uploading)
    })
    .await;
    let _ = stop.send(true);
    task.await.unwrap();
    let b = h.read(|s| s.state().backup(1).cloned()).await.unwrap();
    assert_eq!(b.state, BackupState::Failed);
    assert!(
        b.error.as_deref().unwrap_or("").contains("deleted"),
        "{:?}",
        b.error
    );
    assert!(h.store.list("roots/").await.unwrap().is_empty());
    h.stop().await;
}

/// A backup deleted while uploading: its job stops asking the nodes and never stores a
/// root.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_deleted_while_uploading_stops_its_job() {
    let h = harness(slow(3000)).await;
    h.create_backup(1, 1, None).await;
    let (stop, task) = h.uploader();
    let asked = h.asked.clone();
    let t = Instant::now();
    while asked.lock().unwrap().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "never asked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.commit(Mutation::DeleteBackup {
        id: 1,
        now_unix: unix_now(),
    })
    .await;
    // Two chunks in flight take 3 s; the next tick (2 s) stops the task before the third
    // is asked.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let n = asked.lock().unwrap().len();
    assert!(n <= 2, "{n} chunks asked after the backup was deleted");
    assert!(h.store.list("roots/").await.unwrap().is_empty());
    let _ = stop.send(true);
    task.await.unwrap();
    h.stop().await;
}
