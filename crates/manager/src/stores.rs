//! Object stores for backups: their `[[stores]]` entries in `manager.toml`
//! ([`StoreConfig`]), validated and turned into the wire's [`StoreSpec`]s, and [`Stores`],
//! the stores opened and checked at start, shared by the request handlers and the
//! background jobs.
//!
//! A store whose credentials are refused stops the manager from starting (naming it): a
//! wrong key would otherwise only show as every backup failing. An unreachable store is a
//! warning: the jobs using it retry and say why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_proto::control::{Secret, StoreInfo, StoreKind, StoreSpec};
use tracing::{info, warn};

use crate::error::Error;

/// One `[[stores]]` entry: a directory (`path`) or an S3 service (`s3`), never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `[a-z0-9_-]`, 1 to 63 characters, unique.
    pub name: String,
    /// The zone it is in (a restore prefers a store of the manager's zone).
    #[serde(default)]
    pub zone: String,
    /// A directory store (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An S3-compatible store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
}

/// `s3 = { endpoint, bucket, region, access_key_id, secret_access_key, prefix }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http(s)://host:port` (empty: AWS's endpoint for `region`).
    #[serde(default)]
    pub endpoint: String,
    /// The bucket (must exist).
    pub bucket: String,
    /// The region to sign for (empty: `us-east-1`).
    #[serde(default)]
    pub region: String,
    /// The credentials.
    pub access_key_id: String,
    /// The secret of `access_key_id` (never printed).
    pub secret_access_key: Secret,
    /// Key prefix inside the bucket.
    #[serde(default)]
    pub prefix: String,
}

impl StoreConfig {
    /// A directory store.
    pub fn dir(name: &str, zone: &str, path: &str) -> StoreConfig {
        StoreConfig {
            name: name.into(),
            zone: zone.into(),
            path: Some(path.into()),
            s3: None,
        }
    }

    /// The wire's form of the store (after `validate`).
    pub fn spec(&self) -> StoreSpec {
        let kind = match (&self.path, &self.s3) {
            (_, Some(s)) => StoreKind::S3 {
                endpoint: s.endpoint.clone(),
                bucket: s.bucket.clone(),
                region: s.region.clone(),
                access_key_id: s.access_key_id.clone(),
                secret_access_key: s.secret_access_key.clone(),
                prefix: s.prefix.clone(),
            },
            (path, None) => StoreKind::Dir {
                path: path.clone().unwrap_or_default(),
            },
        };
        StoreSpec {
            name: self.name.clone(),
            zone: self.zone.clone(),
            kind,
        }
    }
}

/// Whether `name` is a valid store name.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks the stores and the default: names valid and unique, exactly one of `path` and
/// `s3` each (a path absolute, a bucket named), the default one of them.
pub fn validate(stores: &[StoreConfig], default: Option<&str>) -> Result<(), Error> {
    let mut seen = std::collections::BTreeSet::new();
    for s in stores {
        if !valid_name(&s.name) {
            return Err(Error::Config(format!(
                "store name {:?}: use 1 to 63 of a-z, 0-9, '_' and '-'",
                s.name
            )));
        }
        if !seen.insert(s.name.as_str()) {
            return Err(Error::Config(format!("store {:?} is named twice", s.name)));
        }
        match (&s.path, &s.s3) {
            (Some(p), None) if p.starts_with('/') => {}
            (Some(p), None) => {
                return Err(Error::Config(format!(
                    "store {:?}: path {p:?} must be absolute",
                    s.name
                )));
            }
            (None, Some(s3)) if !s3.bucket.is_empty() => {}
            (None, Some(_)) => {
                return Err(Error::Config(format!(
                    "store {:?}: s3 needs a bucket",
                    s.name
                )));
            }
            _ => {
                return Err(Error::Config(format!(
                    "store {:?}: give exactly one of `path` (a directory) and `s3`",
                    s.name
                )));
            }
        }
    }
    if let Some(d) = default
        && !seen.contains(d)
    {
        return Err(Error::Config(format!(
            "default_store {d:?} is not one of the [[stores]]"
        )));
    }
    Ok(())
}

/// The configured stores, opened: what requests and jobs look stores up in. Cheap to
/// share (`Arc<Stores>`); never changes while the manager runs.
#[derive(Debug, Default)]
pub struct Stores {
    specs: Vec<StoreSpec>,
    open: BTreeMap<String, tessera_backup::Store>,
    default: Option<String>,
    zone: String,
}

impl Stores {
    /// The stores of the configuration, opened but not contacted (for tests and tools).
    pub fn open(
        stores: &[StoreConfig],
        default: Option<&str>,
        zone: &str,
    ) -> Result<Stores, Error> {
        validate(stores, default)?;
        let mut open = BTreeMap::new();
        let specs: Vec<StoreSpec> = stores.iter().map(StoreConfig::spec).collect();
        for spec in &specs {
            let store = tessera_backup::Store::open(spec)
                .map_err(|e| Error::Config(format!("store {:?}: {e}", spec.name)))?;
            open.insert(spec.name.clone(), store);
        }
        Ok(Stores {
            default: default
                .map(str::to_string)
                .or_else(|| specs.first().map(|s| s.name.clone())),
            specs,
            open,
            zone: zone.to_string(),
        })
    }

    /// Opens and checks every store: refused credentials fail (naming the store); an
    /// unreachable store is logged and kept (its jobs retry).
    pub async fn open_and_check(
        stores: &[StoreConfig],
        default: Option<&str>,
        zone: &str,
    ) -> Result<Stores, Error> {
        let s = Stores::open(stores, default, zone)?;
        for (name, store) in &s.open {
            match store.check().await {
                Ok(()) => info!(store = %name, "backup store checked"),
                Err(e @ tessera_backup::Error::Credentials { .. }) => {
                    return Err(Error::Store {
                        name: name.clone(),
                        why: e.to_string(),
                    });
                }
                Err(e) => {
                    warn!(store = %name, error = %e, "backup store not usable now; jobs using it will retry")
                }
            }
        }
        Ok(s)
    }

    /// The store's spec (what a storage node is sent).
    pub fn spec(&self, name: &str) -> Option<&StoreSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// The open store.
    #[allow(
        dead_code,
        reason = "the backup jobs (backup_loop, copy_loop, gc_loop, restore_loop) use these"
    )]
    pub fn store(&self, name: &str) -> Option<&tessera_backup::Store> {
        self.open.get(name)
    }

    /// Every spec, in configuration order.
    pub fn specs(&self) -> &[StoreSpec] {
        &self.specs
    }

    /// The store backups go to when none is named (`default_store`, else the first).
    pub fn default_name(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The manager's zone.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The zone of store `name` ("" if unknown).
    pub fn zone_of(&self, name: &str) -> &str {
        self.spec(name).map_or("", |s| s.zone.as_str())
    }

    /// A store named in a request: `name`, or the default; `NotFound` otherwise.
    pub fn resolve(
        &self,
        name: Option<&str>,
    ) -> Result<&StoreSpec, tessera_proto::control::ControlError> {
        use tessera_proto::control::ControlError;
        let name = match name {
            Some(n) => n,
            None => self.default_name().ok_or_else(|| {
                ControlError::NotFound(
                    "no backup store is configured ([[stores]] in manager.toml)".into(),
                )
            })?,
        };
        self.spec(name).ok_or_else(|| {
            ControlError::NotFound(format!(
                "store {name:?} not found (configured: {})",
                self.specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// A store as `ListStores` reports it, without its counts.
    pub fn info(&self, spec: &StoreSpec) -> StoreInfo {
        let (kind, location) = match &spec.kind {
            StoreKind::Dir { path } => ("dir", path.clone()),
            StoreKind::S3 {
                endpoint,
                bucket,
                prefix,
                ..
            } => ("s3", format!("{endpoint}/{bucket}/{prefix}")),
        };
        StoreInfo {
            name: spec.name.clone(),
            zone: spec.zone.clone(),
            kind: kind.into(),
            location,
            default: self.default_name() == Some(spec.name.as_str()),
            backups: 0,
            objects: 0,
            garbage: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(name: &str) -> StoreConfig {
        StoreConfig {
            name: name.into(),
            zone: "z2".into(),
            path: None,
            s3: Some(S3Config {
                endpoint: "http://127.0.0.1:9000".into(),
                bucket: "b".into(),
                region: String::new(),
                access_key_id: "AK".into(),
                secret_access_key: Secret("SK".into()),
                prefix: String::new(),
            }),
        }
    }

    #[test]
    fn stores_are_named_once_validly_with_one_kind_each() {
        let ok = [StoreConfig::dir("local", "z1", "/tmp/x"), s3("s3a")];
        validate(&ok, Some("s3a")).unwrap();
        validate(&ok, None).unwrap();
        assert!(validate(&ok, Some("nope")).is_err());
        let twice = [
            StoreConfig::dir("a", "", "/x"),
            StoreConfig::dir("a", "", "/y"),
        ];
        assert!(validate(&twice, None).is_err());
        for bad in ["", "A", "a b", "a/b", &"x".repeat(64)] {
            assert!(
                validate(&[StoreConfig::dir(bad, "", "/x")], None).is_err(),
                "{bad:?}"
            );
        }
        let mut both = s3("x");
        both.path = Some("/x".into());
        assert!(validate(&[both], None).is_err());
        let mut neither = s3("x");
        neither.s3 = None;
        assert!(validate(&[neither], None).is_err());
        assert!(validate(&[StoreConfig::dir("r", "", "rel")], None).is_err());
    }

    #[test]
    fn a_store_becomes_its_spec() {
        let spec = s3("s3a").spec();
        assert_eq!(spec.zone, "z2");
        assert!(matches!(spec.kind, StoreKind::S3 { ref bucket, .. } if bucket == "b"));
        let spec = StoreConfig::dir("local", "z1", "/b").spec();
        assert_eq!(spec.kind, StoreKind::Dir { path: "/b".into() });
    }
}
