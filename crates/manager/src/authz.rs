//! Who may ask what of the manager: the identity of the caller (from its verified
//! certificate) against the request. Every refusal is counted
//! (`tessera_manager_refused_requests_total`) and answered `Unauthorized`.
//!
//! - Storage nodes register and heartbeat as themselves only: node N's certificate
//!   registers node N (a node without an id yet is given N; one claiming another id is
//!   refused, as is a new registration of an id already known: a node whose disk was
//!   wiped must not come back as the replica it was). They also look up restore sources.
//! - Managers' Raft messages come from manager certificates (checked where they arrive).
//! - Admin clients may do everything; read-only clients read (listings, status, info,
//!   opening a volume without attaching it); volume users open, attach, read, write and
//!   inspect the volumes their certificate names, and see only those listed.
//! - The data path's lookups by volume id (routes, renewals, provisioning) follow the
//!   same rule, the id looked up in the records (a read-only client does not allocate).
//!   Storage nodes do not yet check which volume a client's I/O is for (signed
//!   capabilities are to come): a volume user's bound is what the manager tells it.
//!
//! An insecure manager (`--insecure`) has no identities and refuses nothing here.

use tessera_metrics::LazyCounter;
use tessera_net::{Identity, Role};
use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest};

static REFUSED: LazyCounter = LazyCounter::new(
    "tessera_manager_refused_requests_total",
    "Requests refused because the caller's certificate does not allow them",
);

/// What a request needs of its caller.
enum Need<'a> {
    /// Any identity of the cluster.
    Anyone,
    /// A storage node; `Some(id)`: that node.
    Node(Option<u64>),
    /// To read the cluster's state (a volume user only what its volumes are named in).
    Read(Option<&'a str>),
    /// To open volume `name` without attaching it (reads).
    Open(&'a str),
    /// To attach volume `name` read-write, or detach it.
    Attach(&'a str),
    /// A data-path lookup in volume `id`; `true` if it may allocate.
    Lookup(u64, bool),
    /// To list what spans every volume (snapshots or backups of all, a backup by id): not
    /// a volume user's.
    ReadAll,
    /// An admin.
    Admin,
}

/// Counts a managers' Raft message from anyone but a manager (the connection is dropped).
pub(crate) fn refused_raft() {
    REFUSED.add(1);
}

fn need(req: &ManagerRequest) -> Need<'_> {
    use ManagerRequest as R;
    match req {
        R::RegisterNode(reg) => Need::Node(reg.node_id),
        R::Heartbeat(hb) => Need::Node(Some(hb.node_id)),
        R::RestoreSource { .. } => Need::Node(None),
        R::Managers | R::Crl => Need::Anyone,
        R::ListVolumes | R::ListStores | R::ClusterStatus | R::ScrubStatus => Need::Read(None),
        R::BackupInfo { .. }
        | R::ListSnapshots { volume: None }
        | R::ListBackups { volume: None } => Need::ReadAll,
        R::VolumeInfo { name } | R::VolumeUsage { name } => Need::Read(Some(name)),
        R::ListSnapshots { volume: Some(v) }
        | R::ListBackups { volume: Some(v) }
        | R::SnapshotInfo { volume: v, .. } => Need::Read(Some(v)),
        R::OpenVolume { name, .. } => Need::Open(name),
        R::AttachVolume { name, .. } | R::DetachVolume { name, .. } => Need::Attach(name),
        R::Route {
            volume_id,
            allocate,
            ..
        } => Need::Lookup(*volume_id, *allocate),
        R::Routes { volume_id, .. } | R::VolumeGroups { volume_id, .. } => {
            Need::Lookup(*volume_id, false)
        }
        R::RenewAttachment { volume_id, .. } | R::ProvisionChunks { volume_id, .. } => {
            Need::Lookup(*volume_id, true)
        }
        R::Capability {
            volume_id, epoch, ..
        } => Need::Lookup(*volume_id, *epoch != 0),
        R::CreateVolume { .. }
        | R::ResizeVolume { .. }
        | R::DeleteVolume { .. }
        | R::CreateSnapshot { .. }
        | R::DeleteSnapshot { .. }
        | R::CloneVolume { .. }
        | R::RollbackVolume { .. }
        | R::FlattenVolume { .. }
        | R::CreateBackup { .. }
        | R::DeleteBackup { .. }
        | R::CopyBackup { .. }
        | R::RestoreVolume { .. }
        | R::PrewarmVolume { .. }
        | R::DrainNode { .. }
        | R::AddManager { .. }
        | R::ScrubControl { .. }
        | R::PublishCrl { .. } => Need::Admin,
    }
}

/// What [`check`] looks up in the manager's records.
pub(crate) trait Records {
    /// The data-directory token on record for node `id`; `None` if no such node is known
    /// (for a registration without an id).
    fn node_disk(&self, id: u64) -> Option<u64>;
    /// The name of volume `id`, if it exists.
    fn volume_name(&self, id: u64) -> Option<String>;
}

impl Records for crate::state::State {
    fn node_disk(&self, id: u64) -> Option<u64> {
        self.node(id).map(|n| n.disk)
    }

    fn volume_name(&self, id: u64) -> Option<String> {
        self.volume_record_by_id(id).ok().map(|v| v.name.clone())
    }
}

/// `Ok` if `who` may send `req`; `Unauthorized` (counted) otherwise.
pub(crate) fn check(
    who: Option<&Identity>,
    req: &ManagerRequest,
    records: &dyn Records,
) -> Result<(), ControlError> {
    let Some(who) = who else {
        return Ok(());
    };
    let refused = match (need(req), who) {
        (Need::Anyone, _) => None,
        (Need::Node(claimed), Identity::Node(n)) => match claimed {
            Some(c) if c == *n => None,
            Some(c) => Some(format!("{who} may not speak as node {c}")),
            None => match (req, records.node_disk(*n)) {
                // Any node may ask for a restore source.
                (req, _) if !matches!(req, ManagerRequest::RegisterNode(_)) => None,
                // A new node, or its own first registration again (the answer was lost).
                (_, None) => None,
                (ManagerRequest::RegisterNode(reg), Some(d)) if d != 0 && d == reg.disk => None,
                _ => Some(format!(
                    "node {n} is registered already, and this node has no id of its own \
                     (a new or wiped disk): it must not come back as the replica node {n} \
                     was. Give it a new certificate (`tessera cert issue node NEW_ID`)"
                )),
            },
        },
        (_, Identity::Manager(_)) => None,
        (Need::Node(_), _) => Some(format!("{who} is not a storage node")),
        (need, Identity::Client { role, .. }) => client_refusal(&need, role, records),
        (_, Identity::Node(_)) => Some(format!("{who} is not a client")),
    };
    match refused {
        None => Ok(()),
        Some(why) => {
            REFUSED.add(1);
            Err(ControlError::Unauthorized(why))
        }
    }
}

fn client_refusal(need: &Need<'_>, role: &Role, records: &dyn Records) -> Option<String> {
    let names = |v: &str| matches!(role, Role::Volumes(vs) if vs.iter().any(|n| n == v));
    let ok = match (need, role) {
        (_, Role::Admin) => true,
        (Need::Admin | Need::Node(_) | Need::Anyone, _) => false,
        (
            Need::Read(_) | Need::ReadAll | Need::Open(_) | Need::Lookup(_, false),
            Role::ReadOnly,
        ) => true,
        (Need::Attach(_) | Need::Lookup(_, true), Role::ReadOnly) => false,
        (Need::Read(None), Role::Volumes(_)) => true,
        (Need::ReadAll, Role::Volumes(_)) => false,
        (Need::Read(Some(v)) | Need::Open(v) | Need::Attach(v), Role::Volumes(_)) => names(v),
        (Need::Lookup(id, _), Role::Volumes(_)) => {
            records.volume_name(*id).is_some_and(|v| names(&v))
        }
    };
    if ok {
        return None;
    }
    Some(match need {
        Need::Read(Some(v)) | Need::Open(v) | Need::Attach(v)
            if !matches!(role, Role::ReadOnly) =>
        {
            format!("a {role} may not use volume {v:?}")
        }
        _ => format!("a {role} client may not send this request"),
    })
}

/// `req` as `who` sends it: node N's registration without an id of its own asks for id N
/// (its certificate's), so a node's id is the one its certificate binds; an attachment and
/// a capability are the caller's certificate name's (whatever holder the caller named).
pub(crate) fn bind(who: Option<&Identity>, mut req: ManagerRequest) -> ManagerRequest {
    if let ManagerRequest::AttachVolume { holder, .. } | ManagerRequest::Capability { holder, .. } =
        &mut req
    {
        *holder = match who {
            Some(Identity::Client { name, .. }) => name.clone(),
            _ => String::new(),
        };
    }
    match (who, req) {
        (Some(Identity::Node(n)), ManagerRequest::RegisterNode(mut reg))
            if reg.node_id.is_none() =>
        {
            // Checked against the records first: `check` sees the original request.
            reg.node_id = Some(*n);
            ManagerRequest::RegisterNode(reg)
        }
        (_, req) => req,
    }
}

/// The answer `who` may see: a volume user's listing shows only its volumes.
pub(crate) fn filter(who: Option<&Identity>, reply: ManagerReply) -> ManagerReply {
    match (who, reply) {
        (
            Some(Identity::Client {
                role: Role::Volumes(names),
                ..
            }),
            ManagerReply::Volumes(mut vols),
        ) => {
            vols.retain(|v| names.contains(&v.name));
            ManagerReply::Volumes(vols)
        }
        (_, reply) => reply,
    }
}

#[cfg(test)]
mod tests;
