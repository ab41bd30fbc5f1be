//! Volume rules: names, sizes, chunk sizes, chunk counts.

use tessera_proto::BLOCK_SIZE;
use tessera_proto::control::ControlError;

pub const MAX_NAME_LEN: usize = 64;
pub const MIN_CHUNK_SIZE: u64 = 1 << 20;
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// 1–64 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-` (so a name is never a
/// hidden file or a command-line flag).
pub fn validate_name(name: &str) -> Result<(), ControlError> {
    validate_name_of("volume", name)
}

/// A snapshot's name: the rules of a volume name (so `@` and `/`, which the CLI uses to
/// write `VOL@SNAP`, never appear in one).
pub fn validate_snapshot_name(name: &str) -> Result<(), ControlError> {
    validate_name_of("snapshot", name)
}

fn validate_name_of(what: &str, name: &str) -> Result<(), ControlError> {
    let bad = |why: &str| {
        Err(ControlError::Invalid(format!(
            "invalid {what} name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return bad("must be 1 to 64 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    if name.starts_with(['.', '-']) {
        return bad("must not start with '.' or '-'");
    }
    Ok(())
}

/// Positive and a whole number of 4 KiB blocks.
pub fn validate_size(name: &str, size: u64) -> Result<(), ControlError> {
    if size == 0 || !size.is_multiple_of(BLOCK_SIZE) {
        return Err(ControlError::Invalid(format!(
            "invalid size {size} for volume {name:?}: must be a positive multiple of {BLOCK_SIZE} bytes"
        )));
    }
    Ok(())
}

/// A power of two from 1 MiB to 1 GiB (hence a multiple of 4 KiB).
pub fn validate_chunk_size(chunk_size: u64) -> Result<(), ControlError> {
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(ControlError::Invalid(format!(
            "invalid chunk size {chunk_size}: must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes"
        )));
    }
    Ok(())
}

/// Chunks of a volume: the last one may be partial.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_count_rounds_up() {
        assert_eq!(chunk_count(64 << 20, 64 << 20), 1);
        assert_eq!(chunk_count((64 << 20) + 4096, 64 << 20), 2);
        assert_eq!(chunk_count(4096, 1 << 20), 1);
        assert_eq!(chunk_count(u64::MAX - 4095, 1 << 30), 1 << 34);
    }
}
