//! An operator's `tessera scrub start|pause NODE`, carried to the node: the service picks
//! the node's address under its lock ([`ScrubCall`]), the server forwards the action here
//! without it ([`forward`]) and answers with what the node said of its scrubbing after it.
//!
//! The manager keeps no scrub state of its own beyond the heartbeats' (`liveness`): the
//! node's scrubber owns its pass, cursor and paused flag. Must never hold the service lock.

use std::time::Duration;

use tessera_net::NetError;
use tessera_proto::control::{
    ControlError, ManagerReply, NodeScrub, ScrubAction, StorageReply, StorageRequest,
};

/// How long the node gets to answer (it only flips its scrubber's state).
pub const SCRUB_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A `ScrubControl` request as planned under the service lock: whom to tell what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubCall {
    pub node_id: u64,
    /// The node's address, as it registered.
    pub addr: String,
    pub action: ScrubAction,
}

/// Tells the node, within `timeout`: the node with its scrubbing as it answered. A node
/// that cannot be reached (or does not answer in time) is `Unavailable`; a refusal by the
/// node is passed on as it is.
pub async fn forward(
    security: &tessera_net::Security,
    call: ScrubCall,
    timeout: Duration,
) -> Result<ManagerReply, ControlError> {
    let req = StorageRequest::Scrub {
        action: call.action,
    };
    let node = call.node_id;
    let expect = tessera_net::Expect::Node(node);
    match tessera_net::call::<StorageRequest, StorageReply>(
        security, &call.addr, expect, &req, timeout,
    )
    .await
    {
        Ok(StorageReply::Scrub(stats)) => Ok(ManagerReply::Scrub(vec![NodeScrub {
            node_id: node,
            addr: call.addr,
            stats: Some(stats),
        }])),
        Ok(other) => Err(ControlError::Internal(format!(
            "node {node} answered a scrub request with {other:?}"
        ))),
        Err(NetError::Control(e)) => Err(e),
        Err(e) => Err(ControlError::Unavailable(format!(
            "node {node} at {} did not take the scrub request: {e}",
            call.addr
        ))),
    }
}

#[cfg(test)]
mod tests {
    use tessera_net::{FrameReader, rpc_reply, write_frame};
    use tessera_proto::control::{self, ScrubStats};
    use tokio::net::TcpListener;

    use super::*;

    /// A stand-in storage node whose scrubber takes every action: paused after `Pause`,
    /// running after `Start`. Its address.
    async fn node_with_a_scrubber() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut r = FrameReader::new(r);
                    while let Ok(Some(f)) = r.next().await {
                        let answer = match control::decode(&f.body).unwrap() {
                            StorageRequest::Scrub { action } => {
                                Ok(StorageReply::Scrub(ScrubStats {
                                    paused: action == ScrubAction::Pause,
                                    running: action == ScrubAction::Start,
                                    pass: 4,
                                    ..ScrubStats::default()
                                }))
                            }
                            _ => Err(ControlError::Invalid("not a scrub request".into())),
                        };
                        write_frame(&mut w, &rpc_reply(f.request_id, &answer))
                            .await
                            .unwrap();
                    }
                });
            }
        });
        addr
    }

    fn call(addr: &str, action: ScrubAction) -> ScrubCall {
        ScrubCall {
            node_id: 3,
            addr: addr.into(),
            action,
        }
    }

    #[tokio::test]
    async fn the_answer_is_the_node_with_its_state_after_the_action() {
        let addr = node_with_a_scrubber().await;
        let t = SCRUB_CALL_TIMEOUT;
        let paused = forward(
            &tessera_net::Security::insecure(),
            call(&addr, ScrubAction::Pause),
            t,
        )
        .await
        .unwrap();
        let ManagerReply::Scrub(nodes) = paused else {
            panic!("{paused:?}")
        };
        assert_eq!(nodes.len(), 1);
        assert_eq!(
            (nodes[0].node_id, nodes[0].addr.as_str()),
            (3, addr.as_str())
        );
        let stats = nodes[0].stats.clone().expect("the node's answer");
        assert!(stats.paused && !stats.running && stats.pass == 4);
        let started = forward(
            &tessera_net::Security::insecure(),
            call(&addr, ScrubAction::Start),
            t,
        )
        .await
        .unwrap();
        assert!(
            matches!(&started, ManagerReply::Scrub(n) if n[0].stats.as_ref().is_some_and(|s| s.running && !s.paused)),
            "{started:?}"
        );
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_reached_is_unavailable() {
        // Nothing listens on port 1 of loopback.
        let e = forward(
            &tessera_net::Security::insecure(),
            call("127.0.0.1:1", ScrubAction::Start),
            SCRUB_CALL_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, ControlError::Unavailable(m) if m.contains("node 3 at 127.0.0.1:1")),
            "{e:?}"
        );
        // One that accepts but never answers: the same, at the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let t = std::time::Instant::now();
        let e = forward(
            &tessera_net::Security::insecure(),
            call(&addr, ScrubAction::Pause),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ControlError::Unavailable(_)), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(silent);
    }
}
