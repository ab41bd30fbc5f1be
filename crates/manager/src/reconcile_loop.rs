//! The reconciler's clock and hands: every `reconcile_ms`, one pass of [`Service::reconcile`]
//! under the service lock (on the blocking pool, like requests, since it may commit), then
//! its calls to storage nodes, each in a task of its own with a timeout, so a slow or dead
//! node never holds up requests or the next pass.
//!
//! Holds no state of its own beyond [`Memory`]; everything a restarted manager needs to carry
//! a move on is in the group's persisted target.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera_proto::control::{StorageReply, StorageRequest};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::reconcile::{Limits, Memory, same_nodes};
use crate::service::{Now, Service, StorageCall};

/// How long one storage node gets to answer a ChangeMembers or TransferLeader call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

type Shared = Arc<Mutex<Service>>;

/// Runs passes until `stopped` turns true.
pub async fn run(
    service: Shared,
    security: tessera_net::Security,
    limits: Limits,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let memory = Arc::new(Mutex::new(Memory::default()));
    // Groups with a call in flight: never two calls about one group at once.
    let busy: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tick.tick() => {}
        }
        let (s, m) = (service.clone(), memory.clone());
        let pass = tokio::task::spawn_blocking(move || {
            let now = Now {
                instant: Instant::now(),
                unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            let (Ok(mut s), Ok(mut m)) = (s.lock(), m.lock()) else {
                return Vec::new();
            };
            s.reconcile(now, &mut m, limits)
        })
        .await;
        let calls = match pass {
            Ok(calls) => calls,
            Err(e) => {
                warn!(error = %e, "reconcile pass failed");
                continue;
            }
        };
        for call in calls {
            let fresh = busy.lock().is_ok_and(|mut b| b.insert(call.group_id));
            if fresh {
                let (s, m, b) = (service.clone(), memory.clone(), busy.clone());
                let security = security.clone();
                tokio::spawn(async move {
                    let group = call.group_id;
                    send(call, s, m, &security).await;
                    if let Ok(mut b) = b.lock() {
                        b.remove(&group);
                    }
                });
            }
        }
    }
}

async fn send(
    call: StorageCall,
    service: Shared,
    memory: Arc<Mutex<Memory>>,
    security: &tessera_net::Security,
) {
    let group = call.group_id;
    let res = tessera_net::call::<StorageRequest, StorageReply>(
        security,
        &call.addr,
        tessera_net::Expect::Node(call.node),
        &call.req,
        CALL_TIMEOUT,
    )
    .await;
    match res {
        Ok(StorageReply::Members(ms)) => {
            let Some(target) = call.target else {
                return;
            };
            if !(ms.done && same_nodes(&ms.voters, &target)) {
                let progress: Vec<String> = ms
                    .progress
                    .iter()
                    .map(|p| format!("{}:{}@{}", p.node_id, p.state, p.matched))
                    .collect();
                debug!(group, voters = ?ms.voters, learners = ?ms.learners, joint = ms.joint,
                       last_index = ms.last_index, ?progress, "membership change in progress");
                return;
            }
            let term = ms.term;
            let done = tokio::task::spawn_blocking(move || {
                service
                    .lock()
                    .map_err(|_| "manager state is unusable".to_string())?
                    .move_done(group, &target, term)
                    .map_err(|e| e.to_string())
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(group, error = %e, "could not record a finished move"),
                Err(e) => warn!(group, error = %e, "could not record a finished move"),
            }
        }
        Ok(StorageReply::NotLeader { hint }) => {
            debug!(
                group,
                node = call.node,
                hint,
                "asked a node that does not lead the group"
            );
            if hint != 0
                && let Ok(mut m) = memory.lock()
            {
                m.hint(group, hint);
            }
        }
        Ok(StorageReply::Done) => {
            if let StorageRequest::TransferLeader { to, .. } = call.req {
                info!(group, from = call.node, to, "leadership transfer started");
            }
        }
        Ok(other) => warn!(group, node = call.node, reply = ?other, "unexpected answer"),
        Err(e) => debug!(group, node = call.node, addr = %call.addr, error = %e,
                         "storage call failed; retried next pass"),
    }
}
