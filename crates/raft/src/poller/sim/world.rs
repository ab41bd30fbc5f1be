//! The harness's world: the nodes, the network between them and one step of virtual time
//! (messages delivered, crashes and restarts).

use super::*;

impl Sim {
    pub(super) fn new(seed: u64) -> Sim {
        virtual_clock::start();
        virtual_clock::set_simulated(true);
        let stores: Stores = Arc::default();
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let dir = Arc::new(tempfile::tempdir_in(tmp_root()).unwrap());
            let mut n = SimNode::open(dir, id, &stores);
            n.poller.votes_after = virtual_clock::now();
            if id <= 3 {
                n.poller
                    .handle(Event::CreateGroup(spec(&[1, 2, 3], false, 0)));
            }
            n.settle(None).unwrap();
            nodes.push(Some(n));
        }
        Sim {
            rng: StdRng::seed_from_u64(seed),
            stores,
            nodes,
            net: Vec::new(),
            cut: HashMap::new(),
            armed: HashMap::new(),
            clients: (0..BLOCKS)
                .map(|_| Client {
                    register: Register::default(),
                    pending: None,
                    leader_hint: 1,
                    calm_answers: 0,
                    calm_reads: 0,
                })
                .collect(),
            members: vec![1, 2, 3],
            epoch: 1,
            fencing: None,
            orphans: Vec::new(),
            min_term: 0,
            change: None,
            gone: HashSet::new(),
            newest_conf: None,
            acked: HashMap::new(),
            committed: HashMap::new(),
            next_value: 1,
            next_id: 1,
            fig: Figures::default(),
            stuck_replaced: 0,
        }
    }

    pub(super) fn node(&mut self, id: u64) -> Option<&mut SimNode> {
        self.nodes[(id - 1) as usize].as_mut()
    }

    pub(super) fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .flatten()
            .filter(|n| n.is_leader())
            .max_by_key(|n| n.poller.groups[&GROUP].raw.raft.term)
            .map(|n| n.id)
    }

    pub(super) fn connected(&self, a: u64, b: u64, step: usize) -> bool {
        self.cut
            .get(&(a.min(b), a.max(b)))
            .is_none_or(|&(from, _)| step < from)
    }

    /// Settles node `id`, with its armed crash if any; a crash that strikes restarts it.
    pub(super) fn settle(&mut self, id: u64) -> Result<(), String> {
        let crash = self.armed.get(&id).map(|(c, _)| *c);
        let Some(n) = self.node(id) else {
            return Ok(());
        };
        let result = n.settle(crash);
        if let Some(msg) = n.fatal.lock().unwrap().clone() {
            return Err(format!("node {id} stopped: {msg}"));
        }
        match result {
            Ok(()) => Ok(()),
            Err(c) => {
                self.armed.remove(&id);
                self.crash_restart(id, c)
            }
        }
    }

    pub(super) fn crash_restart(&mut self, id: u64, c: Crash) -> Result<(), String> {
        self.note_newest_conf();
        let Some(n) = self.nodes[(id - 1) as usize].take() else {
            return Ok(());
        };
        self.fig.crashes += 1;
        trace!("crash node {id} {c:?}");
        let commit = self
            .nodes
            .iter()
            .flatten()
            .filter_map(|n| n.poller.groups.get(&GROUP))
            .map(|g| g.raw.raft.raft_log.committed)
            .max()
            .unwrap_or(0)
            .max(
                n.poller
                    .groups
                    .get(&GROUP)
                    .map_or(0, |g| g.raw.raft.raft_log.committed),
            );
        // A replica being destroyed has applied its removal (or was told to go after one).
        let leaving = n.poller.destroying.contains(&GROUP);
        let hosted = n.hosts();
        let mut n = n.restart(&self.stores);
        let voter = hosted
            && !leaving
            && self.newest_conf.as_ref().is_some_and(|(_, _, cs)| {
                cs.voters.contains(&id) || cs.voters_outgoing.contains(&id)
            });
        if !n.hosts() && voter && self.acked.get(&id).is_some_and(|&(_, a)| a > 0) {
            return Err(format!(
                "node {id}, a voter that acknowledged entries, lost its replica in a crash \
                 ({c:?}); newest configuration {:?}",
                self.newest_conf
            ));
        }
        if let Some(g) = n.poller.groups.get(&GROUP) {
            // Every committed entry it acknowledged is still in its log or applied.
            let have = g.raw.raft.raft_log.last_index().max(g.applied);
            let need = self.acked.get(&id).map_or(0, |&(_, a)| a).min(commit);
            if have < need {
                return Err(format!(
                    "node {id} forgot committed entries it acknowledged: it acknowledged \
                     {need}, its log ends at {} and it applied {} after a crash ({c:?})",
                    g.raw.raft.raft_log.last_index(),
                    g.applied
                ));
            }
        }
        if n.poller.quarantined.contains_key(&GROUP) {
            return Err(format!(
                "node {id} quarantined its replica after a crash ({c:?})"
            ));
        }
        if self.gone.contains(&id) && n.hosts() {
            return Err(format!(
                "node {id}: a replica whose removal was durable came back after a crash ({c:?})"
            ));
        }
        let settled = n.settle(None);
        self.nodes[(id - 1) as usize] = Some(n);
        settled.map_err(|_| "no crash was armed".to_string())
    }

    /// One step: time moves on, the nodes tick, the network delivers, the manager and
    /// the clients act, faults strike.
    pub(super) fn step(&mut self, step: usize, faults: bool) -> Result<(), String> {
        let now = virtual_clock::advance(STEP);
        if tracing() {
            let roles: Vec<String> = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|n| {
                    let g = n.poller.groups.get(&GROUP)?;
                    let r = &g.raw.raft;
                    let prs: Vec<String> = if g.is_leader() {
                        r.prs()
                            .iter()
                            .map(|(id, p)| format!("{id}={}{:?}", p.matched, p.state))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let cs = r.prs().conf().to_conf_state();
                    let mut incoming = cs.voters.clone();
                    incoming.sort_unstable();
                    let mut outgoing = cs.voters_outgoing.clone();
                    outgoing.sort_unstable();
                    let joint = if outgoing.is_empty() {
                        String::new()
                    } else {
                        format!("&{outgoing:?}")
                    };
                    Some(format!(
                        "{}:{:?}/t{}/c{}/a{}/l{}{:?}{joint}{}",
                        n.id,
                        r.state,
                        r.term,
                        r.raft_log.committed,
                        g.applied,
                        r.raft_log.last_index(),
                        incoming,
                        prs.join(",")
                    ))
                })
                .collect();
            eprintln!("step {step}: {}", roles.join(" "));
        }
        self.cut.retain(|_, (_, until)| *until > step);
        self.armed.retain(|_, (_, until)| *until > step);
        for id in 1..=NODES {
            if let Some(n) = self.node(id)
                && now >= n.poller.next_tick
            {
                n.poller.tick(now);
            }
            self.settle(id)?;
        }
        for id in 1..=NODES {
            if let Some(n) = self.node(id) {
                let sent = n.take_sent();
                for (_, m) in &sent {
                    if m.get_msg_type() == raft::eraftpb::MessageType::MsgAppendResponse
                        && !m.reject
                    {
                        let a = self.acked.entry(id).or_default();
                        *a = if m.term > a.0 {
                            (m.term, m.index)
                        } else {
                            (a.0, a.1.max(m.index))
                        };
                    }
                }
                self.net.extend(sent.into_iter().map(|(to, m)| (id, to, m)));
            }
        }
        let mut net = std::mem::take(&mut self.net);
        // In a deterministic order first, then shuffled: reordered; some lost, some
        // duplicated, some held back a step.
        net.sort_by_key(|(from, to, m)| {
            let kind = m.get_msg_type() as i32;
            (
                *from, *to, kind, m.term, m.index, m.log_term, m.commit, m.reject,
            )
        });
        for i in (1..net.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            net.swap(i, j);
        }
        let mut batches: HashMap<u64, Vec<(u64, Message)>> = HashMap::new();
        for (from, to, m) in net {
            // Once the faults stop, the network stops losing messages too.
            let r: f64 = if faults { self.rng.r#gen() } else { 1.0 };
            if r < 0.03 || !self.connected(from, to, step) {
                continue;
            }
            if r < 0.08 {
                self.net.push((from, to, m));
                continue;
            }
            if r < 0.10 {
                batches.entry(to).or_default().push((from, m.clone()));
            }
            batches.entry(to).or_default().push((from, m));
        }
        for to in 1..=NODES {
            let msgs = batches.remove(&to).unwrap_or_default();
            if msgs.is_empty() {
                continue;
            }
            for (from, m) in &msgs {
                for x in [
                    *from,
                    to,
                    m.get_msg_type() as u64,
                    m.term,
                    m.index,
                    m.commit,
                ] {
                    self.fig.trace = (self.fig.trace ^ x).wrapping_mul(0x100_0000_01b3);
                }
            }
            if let Some(n) = self.node(to) {
                for (from, m) in msgs {
                    if std::env::var_os("TESSERA_SIM_MSGS").is_some() {
                        eprintln!(
                            "  {from}->{to} {:?} t{} i{} lt{} c{} rej{}",
                            m.get_msg_type(),
                            m.term,
                            m.index,
                            m.log_term,
                            m.commit,
                            m.reject
                        );
                    }
                    let bytes = Bytes::from(m.write_to_bytes().unwrap());
                    n.poller.handle(Event::Raft(RaftBatch {
                        from_node: from,
                        msgs: vec![(GROUP, bytes)],
                    }));
                }
                self.settle(to)?;
            }
        }
        self.note_newest_conf();
        self.check_committed()?;
        self.manage(step)?;
        if faults {
            self.fault(step)?;
        }
        self.clients(now, faults)
    }
}
