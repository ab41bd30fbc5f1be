//! What the identity on an NBD connection may use: the exports it sees in `NBD_OPT_LIST`
//! and may open, and how.
//!
//! A plain connection (a gateway started without `--tls`) is granted everything the
//! gateway's own certificate allows; over TLS the client's certificate decides: an admin
//! every export, a read-only client every export read-only (opened without taking it from
//! its writer), a volume user its named volumes and their snapshots (`VOL@SNAP`), a node
//! or a manager nothing. Must never widen what the gateway itself may do: the cluster
//! still checks the gateway's own certificate on every request.

use tessera_net::{Identity, Role};

use crate::backend::Access;

/// The exports a connection may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every export, read-write.
    All,
    /// Every export, read only.
    ReadOnly,
    /// These volumes and their snapshots, read-write.
    Volumes(Vec<String>),
    /// None.
    Nothing,
}

impl Grant {
    /// What the client `who` (from its verified certificate) may use.
    pub fn of(who: &Identity) -> Grant {
        match who {
            Identity::Client { role, .. } => match role {
                Role::Admin => Grant::All,
                Role::ReadOnly => Grant::ReadOnly,
                Role::Volumes(v) => Grant::Volumes(v.clone()),
            },
            Identity::Node(_) | Identity::Manager(_) => Grant::Nothing,
        }
    }

    /// Whether `export` (a volume, or `VOL@SNAP`) may be listed and opened.
    pub fn sees(&self, export: &str) -> bool {
        let volume = export.split_once('@').map_or(export, |(v, _)| v);
        match self {
            Grant::All | Grant::ReadOnly => true,
            Grant::Volumes(names) => names.iter().any(|n| n == volume),
            Grant::Nothing => false,
        }
    }

    /// How an export asked for with `wanted` is opened under this grant.
    pub fn access(&self, wanted: Access) -> Access {
        match (self, wanted) {
            (Grant::ReadOnly, Access::ReadWrite) => Access::Read,
            _ => wanted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(role: Role) -> Identity {
        Identity::Client {
            name: "alice".into(),
            role,
        }
    }

    #[test]
    fn a_certificate_grants_what_its_role_names() {
        let user = Grant::of(&client(Role::Volumes(vec!["a".into(), "c".into()])));
        assert!(user.sees("a") && user.sees("c") && user.sees("a@daily"));
        assert!(!user.sees("b") && !user.sees("b@a") && !user.sees("ab") && !user.sees(""));
        assert_eq!(user.access(Access::ReadWrite), Access::ReadWrite);

        let reader = Grant::of(&client(Role::ReadOnly));
        assert!(reader.sees("b"));
        assert_eq!(reader.access(Access::ReadWrite), Access::Read);
        assert_eq!(reader.access(Access::Info), Access::Info);

        assert_eq!(Grant::of(&client(Role::Admin)), Grant::All);
        for who in [Identity::Node(1), Identity::Manager(1)] {
            assert!(!Grant::of(&who).sees("a"), "{who}");
        }
    }
}
