//! Storage nodes on small tmpfs mounts, for the full-disk tests (mounting needs root; CI
//! is root, elsewhere the tests skip).

use std::path::{Path, PathBuf};

use super::Cluster;

/// One tmpfs mount per storage node, unmounted (lazily) when dropped.
pub struct TmpfsDisks {
    pub mounts: Vec<PathBuf>,
    _base: tempfile::TempDir,
}

impl TmpfsDisks {
    /// `n` tmpfs mounts of `size` (as `mount -o size=` takes it); `None` if they cannot be
    /// mounted (not root).
    pub fn mount(n: usize, size: &str) -> Option<TmpfsDisks> {
        let base = tempfile::tempdir().expect("tempdir");
        let mut disks = TmpfsDisks {
            mounts: Vec::new(),
            _base: base,
        };
        for i in 1..=n {
            let m = disks._base.path().join(format!("node{i}"));
            std::fs::create_dir_all(&m).expect("mkdir");
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&m)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return None;
            }
            disks.mounts.push(m);
        }
        Some(disks)
    }

    /// Adds one storage node per mount to `c` (with `extra` in its config), each started
    /// once to register, then restarted with its data directory on its mount (its identity
    /// files copied there).
    pub fn add_nodes(&self, c: &mut Cluster, extra: &str) {
        for (i, m) in self.mounts.iter().enumerate() {
            c.add_node(i, extra);
            c.kill_node(i);
            let cfg = std::fs::read_to_string(&c.nodes[i].config).expect("cfg");
            let cfg = cfg.replace(
                &format!("data_dir = \"{}\"", c.nodes[i].data_dir.display()),
                &format!("data_dir = \"{}\"", m.join("data").display()),
            );
            std::fs::write(&c.nodes[i].config, cfg).expect("cfg");
            // The node's identity moves with it (a data directory without them is a wiped
            // disk, which may not come back as the node it was).
            std::fs::create_dir_all(m.join("data")).expect("mkdir");
            for f in ["node.json", "disk.id"] {
                let from = c.nodes[i].data_dir.join(f);
                if from.exists() {
                    std::fs::copy(&from, m.join("data").join(f)).expect("copy identity");
                }
            }
            c.nodes[i].data_dir = m.join("data");
            c.restart_node(i);
        }
    }
}

impl Drop for TmpfsDisks {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
    }
}

/// Bytes an unprivileged process may still allocate on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .expect("stat -f");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("number"));
    it.next().expect("blocks") * it.next().expect("block size")
}
