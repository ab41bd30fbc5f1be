use super::*;

use tessera_proto::control::{NodeHeartbeat, NodeRegistration, VolumeInfo};

fn client(role: Role) -> Identity {
    Identity::Client {
        name: "c".into(),
        role,
    }
}

fn registration(node_id: Option<u64>) -> ManagerRequest {
    ManagerRequest::RegisterNode(NodeRegistration {
        node_id,
        zone: "z".into(),
        rack: "r".into(),
        addr: "127.0.0.1:1".into(),
        capacity_bytes: 0,
        used_bytes: 0,
        disk: 0,
    })
}

/// Records of nodes (id, disk token) and volumes (id, name).
struct Known {
    nodes: Vec<(u64, u64)>,
    volumes: Vec<(u64, &'static str)>,
}

impl Records for Known {
    fn node_disk(&self, id: u64) -> Option<u64> {
        self.nodes.iter().find(|n| n.0 == id).map(|n| n.1)
    }

    fn volume_name(&self, id: u64) -> Option<String> {
        self.volumes
            .iter()
            .find(|v| v.0 == id)
            .map(|v| v.1.to_string())
    }
}

const NONE: Known = Known {
    nodes: Vec::new(),
    volumes: Vec::new(),
};

fn refused(who: &Identity, req: &ManagerRequest) -> bool {
    let known = Known {
        nodes: vec![],
        volumes: vec![(1, "a"), (2, "b")],
    };
    matches!(
        check(Some(who), req, &known),
        Err(ControlError::Unauthorized(_))
    )
}

/// Node N registers and heartbeats as N only; a first registration takes N; an id already
/// on record is not taken by a node without one (a wiped disk); clients never register.
#[test]
fn a_node_speaks_only_as_the_node_its_certificate_names() {
    let node2 = Identity::Node(2);
    assert!(!refused(&node2, &registration(Some(2))));
    assert!(refused(&node2, &registration(Some(3))));
    assert!(!refused(&node2, &registration(None)));
    // Node 2 on record with disk token 7: a registration without an id from another disk
    // (or one that never drew a token) is a wiped disk; from disk 7, its own first
    // registration again, whose answer was lost.
    let with_disk = |disk| match registration(None) {
        ManagerRequest::RegisterNode(mut r) => {
            r.disk = disk;
            ManagerRequest::RegisterNode(r)
        }
        other => other,
    };
    let node2_on = |disk| Known {
        nodes: vec![(2, disk)],
        volumes: vec![],
    };
    for disk in [0, 8] {
        assert!(matches!(
            check(Some(&node2), &with_disk(disk), &node2_on(7)),
            Err(ControlError::Unauthorized(m)) if m.contains("wiped")
        ));
    }
    assert!(check(Some(&node2), &with_disk(7), &node2_on(7)).is_ok());
    // A node on record asks for restore sources (no id in that request).
    let source = ManagerRequest::RestoreSource {
        volume_id: 1,
        chunk: 0,
    };
    assert!(check(Some(&node2), &source, &node2_on(7)).is_ok());
    assert!(refused(&client(Role::Admin), &source));
    assert!(matches!(
        check(Some(&node2), &with_disk(7), &node2_on(0)),
        Err(ControlError::Unauthorized(_))
    ));
    match bind(Some(&node2), registration(None)) {
        ManagerRequest::RegisterNode(r) => assert_eq!(r.node_id, Some(2)),
        other => panic!("{other:?}"),
    }
    let hb = |node_id| {
        ManagerRequest::Heartbeat(NodeHeartbeat {
            node_id,
            ..Default::default()
        })
    };
    assert!(!refused(&node2, &hb(2)));
    assert!(refused(&node2, &hb(3)));
    assert!(refused(&client(Role::Admin), &registration(Some(1))));
    assert!(refused(&client(Role::Admin), &hb(1)));
    // A node is no client.
    let delete = ManagerRequest::DeleteVolume { name: "a".into() };
    assert!(refused(&node2, &delete));
}

/// Roles: an admin does everything; a read-only client reads and opens; a volume user
/// uses its volumes only and sees only them listed.
#[test]
fn clients_do_what_their_role_allows() {
    let admin = client(Role::Admin);
    let reader = client(Role::ReadOnly);
    let user = client(Role::Volumes(vec!["a".into()]));
    let delete = |n: &str| ManagerRequest::DeleteVolume { name: n.into() };
    let attach = |n: &str| ManagerRequest::AttachVolume {
        name: n.into(),
        client: "x".into(),
        paged: false,
        holder: String::new(),
    };
    let open = |n: &str| ManagerRequest::OpenVolume {
        name: n.into(),
        paged: false,
    };
    assert!(!refused(&admin, &delete("a")));
    assert!(refused(&user, &delete("a")));
    assert!(refused(&reader, &delete("a")));
    assert!(!refused(&user, &attach("a")));
    assert!(refused(&user, &attach("b")));
    assert!(refused(&user, &open("b")));
    assert!(!refused(&reader, &open("b")));
    assert!(refused(&reader, &attach("b")));
    assert!(!refused(&reader, &ManagerRequest::ClusterStatus));
    let allocate = ManagerRequest::Route {
        volume_id: 1,
        chunk: 0,
        allocate: true,
        epoch: 1,
    };
    assert!(refused(&reader, &allocate));
    assert!(!refused(&user, &allocate));
    // ...in its own volume only (1 is "a"; 2 is "b"; 3 is none).
    for (volume_id, refuse) in [(2, true), (3, true), (1, false)] {
        let routes = ManagerRequest::Routes {
            volume_id,
            first_chunk: 0,
            limit: 0,
            epoch: 0,
        };
        assert_eq!(refused(&user, &routes), refuse, "volume {volume_id}");
    }
    // Listings of every volume's snapshots or backups are not a volume user's.
    let all_backups = ManagerRequest::ListBackups { volume: None };
    assert!(refused(&user, &all_backups));
    assert!(!refused(&reader, &all_backups));
    let own = ManagerRequest::ListBackups {
        volume: Some("a".into()),
    };
    assert!(!refused(&user, &own));
    assert!(refused(
        &reader,
        &ManagerRequest::AddManager {
            id: 2,
            addr: "x".into()
        }
    ));
    // Managers are trusted with everything; insecure refuses nothing.
    assert!(!refused(&Identity::Manager(1), &delete("a")));
    assert!(check(None, &delete("a"), &NONE).is_ok());

    let vol = |name: &str| VolumeInfo {
        name: name.into(),
        ..Default::default()
    };
    let listed = |who| match filter(who, ManagerReply::Volumes(vec![vol("a"), vol("b")])) {
        ManagerReply::Volumes(v) => v.into_iter().map(|v| v.name).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed(Some(&user)), ["a"]);
    assert_eq!(listed(Some(&reader)), ["a", "b"]);
    assert_eq!(listed(None), ["a", "b"]);
}

#[test]
fn an_attachment_and_a_capability_are_the_callers_certificate_names() {
    let caller = client(Role::Admin);
    let Identity::Client { name, .. } = &caller else {
        unreachable!()
    };
    let asks = [
        ManagerRequest::AttachVolume {
            name: "v".into(),
            client: "label".into(),
            paged: true,
            holder: "someone else".into(),
        },
        ManagerRequest::Capability {
            volume_id: 1,
            epoch: 2,
            holder: "someone else".into(),
        },
    ];
    for req in asks {
        let holder = |r: &ManagerRequest| match r {
            ManagerRequest::AttachVolume { holder, .. }
            | ManagerRequest::Capability { holder, .. } => holder.clone(),
            _ => unreachable!(),
        };
        assert_eq!(holder(&bind(Some(&caller), req.clone())), *name);
        assert_eq!(holder(&bind(Some(&Identity::Node(1)), req.clone())), "");
        assert_eq!(holder(&bind(None, req)), "");
    }
}
