//! Volumes made from backups: `volume create NEW --from-backup ID [--store S] [--wait]`,
//! `volume prewarm NAME [--wait]`, and the line `volume info` shows while a volume is being
//! filled. The manager fills a restored volume in the background; waiting polls the
//! volume's record until its `restore` is gone (a bar on a terminal).

use std::time::Instant;

use anyhow::{Context, Result};
use tessera_client::Client;
use tessera_proto::control::{RestoreInfo, VolumeInfo};

use crate::Output;
use crate::progress::{POLL, Rate, Status, format_rate, format_secs, percent};
use crate::size::format_size;

/// `volume create NAME --from-backup ID`: the volume (after the fill with `wait`), for the
/// caller to print as `volume create` prints any volume. Says what happens on stdout
/// first (not with `--output json`).
pub async fn restore(
    client: &Client,
    output: Output,
    name: &str,
    backup: u64,
    store: Option<&str>,
    wait: bool,
) -> Result<VolumeInfo> {
    let v = client.restore_volume(name, backup, store).await?;
    let text = output == Output::Table;
    match &v.restore {
        Some(r) if text => println!(
            "volume \"{name}\" created from backup {backup} (store {}); filling it in the \
             background",
            r.store
        ),
        None if text => println!("volume \"{name}\" created from backup {backup}: filled"),
        _ => {}
    }
    if !wait {
        if text && let Some(r) = &v.restore {
            println!("{}", usable_line(name, r));
        }
        return Ok(v);
    }
    wait_filled(client, output, v).await
}

/// `volume prewarm NAME`: fill it now (resuming a restore that stopped on errors).
pub async fn prewarm(client: &Client, output: Output, name: &str, wait: bool) -> Result<()> {
    let mut v = client.prewarm_volume(name).await?;
    if output == Output::Table {
        match &v.restore {
            Some(r) => println!(
                "filling volume \"{name}\" from backup {} in store {} now: {}/{} chunks",
                r.backup, r.store, r.chunks_done, r.chunks_total
            ),
            None => println!("volume \"{name}\" is filled: nothing to prewarm"),
        }
    }
    if wait {
        v = wait_filled(client, output, v).await?;
    }
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// Polls volume `v` until it is filled; says so on stdout (not with `--output json`).
async fn wait_filled(client: &Client, output: Output, mut v: VolumeInfo) -> Result<VolumeInfo> {
    let started = Instant::now();
    let mut status = Status::new(output == Output::Json);
    let mut rate = Rate::new(v.restore.as_ref().map_or(0, |r| r.hydrated_bytes));
    while let Some(r) = &v.restore {
        let line = fill_line(&v.name, r, rate.per_sec(r.hydrated_bytes));
        status.show(r.chunks_done, r.chunks_total, &line);
        tokio::time::sleep(POLL).await;
        let next = client.volume_info(&v.name).await;
        if next.is_err() {
            status.finish();
        }
        v = next.with_context(|| {
            format!(
                "waiting for volume \"{0}\" to be filled (it goes on in the background: \
                 `tessera volume info {0}`)",
                v.name
            )
        })?;
    }
    status.finish();
    if output == Output::Table {
        println!(
            "volume \"{}\" is filled (waited {}); it no longer needs the backup's store",
            v.name,
            format_secs(started.elapsed().as_secs())
        );
    }
    Ok(v)
}

/// What `volume create --from-backup` says after creating: usable now (linked: reads of
/// blocks not filled yet fetch them from the store), or once linked.
fn usable_line(name: &str, r: &RestoreInfo) -> String {
    if r.linked {
        format!(
            "it is usable now (blocks not filled yet are read from the store); snapshots, \
             clones and backups of it wait until filled; `tessera volume info {name}` shows \
             how far"
        )
    } else {
        format!(
            "it is usable once linked to the backup (shortly); `tessera volume info {name}` \
             shows when"
        )
    }
}

/// What `volume info` says of a volume being filled from a backup: usable (linked to it)
/// or still linking, and the fill's progress.
pub fn restore_line(r: &RestoreInfo) -> String {
    let state = if r.linked {
        "usable, filling"
    } else {
        "linking (not usable yet)"
    };
    let error = r
        .error
        .as_ref()
        .map(|e| format!("; failing: {e}"))
        .unwrap_or_default();
    format!(
        "restoring from backup {} in store {}: {state}: {}/{} chunks ({}%), {} filled, {}{error}",
        r.backup,
        r.store,
        r.chunks_done,
        r.chunks_total,
        percent(r.chunks_done, r.chunks_total),
        format_size(r.hydrated_bytes),
        eta(r)
    )
}

/// The status line while waiting for a fill (after the bar on a terminal).
pub fn fill_line(name: &str, r: &RestoreInfo, per_sec: Option<f64>) -> String {
    let rate = per_sec.map(|p| format!(", {}", format_rate(p)));
    format!(
        "volume {name}: {}/{} chunks, {} filled{}, {}",
        r.chunks_done,
        r.chunks_total,
        format_size(r.hydrated_bytes),
        rate.unwrap_or_default(),
        eta(r)
    )
}

fn eta(r: &RestoreInfo) -> String {
    r.eta_secs.map_or_else(
        || "ETA unknown".into(),
        |s| format!("ETA {}", format_secs(s)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filling(eta_secs: Option<u64>) -> RestoreInfo {
        RestoreInfo {
            backup: 7,
            store: "local".into(),
            chunks_total: 160,
            chunks_done: 12,
            hydrated_bytes: 768 << 20,
            eta_secs,
            error: None,
            linked: true,
        }
    }

    fn volume(restore: Option<RestoreInfo>) -> VolumeInfo {
        VolumeInfo {
            id: 2,
            name: "db2".into(),
            size: 10 << 30,
            chunk_size: 64 << 20,
            mapped_chunks: 160,
            created_unix: 0,
            attachment: None,
            seq: 1,
            parent: None,
            snapshots: Vec::new(),
            reclaims: Vec::new(),
            restore: restore.map(Box::new),
        }
    }

    /// `db2` is restored from backup 7 and filled at the third look.
    fn restoring(
        req: tessera_proto::control::ManagerRequest,
    ) -> Result<tessera_proto::control::ManagerReply, tessera_proto::control::ControlError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest};
        static LOOKS: AtomicU64 = AtomicU64::new(0);
        match req {
            ManagerRequest::ListVolumes => Ok(ManagerReply::Volumes(vec![])),
            ManagerRequest::RestoreVolume { backup: 7, .. } => {
                Ok(ManagerReply::Volume(volume(Some(filling(None)))))
            }
            ManagerRequest::VolumeInfo { .. } => match LOOKS.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Ok(ManagerReply::Volume(volume(Some(filling(Some(1)))))),
                _ => Ok(ManagerReply::Volume(volume(None))),
            },
            _ => Err(ControlError::NotFound("backup 8 not found".into())),
        }
    }

    /// With --wait the volume is answered once filled; without, as the manager answered.
    #[tokio::test]
    async fn waiting_for_a_restore_ends_once_the_volume_is_filled() {
        let addr = crate::backups::tests::fake_manager(restoring).await;
        let client = Client::connect(vec![addr]).await.expect("connect");
        let v = restore(&client, Output::Json, "db2", 7, None, false)
            .await
            .unwrap();
        assert!(v.restore.is_some());
        let v = restore(&client, Output::Json, "db2", 7, Some("local"), true)
            .await
            .unwrap();
        assert!(v.restore.is_none());
        let e = restore(&client, Output::Json, "db3", 8, None, true)
            .await
            .unwrap_err();
        assert_eq!(crate::exit::code(&e), crate::exit::NOT_FOUND);
    }

    #[test]
    fn a_volume_being_filled_shows_backup_store_chunks_and_eta() {
        assert_eq!(
            restore_line(&filling(Some(200))),
            "restoring from backup 7 in store local: usable, filling: 12/160 chunks (7%), \
             768 MiB filled, ETA 3m 20s"
        );
        let linking = RestoreInfo {
            linked: false,
            error: Some("chunk 3: store local: not found".into()),
            ..filling(None)
        };
        assert_eq!(
            restore_line(&linking),
            "restoring from backup 7 in store local: linking (not usable yet): 12/160 chunks \
             (7%), 768 MiB filled, ETA unknown; failing: chunk 3: store local: not found"
        );
        assert!(usable_line("db2", &filling(None)).starts_with("it is usable now"));
        assert!(usable_line("db2", &linking).contains("once linked"));
        assert!(restore_line(&filling(None)).contains("ETA unknown"));
        assert_eq!(
            fill_line("db2", &filling(Some(45)), Some(85.0 * 1048576.0)),
            "volume db2: 12/160 chunks, 768 MiB filled, 85.0 MiB/s, ETA 45s"
        );
        assert_eq!(
            fill_line("db2", &filling(None), None),
            "volume db2: 12/160 chunks, 768 MiB filled, ETA unknown"
        );
    }
}
