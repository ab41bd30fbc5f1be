//! Backups in object storage: where objects live and what they hold.
//!
//! Owns the store clients ([`Store`]: a local directory, the embedded default, or an
//! S3-compatible service, through the `object_store` crate), the formats of what a backup
//! writes (region objects, manifest segments and roots, each versioned and named by the
//! BLAKE3 of its content), and the S3-compatible test server (feature `s3-server`).
//! Never decides what to back up, when, or what may be deleted: the manager does, from
//! its own records (never from an object listing).
//!
//! Layout of a store (under an S3 store's prefix):
//! - `objects/<h[0..2]>/<h>`: a region of a chunk ([`region`]): its non-zero blocks,
//!   zstd-compressed, with a bitmap of which blocks they are; `h` is the BLAKE3 of the
//!   region's logical content, so the same bytes anywhere are stored once.
//! - `segments/<h>`: one chunk of one backup ([`manifest::Segment`]): region → object.
//! - `roots/<h>`: one backup ([`manifest::Root`]): the volume, the snapshot, chunk →
//!   segment. Written last: a root names only objects that are stored.
//!
//! One idea per file: `store` (opening, checking, putting, getting, deleting), `region`,
//! `manifest`, `keys` (object names), `error`; `s3_server` (feature `s3-server`) the test
//! server with fault injection.

mod error;
pub mod keys;
pub mod manifest;
pub mod region;
#[cfg(feature = "s3-server")]
pub mod s3_server;
mod store;

pub use error::{Error, Result};
pub use store::{MARKER, Store};
