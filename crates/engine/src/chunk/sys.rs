//! The system calls on chunk files: positioned reads, zeroing ranges (`fallocate`),
//! starting writeback (`sync_file_range`), fdatasync and directory fsync, with the fail
//! points that inject their failures in tests.
//!
//! Owns nothing but these thin wrappers: no locking, no checksums, no bookkeeping of what is
//! open or dirty (that is [`super::ChunkStore`]'s). Every failure is returned, never
//! retried or hidden, except `EINTR` on reads.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::fsutil::sync_dir;

pub(super) fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// Fills `buf` from `offset`; bytes past the end of the file read as zeroes.
pub(super) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether the 4 KiB at `offset` of `file` are a hole (no data there on disk): `lseek` with
/// `SEEK_DATA` finds the next data after it. A filesystem that cannot tell says data.
pub(super) fn is_hole(file: &File, offset: u64) -> io::Result<bool> {
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: lseek only reads its integer arguments; the descriptor is owned by `file`,
    // which is borrowed (so open) for the duration of the call. Positioned reads and writes
    // elsewhere do not use the file offset it moves.
    let next = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if next >= 0 {
        return Ok(next > off);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // No data at or after the offset.
        Some(libc::ENXIO) => Ok(true),
        Some(libc::EINVAL) => Ok(false),
        _ => Err(e),
    }
}

/// How a range of whole blocks becomes zeroes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Zeroing {
    /// Allocated zeroes (the file grows to cover the range).
    Provision,
    /// A hole; the file keeps its size.
    Punch,
}

/// Zeroes a range as `how` says or, where the filesystem cannot, writes zeroes.
pub(super) fn zero_range(file: &File, offset: u64, len: u64, how: Zeroing) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by `file`,
    // which is borrowed (so open) for the duration of the call.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            match how {
                Zeroing::Provision => libc::FALLOC_FL_ZERO_RANGE,
                Zeroing::Punch => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            },
            off,
            n,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    ) {
        return Err(e);
    }
    const STEP: u64 = 1 << 20;
    let zeros = vec![0u8; STEP.min(len) as usize];
    let mut at = 0;
    while at < len {
        let n = STEP.min(len - at) as usize;
        file.write_all_at(&zeros[..n], offset + at)?;
        at += n as u64;
    }
    Ok(())
}

/// Asks the kernel to start writing `file`'s dirty pages out; does not wait for it. Errors
/// are left to the next fdatasync, which reports them.
pub(super) fn start_writeback(file: &File) {
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// fsync of a directory holding chunk files; the `chunk::dir_fsync` fail point makes it fail
/// in tests (`return(emfile)`: the directory cannot even be opened, out of descriptors).
pub(super) fn sync_chunk_dir(dir: &Path) -> io::Result<()> {
    fail::fail_point!("chunk::dir_fsync", |arg: Option<String>| {
        if arg.as_deref() == Some("emfile") {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        Err(io::Error::other(
            "fsync failure injected by the chunk::dir_fsync fail point",
        ))
    });
    sync_dir(dir)
}

/// The checksums of a write, after its data; the `chunk::crc_enospc` fail point makes the
/// disk fill up just here in tests.
pub(super) fn write_crcs(file: &File, crcs: &[u8], offset: u64) -> io::Result<()> {
    fail::fail_point!("chunk::crc_enospc", |_| Err(io::Error::from_raw_os_error(
        libc::ENOSPC
    )));
    file.write_all_at(crcs, offset)
}

/// `fdatasync` of a chunk file; the `chunk::fdatasync` fail point makes it fail in tests.
pub(super) fn fdatasync(file: &File) -> io::Result<()> {
    fail::fail_point!("chunk::fdatasync", |_| Err(io::Error::other(
        "fdatasync failure injected by the chunk::fdatasync fail point"
    )));
    file.sync_data()
}
