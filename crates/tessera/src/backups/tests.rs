use tessera_proto::control::Hash;

use super::*;

fn backup(id: u64) -> BackupInfo {
    BackupInfo {
        id,
        volume: "db1".into(),
        snapshot: "monday".into(),
        store: "local".into(),
        zone: "zone1".into(),
        state: BackupState::Uploading,
        base: None,
        copied_from: None,
        root: None,
        size: 10 << 30,
        chunk_size: 64 << 20,
        created_unix: 1_700_000_000,
        finished_unix: None,
        chunks_total: 160,
        chunks_done: 80,
        read_bytes: 5 << 30,
        uploaded_bytes: 1229 << 20,
        uploaded_objects: 412,
        present_objects: 1021,
        objects: 1433,
        error: None,
    }
}

fn ready(id: u64) -> BackupInfo {
    BackupInfo {
        state: BackupState::Ready,
        chunks_done: 160,
        finished_unix: Some(1_700_000_014),
        root: Some(Hash([0xab; 32])),
        ..backup(id)
    }
}

#[test]
fn backup_ids_are_plain_positive_integers() {
    assert_eq!(parse_backup_id("7"), Ok(7));
    assert_eq!(parse_backup_id(" 12 "), Ok(12));
    let e = parse_backup_id("abc").unwrap_err();
    assert_eq!(
        e,
        "invalid backup ID \"abc\": expected a number such as 7 (see `tessera backup list`)"
    );
    for bad in ["-1", "7a", "#7", "", "1.5", "99999999999999999999999"] {
        assert!(parse_backup_id(bad).is_err(), "{bad}");
    }
    assert!(parse_backup_id("0").unwrap_err().contains("start at 1"));
}

/// The ID comes first, then what is backed up where; an incremental or a copy says of
/// which backup.
#[test]
fn the_headline_names_the_id_the_snapshot_and_the_store() {
    assert_eq!(
        headline(&backup(7)),
        "backup 7 of db1@monday to store local: uploading"
    );
    let b = BackupInfo {
        base: Some(5),
        ..backup(7)
    };
    assert_eq!(
        headline(&b),
        "backup 7 of db1@monday to store local (incremental to backup 5): uploading"
    );
    let c = BackupInfo {
        store: "s3a".into(),
        copied_from: Some(7),
        ..backup(9)
    };
    assert_eq!(
        headline(&c),
        "backup 9 of db1@monday to store s3a (copy of backup 7): uploading"
    );
}

#[test]
fn progress_shows_chunks_bytes_rate_and_the_error_retried_after() {
    let b = backup(7);
    assert_eq!(
        progress_line(&b, None),
        "backup 7: 80/160 chunks, read 5 GiB, uploaded 1.2 GiB"
    );
    assert_eq!(
        progress_line(&b, Some(85.0 * 1048576.0)),
        "backup 7: 80/160 chunks, read 5 GiB, uploaded 1.2 GiB, 85.0 MiB/s read"
    );
    let slow = BackupInfo {
        error: Some(format!("store local: 503 Slow Down{}", "!".repeat(200))),
        ..backup(7)
    };
    let line = progress_line(&slow, None);
    assert!(
        line.ends_with(&format!(
            "; retrying after: store local: 503 Slow Down{}",
            "!".repeat(54)
        )),
        "{line}"
    );
    assert_eq!(
        summary(&ready(7)),
        "backup 7 ready: read 5 GiB, uploaded 1.2 GiB (412 objects put, 1021 already stored), \
         160 chunks in 14s"
    );
}

#[test]
fn the_list_has_one_aligned_row_per_backup_with_its_base() {
    let copy = BackupInfo {
        store: "s3a".into(),
        copied_from: Some(7),
        state: BackupState::Failed,
        ..backup(9)
    };
    let incr = BackupInfo {
        base: Some(7),
        ..ready(8)
    };
    let lines = backup_table(&[copy, incr, ready(7)]);
    assert_eq!(
        lines,
        [
            "    ID VOLUME@SNAPSHOT                  STORE        STATE           SIZE   UPLOADED      CREATED  BASE",
            "     9 db1@monday                       s3a          failed        10 GiB    1.2 GiB   1700000000  copy of 7",
            "     8 db1@monday                       local        ready         10 GiB    1.2 GiB   1700000000  7",
            "     7 db1@monday                       local        ready         10 GiB    1.2 GiB   1700000000  -",
        ]
    );
}

#[test]
fn info_says_where_how_far_what_moved_and_why_it_failed() {
    let lines = info_lines(&ready(7));
    assert_eq!(
        lines,
        [
            "backup 7 of db1@monday in store local (zone zone1): ready".to_string(),
            "size 10 GiB, chunk size 64 MiB; 160/160 chunks recorded".into(),
            "full backup: every region read".into(),
            "read 5 GiB; uploaded 1.2 GiB: 412 objects put, 1021 already stored; 1433 objects \
             referenced"
                .into(),
            "created 1700000000, finished 1700000014 (unix seconds)".into(),
            format!("root {}", "ab".repeat(32)),
        ]
    );
    let failed = BackupInfo {
        state: BackupState::Failed,
        base: Some(5),
        error: Some("store local: permission denied".into()),
        ..backup(8)
    };
    let lines = info_lines(&failed);
    assert_eq!(
        lines[2],
        "incremental to backup 5: only changed regions read"
    );
    assert_eq!(lines[4], "created 1700000000 (unix seconds)");
    assert_eq!(
        lines.last().unwrap(),
        "failed: store local: permission denied"
    );
}

#[test]
fn stores_list_with_their_zone_kind_location_and_counts() {
    let s = |name: &str, kind: &str, location: &str, default| StoreInfo {
        name: name.into(),
        zone: "zone1".into(),
        kind: kind.into(),
        location: location.into(),
        default,
        backups: 3,
        objects: 1433,
        garbage: 12,
    };
    let lines = store_table(&[
        s("local", "dir", "/var/lib/tessera/backups", true),
        s("s3a", "s3", "http://10.0.0.9:9000/tessera/prod", false),
    ]);
    assert_eq!(
        lines,
        [
            "NAME             ZONE       KIND LOCATION                                 DEFAULT  BACKUPS    OBJECTS  GARBAGE",
            "local            zone1      dir  /var/lib/tessera/backups                 yes            3       1433       12",
            "s3a              zone1      s3   http://10.0.0.9:9000/tessera/prod        no             3       1433       12",
        ]
    );
}

/// `--output json` prints the manager's record as it is: a script reads it back typed.
#[test]
fn json_is_the_record_itself() {
    let b = ready(7);
    let json = serde_json::to_value(&b).unwrap();
    assert_eq!(json["id"], 7);
    assert_eq!(json["state"], "ready");
    assert_eq!(json["store"], "local");
    assert_eq!(json["root"], "ab".repeat(32));
    assert!(json.get("base").is_none());
    let back: BackupInfo = serde_json::from_value(json).unwrap();
    assert_eq!(back, b);
}

/// A manager played by the test: answers every request with `answer`. Its address.
pub(crate) async fn fake_manager(
    answer: fn(
        tessera_proto::control::ManagerRequest,
    ) -> Result<
        tessera_proto::control::ManagerReply,
        tessera_proto::control::ControlError,
    >,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut frames = tessera_net::FrameReader::new(r);
                while let Ok(Some(f)) = frames.next().await {
                    let req = tessera_proto::control::decode(&f.body).unwrap();
                    let reply = tessera_net::rpc_reply(f.request_id, &answer(req));
                    tessera_net::write_frame(&mut w, &reply).await.unwrap();
                }
            });
        }
    });
    addr
}

/// Backup 7 becomes ready at the third look; backup 8 fails at the second.
fn uploads(
    req: tessera_proto::control::ManagerRequest,
) -> Result<tessera_proto::control::ManagerReply, tessera_proto::control::ControlError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tessera_proto::control::{ManagerReply, ManagerRequest};
    static LOOKS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    let one = |b| Ok(ManagerReply::Backup(Box::new(b)));
    match req {
        ManagerRequest::ListVolumes => Ok(ManagerReply::Volumes(vec![])),
        ManagerRequest::BackupInfo { id: 7 } => match LOOKS[0].fetch_add(1, Ordering::SeqCst) {
            0 | 1 => one(backup(7)),
            _ => one(ready(7)),
        },
        ManagerRequest::BackupInfo { id: 8 } => match LOOKS[1].fetch_add(1, Ordering::SeqCst) {
            0 => one(backup(8)),
            _ => one(BackupInfo {
                state: BackupState::Failed,
                error: Some("store local: permission denied".into()),
                ..backup(8)
            }),
        },
        _ => Err(tessera_proto::control::ControlError::NotFound(
            "backup 9 not found".into(),
        )),
    }
}

/// Waiting polls until the backup is ready (success) or failed (an error naming the
/// backup and why, exit code 1); a backup gone meanwhile keeps its class (not found).
#[tokio::test]
async fn waiting_ends_when_the_backup_is_ready_or_failed() {
    let client = Client::connect(vec![fake_manager(uploads).await])
        .await
        .expect("connect");
    started(&client, Output::Json, backup(7), true)
        .await
        .expect("ready");
    let e = started(&client, Output::Json, backup(8), true)
        .await
        .expect_err("failed");
    assert_eq!(
        e.to_string(),
        "backup 8 failed: store local: permission denied"
    );
    assert_eq!(crate::exit::code(&e), crate::exit::FAILED);
    let e = started(&client, Output::Json, backup(9), true)
        .await
        .expect_err("gone");
    assert!(e.to_string().contains("waiting for backup 9"), "{e}");
    assert_eq!(crate::exit::code(&e), crate::exit::NOT_FOUND);
    // Not waiting: the record as answered.
    started(&client, Output::Json, backup(9), false)
        .await
        .expect("started");
}
