//! Where a volume's chunks live: a chunk's route, and the bounded pages routes travel in.
//!
//! Owns the page bound: no answer grows with a volume's size. Never put anything here a
//! client does not need to send a data-plane request.

use serde::{Deserialize, Serialize};

use super::PeerInfo;
#[cfg(doc)]
use super::{ManagerReply, ManagerRequest};

/// Most routes one answer carries ([`RoutePage`], and the routes of [`ManagerReply::Opened`]
/// and [`ManagerReply::Attached`]). No answer grows with a volume's size: a route is about
/// 200 bytes of JSON with three peers and under 2 KB with six peers (a group moving) named
/// by the longest host names, so a full page stays near 2 MiB at worst: a quarter of
/// [`crate::frame::MAX_BODY`] (a test holds it there).
pub const MAX_ROUTES_PER_PAGE: u32 = 1024;

/// Where a chunk lives: its group, the group's replicas and the last known leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRoute {
    /// The chunk's index in its volume.
    pub chunk: u64,
    /// The replica group holding it.
    pub group_id: u64,
    /// The group's replicas, and during a move the nodes being added too.
    pub peers: Vec<PeerInfo>,
    /// The replica the manager believes leads the group (`None`: none known): the client
    /// sends there first and follows [`crate::data::Reply::NotLeader`] hints.
    pub leader: Option<u64>,
    /// The volume's snapshot sequence when the route was answered (0: unknown, from a
    /// manager before snapshots): a writer adopts it if it is newer than its own before it
    /// writes the chunk (a chunk mapped after a snapshot was taken is in no fenced group).
    #[serde(default)]
    pub seq: u64,
}

/// A bounded page of routes ([`MAX_ROUTES_PER_PAGE`] at most) and where the next one starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePage {
    /// In chunk order ([`ManagerReply::Routes`]) or group id order
    /// ([`ManagerReply::Groups`]).
    pub routes: Vec<ChunkRoute>,
    /// The cursor of the next page (`None`: this was the last).
    pub next: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, encode};

    fn route(leader: Option<u64>) -> ChunkRoute {
        ChunkRoute {
            chunk: 1,
            group_id: 3,
            peers: vec![PeerInfo {
                node_id: 2,
                addr: "h:1".into(),
            }],
            leader,
            seq: 0,
        }
    }

    #[test]
    fn routes_and_pages_round_trip() {
        assert_round_trips(&route(Some(2)));
        assert_round_trips(&route(None));
        assert_round_trips(&RoutePage::default());
        assert_round_trips(&RoutePage {
            routes: vec![route(Some(2)), route(None)],
            next: Some(u64::MAX),
        });
    }

    #[test]
    fn a_page_keeps_its_wire_form() {
        let page = RoutePage {
            routes: vec![route(Some(2))],
            next: Some(3),
        };
        assert_eq!(
            &encode(&page)[..],
            br#"{"routes":[{"chunk":1,"group_id":3,"peers":[{"node_id":2,"addr":"h:1"}],"leader":2,"seq":0}],"next":3}"#
        );
    }
}
