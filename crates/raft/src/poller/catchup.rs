//! Catch-up of a replica far behind its leader: a `MsgSnapshot` is not stepped when it
//! arrives. The chunk data comes first, copied from the sender by the `SnapshotFetcher`
//! (only the blocks that differ); the message is stepped once the copy is durable, and the
//! install then goes through `ready.rs` like any Ready.
//!
//! Must never: step a snapshot whose chunk data is not durable here, start a second copy
//! of a group while one runs, or let a destroyed replica's files go while a copy still
//! writes into them (`copying`, `remove_after_copy`).

use super::*;

impl Poller {
    /// A leader's `MsgSnapshot` for `gid`: starts the copy if it would move this replica
    /// forward (from a leader of this term or a later one, to a follower, past what it
    /// applied, and no copy running).
    pub(super) fn offer_snapshot(&mut self, gid: u64, msg: Message) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        let current = msg.term >= g.raw.raft.term && g.raw.raft.state != StateRole::Leader;
        if !current || g.fetching {
            return;
        }
        if msg.get_snapshot().get_metadata().index <= g.applied
            && !cfg!(tessera_unfixed = "stale_snapshot")
        {
            // Nothing to copy. raft-rs declines it and answers with its commit index,
            // which takes the leader's view of this replica out of its snapshot state;
            // unanswered, the leader would wait for its 30 s stall timeout.
            if let Err(e) = g.raw.step(msg) {
                tracing::debug!(group = gid, "step: {e}");
            }
            self.dirty.insert(gid);
            return;
        }
        if msg.get_snapshot().get_metadata().index <= g.applied {
            return;
        }
        g.fetching = true;
        // The copy rewrites the replica's files off the apply path: no watch holds.
        self.watches.drop_group(gid);
        let snap = msg.get_snapshot();
        // The sender's address as the snapshot's membership has it (the newest), else as
        // this replica's records do. Whichever it is, the copy only reads from a server
        // whose certificate names the sender (`Expect::Node`): an address in a message
        // cannot point the copy at anyone else.
        let from_addr = control::decode::<GroupSpec>(&snap.data)
            .ok()
            .and_then(|s| s.peers.into_iter().find(|p| p.node_id == msg.from))
            .or_else(|| g.spec.peers.iter().find(|p| p.node_id == msg.from).cloned())
            .map(|p| p.addr)
            .unwrap_or_default();
        let job = FetchJob {
            group: gid,
            from: msg.from,
            from_addr,
            index: snap.get_metadata().index,
            store: g.chunks.clone(),
        };
        tracing::info!(
            group = gid,
            from = msg.from,
            index = job.index,
            "fetching a snapshot"
        );
        let tx = self.tx.clone();
        let msg = Box::new(msg);
        self.copying.insert(gid);
        self.fetcher.fetch(
            job,
            Box::new(move |result| {
                let _ = tx.send(Event::SnapshotFetched {
                    group: gid,
                    msg,
                    result,
                });
            }),
        );
    }

    /// The copy for `msg` answered: step the snapshot, or tell the leader it failed (so it
    /// offers a new one at its next heartbeat rather than wait for the copy's stall
    /// timeout), or stop the node if this disk failed under the copy.
    pub(super) fn snapshot_fetched(
        &mut self,
        group: u64,
        msg: Message,
        result: Result<(), FetchError>,
    ) {
        self.copying.remove(&group);
        let Some(g) = self.groups.get_mut(&group) else {
            // The replica was destroyed during the copy: its files can go now.
            if self.remove_after_copy.remove(&group) {
                let _ = self.tx.send(Event::Destroyed(group));
            }
            return;
        };
        g.fetching = false;
        match result {
            Ok(()) => {
                if let Err(e) = g.raw.step(msg) {
                    tracing::warn!(group, "stepping a fetched snapshot: {e}");
                }
            }
            Err(source @ FetchError::Fatal(_)) => {
                self.fail(Fatal::Copy { group, source });
                return;
            }
            Err(FetchError::Retry(e)) => {
                tracing::warn!(group, from = msg.from, "snapshot fetch failed: {e}");
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgSnapStatus);
                m.to = msg.from;
                m.from = self.cfg.node_id;
                m.term = msg.term;
                m.index = msg.get_snapshot().get_metadata().index;
                m.reject = true;
                let mut outbox = Outbox::new();
                push_msgs(&mut outbox, group, vec![m], self.epoch);
                send_all(&*self.transport, self.cfg.node_id, outbox);
            }
        }
        self.dirty.insert(group);
    }
}
