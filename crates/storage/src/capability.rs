//! Which volumes a client connection may reach: the capabilities its client presented
//! ([`tessera_proto::capability`], signed by a manager), checked against every I/O request
//! the connection sends. A client certificate says what a client may do in general; only a
//! capability says which volume, and with which writer epoch, so a connection (or a client
//! certificate) cannot reach a volume the manager did not open to it.
//!
//! Rules, for a client's connection (nodes and managers present none; an insecure node has
//! no identities and checks nothing):
//! - a capability is accepted if a manager's certificate of the cluster signed it, it names
//!   this connection's client, and it has not expired; the connection keeps it until then;
//! - a read or block status needs one for the request's volume;
//! - a write, zeroes, discard or fence needs one for the volume with exactly the request's
//!   writer epoch (epoch 0 is read-only): a client cannot claim an epoch it was not given,
//!   and the group refuses an epoch older than the newest it has seen;
//! - a fence-only capability (a volume's newest epoch when no one holds it) allows fences
//!   at its epoch and nothing else; no client fence may move the snapshot sequence.
//!
//! The signature is checked last, and only for a capability that adds to what the
//! connection holds: presenting one again costs nothing.
//!
//! Refusals are answered `Reply::Unauthorized` (a client whose capability expired fetches
//! another and retries) and counted with the node's other refusals; a connection that
//! presents [`MAX_REFUSED`] forged or stolen ones is dropped. Must never: let I/O of
//! a client through on a capability that failed any of these checks.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_net::{Identity, Security};
use tessera_proto::capability::{Capability, Signed};
use tessera_proto::data::{Op, Request};

/// Most capabilities one connection holds (a gateway serving many volumes presents one per
/// volume it uses there); past it, the one expiring soonest makes room.
pub(crate) const MAX_HELD: usize = 4096;

/// Forged or stolen capabilities presented on one connection before it is dropped (each
/// may cost a signature check: a client cannot make the node verify garbage at will).
pub(crate) const MAX_REFUSED: u32 = 16;

/// What the capabilities of one (volume, writer epoch) allow, as expiries (Unix ms; 0:
/// nothing).
#[derive(Default, Clone, Copy)]
struct Grant {
    /// Writes, zeroes, discards and fences (reads too): a full capability's.
    writes: u64,
    /// Fences only: any capability's of the epoch.
    fences: u64,
}

/// The capabilities one connection holds, by (volume, writer epoch), and the latest expiry
/// of a volume's full ones (what a read needs).
#[derive(Default)]
pub(crate) struct Capabilities {
    caps: HashMap<(u64, u64), Grant>,
    reads: HashMap<u64, u64>,
    /// Forged or stolen ones presented so far.
    pub(crate) hostile: u32,
}

/// Why a presented capability was refused; `hostile` if it was forged, malformed or
/// someone else's (an expired one is a clock's or a slow client's fault).
struct Refusal {
    why: String,
    hostile: bool,
}

fn hostile(why: String) -> Refusal {
    Refusal { why, hostile: true }
}

impl Capabilities {
    /// Checks a presented capability (the body of a `Capability` frame) and keeps it.
    /// Counted and explained if refused.
    pub(crate) fn present(
        &mut self,
        security: &Security,
        who: Option<&Identity>,
        body: &[u8],
    ) -> Result<(), String> {
        self.accept(security, who, body, now_ms()).map_err(|r| {
            self.hostile += u32::from(r.hostile);
            crate::authz::refused();
            r.why
        })
    }

    fn accept(
        &mut self,
        security: &Security,
        who: Option<&Identity>,
        body: &[u8],
        now: u64,
    ) -> Result<(), Refusal> {
        let holder = match who {
            Some(Identity::Client { name, .. }) => name,
            // Insecure, or a node or manager: nothing to hold (their I/O is not checked).
            _ => return Ok(()),
        };
        // What costs nothing first: the signature is checked last, and only for a
        // capability that would add something.
        let malformed = |e| hostile(format!("a malformed capability: {e}"));
        let signed = Signed::decode(body).map_err(malformed)?;
        let cap = Capability::decode(&signed.body).map_err(malformed)?;
        if &cap.holder != holder {
            return Err(hostile(format!(
                "a capability of client {:?} presented by client {holder:?}",
                cap.holder
            )));
        }
        if cap.expires_ms <= now {
            return Err(Refusal {
                why: format!(
                    "a capability of volume {} that expired {} ms ago",
                    cap.volume,
                    now - cap.expires_ms
                ),
                hostile: false,
            });
        }
        let key = (cap.volume, cap.epoch);
        let had = self.caps.get(&key).copied().unwrap_or_default();
        let until = if cap.fence_only {
            had.fences
        } else {
            had.writes
        };
        if until >= cap.expires_ms {
            return Ok(());
        }
        let signer = security
            .verify(&signed)
            .map_err(|e| hostile(format!("a capability not signed by a manager: {e}")))?;
        if !matches!(signer, Identity::Manager(_)) {
            return Err(hostile(format!(
                "a capability signed by {signer}, not a manager"
            )));
        }
        if self.caps.len() >= MAX_HELD && !self.caps.contains_key(&key) {
            self.make_room(now);
        }
        let g = self.caps.entry(key).or_default();
        g.fences = g.fences.max(cap.expires_ms);
        if !cap.fence_only {
            g.writes = g.writes.max(cap.expires_ms);
            let r = self.reads.entry(cap.volume).or_default();
            *r = (*r).max(cap.expires_ms);
        }
        Ok(())
    }

    /// Drops the expired, or else the one expiring soonest.
    fn make_room(&mut self, now: u64) {
        self.caps.retain(|_, g| g.fences > now);
        self.reads.retain(|_, until| *until > now);
        if self.caps.len() < MAX_HELD {
            return;
        }
        if let Some(key) = self
            .caps
            .iter()
            .min_by_key(|(_, g)| g.fences)
            .map(|(k, _)| *k)
        {
            self.caps.remove(&key);
        }
    }

    /// `Ok` if this connection of `who` may send `req`; why not otherwise (counted).
    pub(crate) fn allows(&self, who: Option<&Identity>, req: &Request) -> Result<(), String> {
        if !matches!(who, Some(Identity::Client { .. })) {
            return Ok(());
        }
        let res = self.check(req, now_ms());
        if res.is_err() {
            crate::authz::refused();
        }
        res
    }

    fn check(&self, req: &Request, now: u64) -> Result<(), String> {
        let volume = req.addr.volume;
        let grant = || {
            self.caps
                .get(&(volume, req.epoch))
                .copied()
                .unwrap_or_default()
        };
        let ok = match req.op {
            Op::Read | Op::BlockStatus => self.reads.get(&volume).is_some_and(|t| *t > now),
            Op::Write | Op::WriteZeroes | Op::Discard => req.epoch != 0 && grant().writes > now,
            // A client's fence moves the writer epoch only: a snapshot's sequence is the
            // manager's to move.
            Op::Fence => req.epoch != 0 && req.seq == 0 && grant().fences > now,
            // Copies between replicas are nodes' (refused to clients before this).
            Op::CatchUpList | Op::CatchUpChecksums | Op::CatchUpRead => false,
        };
        if ok {
            return Ok(());
        }
        Err(match req.op {
            Op::Read | Op::BlockStatus => {
                format!("no live capability for volume {volume} on this connection")
            }
            Op::Fence if req.seq != 0 => "a client's fence may not move the sequence".into(),
            _ => format!(
                "no live capability to write volume {volume} at writer epoch {} on this \
                 connection",
                req.epoch
            ),
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
