//! Who may ask what of a storage node: the identity of the peer (from its verified
//! certificate) against what a frame asks for. Every refusal is counted
//! (`tessera_storage_refused_requests_total`) and ends the connection (a request is
//! answered first).
//!
//! - Client I/O (reads, writes, zeroes, discards, fences, block status): clients and
//!   managers; a read-only client only reads. Which volume, and with which writer epoch,
//!   a client's signed capabilities say (see `capability`).
//! - Raft batches: only node N, for a batch that says it comes from N (each message's
//!   sender is then checked against the batch's by the Raft layer).
//! - Catch-up reads (a replica copying a peer's chunks) and region scans: only nodes.
//! - Every other control request (group membership, leadership, chunk drops, backups,
//!   scrub control): only managers. `Status` is anyone's.
//!
//! An insecure node (`--insecure`) has no identities and refuses nothing here.
//! Must never: let a frame through on a name that did not come from a verified certificate.

use tessera_metrics::LazyCounter;
use tessera_net::{Identity, Role};
use tessera_proto::control::StorageRequest;
use tessera_proto::frame::Kind;

static REFUSED: LazyCounter = LazyCounter::new(
    "tessera_storage_refused_requests_total",
    "Frames refused because the peer's certificate does not allow them",
);

/// Counts a refusal decided elsewhere (a capability, see `capability`).
pub(crate) fn refused() {
    REFUSED.add(1);
}

/// What a frame asks for.
pub(crate) enum Asked<'a> {
    /// Client I/O of this kind.
    Io(Kind),
    /// A catch-up read of a peer's chunks.
    CatchUp,
    /// A Raft batch saying it comes from this node.
    Raft(u64),
    /// A control request.
    Rpc(&'a StorageRequest),
}

/// `Ok` if `who` may ask for `asked`; why not otherwise (and counted).
pub(crate) fn check(who: Option<&Identity>, asked: &Asked<'_>) -> Result<(), String> {
    let Some(who) = who else {
        return Ok(());
    };
    let ok = match (asked, who) {
        (Asked::Io(_), Identity::Manager(_)) => true,
        (Asked::Io(kind), Identity::Client { role, .. }) => match role {
            Role::Admin | Role::Volumes(_) => true,
            Role::ReadOnly => matches!(kind, Kind::Read | Kind::BlockStatus),
        },
        (Asked::CatchUp, Identity::Node(_)) => true,
        (Asked::Raft(from), Identity::Node(n)) => from == n,
        (Asked::Rpc(StorageRequest::Status), _) => true,
        (Asked::Rpc(StorageRequest::ScrubRegion(_)), Identity::Node(_)) => true,
        (Asked::Rpc(_), Identity::Manager(_)) => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    REFUSED.add(1);
    Err(format!("{who} may not {}", describe(asked)))
}

fn describe(asked: &Asked<'_>) -> String {
    match asked {
        Asked::Io(kind) => format!("send {kind:?} requests"),
        Asked::CatchUp => "read chunks for catch-up".into(),
        Asked::Raft(from) => format!("send Raft messages as node {from}"),
        Asked::Rpc(req) => format!("send {}", rpc_name(req)),
    }
}

fn rpc_name(req: &StorageRequest) -> &'static str {
    match req {
        StorageRequest::DropChunks { .. } => "DropChunks",
        StorageRequest::Status => "Status",
        StorageRequest::ChangeMembers { .. } => "ChangeMembers",
        StorageRequest::HostGroup { .. } => "HostGroup",
        StorageRequest::Apply { .. } => "Apply",
        StorageRequest::LayerUsage { .. } => "LayerUsage",
        StorageRequest::TransferLeader { .. } => "TransferLeader",
        StorageRequest::BackupChunk(_) => "BackupChunk",
        StorageRequest::HydrateChunk(_) => "HydrateChunk",
        StorageRequest::ScrubRegion(_) => "ScrubRegion",
        StorageRequest::Scrub { .. } => "Scrub",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(role: Role) -> Identity {
        Identity::Client {
            name: "c".into(),
            role,
        }
    }

    #[test]
    fn each_identity_reaches_only_its_own_frames() {
        let change = StorageRequest::TransferLeader { group_id: 1, to: 2 };
        let node2 = Identity::Node(2);
        let manager = Identity::Manager(1);
        let admin = client(Role::Admin);
        let reader = client(Role::ReadOnly);
        // Raft: node 2 as itself only.
        assert!(check(Some(&node2), &Asked::Raft(2)).is_ok());
        assert!(check(Some(&node2), &Asked::Raft(3)).is_err());
        assert!(check(Some(&admin), &Asked::Raft(2)).is_err());
        assert!(check(Some(&manager), &Asked::Raft(1)).is_err());
        // Membership and leadership: managers only.
        assert!(check(Some(&manager), &Asked::Rpc(&change)).is_ok());
        for who in [&node2, &admin, &reader] {
            let e = check(Some(who), &Asked::Rpc(&change)).unwrap_err();
            assert!(e.contains("TransferLeader"), "{e}");
        }
        // Catch-up: nodes only.
        assert!(check(Some(&node2), &Asked::CatchUp).is_ok());
        // Scans of a region a leader asks of its peers: nodes only.
        let scan = StorageRequest::ScrubRegion(tessera_proto::control::RegionScanRequest {
            group_id: 1,
            mark: 1,
            volume: 1,
            chunk: 0,
            first: 0,
            count: 64,
            node_id: 2,
            urgent: false,
        });
        assert!(check(Some(&node2), &Asked::Rpc(&scan)).is_ok());
        assert!(check(Some(&admin), &Asked::Rpc(&scan)).is_err());
        assert!(check(Some(&admin), &Asked::CatchUp).is_err());
        // I/O: clients (a reader only reads) and managers, never nodes.
        assert!(check(Some(&admin), &Asked::Io(Kind::Write)).is_ok());
        assert!(check(Some(&reader), &Asked::Io(Kind::Read)).is_ok());
        assert!(check(Some(&reader), &Asked::Io(Kind::Write)).is_err());
        assert!(check(Some(&node2), &Asked::Io(Kind::Write)).is_err());
        // Status: anyone's. Insecure: everything.
        assert!(check(Some(&reader), &Asked::Rpc(&StorageRequest::Status)).is_ok());
        assert!(check(None, &Asked::Rpc(&change)).is_ok());
        assert!(check(None, &Asked::Raft(9)).is_ok());
    }
}
