//! Who a certificate names: the identity and role `tessera cert issue` writes into a
//! certificate's subject alternative names, and reads back from a peer's certificate after
//! the handshake verified it against the cluster CA; and who a dialler expects the server
//! it reached to be ([`Expect`]).
//!
//! The names are URIs (`tessera:node:3`, `tessera:manager:1`, `tessera:client:alice` with
//! `tessera:role:admin`, or `tessera:role:user` and one `tessera:volume:NAME` per volume,
//! or `tessera:role:read-only`). Must never trust a name from anywhere but a certificate the
//! handshake verified.

use std::fmt;

/// The process a verified certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// Storage node `id`.
    Node(u64),
    /// Manager `id` of the managers' Raft group.
    Manager(u64),
    /// A client (the CLI, a gateway, an application) called `name`, with what it may do.
    Client {
        /// Its name, as given to `tessera cert issue client NAME`.
        name: String,
        /// What it may do.
        role: Role,
    },
}

/// What a client certificate allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything: volumes, snapshots, backups, the cluster's membership.
    Admin,
    /// Open, read and write the named volumes.
    Volumes(Vec<String>),
    /// Read anything (listings, status, any volume's data); change nothing.
    ReadOnly,
}

/// Who a dialler expects at the address it dials: a certificate of the cluster CA is not
/// enough, as every node and manager holds one (a node could answer, on an address it took
/// over, as the manager or as another node). Checked against the server's certificate
/// right after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expect {
    /// Whoever the cluster CA certified: for tests and diagnostics only; every Tessera
    /// process knows whom it dials.
    Any,
    /// A manager, whichever (an address from a list of managers or a not-leader hint).
    AnyManager,
    /// Manager `id` (a peer of the managers' Raft group).
    Manager(u64),
    /// Storage node `id` (a replica of a route, a Raft peer, a copy source).
    Node(u64),
}

impl Expect {
    /// Whether a server whose certificate names `found` (`None`: no one) is the one
    /// expected.
    pub fn admits(self, found: Option<&Identity>) -> bool {
        match (self, found) {
            (Expect::Any, _) => true,
            (Expect::AnyManager, Some(Identity::Manager(_))) => true,
            (Expect::Manager(want), Some(Identity::Manager(id)))
            | (Expect::Node(want), Some(Identity::Node(id))) => want == *id,
            _ => false,
        }
    }
}

/// The URI scheme prefix of every Tessera name.
const PREFIX: &str = "tessera:";

impl Identity {
    /// The URIs that name this identity in a certificate.
    pub fn to_uris(&self) -> Vec<String> {
        match self {
            Identity::Node(id) => vec![format!("{PREFIX}node:{id}")],
            Identity::Manager(id) => vec![format!("{PREFIX}manager:{id}")],
            Identity::Client { name, role } => {
                let mut v = vec![format!("{PREFIX}client:{name}")];
                match role {
                    Role::Admin => v.push(format!("{PREFIX}role:admin")),
                    Role::ReadOnly => v.push(format!("{PREFIX}role:read-only")),
                    Role::Volumes(vols) => {
                        v.push(format!("{PREFIX}role:user"));
                        v.extend(vols.iter().map(|n| format!("{PREFIX}volume:{n}")));
                    }
                }
                v
            }
        }
    }

    /// The identity the URIs of a certificate name; `None` unless they name exactly one
    /// process (and, for a client, exactly one role).
    pub fn from_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Option<Identity> {
        let mut who = None;
        let mut role = None;
        let mut volumes = Vec::new();
        for uri in uris {
            let Some(rest) = uri.strip_prefix(PREFIX) else {
                continue;
            };
            let (kind, value) = rest.split_once(':')?;
            let named = match kind {
                "node" => Some(Identity::Node(value.parse().ok()?)),
                "manager" => Some(Identity::Manager(value.parse().ok()?)),
                "client" if !value.is_empty() => Some(Identity::Client {
                    name: value.to_string(),
                    role: Role::ReadOnly,
                }),
                "role" => {
                    if role.replace(value.to_string()).is_some() {
                        return None;
                    }
                    None
                }
                "volume" if !value.is_empty() => {
                    volumes.push(value.to_string());
                    None
                }
                _ => return None,
            };
            if let Some(n) = named
                && who.replace(n).is_some()
            {
                return None;
            }
        }
        match (who?, role.as_deref()) {
            (Identity::Client { name, .. }, Some(r)) => {
                let role = match r {
                    "admin" if volumes.is_empty() => Role::Admin,
                    "read-only" if volumes.is_empty() => Role::ReadOnly,
                    "user" => Role::Volumes(volumes),
                    _ => return None,
                };
                Some(Identity::Client { name, role })
            }
            (node_or_manager @ (Identity::Node(_) | Identity::Manager(_)), None)
                if volumes.is_empty() =>
            {
                Some(node_or_manager)
            }
            _ => None,
        }
    }

    /// The identity a DER certificate names (see [`Identity::from_uris`]).
    pub fn from_der(der: &[u8]) -> Option<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        Identity::from_uris(san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        }))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Manager(id) => write!(f, "manager {id}"),
            Identity::Client { name, role } => write!(f, "client {name} ({role})"),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("any process of the cluster"),
            Expect::AnyManager => f.write_str("a manager"),
            Expect::Manager(id) => write!(f, "manager {id}"),
            Expect::Node(id) => write!(f, "node {id}"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Admin => f.write_str("admin"),
            Role::ReadOnly => f.write_str("read-only"),
            Role::Volumes(v) => write!(f, "user of {}", v.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uris() {
        for id in [
            Identity::Node(3),
            Identity::Manager(1),
            Identity::Client {
                name: "alice".into(),
                role: Role::Admin,
            },
            Identity::Client {
                name: "ro".into(),
                role: Role::ReadOnly,
            },
            Identity::Client {
                name: "vm7".into(),
                role: Role::Volumes(vec!["a".into(), "b".into()]),
            },
        ] {
            let uris = id.to_uris();
            assert_eq!(
                Identity::from_uris(uris.iter().map(String::as_str)),
                Some(id)
            );
        }
    }

    /// A server is the one expected only if its certificate names it: a node is no
    /// manager, node 2 is not node 3, a client is no server of either kind.
    #[test]
    fn a_dialler_admits_only_the_server_it_expects() {
        let alice = Identity::Client {
            name: "alice".into(),
            role: Role::Admin,
        };
        let cases = [
            (Expect::Node(2), Identity::Node(2), true),
            (Expect::Node(3), Identity::Node(2), false),
            (Expect::Node(2), Identity::Manager(2), false),
            (Expect::Manager(1), Identity::Manager(1), true),
            (Expect::Manager(1), Identity::Manager(2), false),
            (Expect::AnyManager, Identity::Manager(7), true),
            (Expect::AnyManager, Identity::Node(1), false),
            (Expect::AnyManager, alice.clone(), false),
            (Expect::Node(1), alice.clone(), false),
            (Expect::Any, alice, true),
        ];
        for (expect, found, admitted) in cases {
            assert_eq!(expect.admits(Some(&found)), admitted, "{expect} vs {found}");
        }
        assert!(!Expect::Node(1).admits(None));
        assert!(!Expect::AnyManager.admits(None));
    }

    /// A certificate naming two processes, a client without a role, a node with a role, or
    /// an unknown kind names no one: it is refused rather than read as one of them.
    #[test]
    fn ambiguous_or_partial_names_name_no_one() {
        for uris in [
            &["tessera:node:3", "tessera:node:4"][..],
            &["tessera:node:3", "tessera:manager:3"],
            &["tessera:client:a"],
            &["tessera:node:3", "tessera:role:admin"],
            &[
                "tessera:client:a",
                "tessera:role:admin",
                "tessera:role:user",
            ],
            &["tessera:client:a", "tessera:role:admin", "tessera:volume:v"],
            &["tessera:client:a", "tessera:role:root"],
            &["tessera:node:x"],
            &["tessera:wizard:1"],
            &["https://example.com"],
            &[],
        ] {
            assert_eq!(Identity::from_uris(uris.iter().copied()), None, "{uris:?}");
        }
        // Other schemes beside a valid name are ignored.
        assert_eq!(
            Identity::from_uris(["https://example.com", "tessera:node:3"]),
            Some(Identity::Node(3))
        );
    }
}
