//! Small durable-filesystem helpers shared by the engine and its callers.
//!
//! Owns nothing but the syscalls: no caching, no policy. Every helper that promises
//! durability fsyncs both the file and its directory before returning.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::{Error, Result};

/// Replaces `path` with `bytes` atomically and durably: a reader (or a crash) sees either
/// the old contents or the new ones, never a mix. Writes `<path>.tmp`, fsyncs it, renames
/// it over `path`, then fsyncs the directory so the rename itself survives a crash.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::OutOfRange(format!("{} has no file name", path.display())))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(parent_dir(path))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(if crate::is_no_space(&e) {
            Error::DiskFull(format!("writing {}: {e}", path.display()))
        } else {
            e.into()
        });
    }
    Ok(())
}

/// Total and available bytes of the filesystem holding `path` (`statvfs`). "Available" is
/// what an unprivileged process may still allocate.
pub fn fs_space(path: &Path) -> Result<(u64, u64)> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::OutOfRange(format!("path {} contains a NUL byte", path.display())))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call, and `st`
    // points to writable memory of the size and alignment of `libc::statvfs`.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: statvfs returned 0, so it filled in the whole struct (and it was zeroed before).
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (32-bit targets use narrower ones).
    #[allow(clippy::unnecessary_cast)]
    let (frsize, blocks, bavail) = (st.f_frsize as u64, st.f_blocks as u64, st.f_bavail as u64);
    Ok((blocks.saturating_mul(frsize), bavail.saturating_mul(frsize)))
}

/// Fsyncs a directory, making renames, creations and deletions in it durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit and returns the
/// limit now in force. A node opens many files (chunks, log segments, sockets); the soft
/// limit's usual default (1,024) is a shell convention, not a budget.
pub fn raise_descriptor_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given; it changes only this process.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_contents_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("state");
        write_file_atomic(&p, b"one").unwrap();
        write_file_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn fs_space_reports_available_within_total() {
        let tmp = tempfile::tempdir().unwrap();
        let (total, avail) = fs_space(tmp.path()).unwrap();
        assert!(total > 0 && avail <= total);
    }
}
