//! A store client: a directory or an S3-compatible service behind one interface, with
//! retries (back-off on errors and 503s), timeouts, and errors a caller can act on.
//!
//! Owns talking to a store and nothing about what the objects mean. Never relies on
//! conditional writes (many S3-compatible services lack them): every name is a content
//! hash, so a put that races another of the same name writes the same bytes.
//!
//! A directory store writes each object to a staging file, fsyncs it, renames it into
//! place and fsyncs the directory (`object_store`'s `LocalFileSystem` with fsync), so a
//! put that returned survives a crash and a reader never sees half an object.
//!
//! Retries are `object_store`'s: an S3 request failing with a 5xx, a 429, a connection
//! error or a dropped connection is retried up to 10 times with a jittered back-off of
//! 100 ms to 5 s, within 60 s; each attempt times out after 30 s (5 s to connect). What
//! is left after that is [`Error::Unavailable`]. A 401/403 (or an S3 error code saying
//! the key or signature is wrong) is [`Error::Credentials`], never retried; a 404 is
//! [`Error::NotFound`] (a missing bucket too, except in [`Store::check`], which calls it
//! [`Error::Invalid`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use tessera_proto::control::{StoreKind, StoreSpec};

use crate::{Error, Result};

/// Keys one delete request names at most (S3's `DeleteObjects` limit).
const DELETE_BATCH: usize = 1000;

/// The key of the marker [`Store::check`] writes and [`Store::verify_marker`] reads.
pub const MARKER: &str = "tessera-store";
/// Bytes of a marker read at most.
const MARKER_MAX: u64 = 4096;

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
        let invalid = |why: String| Error::Invalid {
            store: spec.name.clone(),
            why,
        };
        let inner: Arc<dyn ObjectStore> = match &spec.kind {
            StoreKind::Dir { path } => {
                std::fs::create_dir_all(path)
                    .map_err(|e| invalid(format!("cannot create directory {path}: {e}")))?;
                let fs = LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| invalid(format!("directory {path}: {e}")))?
                    .with_fsync(true);
                Arc::new(fs)
            }
            StoreKind::S3 {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key,
                prefix,
            } => {
                if !valid_bucket(bucket) {
                    return Err(invalid(format!(
                        "bucket {bucket:?} is not an S3 bucket name (3 to 63 of a-z, 0-9, '.', \
                         '-', starting and ending with a letter or digit)"
                    )));
                }
                let retry = RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(100),
                        max_backoff: Duration::from_secs(5),
                        base: 2.0,
                    },
                    max_retries: 10,
                    retry_timeout: Duration::from_secs(60),
                };
                let client = ClientOptions::new()
                    .with_timeout(Duration::from_secs(30))
                    .with_connect_timeout(Duration::from_secs(5));
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(if region.is_empty() {
                        "us-east-1"
                    } else {
                        region
                    })
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(&secret_access_key.0)
                    .with_virtual_hosted_style_request(false)
                    .with_retry(retry)
                    // Client options replace allow_http: set it after them.
                    .with_client_options(client);
                if !endpoint.is_empty() {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let s3 = b
                    .build()
                    .map_err(|e| invalid(format!("S3 bucket {bucket:?} at {endpoint:?}: {e}")))?;
                let prefix = prefix.trim_matches('/');
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix))
                }
            }
        };
        Ok(Store {
            name: spec.name.clone(),
            inner,
        })
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Puts, reads back and deletes a small object: [`crate::Error::Credentials`] for
    /// refused credentials, [`crate::Error::Unavailable`] if unreachable.
    pub async fn check(&self) -> Result<()> {
        let key = format!("tessera-check/{:016x}", random_u64());
        let body = Bytes::from(format!("tessera store check {key}"));
        match self.put(&key, body.clone()).await {
            // S3 answers a put to a missing bucket 404 NoSuchBucket.
            Err(Error::NotFound { .. }) => {
                return Err(Error::Invalid {
                    store: self.name.clone(),
                    why: "its bucket does not exist".to_string(),
                });
            }
            r => r?,
        }
        let read = self.get_bounded(&key, MARKER_MAX).await?;
        if read != body {
            return Err(Error::Unavailable {
                store: self.name.clone(),
                why: format!("{key} read back {} bytes unlike those put", read.len()),
            });
        }
        let failed = self.delete_many(vec![key]).await;
        if let Some((_, e)) = failed.into_iter().next() {
            return Err(e);
        }
        if self.size_of(MARKER).await?.is_none() {
            let marker = format!(
                "{{\"store\":{},\"id\":\"{:016x}{:016x}\"}}",
                serde_json::Value::String(self.name.clone()),
                random_u64(),
                random_u64()
            );
            self.put(MARKER, Bytes::from(marker)).await?;
        }
        Ok(())
    }

    /// Whether the marker [`Store::check`] writes ([`MARKER`]) is there and reads as one:
    /// [`crate::Error::NotFound`] if missing, [`crate::Error::Corrupt`] if it is not a
    /// marker. A storage node verifies it before using a directory store, so that a path
    /// that is not shared with the manager (each host its own disk) is refused rather than
    /// silently written to.
    pub async fn verify_marker(&self) -> Result<()> {
        let bytes = self.get_bounded(MARKER, MARKER_MAX).await?;
        let parsed: std::result::Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
        match parsed {
            Ok(v) if v.get("store").is_some_and(|s| s.is_string()) => Ok(()),
            _ => Err(Error::Corrupt {
                store: self.name.clone(),
                key: MARKER.to_string(),
                why: "not a tessera store marker".to_string(),
            }),
        }
    }

    /// Whether an object named `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.size_of(key).await?.is_some())
    }

    /// The size of the object named `key` (HEAD), `None` if there is none.
    pub async fn size_of(&self, key: &str) -> Result<Option<u64>> {
        match self.inner.head(&Path::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Puts `bytes` as `key` (atomically: readers see all or nothing; durable when it
    /// returns).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.inner
            .put(&Path::from(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(())
    }

    /// Puts `bytes` as `key` unless an object of that name and of their size exists
    /// (`force`: always). Returns whether it put. Names are content hashes: an existing
    /// object of the same size is the same; one of another size (truncated, say) is put
    /// again, the same name with the same content, which repairs it.
    pub async fn put_if_missing(&self, key: &str, bytes: Bytes, force: bool) -> Result<bool> {
        if !force && self.size_of(key).await? == Some(bytes.len() as u64) {
            return Ok(false);
        }
        self.put(key, bytes).await?;
        Ok(true)
    }

    /// The object named `key` ([`crate::Error::NotFound`] if none).
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let got = self
            .inner
            .get(&Path::from(key))
            .await
            .map_err(|e| self.error(key, e))?;
        got.bytes().await.map_err(|e| self.error(key, e))
    }

    /// The object named `key`, refused unread if it is larger than `max_bytes`: a
    /// [`crate::Error::Corrupt`] ("object is N bytes, at most M expected"), so what a
    /// store holds never makes the caller allocate more than it expects.
    pub async fn get_bounded(&self, key: &str, max_bytes: u64) -> Result<Bytes> {
        let too_big = |n: u64| Error::Corrupt {
            store: self.name.clone(),
            key: key.to_string(),
            why: format!("object is {n} bytes, at most {max_bytes} expected"),
        };
        let got = self
            .inner
            .get(&Path::from(key))
            .await
            .map_err(|e| self.error(key, e))?;
        let len = got
            .meta
            .size
            .max(got.range.end.saturating_sub(got.range.start));
        if len > max_bytes {
            return Err(too_big(len));
        }
        if matches!(got.payload, object_store::GetResultPayload::File(..)) {
            // A file's read is its size as opened: checked above.
            let bytes = got.bytes().await.map_err(|e| self.error(key, e))?;
            if bytes.len() as u64 > max_bytes {
                return Err(too_big(bytes.len() as u64));
            }
            return Ok(bytes);
        }
        // A body longer than its header said stops being read past the bound.
        let mut body = got.into_stream();
        let mut out = bytes::BytesMut::with_capacity(len as usize);
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| self.error(key, e))?;
            let n = (out.len() + piece.len()) as u64;
            if n > max_bytes {
                return Err(too_big(n));
            }
            out.extend_from_slice(&piece);
        }
        Ok(out.freeze())
    }

    /// Deletes `keys` (a missing one counts as deleted), in batches of at most 1000; the
    /// keys that failed, each with its error.
    pub async fn delete_many(&self, keys: Vec<String>) -> Vec<(String, crate::Error)> {
        let mut failed = Vec::new();
        for batch in keys.chunks(DELETE_BATCH) {
            let paths: Vec<_> = batch.iter().map(|k| Ok(Path::from(k.as_str()))).collect();
            let results: Vec<_> = self
                .inner
                .delete_stream(futures::stream::iter(paths).boxed())
                .collect()
                .await;
            if results.len() == batch.len() {
                // One result per key, in order (both backends keep it).
                for (key, r) in batch.iter().zip(results) {
                    match r {
                        Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => failed.push((key.clone(), self.error(key, e))),
                    }
                }
                continue;
            }
            // A request for the whole batch failed: every key not reported deleted failed
            // with it.
            let mut error = None;
            let mut deleted = std::collections::HashSet::new();
            for r in results {
                match r {
                    Ok(p) => {
                        deleted.insert(p.to_string());
                    }
                    Err(object_store::Error::NotFound { path, .. }) => {
                        deleted.insert(path);
                    }
                    Err(e) => error = Some(e.to_string()),
                }
            }
            let why = error.unwrap_or_else(|| "the batch was cut short".to_string());
            for key in batch {
                if !deleted.contains(&Path::from(key.as_str()).to_string()) {
                    let e = self.classify(&why);
                    failed.push((key.clone(), e));
                }
            }
        }
        failed
    }

    /// Every key under `prefix` (whole `/`-separated segments: `objects`, `segments/`,
    /// `""` for all): for tests and operators, never for deciding what a backup holds or
    /// what may be deleted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.trim_matches('/');
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        let mut keys: Vec<String> = self
            .inner
            .list(prefix.as_ref())
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|e| self.error(prefix.as_ref().map_or("", |p| p.as_ref()), e))?;
        keys.sort();
        Ok(keys)
    }

    /// Maps an `object_store` error once, here, to what a caller can do about it.
    fn error(&self, key: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound {
                store: self.name.clone(),
                key: key.to_string(),
            },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Error::Credentials {
                store: self.name.clone(),
                why: chain(&e),
            },
            e => self.classify(&chain(&e)),
        }
    }

    /// An error known only by its message: S3 error codes that name the credentials (some
    /// paths of `object_store` report them as `Generic`) are [`Error::Credentials`].
    fn classify(&self, why: &str) -> Error {
        const CREDENTIALS: [&str; 5] = [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403 Forbidden",
            "401 Unauthorized",
        ];
        if CREDENTIALS.iter().any(|c| why.contains(c)) {
            Error::Credentials {
                store: self.name.clone(),
                why: why.to_string(),
            }
        } else {
            Error::Unavailable {
                store: self.name.clone(),
                why: why.to_string(),
            }
        }
    }
}

/// S3's rules for a bucket's name (those every S3-compatible service keeps).
pub(crate) fn valid_bucket(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

/// The error and its sources, one sentence (object_store's top level often says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// Unpredictable enough for a scratch object's name (no `rand` dependency).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
