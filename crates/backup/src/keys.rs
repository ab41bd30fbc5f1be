//! Object names: the only place that knows the layout of a store.

use tessera_proto::control::Hash;

/// The key of the region object named `h`.
pub fn object(h: &Hash) -> String {
    let hex = h.to_hex();
    format!("objects/{}/{hex}", &hex[..2])
}

/// The key of the manifest segment named `h`.
pub fn segment(h: &Hash) -> String {
    format!("segments/{h}")
}

/// The key of the manifest root named `h`.
pub fn root(h: &Hash) -> String {
    format!("roots/{h}")
}
