//! The clients: one sequential client a block, with its own routing and retries, checked
//! against a linearizable register.

use super::*;

impl Register {
    pub(super) fn read(&mut self, v: u32) -> Result<(), String> {
        if v == self.current || self.maybe.remove(&v) || self.before_fence.contains(&v) {
            self.current = v;
            self.before_fence.clear();
            return Ok(());
        }
        Err(format!(
            "read {v:#x}, but the register holds {:#x} (or one of {:?}; fenced writes were {:?})",
            self.current, self.maybe, self.before_fence
        ))
    }

    pub(super) fn wrote(&mut self, v: u32, acked: bool) {
        if acked {
            self.maybe.remove(&v);
            self.current = v;
            self.before_fence.clear();
        } else {
            self.maybe.insert(v);
        }
    }

    /// The writer of every unanswered write so far was fenced (and the fence is answered).
    pub(super) fn fence(&mut self) {
        self.before_fence.extend(self.maybe.drain());
    }
}

pub(super) fn block_of(v: u32) -> Bytes {
    Bytes::from(v.to_le_bytes().repeat(1024))
}

impl Sim {
    /// Each block's client: take its answer, or give up on it, or send the next request.
    pub(super) fn clients(&mut self, now: Instant, faults: bool) -> Result<(), String> {
        if faults {
            self.orphan_step(now);
        }
        let writes_may_go = self.fence_step(now);
        for b in 0..BLOCKS as usize {
            if let Some(p) = self.clients[b].pending.take() {
                let answer = p.answer.lock().unwrap().take();
                let c = &mut self.clients[b];
                match answer {
                    Some(Reply::Ok(data)) if p.req.op == Op::Read => {
                        let v = data
                            .get(..4)
                            .and_then(|w| w.try_into().ok())
                            .map_or(0, u32::from_le_bytes);
                        if data.len() != 4096 || data != block_of(v) {
                            return Err(format!("block {b}: torn or short read"));
                        }
                        trace!("block {b}: read {v:#x} at node {}", p.to);
                        c.register
                            .read(v)
                            .map_err(|e| format!("block {b} (read at node {}): {e}", p.to))?;
                        self.fig.reads += 1;
                        c.calm_answers += usize::from(!faults);
                        c.calm_reads += usize::from(!faults);
                    }
                    Some(Reply::Ok(_)) => {
                        trace!("block {b}: wrote {:#x} at node {}", p.value, p.to);
                        c.register.wrote(p.value, true);
                        self.fig.acked += 1;
                        c.calm_answers += usize::from(!faults);
                    }
                    Some(Reply::NotLeader { hint }) if hint != 0 && hint != p.to => {
                        c.leader_hint = hint;
                        self.retry(b, p, now);
                    }
                    Some(_) => {
                        c.leader_hint = p.to % NODES + 1;
                        self.retry(b, p, now);
                    }
                    None if now.saturating_duration_since(p.sent) > ATTEMPT => {
                        c.leader_hint = p.to % NODES + 1;
                        self.retry(b, p, now);
                    }
                    None => c.pending = Some(p),
                }
                continue;
            }
            if writes_may_go && self.rng.gen_bool(0.3) {
                let addr = ChunkAddr {
                    group: GROUP,
                    volume: 1,
                    chunk: 0,
                };
                let off = b as u32 * 4096;
                // Now and then a client's routing is stale: it asks some node.
                let to = if self.rng.gen_bool(0.25) {
                    self.rng.gen_range(1..=NODES)
                } else {
                    self.clients[b].leader_hint
                };
                if self.rng.gen_bool(0.5) {
                    let v = self.next_value;
                    self.next_value += 1;
                    let mut req = Request::write(addr, off, block_of(v));
                    req.epoch = self.epoch;
                    req.id = self.next_id;
                    self.next_id += 1;
                    self.send(b, req, v, to, now, now);
                } else {
                    let req = Request::other(Op::Read, addr, off, 4096);
                    self.send(b, req, 0, to, now, now);
                }
            }
        }
        Ok(())
    }

    /// Tries the request again (the same request id), at the client's leader hint; a
    /// write retried for too long is given up: it may still take effect, once.
    pub(super) fn retry(&mut self, b: usize, p: Pending, now: Instant) {
        if p.req.op == Op::Write && now.saturating_duration_since(p.first_sent) > ATTEMPT * 5 {
            self.clients[b].register.wrote(p.value, false);
            return;
        }
        let to = self.clients[b].leader_hint;
        self.send(b, p.req, p.value, to, now, p.first_sent);
    }

    pub(super) fn send(
        &mut self,
        b: usize,
        req: Request,
        value: u32,
        to: u64,
        now: Instant,
        first: Instant,
    ) {
        let p = self.deliver_request(req, value, to, now, first);
        self.clients[b].pending = Some(p);
    }

    pub(super) fn deliver_request(
        &mut self,
        req: Request,
        value: u32,
        to: u64,
        now: Instant,
        first: Instant,
    ) -> Pending {
        let answer: Slot<Reply> = Arc::new(Mutex::new(None));
        let a2 = answer.clone();
        if let Some(n) = self.node(to) {
            n.poller.handle(Event::Request(
                req.clone(),
                Box::new(move |r| *a2.lock().unwrap() = Some(r)),
                Instant::now(),
            ));
        }
        Pending {
            req,
            value,
            to,
            answer,
            sent: now,
            first_sent: first,
        }
    }
}
