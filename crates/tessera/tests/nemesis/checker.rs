//! Linearizability of a history of 4 KiB blocks, each block checked as its own register.
//!
//! Every write in a run writes a value no other write uses, so a read names the one write
//! it observed (its *dictating* write). With that, linearizability of a register is decided
//! exactly in O(n log n) (Gibbons & Korach, "Testing shared memories", SIAM J. Comput. 1997;
//! the zone formulation of Golab, Li & Shah, PODC 2011), with no search:
//!
//! - each read must observe a value some write of the same block wrote (not garbage, not a
//!   torn block, not another block's value), or zeroes, the volume's initial value, which is
//!   treated as a write that finished before the run began;
//! - a read must not finish before its dictating write was even sent;
//! - a write and the reads that observed it form a *cluster*. With `f` the earliest
//!   completion and `s` the latest invocation among its operations, a cluster with `f < s`
//!   has a *forward zone* `(f, s)`: its write is linearized at or before `f`, some read of it
//!   at or after `s`, and no other write may come between. A cluster with `s <= f` has a
//!   *backward zone* `[s, f]`: all of it fits at one instant there;
//! - no two forward zones may overlap, and no backward zone may lie inside a forward zone.
//!
//! A history meeting all of these is linearizable, and each failure is a real anomaly: a
//! stale read (an acknowledged write overwritten in real time, then its predecessor read),
//! a lost acknowledged write (zeroes or an older value read after it), reads going back in
//! time. The unit tests below check this claim against an exhaustive search on thousands of
//! small random histories, ties included.
//!
//! Times are only compared, never subtracted: an operation's interval is widened by the
//! recording (invoked before the request was sent, completed after the reply was read),
//! which can only make the check more lenient, never invent a violation. A write that was
//! never acknowledged (timed out, connection lost, error) may or may not have taken effect:
//! its completion is +infinity, which lets it take effect at any time after it was sent or
//! never (an unobserved one then constrains nothing). A read without an answer observed
//! nothing and is ignored.

use std::collections::HashMap;
use std::fmt;

/// Nanoseconds since the start of the run.
pub type Time = u64;

/// What a read returned, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// All zeroes: the initial content.
    Zero,
    /// The value of the write with this id.
    Value(u64),
    /// Neither zeroes nor a block any write produced (torn, garbage, another block's data).
    Corrupt(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A write of the value with this id (unique in the history).
    Write(u64),
    Read(Observed),
}

#[derive(Clone, Debug)]
pub struct Op {
    pub block: u64,
    pub call: Call,
    pub invoke: Time,
    /// When the acknowledgement arrived; `None` when none did (a write may or may not
    /// have taken effect; a read observed nothing).
    pub complete: Option<Time>,
    /// Who issued it, for reports.
    pub client: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A read returned something no write produced.
    Corrupt,
    /// A read returned a well-formed value that no write of this block wrote.
    NeverWritten,
    /// Two writes used the same value: the history cannot be checked (a harness bug).
    DuplicateWrite,
    /// A read finished before the write it observed was sent.
    ReadBeforeWrite,
    /// Two clusters each need the other's write not to come between: some read saw a value
    /// already overwritten (stale read, lost write, time going backwards).
    ForwardZonesOverlap,
    /// A cluster must sit inside another one's span: its value, or the other one's, was
    /// read when it could no longer be the register's content.
    BackwardInForward,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub block: u64,
    pub kind: Kind,
    /// Indices into the checked history of the operations involved.
    pub ops: Vec<usize>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block {}: {:?}: {} (ops {:?})",
            self.block, self.kind, self.detail, self.ops
        )
    }
}

/// Extended time: the initial value's "write" at -inf, unacknowledged completions at +inf.
type T = i128;
const NEG_INF: T = i128::MIN;
const POS_INF: T = i128::MAX;

fn t(time: Time) -> T {
    T::from(time)
}

fn show(x: T) -> String {
    match x {
        NEG_INF => "-inf".into(),
        POS_INF => "+inf".into(),
        // Nanoseconds as seconds with millisecond precision is plenty for a report.
        x => format!("{:.3}s", x as f64 / 1e9),
    }
}

/// A write (or the initial value, `write: None`) with the reads that observed it.
struct Cluster {
    write: Option<usize>,
    ops: Vec<usize>,
    /// Earliest completion among its operations.
    f: T,
    /// Latest invocation among its operations.
    s: T,
}

impl Cluster {
    fn name(&self, history: &[Op]) -> String {
        match self.write {
            None => "zeroes".into(),
            Some(w) => match history[w].call {
                Call::Write(v) => format!("value {v:#x}"),
                Call::Read(_) => unreachable!("a cluster's write is a write"),
            },
        }
    }
}

/// Every violation in `history`; empty when it is linearizable.
pub fn check(history: &[Op]) -> Vec<Violation> {
    let mut blocks: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        blocks.entry(op.block).or_default().push(i);
    }
    let mut keys: Vec<u64> = blocks.keys().copied().collect();
    keys.sort();
    let mut out = Vec::new();
    for b in keys {
        check_block(history, b, &blocks[&b], &mut out);
    }
    out
}

fn check_block(history: &[Op], block: u64, ops: &[usize], out: &mut Vec<Violation>) {
    let violation = |kind, ops: Vec<usize>, detail: String| Violation {
        block,
        kind,
        ops,
        detail,
    };
    // Cluster 0 is the initial value, written at -inf.
    let mut clusters = vec![Cluster {
        write: None,
        ops: Vec::new(),
        f: NEG_INF,
        s: NEG_INF,
    }];
    let mut by_value: HashMap<u64, usize> = HashMap::new();
    for &i in ops {
        if let Call::Write(v) = history[i].call {
            if let Some(&c) = by_value.get(&v) {
                let first = clusters[c].write.unwrap_or(i);
                out.push(violation(
                    Kind::DuplicateWrite,
                    vec![first, i],
                    format!("value {v:#x} written twice"),
                ));
                continue;
            }
            let op = &history[i];
            by_value.insert(v, clusters.len());
            clusters.push(Cluster {
                write: Some(i),
                ops: vec![i],
                f: op.complete.map_or(POS_INF, t),
                s: t(op.invoke),
            });
        }
    }
    for &i in ops {
        let op = &history[i];
        let (Call::Read(seen), Some(done)) = (&op.call, op.complete) else {
            continue;
        };
        let c = match seen {
            Observed::Zero => 0,
            Observed::Corrupt(why) => {
                out.push(violation(Kind::Corrupt, vec![i], why.clone()));
                continue;
            }
            Observed::Value(v) => match by_value.get(v) {
                Some(&c) => c,
                None => {
                    out.push(violation(
                        Kind::NeverWritten,
                        vec![i],
                        format!("read value {v:#x}, which no write of this block wrote"),
                    ));
                    continue;
                }
            },
        };
        if let Some(w) = clusters[c].write
            && done < history[w].invoke
        {
            out.push(violation(
                Kind::ReadBeforeWrite,
                vec![w, i],
                format!(
                    "read of {} completed at {}, before its write was sent at {}",
                    clusters[c].name(history),
                    show(t(done)),
                    show(t(history[w].invoke))
                ),
            ));
        }
        let cl = &mut clusters[c];
        cl.ops.push(i);
        cl.f = cl.f.min(t(done));
        cl.s = cl.s.max(t(op.invoke));
    }

    // Forward zones sorted by start; `reach[k]`: the zone among the first k+1 reaching
    // furthest. Overlap is strict: zones that only touch can be ordered at the shared
    // instant (operations that merely touch are concurrent).
    let mut forward: Vec<usize> = (0..clusters.len())
        .filter(|&c| clusters[c].f < clusters[c].s)
        .collect();
    forward.sort_by_key(|&c| (clusters[c].f, clusters[c].s));
    let mut reach: Vec<usize> = Vec::with_capacity(forward.len());
    for (k, &c) in forward.iter().enumerate() {
        if let Some(&r) = reach.last() {
            if clusters[c].f < clusters[r].s {
                out.push(violation(
                    Kind::ForwardZonesOverlap,
                    [clusters[r].ops.clone(), clusters[c].ops.clone()].concat(),
                    format!(
                        "{} must hold from {} to {} and {} from {} to {}",
                        clusters[r].name(history),
                        show(clusters[r].f),
                        show(clusters[r].s),
                        clusters[c].name(history),
                        show(clusters[c].f),
                        show(clusters[c].s),
                    ),
                ));
            }
            reach.push(if clusters[c].s > clusters[r].s { c } else { r });
        } else {
            reach.push(c);
        }
        debug_assert_eq!(reach.len(), k + 1);
    }
    // A backward zone [s, f] lies inside a forward zone (f', s') when f' < s and f < s':
    // among the forward zones starting before s, the one reaching furthest decides.
    for (c, cl) in clusters.iter().enumerate() {
        if cl.f < cl.s {
            continue;
        }
        let before = forward.partition_point(|&z| clusters[z].f < cl.s);
        if before == 0 {
            continue;
        }
        let r = reach[before - 1];
        if r != c && cl.f < clusters[r].s {
            out.push(violation(
                Kind::BackwardInForward,
                [clusters[r].ops.clone(), cl.ops.clone()].concat(),
                format!(
                    "{} (between {} and {}) falls inside the span of {}, from {} to {}",
                    cl.name(history),
                    show(cl.s),
                    show(cl.f),
                    clusters[r].name(history),
                    show(clusters[r].f),
                    show(clusters[r].s),
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn w(v: u64, invoke: Time, complete: Option<Time>) -> Op {
        Op {
            block: 0,
            call: Call::Write(v),
            invoke,
            complete,
            client: 0,
        }
    }

    fn r(seen: Observed, invoke: Time, complete: Time) -> Op {
        Op {
            block: 0,
            call: Call::Read(seen),
            invoke,
            complete: Some(complete),
            client: 1,
        }
    }

    use Observed::{Corrupt, Value, Zero};

    fn kinds(h: &[Op]) -> Vec<Kind> {
        check(h).into_iter().map(|v| v.kind).collect()
    }

    /// A correct history: zeroes read first, two acknowledged writes in sequence, reads
    /// concurrent with the second seeing either value, an unacknowledged write that was
    /// read later (it took effect), and another that never showed.
    fn correct() -> Vec<Op> {
        vec![
            r(Zero, 0, 5),
            w(1, 10, Some(20)),
            r(Value(1), 21, 25),
            w(2, 30, Some(40)),
            r(Value(1), 31, 35), // concurrent with write 2: may still see 1
            r(Value(2), 32, 36), // ...or already 2
            r(Value(2), 41, 45),
            w(3, 50, None), // never acknowledged...
            r(Value(2), 55, 60),
            r(Value(3), 70, 75), // ...but it took effect
            w(4, 80, None),      // never acknowledged, never seen
            r(Value(3), 90, 95),
        ]
    }

    #[test]
    fn a_correct_history_passes() {
        assert!(check(&correct()).is_empty(), "{:?}", check(&correct()));
    }

    /// The self-test the nemesis relies on: corrupted versions of a correct history are
    /// each flagged.
    #[test]
    fn corrupted_histories_are_flagged() {
        // A stale read: value 1 read after write 2 was acknowledged, by a read that
        // started after it.
        let mut stale = correct();
        stale.push(r(Value(1), 46, 48));
        assert!(!check(&stale).is_empty(), "stale read not flagged");

        // A lost acknowledged write: zeroes read after write 1 was acknowledged.
        let mut lost = correct();
        lost[2] = r(Zero, 21, 25);
        assert!(!check(&lost).is_empty(), "lost write not flagged");

        // A lost acknowledged write, the last one: the final read sees its predecessor.
        let mut lost_last = correct();
        lost_last.push(w(5, 100, Some(110)));
        lost_last.push(r(Value(3), 120, 130));
        assert!(!check(&lost_last).is_empty(), "lost last write not flagged");

        // A value never written.
        let mut never = correct();
        never[6] = r(Value(99), 41, 45);
        assert_eq!(kinds(&never), [Kind::NeverWritten]);

        // A torn block.
        let mut torn = correct();
        torn[6] = r(Corrupt("torn".into()), 41, 45);
        assert_eq!(kinds(&torn), [Kind::Corrupt]);

        // A read that returns a value before its write was sent.
        let mut early = correct();
        early[0] = r(Value(2), 0, 5);
        assert!(kinds(&early).contains(&Kind::ReadBeforeWrite));

        // Reads going back in time: two reads in sequence, the later one sees the older
        // of two sequential writes.
        let back = vec![
            w(1, 0, Some(10)),
            w(2, 20, Some(30)),
            r(Value(2), 21, 25), // write 2 already visible (concurrent)
            r(Value(1), 26, 29), // then 1 again: write 2 had taken effect
        ];
        assert!(!check(&back).is_empty(), "read going back not flagged");
    }

    #[test]
    fn blocks_are_independent() {
        let mut h = vec![w(1, 0, Some(10)), w(2, 20, Some(30))];
        let mut other = r(Value(1), 40, 50);
        other.block = 1;
        h.push(other);
        // Value 1 was written to block 0, not block 1.
        assert_eq!(kinds(&h), [Kind::NeverWritten]);
    }

    // ---- exhaustive search, to check the zone conditions against ----

    /// Whether some order of `ops` (one block) respects real time and register semantics;
    /// unacknowledged writes are tried both in (completing at +inf) and out.
    fn brute(ops: &[Op]) -> bool {
        if ops
            .iter()
            .any(|o| matches!(o.call, Call::Read(Corrupt(_))) && o.complete.is_some())
        {
            return false;
        }
        let pending: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i].call, Call::Write(_)) && ops[i].complete.is_none())
            .collect();
        (0..1u32 << pending.len()).any(|mask| {
            let kept: Vec<&Op> = ops
                .iter()
                .enumerate()
                .filter(|(i, o)| {
                    let dropped_pending = pending
                        .iter()
                        .position(|p| p == i)
                        .is_some_and(|k| mask & (1 << k) == 0);
                    let unanswered_read = matches!(o.call, Call::Read(_)) && o.complete.is_none();
                    !dropped_pending && !unanswered_read
                })
                .map(|(_, o)| o)
                .collect();
            let mut seen = std::collections::HashSet::new();
            search(&kept, 0, 0, &mut seen)
        })
    }

    fn precedes(a: &Op, b: &Op) -> bool {
        a.complete.is_some_and(|c| c < b.invoke)
    }

    fn search(
        ops: &[&Op],
        placed: u32,
        value: u64,
        seen: &mut std::collections::HashSet<(u32, u64)>,
    ) -> bool {
        if placed.count_ones() as usize == ops.len() {
            return true;
        }
        if !seen.insert((placed, value)) {
            return false;
        }
        for i in 0..ops.len() {
            if placed & (1 << i) != 0 {
                continue;
            }
            let blocked = (0..ops.len())
                .any(|j| j != i && placed & (1 << j) == 0 && precedes(ops[j], ops[i]));
            if blocked {
                continue;
            }
            let next = match &ops[i].call {
                Call::Write(v) => *v,
                Call::Read(Zero) if value == 0 => value,
                Call::Read(Value(v)) if *v == value => value,
                Call::Read(_) => continue,
            };
            if search(ops, placed | (1 << i), next, seen) {
                return true;
            }
        }
        false
    }

    /// A random single-block history: operations take effect at random instants inside
    /// their intervals (integers from a small range, so ties are common); sometimes one
    /// read's result is then replaced by another value.
    fn random_history(rng: &mut StdRng) -> Vec<Op> {
        let n = rng.gen_range(1..=8);
        let mut ops: Vec<(u64, Op)> = Vec::new();
        let mut next_value = 1;
        for _ in 0..n {
            let at = rng.gen_range(0..12u64);
            let invoke = at.saturating_sub(rng.gen_range(0..5));
            let complete = at + rng.gen_range(0..5);
            let op = if rng.gen_bool(0.45) {
                next_value += 1;
                let acked = rng.gen_bool(0.75);
                w(next_value, invoke, acked.then_some(complete))
            } else {
                let mut o = r(Zero, invoke, complete);
                if rng.gen_bool(0.1) {
                    o.complete = None;
                }
                o
            };
            ops.push((at, op));
        }
        // Apply in order of the instants (ties in insertion order); an unacknowledged
        // write takes effect or not.
        ops.sort_by_key(|(at, _)| *at);
        let mut value = 0;
        for (_, op) in ops.iter_mut() {
            match &mut op.call {
                Call::Write(v) => {
                    if op.complete.is_some() || rng.gen_bool(0.5) {
                        value = *v;
                    }
                }
                Call::Read(seen) => *seen = if value == 0 { Zero } else { Value(value) },
            }
        }
        let mut h: Vec<Op> = ops.into_iter().map(|(_, o)| o).collect();
        if rng.gen_bool(0.5) {
            let reads: Vec<usize> = (0..h.len())
                .filter(|&i| matches!(h[i].call, Call::Read(_)))
                .collect();
            if !reads.is_empty() {
                let i = reads[rng.gen_range(0..reads.len())];
                let v = rng.gen_range(0..=next_value + 1);
                h[i].call = Call::Read(if v == 0 { Zero } else { Value(v) });
            }
        }
        h
    }

    #[test]
    fn zone_check_agrees_with_exhaustive_search() {
        let mut rng = StdRng::seed_from_u64(0x2e4e_5151);
        let (mut good, mut bad) = (0, 0);
        for round in 0..20_000 {
            let h = random_history(&mut rng);
            // A value no write has cannot be explained by any order either.
            let expected = brute(&h);
            let got = check(&h);
            assert_eq!(
                got.is_empty(),
                expected,
                "round {round}: zone check says {got:?}, exhaustive search says {expected}\n{h:#?}"
            );
            if expected {
                good += 1;
            } else {
                bad += 1;
            }
        }
        // Both outcomes were exercised well.
        eprintln!("{good} linearizable, {bad} not");
        assert!(
            good > 5_000 && bad > 2_000,
            "{good} linearizable, {bad} not"
        );
    }
}
