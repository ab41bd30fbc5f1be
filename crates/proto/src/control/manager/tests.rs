//! Round trips of every manager request and reply, and the size bounds of paged answers.

use crate::control::codec::assert_round_trips;
use crate::control::*;

fn volume() -> VolumeInfo {
    VolumeInfo {
        id: 1,
        name: "db1".into(),
        size: 4 << 30,
        chunk_size: DEFAULT_CHUNK_SIZE,
        mapped_chunks: 2,
        created_unix: 1_700_000_000,
        attachment: None,
        seq: 3,
        parent: None,
        snapshots: Vec::new(),
        reclaims: Vec::new(),
        restore: None,
    }
}

fn route(chunk: u64) -> ChunkRoute {
    ChunkRoute {
        chunk,
        group_id: 3,
        peers: vec![PeerInfo {
            node_id: 2,
            addr: "n2:7500".into(),
        }],
        leader: Some(2),
        seq: 3,
    }
}

#[test]
fn every_request_round_trips() {
    let name = || "db1".to_string();
    let reqs = [
        ManagerRequest::RegisterNode(NodeRegistration {
            node_id: Some(2),
            zone: "zone1".into(),
            rack: "rack2".into(),
            addr: "n2:7500".into(),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            disk: 0,
        }),
        ManagerRequest::Heartbeat(NodeHeartbeat {
            node_id: 2,
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            groups: Vec::new(),
            recovery: RecoveryStats::default(),
            descriptors: Descriptors::default(),
            scrub: Default::default(),
        }),
        ManagerRequest::CreateVolume {
            name: name(),
            size: 1 << 30,
            chunk_size: Some(1 << 20),
        },
        ManagerRequest::ListVolumes,
        ManagerRequest::VolumeInfo { name: name() },
        ManagerRequest::ResizeVolume {
            name: name(),
            size: 2 << 30,
        },
        ManagerRequest::DeleteVolume { name: name() },
        ManagerRequest::RenewAttachment {
            volume_id: 1,
            epoch: 2,
        },
        ManagerRequest::DetachVolume {
            name: name(),
            epoch: 0,
            force: true,
        },
        ManagerRequest::Route {
            volume_id: 1,
            chunk: 5,
            allocate: true,
            epoch: 2,
        },
        ManagerRequest::CreateSnapshot {
            volume: name(),
            name: "s1".into(),
        },
        ManagerRequest::ListSnapshots { volume: None },
        ManagerRequest::ListSnapshots {
            volume: Some(name()),
        },
        ManagerRequest::SnapshotInfo {
            volume: name(),
            name: "s1".into(),
        },
        ManagerRequest::VolumeUsage { name: name() },
        ManagerRequest::DeleteSnapshot {
            volume: name(),
            name: "s1".into(),
        },
        ManagerRequest::CloneVolume {
            volume: name(),
            snapshot: "s1".into(),
            name: "db2".into(),
        },
        ManagerRequest::RollbackVolume {
            volume: name(),
            snapshot: "s1".into(),
        },
        ManagerRequest::FlattenVolume { name: name() },
        ManagerRequest::ClusterStatus,
        ManagerRequest::DrainNode {
            node_id: 2,
            undo: true,
        },
        ManagerRequest::AddManager {
            id: 2,
            addr: "m2:7400".into(),
        },
        ManagerRequest::Managers,
    ];
    for req in reqs {
        assert_round_trips(&req);
    }
}

#[test]
fn every_reply_round_trips() {
    let replies = [
        ManagerReply::Registered { node_id: 2 },
        ManagerReply::HeartbeatAck {
            create_groups: vec![GroupSpec {
                group_id: 3,
                peers: route(0).peers,
                joining: false,
                min_term: 0,
            }],
            remove_groups: vec![4],
            crl_version: 3,
        },
        ManagerReply::Volume(volume()),
        ManagerReply::Volumes(vec![volume(), volume()]),
        ManagerReply::Deleted,
        ManagerReply::Usage(VolumeUsage {
            volume: "db1".into(),
            snapshots: vec![SnapshotUsage {
                name: "monday".into(),
                seq: 3,
                bytes: 8 << 20,
            }],
            live_bytes: 1 << 20,
            unreported_groups: vec![7],
        }),
        ManagerReply::Opened {
            volume: volume(),
            chunks: vec![route(0)],
            more_groups: true,
        },
        ManagerReply::Attached {
            volume: volume(),
            chunks: vec![route(0), route(1)],
            more_groups: false,
            epoch: 2,
            lease_ms: 10_000,
        },
        ManagerReply::Renewed { lease_ms: 10_000 },
        ManagerReply::Detached { fence_epoch: 3 },
        ManagerReply::Route(Some(route(5))),
        ManagerReply::Route(None),
        ManagerReply::Status(ClusterStatus {
            nodes: Vec::new(),
            groups: Vec::new(),
            volumes: 1,
        }),
        ManagerReply::Managers {
            voters: vec![(1, "m1:7400".into()), (2, String::new())],
            learners: vec![(3, "m3:7400".into())],
        },
    ];
    for reply in replies {
        assert_round_trips(&Ok::<_, ControlError>(reply));
    }
}

#[test]
fn requests_and_results_round_trip() {
    let req = ManagerRequest::CreateVolume {
        name: "db1".into(),
        size: 4 << 30,
        chunk_size: None,
    };
    assert_eq!(decode::<ManagerRequest>(&encode(&req)).unwrap(), req);
    let res: Result<ManagerReply, ControlError> =
        Err(ControlError::NotFound("volume \"x\" not found".into()));
    assert_eq!(
        decode::<Result<ManagerReply, ControlError>>(&encode(&res)).unwrap(),
        res
    );
    assert!(decode::<ManagerRequest>(b"{nonsense").is_err());
}

/// The longest route a manager can send: the largest numbers, six peers (a group
/// moving) named by the longest host names.
fn largest_route() -> ChunkRoute {
    ChunkRoute {
        chunk: u64::MAX,
        group_id: u64::MAX,
        peers: (0..6)
            .map(|i| PeerInfo {
                node_id: u64::MAX - i,
                addr: format!("{}:65535", "h".repeat(253)),
            })
            .collect(),
        leader: Some(u64::MAX),
        seq: u64::MAX,
    }
}

#[test]
fn paged_route_messages_round_trip() {
    let reqs = [
        ManagerRequest::Routes {
            volume_id: 3,
            first_chunk: 131_071,
            limit: 17,
            epoch: 9,
        },
        ManagerRequest::VolumeGroups {
            volume_id: 3,
            after_group: 40,
            epoch: 0,
        },
        ManagerRequest::ProvisionChunks {
            volume_id: 3,
            first_chunk: 1024,
            count: 1024,
            epoch: 2,
        },
        ManagerRequest::OpenVolume {
            name: "db1".into(),
            paged: true,
        },
        ManagerRequest::AttachVolume {
            name: "db1".into(),
            client: "nbd".into(),
            paged: true,
            holder: String::new(),
        },
    ];
    for req in reqs {
        assert_eq!(decode::<ManagerRequest>(&encode(&req)).unwrap(), req);
    }
    let page = RoutePage {
        routes: vec![largest_route(), largest_route()],
        next: Some(77),
    };
    for reply in [
        ManagerReply::Routes(page.clone()),
        ManagerReply::Groups(RoutePage::default()),
    ] {
        let res: Result<ManagerReply, ControlError> = Ok(reply);
        assert_eq!(
            decode::<Result<ManagerReply, ControlError>>(&encode(&res)).unwrap(),
            res
        );
    }
}

/// Old clients send no `paged` and read no `more_groups`; old managers send no
/// `more_groups`: each side reads the other's messages.
#[test]
fn messages_of_clients_and_managers_from_before_paging_still_decode() {
    let old_open = br#"{"OpenVolume":{"name":"db1"}}"#;
    assert_eq!(
        decode::<ManagerRequest>(old_open).unwrap(),
        ManagerRequest::OpenVolume {
            name: "db1".into(),
            paged: false
        }
    );
    let old_attach = br#"{"AttachVolume":{"name":"db1","client":"c"}}"#;
    assert!(matches!(
        decode::<ManagerRequest>(old_attach).unwrap(),
        ManagerRequest::AttachVolume { paged: false, .. }
    ));
    let old_opened = br#"{"Ok":{"Opened":{"volume":{"id":1,"name":"db1","size":4096,
        "chunk_size":4096,"mapped_chunks":0,"created_unix":0},"chunks":[]}}}"#;
    let got = decode::<Result<ManagerReply, ControlError>>(old_opened).unwrap();
    assert!(matches!(
        got,
        Ok(ManagerReply::Opened {
            more_groups: false,
            ..
        })
    ));
}

/// Every answer that carries routes carries at most a page of them, and a page of the
/// longest routes fits a frame with room to spare, whatever the volume's size.
#[test]
fn a_full_page_of_the_longest_routes_fits_a_quarter_frame() {
    let page = RoutePage {
        routes: vec![largest_route(); MAX_ROUTES_PER_PAGE as usize],
        next: Some(u64::MAX),
    };
    let res: Result<ManagerReply, ControlError> = Ok(ManagerReply::Routes(page.clone()));
    let len = encode(&res).len();
    assert!(
        len <= crate::frame::MAX_BODY as usize / 4 + (64 << 10),
        "a page of routes is {len} bytes"
    );
    let res: Result<ManagerReply, ControlError> = Ok(ManagerReply::Attached {
        volume: VolumeInfo {
            id: u64::MAX,
            name: "v".repeat(255),
            size: u64::MAX,
            chunk_size: u64::MAX,
            mapped_chunks: u64::MAX,
            created_unix: u64::MAX,
            attachment: None,
            seq: u64::MAX,
            parent: None,
            snapshots: Vec::new(),
            reclaims: Vec::new(),
            restore: None,
        },
        chunks: page.routes,
        more_groups: true,
        epoch: u64::MAX,
        lease_ms: u64::MAX,
    });
    assert!(encode(&res).len() <= crate::frame::MAX_BODY as usize / 4 + (64 << 10));
}
