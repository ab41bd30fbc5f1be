//! How a store or a stored object fails.

/// A store operation failed, or an object is not what its name says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The store refused our credentials (wrong key or secret, no access to the bucket).
    #[error("store {store}: credentials refused: {why}")]
    Credentials {
        /// The store's name.
        store: String,
        /// What the store said.
        why: String,
    },
    /// No such object.
    #[error("store {store}: object {key} not found")]
    NotFound {
        /// The store's name.
        store: String,
        /// The object's key.
        key: String,
    },
    /// The object's content does not match its name, or does not decode.
    #[error("store {store}: object {key} is corrupt: {why}")]
    Corrupt {
        /// The store's name.
        store: String,
        /// The object's key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The store could not be reached or failed (after retries): worth retrying later.
    #[error("store {store}: {why}")]
    Unavailable {
        /// The store's name.
        store: String,
        /// What failed.
        why: String,
    },
    /// The store's configuration cannot work (a bad path, endpoint or bucket name).
    #[error("store {store}: {why}")]
    Invalid {
        /// The store's name.
        store: String,
        /// What is wrong.
        why: String,
    },
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, Error>;
