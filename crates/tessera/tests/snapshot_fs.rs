//! A real filesystem on a volume while snapshots are taken: ext4 on a kernel block device
//! (`nbdfuse` turns the volume's NBD export into a file, `losetup` the file into
//! `/dev/loopN`), files written and fsynced continuously, snapshots taken meanwhile. Every
//! clone of every snapshot must then mount (the journal replays, as after a power cut),
//! hold every file fsynced before its snapshot was asked for, byte for byte, and pass
//! `e2fsck -fn`: the snapshot is crash-consistent across all the volume's groups.
//!
//! Needs root, `/dev/fuse`, loop devices and `nbdfuse` (in libnbd-bin, which CI installs); skipped, saying
//! so, where they are missing.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Opts};

/// Runs `prog args`, panicking with its output if it fails.
fn run_ok(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}\n{text}",
        out.status
    );
    text
}

fn quiet(prog: &str, args: &[&str]) {
    let _ = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why this machine cannot run the test (`None`: it can).
fn missing() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().map(|o| o.stdout);
    if uid.ok().as_deref() != Some(b"0\n".as_slice()) {
        return Some("not root".into());
    }
    for p in ["nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "mount"] {
        if !have(p) {
            return Some(format!("{p} is not installed"));
        }
    }
    if !Path::new("/dev/fuse").exists() || !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/fuse or /dev/loop-control".into());
    }
    None
}

/// A volume as a kernel block device: the nbdfuse process, its file, the loop device and
/// where the filesystem is mounted, if it is; all undone on drop, in reverse order.
struct BlockDevice {
    fuse_dir: PathBuf,
    fuse: Option<Child>,
    loop_dev: String,
    mounted: Option<PathBuf>,
}

impl BlockDevice {
    fn attach(uri: &str, dir: &Path) -> BlockDevice {
        let fuse_dir = dir.join("fuse");
        std::fs::create_dir_all(&fuse_dir).expect("mkdir");
        let pid = dir.join("nbdfuse.pid");
        let _ = std::fs::remove_file(&pid);
        let child = Command::new("nbdfuse")
            .arg("-P")
            .arg(&pid)
            .arg(&fuse_dir)
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nbdfuse");
        let mut dev = BlockDevice {
            fuse_dir: fuse_dir.clone(),
            fuse: Some(child),
            loop_dev: String::new(),
            mounted: None,
        };
        let t = Instant::now();
        while !pid.exists() || !fuse_dir.join("nbd").exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "nbdfuse did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let file = fuse_dir.join("nbd");
        dev.loop_dev = run_ok("losetup", &["--show", "-f", file.to_str().unwrap()])
            .trim()
            .to_string();
        dev
    }

    fn mount(&mut self, at: &Path) {
        std::fs::create_dir_all(at).expect("mkdir");
        run_ok("mount", &[&self.loop_dev, at.to_str().unwrap()]);
        self.mounted = Some(at.to_path_buf());
    }

    fn unmount(&mut self) {
        if let Some(at) = self.mounted.take() {
            run_ok("umount", &[at.to_str().unwrap()]);
        }
    }
}

impl Drop for BlockDevice {
    fn drop(&mut self) {
        if let Some(at) = self.mounted.take() {
            quiet("umount", &["-l", at.to_str().unwrap()]);
        }
        if !self.loop_dev.is_empty() {
            quiet("losetup", &["-d", &self.loop_dev]);
        }
        quiet("umount", &[self.fuse_dir.to_str().unwrap()]);
        if let Some(mut c) = self.fuse.take() {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The bytes of file `i`: 16 KiB to 1 MiB, a pattern only that file has.
fn content(i: u64) -> Vec<u8> {
    let len = 16 * 1024 + (i * 7919 % 64) * 16 * 1024;
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes files `f0`, `f1`, … under `dir` until `stop`, each fsynced with its directory;
/// `synced` counts the files that are durable.
fn writer(dir: PathBuf, stop: Arc<AtomicBool>, synced: Arc<Mutex<u64>>) {
    let d = std::fs::File::open(&dir).expect("open dir");
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut f = std::fs::File::create(dir.join(format!("f{i}"))).expect("create");
        f.write_all(&content(i)).expect("write");
        f.sync_all().expect("fsync");
        d.sync_all().expect("fsync dir");
        i += 1;
        *synced.lock().unwrap() = i;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_clones_of_snapshots_taken_under_writes_mount_clean_and_hold_every_synced_file() {
    if let Some(why) = missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    c.create_volume("fs", "256M", "16M");
    let gw = c.gateway();
    let work = c.dir.path().join("work");

    // ext4 on the volume, files written continuously, three snapshots meanwhile.
    let mut dev = BlockDevice::attach(&gw.uri("fs"), &work.join("fs"));
    run_ok("mkfs.ext4", &["-q", "-F", &dev.loop_dev]);
    let mnt = work.join("fs-mnt");
    dev.mount(&mnt);
    let files = mnt.join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    let stop = Arc::new(AtomicBool::new(false));
    let synced = Arc::new(Mutex::new(0u64));
    let w = {
        let (files, stop, synced) = (files.clone(), stop.clone(), synced.clone());
        std::thread::spawn(move || writer(files, stop, synced))
    };
    let mut snaps = Vec::new();
    for k in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = *synced.lock().unwrap();
        let name = format!("fs@s{k}");
        let out = c.cli(&["snapshot", "create", &name]);
        assert!(
            out.status.success(),
            "snapshot create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        snaps.push((k, before));
    }
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    let total = *synced.lock().unwrap();
    assert!(total > snaps[2].1, "the writer kept writing: {total} files");
    dev.unmount();
    drop(dev);

    // Every clone mounts (replaying its journal), holds every file synced before its
    // snapshot, and is clean.
    for (k, before) in snaps {
        assert!(before > 0, "files were synced before snapshot s{k}");
        let clone = format!("c{k}");
        c.cli_ok(&["volume", "clone", &format!("fs@s{k}"), &clone]);
        let mut cdev = BlockDevice::attach(&gw.uri(&clone), &work.join(&clone));
        let at = work.join(format!("{clone}-mnt"));
        cdev.mount(&at);
        for i in 0..before {
            let got = std::fs::read(at.join("files").join(format!("f{i}")))
                .unwrap_or_else(|e| panic!("clone {clone}: file f{i} synced before s{k}: {e}"));
            assert!(got == content(i), "clone {clone}: file f{i} differs");
        }
        cdev.unmount();
        let fsck = Command::new("e2fsck")
            .args(["-fn", &cdev.loop_dev])
            .output()
            .expect("e2fsck");
        assert!(
            fsck.status.success(),
            "e2fsck -fn of clone {clone}: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
    }

    // The volume itself is intact too.
    let mut dev = BlockDevice::attach(&gw.uri("fs"), &work.join("fs-again"));
    let fsck = Command::new("e2fsck")
        .args(["-fn", &dev.loop_dev])
        .output()
        .expect("e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -fn of the volume: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    dev.mount(&work.join("fs-mnt2"));
    for i in 0..total {
        let got = std::fs::read(work.join("fs-mnt2/files").join(format!("f{i}"))).expect("read");
        assert!(got == content(i), "volume: file f{i} differs");
    }
}
