//! Typed calls for scrubbing: every node's scrubbing as its heartbeats report it, and
//! starting or pausing one node's (carried to the node by the manager). What the CLI's
//! `scrub` commands send, one method each.
//!
//! Must never: ignore a reply of the wrong kind (it is [`Error::UnexpectedReply`]); retry a
//! refusal or a node the manager could not reach (the caller is told).

use tessera_proto::control::{ManagerReply, ManagerRequest, NodeScrub, ScrubAction};

use crate::error::unexpected;
use crate::{Client, Result};

impl Client {
    /// Every registered node, by id, with its scrubbing as its latest heartbeat to the
    /// manager leader reported it (`stats: None`: not heard from since that manager leads).
    pub async fn scrub_status(&self) -> Result<Vec<NodeScrub>> {
        match self.call(&ManagerRequest::ScrubStatus).await? {
            ManagerReply::Scrub(nodes) => Ok(nodes),
            other => Err(unexpected("ScrubStatus", &other)),
        }
    }

    /// Starts (or resumes) or pauses node `node_id`'s scrubbing: the node with its
    /// scrubbing as it answered after the action. An unknown node is the manager's
    /// `NotFound` ([`ErrorClass::NotFound`](crate::ErrorClass)); a node the manager cannot
    /// reach its `Unavailable`.
    pub async fn scrub_control(&self, node_id: u64, action: ScrubAction) -> Result<NodeScrub> {
        let req = ManagerRequest::ScrubControl { node_id, action };
        match self.call(&req).await? {
            ManagerReply::Scrub(mut nodes) if nodes.len() == 1 => Ok(nodes.remove(0)),
            other => Err(unexpected("ScrubControl", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::control::{ControlError, ScrubStats};

    use super::*;
    use crate::testing::{Answer, fake_manager};
    use crate::{Error, ErrorClass};

    fn scrubs(req: ManagerRequest) -> Answer {
        match req {
            ManagerRequest::ListVolumes => Ok(ManagerReply::Volumes(vec![])),
            ManagerRequest::ScrubStatus => Ok(ManagerReply::Scrub(vec![NodeScrub {
                node_id: 1,
                addr: "10.0.0.1:7500".into(),
                stats: None,
            }])),
            ManagerRequest::ScrubControl { node_id: 9, .. } => {
                Err(ControlError::NotFound("node 9 not found".into()))
            }
            ManagerRequest::ScrubControl { node_id: 8, .. } => Err(ControlError::Unavailable(
                "node 8 at 10.0.0.8:7500 did not take the scrub request".into(),
            )),
            ManagerRequest::ScrubControl { node_id, action } => {
                Ok(ManagerReply::Scrub(vec![NodeScrub {
                    node_id,
                    addr: "10.0.0.2:7500".into(),
                    stats: Some(ScrubStats {
                        paused: action == ScrubAction::Pause,
                        ..ScrubStats::default()
                    }),
                }]))
            }
            _ => Ok(ManagerReply::Deleted),
        }
    }

    #[tokio::test]
    async fn scrub_calls_answer_nodes_and_keep_the_managers_refusals() {
        let client = Client::connect(vec![fake_manager(scrubs).await])
            .await
            .expect("connect");
        let nodes = client.scrub_status().await.unwrap();
        assert_eq!((nodes.len(), nodes[0].node_id), (1, 1));
        let n = client.scrub_control(2, ScrubAction::Pause).await.unwrap();
        assert!(n.node_id == 2 && n.stats.is_some_and(|s| s.paused));
        let e = client
            .scrub_control(9, ScrubAction::Start)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Control(ControlError::NotFound(m)) if m == "node 9 not found"),
            "{e:?}"
        );
        assert_eq!(e.class(), ErrorClass::NotFound);
        let e = client
            .scrub_control(8, ScrubAction::Start)
            .await
            .unwrap_err();
        assert_eq!(e.class(), ErrorClass::Unavailable);
    }
}
