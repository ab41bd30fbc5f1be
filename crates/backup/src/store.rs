//! A store client: a directory or an S3-compatible service behind one interface, with
//! retries (back-off on errors and 503s), timeouts, and errors a caller can act on.

use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStore;
use tessera_proto::control::StoreSpec;

use crate::Result;

/// An open store. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Store {
    name: String,
    inner: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

impl Store {
    /// A client for `spec` (a directory is created if missing). Does not contact it: see
    /// [`Store::check`].
    pub fn open(spec: &StoreSpec) -> Result<Store> {
        let _ = spec;
        todo!("the backup branch implements it")
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Puts, reads back and deletes a small object: [`crate::Error::Credentials`] for
    /// refused credentials, [`crate::Error::Unavailable`] if unreachable.
    pub async fn check(&self) -> Result<()> {
        let _ = &self.inner;
        todo!("the backup branch implements it")
    }

    /// Whether an object named `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let _ = key;
        todo!("the backup branch implements it")
    }

    /// Puts `bytes` as `key` (atomically: readers see all or nothing; durable when it
    /// returns).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let _ = (key, bytes);
        todo!("the backup branch implements it")
    }

    /// Puts `bytes` as `key` unless an object of that name exists (`force`: always).
    /// Returns whether it put. Names are content hashes: an existing object is the same.
    pub async fn put_if_missing(&self, key: &str, bytes: Bytes, force: bool) -> Result<bool> {
        let _ = (key, bytes, force);
        todo!("the backup branch implements it")
    }

    /// The object named `key` ([`crate::Error::NotFound`] if none).
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let _ = key;
        todo!("the backup branch implements it")
    }

    /// Deletes `keys` (a missing one counts as deleted), in batches; the keys that failed,
    /// each with its error.
    pub async fn delete_many(&self, keys: Vec<String>) -> Vec<(String, crate::Error)> {
        let _ = keys;
        todo!("the backup branch implements it")
    }

    /// Every key under `prefix`: for tests and operators, never for deciding what a backup
    /// holds or what may be deleted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let _ = prefix;
        todo!("the backup branch implements it")
    }
}
