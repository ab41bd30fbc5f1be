//! Attachments: at most one client writes a volume, and a client that dies lets go.
//!
//! Owns the rules of the read-write attachment: granting one with a new **writer epoch**
//! (replicated in the volume's record), renewing its lease, ending it (by its holder, by
//! an operator with `force`, or by a newcomer once the lease ran out), and which epochs
//! may still route. The lease is leader memory ([`Leases`]), like node liveness: a manager
//! that takes over the lead counts a whole lease for every attachment from then on.
//!
//! The epoch is what makes this safe, not the lease: the new holder fences every group of
//! the volume with its epoch before its first write (storage nodes then refuse older
//! epochs), so a holder that lost its lease without noticing (paused, partitioned, its
//! clock stopped) can no longer write. Pure code: plans, the caller commits.
//!
//! Must never: grant an attachment while another client's lease runs; reuse or lower an
//! epoch; let an ended epoch allocate chunks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tessera_proto::control::ControlError;

use crate::state::{Attachment, Mutation, State, VolumeRecord};

/// How long an attachment lasts without a renewal. Clients renew every third of it.
pub const LEASE: Duration = Duration::from_secs(10);
/// Longest client name kept in a volume's record.
const MAX_CLIENT_NAME: usize = 256;

/// When each attachment's lease ends, as this manager (the leader) saw renewals.
#[derive(Debug, Default)]
pub struct Leases {
    until: HashMap<u64, Instant>,
}

impl Leases {
    /// Forget everything: a new term of leadership starts every lease afresh.
    pub fn reset(&mut self) {
        self.until.clear();
    }

    pub fn renewed(&mut self, volume_id: u64, now: Instant) {
        self.until.insert(volume_id, now + LEASE);
    }

    pub fn ended(&mut self, volume_id: u64) {
        self.until.remove(&volume_id);
    }

    /// Time left on the lease of `volume_id`'s attachment. One this manager has not seen
    /// renewed yet gets a whole lease from now (it may have been renewed with the previous
    /// leader a moment ago).
    pub fn left(&mut self, volume_id: u64, now: Instant) -> Duration {
        let until = *self.until.entry(volume_id).or_insert(now + LEASE);
        until.saturating_duration_since(now)
    }

    /// Time left without starting a lease (`None`: not seen by this manager).
    pub fn peek(&self, volume_id: u64, now: Instant) -> Option<Duration> {
        self.until
            .get(&volume_id)
            .map(|u| u.saturating_duration_since(now))
    }
}

fn conflict_held(rec: &VolumeRecord, a: &Attachment, left: Duration) -> ControlError {
    ControlError::Conflict(format!(
        "volume {:?} is attached read-write by {} (epoch {}, lease {:.1}s left); \
         `tessera volume detach {} --force` ends it",
        rec.name,
        a.client,
        a.epoch,
        left.as_secs_f64(),
        rec.name
    ))
}

/// Attaching `name` for `client`: the mutation to commit (none when `client` already holds
/// it) and the epoch granted. `lease_left`: what is left of the current holder's lease.
pub fn plan_attach(
    state: &State,
    name: &str,
    client: &str,
    holder: &str,
    now_unix: u64,
    lease_left: impl FnOnce(u64) -> Duration,
) -> Result<(Option<Mutation>, u64), ControlError> {
    if client.is_empty() || client.len() > MAX_CLIENT_NAME {
        return Err(ControlError::Invalid(format!(
            "an attachment needs a client name of 1 to {MAX_CLIENT_NAME} bytes"
        )));
    }
    let rec = state.volume_record(name)?;
    if let Some(a) = &rec.attachment {
        if a.client == client && a.holder == holder {
            // A retried attach, or the same client opening the volume again.
            return Ok((None, a.epoch));
        }
        let left = lease_left(rec.id);
        if !left.is_zero() {
            return Err(conflict_held(rec, a, left));
        }
    }
    let epoch = rec.epoch + 1;
    let m = Mutation::PutVolume(VolumeRecord {
        epoch,
        attachment: Some(Attachment {
            client: client.to_string(),
            epoch,
            since_unix: now_unix,
            holder: holder.to_string(),
        }),
        ..rec.clone()
    });
    Ok((Some(m), epoch))
}

/// The holder of `epoch` renewing: refused once its attachment ended.
pub fn check_holder(state: &State, volume_id: u64, epoch: u64) -> Result<(), ControlError> {
    let rec = state.volume_record_by_id(volume_id)?;
    match &rec.attachment {
        Some(a) if a.epoch == epoch && epoch != 0 => Ok(()),
        other => Err(ended(rec, epoch, other.as_ref())),
    }
}

/// What a capability of writer epoch `epoch` may allow `holder` (a certificate name): to
/// write, if `holder` holds the volume at `epoch` (`Ok(false)`); only to fence, if no one
/// holds it and `epoch` is its newest (`Ok(true)`: a forced detach's epoch, which its
/// caller fences the groups with; fencing with the newest epoch only ever stops older
/// writers).
pub fn check_writer(
    state: &State,
    volume_id: u64,
    epoch: u64,
    holder: &str,
) -> Result<bool, ControlError> {
    let rec = state.volume_record_by_id(volume_id)?;
    match &rec.attachment {
        // (One attached before holders were recorded is anyone's the caller's role allows.)
        Some(a)
            if a.epoch == epoch && epoch != 0 && (a.holder == holder || a.holder.is_empty()) =>
        {
            Ok(false)
        }
        Some(a) if a.epoch == epoch && epoch != 0 => Err(ControlError::Conflict(format!(
            "volume {:?} at epoch {epoch} is held by another client ({})",
            rec.name, a.client
        ))),
        None if epoch != 0 && epoch == rec.epoch => Ok(true),
        other => Err(ended(rec, epoch, other.as_ref())),
    }
}

fn ended(rec: &VolumeRecord, epoch: u64, now: Option<&Attachment>) -> ControlError {
    ControlError::Conflict(match now {
        Some(a) => format!(
            "volume {:?}: the attachment of epoch {epoch} was ended; {} holds it now (epoch {})",
            rec.name, a.client, a.epoch
        ),
        None => format!(
            "volume {:?}: the attachment of epoch {epoch} was ended (detached)",
            rec.name
        ),
    })
}

/// May a client of writer epoch `epoch` (0: a reader) look up routes, and allocate chunks?
/// A reader looks up; only the current holder allocates; an ended epoch does neither.
pub fn check_route(
    state: &State,
    volume_id: u64,
    epoch: u64,
    allocate: bool,
) -> Result<(), ControlError> {
    let rec = state.volume_record_by_id(volume_id)?;
    let current = rec.attachment.as_ref();
    if epoch == 0 && !allocate {
        return Ok(());
    }
    if epoch == 0 {
        return Err(ControlError::Conflict(format!(
            "volume {:?}: writing needs a read-write attachment",
            rec.name
        )));
    }
    match current {
        Some(a) if a.epoch == epoch => Ok(()),
        other => Err(ended(rec, epoch, other)),
    }
}

/// Ending an attachment: its holder (`epoch`) letting go; or someone else (`epoch` 0): an
/// operator, once the holder's lease ran out (`lease_left`), or at once with `force`.
/// Returns the mutation (none if there is nothing to end) and the epoch the caller must
/// fence the volume's groups with (0: none: the holder let go itself). Ending someone
/// else's attachment when there is none (a retried call, or one whose fence failed) still
/// answers the volume's epoch, to fence with again.
pub fn plan_detach(
    state: &State,
    name: &str,
    epoch: u64,
    force: bool,
    lease_left: impl FnOnce(u64) -> Duration,
) -> Result<(Option<Mutation>, u64), ControlError> {
    let rec = state.volume_record(name)?;
    let Some(a) = &rec.attachment else {
        return Ok((None, if epoch == 0 { rec.epoch } else { 0 }));
    };
    if epoch != 0 {
        if a.epoch != epoch {
            // Already ended (e.g. forced, and taken by another): nothing of ours to end.
            return Ok((None, 0));
        }
        let m = Mutation::PutVolume(VolumeRecord {
            attachment: None,
            ..rec.clone()
        });
        return Ok((Some(m), 0));
    }
    let left = lease_left(rec.id);
    if !force && !left.is_zero() {
        return Err(conflict_held(rec, a, left));
    }
    // The holder may still be writing: move to a new epoch so the fence refuses it.
    let fence = rec.epoch + 1;
    let m = Mutation::PutVolume(VolumeRecord {
        epoch: fence,
        attachment: None,
        ..rec.clone()
    });
    Ok((Some(m), fence))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let mut s = State::default();
        let m = s.plan_create_volume("v", 1 << 30, None, 0).unwrap();
        s.apply(&m);
        s
    }

    fn apply(s: &mut State, m: Option<Mutation>) {
        if let Some(m) = m {
            s.apply(&m);
        }
    }

    const LIVE: fn(u64) -> Duration = |_| Duration::from_secs(5);
    const EXPIRED: fn(u64) -> Duration = |_| Duration::ZERO;

    #[test]
    fn one_writer_at_a_time_with_a_new_epoch_each_time() {
        let mut s = state();
        let (m, e1) = plan_attach(&s, "v", "gw-a", "", 10, LIVE).unwrap();
        apply(&mut s, m);
        assert_eq!(e1, 1);
        // The same client again (a retry): same epoch, nothing to commit.
        assert_eq!(
            plan_attach(&s, "v", "gw-a", "", 11, LIVE).unwrap(),
            (None, 1)
        );
        // Another client while the lease runs: refused, naming the holder.
        let err = plan_attach(&s, "v", "gw-b", "", 12, LIVE).unwrap_err();
        assert!(
            matches!(&err, ControlError::Conflict(m) if m.contains("gw-a")),
            "{err}"
        );
        // Once it ran out: granted, with a newer epoch; the old holder is ended.
        let (m, e2) = plan_attach(&s, "v", "gw-b", "", 13, EXPIRED).unwrap();
        apply(&mut s, m);
        assert_eq!(e2, 2);
        let id = s.volume_record("v").unwrap().id;
        assert!(check_holder(&s, id, e1).is_err());
        assert!(check_holder(&s, id, e2).is_ok());
        assert!(check_route(&s, id, e1, false).is_err());
        assert!(check_route(&s, id, e2, true).is_ok());
        assert!(check_route(&s, id, 0, false).is_ok(), "readers route");
        assert!(
            check_route(&s, id, 0, true).is_err(),
            "readers do not allocate"
        );
        // The holder detaches; the epoch stays, the next attach gets a newer one.
        let (m, fence) = plan_detach(&s, "v", e2, false, LIVE).unwrap();
        apply(&mut s, m);
        assert_eq!(fence, 0);
        assert!(s.volume_record("v").unwrap().attachment.is_none());
        assert!(check_route(&s, id, e2, true).is_err());
        let (m, e3) = plan_attach(&s, "v", "gw-a", "", 14, LIVE).unwrap();
        apply(&mut s, m);
        assert_eq!(e3, 3);
    }

    #[test]
    fn a_forced_detach_moves_to_a_new_epoch_to_fence_with() {
        let mut s = state();
        let (m, e1) = plan_attach(&s, "v", "gw-a", "", 10, LIVE).unwrap();
        apply(&mut s, m);
        // A stale holder's detach does nothing.
        assert_eq!(
            plan_detach(&s, "v", e1 + 5, false, LIVE).unwrap(),
            (None, 0)
        );
        // An operator's plain detach waits for the lease; a forced one does not.
        assert!(plan_detach(&s, "v", 0, false, LIVE).is_err());
        let (m, fence) = plan_detach(&s, "v", 0, true, LIVE).unwrap();
        apply(&mut s, m);
        assert_eq!(fence, e1 + 1);
        let rec = s.volume_record("v").unwrap();
        assert!(rec.attachment.is_none());
        assert_eq!(rec.epoch, fence);
        // A forced detach retried (nothing attached any more): the epoch to fence with again.
        assert_eq!(plan_detach(&s, "v", 0, true, LIVE).unwrap(), (None, fence));
        let (m, e2) = plan_attach(&s, "v", "gw-b", "", 11, LIVE).unwrap();
        apply(&mut s, m);
        assert!(e2 > fence);
        let (m, _) = plan_detach(&s, "v", e2, false, LIVE).unwrap();
        apply(&mut s, m);
        // The holder let go itself: a plain detach by an operator finds nothing to end.
        let (m, again) = plan_detach(&s, "v", 0, false, EXPIRED).unwrap();
        assert_eq!((m, again), (None, e2));
    }

    #[test]
    fn a_lease_not_seen_by_this_manager_starts_whole() {
        let mut l = Leases::default();
        let t = Instant::now();
        assert_eq!(l.peek(1, t), None);
        assert_eq!(l.left(1, t), LEASE);
        assert_eq!(l.left(1, t + LEASE), Duration::ZERO);
        l.renewed(1, t + LEASE);
        assert_eq!(l.left(1, t + LEASE), LEASE);
        l.reset();
        assert_eq!(l.peek(1, t), None);
    }
}
