//! The faults a schedule draws: crashes (some armed at fail points), partitions, transfers,
//! writer changes with fences and abandoned writes.

use super::*;

impl Sim {
    pub(super) fn fault(&mut self, step: usize) -> Result<(), String> {
        let r: f64 = self.rng.r#gen();
        let node = self.rng.gen_range(1..=NODES);
        trace!("fault draw {r:.3} node {node}");
        if r < 0.003 {
            // A crash now, between two steps (nothing queued in its log).
            let c = Crash {
                at: CrashPoint::AnyWrite,
                keep: 0,
                torn: None,
            };
            self.crash_restart(node, c)?;
        } else if r < 0.007 {
            // A crash at a random moment of the node's next log write.
            let c = self.crash_plan(CrashPoint::AnyWrite);
            self.armed.insert(node, (c, step + 20));
        } else if r < 0.011 {
            // A crash armed at a fail point, for a while.
            let at = match self.rng.gen_range(0..3) {
                0 => CrashPoint::Install,
                1 => CrashPoint::Removal,
                _ => CrashPoint::ConfApplied,
            };
            let c = self.crash_plan(at);
            self.armed.insert(node, (c, step + 200));
        } else if r < 0.020 {
            let other = self.rng.gen_range(1..=NODES);
            if other != node {
                let until = step + self.rng.gen_range(10..150);
                self.cut
                    .insert((node.min(other), node.max(other)), (step, until));
            }
        } else if r < 0.032 {
            // A leadership transfer; now and then the old leader is cut off right after
            // its MsgTimeoutNow left (leader balancing meeting a partition).
            let Some(l) = self.leader() else {
                return Ok(());
            };
            if let Some(n) = self.node(l) {
                n.poller.handle(Event::TransferLeader {
                    group: GROUP,
                    to: node,
                    respond: Box::new(|_| {}),
                });
            }
            self.settle(l)?;
            if self.rng.gen_bool(0.5) {
                let from = step + self.rng.gen_range(1..4);
                let until = from + self.rng.gen_range(20..80);
                for other in 1..=NODES {
                    if other != l {
                        self.cut.insert((l.min(other), l.max(other)), (from, until));
                    }
                }
            }
        } else if r < 0.040 && self.change.is_none() {
            // The manager replaces one replica by the spare node.
            let spare = (1..=NODES).find(|id| !self.members.contains(id));
            let Some(added) = spare else {
                return Ok(());
            };
            if !self.gone.contains(&added) {
                return Ok(());
            }
            let removed = self.members[self.rng.gen_range(0..self.members.len())];
            let mut target: Vec<u64> = self.members.clone();
            target.retain(|&id| id != removed);
            target.push(added);
            trace!("change: replace {removed} by {added}: {target:?}");
            self.change = Some(Change {
                target,
                removed,
                answer: Arc::default(),
                done: false,
            });
            self.fig.changes += 1;
        } else if r < 0.043 && self.fencing.is_none() {
            self.change_writer(virtual_clock::now());
        } else {
            return Ok(());
        }
        self.fig.faults += 1;
        Ok(())
    }

    /// The writer dies and another attaches: the old one's requests are left where they are
    /// (in queues, in logs) or sent again later; the new one fences the group first.
    pub(super) fn change_writer(&mut self, now: Instant) {
        self.epoch += 1;
        self.fig.writers += 1;
        trace!("writer change: epoch {}", self.epoch);
        for c in &mut self.clients {
            if let Some(p) = c.pending.take()
                && p.req.op == Op::Write
            {
                c.register.wrote(p.value, false);
                self.orphans.push(p.req);
            }
        }
        let addr = ChunkAddr {
            group: GROUP,
            volume: 1,
            chunk: 0,
        };
        let mut req = Request::other(Op::Fence, addr, 0, 0);
        req.epoch = self.epoch;
        req.id = self.next_id;
        self.next_id += 1;
        let to = self.clients[0].leader_hint;
        self.fencing = Some(self.deliver_request(req, 0, to, now, now));
    }

    /// The fence: answered, or sent again. Returns whether writes may go.
    pub(super) fn fence_step(&mut self, now: Instant) -> bool {
        let Some(p) = self.fencing.take() else {
            return true;
        };
        let answer = p.answer.lock().unwrap().take();
        match answer {
            Some(Reply::Ok(_)) => {
                trace!("fence of epoch {} answered", p.req.epoch);
                for c in &mut self.clients {
                    c.register.fence();
                }
                return true;
            }
            Some(Reply::NotLeader { hint }) if hint != 0 && hint != p.to => {
                self.fencing = Some(self.deliver_request(p.req, 0, hint, now, p.first_sent));
            }
            None if now.saturating_duration_since(p.sent) <= ATTEMPT => self.fencing = Some(p),
            _ => {
                let to = p.to % NODES + 1;
                self.fencing = Some(self.deliver_request(p.req, 0, to, now, p.first_sent));
            }
        }
        false
    }

    /// Now and then a fenced writer's write arrives again, at any node.
    pub(super) fn orphan_step(&mut self, now: Instant) {
        if self.orphans.is_empty() || !self.rng.gen_bool(0.05) {
            return;
        }
        let i = self.rng.gen_range(0..self.orphans.len());
        let req = self.orphans.swap_remove(i);
        let to = self.rng.gen_range(1..=NODES);
        trace!(
            "a fenced writer's write (epoch {}) again at node {to}",
            req.epoch
        );
        let _ = self.deliver_request(req, 0, to, now, now);
    }

    pub(super) fn crash_plan(&mut self, at: CrashPoint) -> Crash {
        Crash {
            at,
            keep: self.rng.gen_range(0..3),
            torn: self
                .rng
                .gen_bool(0.6)
                .then(|| self.rng.gen_range(0..6usize)),
        }
    }
}
