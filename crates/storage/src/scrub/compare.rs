//! Deciding a region: the voters' scans of it, compared block by block, give each block's
//! truth (a state a majority of the voters holds) and the replicas that must be repaired
//! to it, or say that no majority agrees (unrepairable).
//!
//! Pure: reads nothing, proposes nothing. Must never take a `Bad` block for a truth, nor
//! an absence for one against a voter holding a valid copy (that would clear what may be
//! the only good copy), nor count a replica without the chunk, or without the block's
//! layer, as a vote for absence; never treat replicas holding different sets of layers
//! (a merge skipped on one) as holding different blocks; never compare a block some
//! replica changed since the mark, nor call a block unrepairable while a voter's answer is
//! missing (the region is incomplete instead).

use std::collections::{BTreeMap, BTreeSet};

use tessera_proto::control::{BlockCheck, RegionScan};

/// What one replica holds of one block of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Held {
    /// The layer does not hold it (or the replica holds nothing of the chunk).
    Absent,
    /// Written as zero.
    Zero,
    /// Data; the first 8 bytes of its BLAKE3, LE.
    Data(u64),
    /// Fails its checksum.
    Bad,
}

impl From<BlockCheck> for Held {
    fn from(c: BlockCheck) -> Held {
        match c {
            BlockCheck::Zero => Held::Zero,
            BlockCheck::Data { hash } => Held::Data(hash),
            BlockCheck::Bad => Held::Bad,
        }
    }
}

/// A block some replicas must be rewritten to its truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fix {
    /// The layer.
    pub(crate) layer: u64,
    /// The block's index in the chunk.
    pub(crate) block: u64,
    /// What a majority holds.
    pub(crate) truth: Held,
    /// The voters holding the truth (where its data can be read).
    pub(crate) holders: Vec<u64>,
    /// The voters holding something else, with what they hold.
    pub(crate) wrong: Vec<(u64, Held)>,
}

/// A block no majority agrees on, or that a majority lacks while another voter holds it:
/// left as it is, reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unrepairable {
    /// The layer.
    pub(crate) layer: u64,
    /// The block's index in the chunk.
    pub(crate) block: u64,
    /// What each voter that answered holds.
    pub(crate) states: Vec<(u64, Held)>,
    /// A majority of the voters holds nothing there while some voter holds a valid copy:
    /// never cleared (an absence is no evidence against data), reported as such.
    pub(crate) absent_on_majority: bool,
}

/// A chunk's link, `(parent volume, parent seq)`, as one voter holds it.
pub(crate) type LinkOf = (u64, Option<(u64, u64)>);

/// What a region's comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Findings {
    /// Blocks compared: (layer, block) pairs some replica holds and none changed.
    pub(crate) compared: u64,
    /// Block copies failing their checksum (one per replica and block), with the voter.
    pub(crate) bad: Vec<(u64, u64, u64)>,
    /// (layer, block) pairs whose replicas hold different valid states.
    pub(crate) divergent: Vec<(u64, u64)>,
    /// Blocks to repair, sorted by (layer, block).
    pub(crate) fixes: Vec<Fix>,
    /// Blocks no majority agrees on (every voter answered), or absent on a majority while
    /// held elsewhere, sorted by (layer, block).
    pub(crate) unrepairable: Vec<Unrepairable>,
    /// Some voter did not answer and the answers that came left something undecided (too
    /// few answers, or a block no majority of them agrees on): nothing of it is called
    /// unrepairable, the next scrub looks again.
    pub(crate) incomplete: bool,
    /// The chunk's link differs between replicas (reported; not repaired by a scrub).
    pub(crate) links: Option<Vec<LinkOf>>,
    /// The replicas hold different sets of the chunk's layers (one has a layer another
    /// lacks): each answering voter with its layers. Reported; not repaired by a scrub.
    pub(crate) layers: Option<Vec<(u64, Vec<u64>)>>,
}

/// One voter's answer about one block (a voter having the block's layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    node: u64,
    held: Held,
}

/// The layers of the chunk a voter has, as its scan tells them, and whether it tells
/// them: a replica without the chunk has none (known); a scan naming its `layers` has
/// those (and any it lists a block of); a scan from a node from before that field (or
/// naming none) has the layers it lists blocks of — which, where it lists no block of a
/// layer it has, leaves it out of that layer's comparison (it lacks nothing *known*).
fn layers_of(scan: &RegionScan) -> (BTreeSet<u64>, bool) {
    if !scan.holds_chunk {
        return (BTreeSet::new(), true);
    }
    let listed = scan.blocks.iter().map(|b| b.layer);
    let layers = scan.layers.iter().copied().chain(listed).collect();
    (layers, !scan.layers.is_empty())
}

/// Compares the scans of a region. `voters`: the group's voters (duplicates count once;
/// the majority is `voters / 2 + 1` of them, answered or not); `answers`: each voter that
/// answered, with its scan (a voter that did not answer is left out: its blocks cannot
/// count; an answer from a node not a voter, or a second one from a voter, is ignored).
///
/// Layers: replicas may legitimately hold the same data in different layers (a `Merge`
/// skipped on a full disk leaves its source layer there, and the target without the
/// source's blocks). So a `(layer, block)` is compared only among the voters having the
/// layer, and only if a majority of the voters has it; and where some voter lists the
/// block in a layer another voter (holding the chunk, naming its layers) lacks, the
/// block is compared in no other layer (a merge may have moved it there). Such a
/// layer-set difference is reported once (`Findings::layers`), never repaired.
pub(crate) fn compare(voters: &[u64], answers: &[(u64, RegionScan)]) -> Findings {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    let mut answered = BTreeSet::new();
    let answers: Vec<&(u64, RegionScan)> = answers
        .iter()
        .filter(|(n, _)| voters.contains(n) && answered.insert(*n))
        .collect();
    let majority = voters.len() / 2 + 1;
    let complete = answers.len() == voters.len();
    let mut out = Findings {
        incomplete: !complete && answers.len() < majority,
        ..Findings::default()
    };
    // Each answering voter's layers, whether it named them, whether it holds the chunk.
    let mut layers: Vec<(u64, BTreeSet<u64>, bool, bool)> = answers
        .iter()
        .map(|(n, s)| {
            let (l, named) = layers_of(s);
            (*n, l, named, s.holds_chunk)
        })
        .collect();
    // A replica that lost the whole chunk (no file, no link) where a majority of the voters
    // holds it as a plain chunk (layer 1 only, no link): it is compared as holding layer 1
    // with nothing in it, so the majority's blocks are repaired into it (a Repair creates
    // layer 1, never a layer above: a chunk with snapshot layers is only reported).
    let base_only = BTreeSet::from([1u64]);
    let plain = answers
        .iter()
        .zip(&layers)
        .filter(|((_, s), (_, l, named, holds))| {
            *holds && *named && s.link.is_none() && *l == base_only
        })
        .count();
    if plain >= majority {
        for ((_, s), (_, l, named, holds)) in answers.iter().zip(layers.iter_mut()) {
            if !*holds && s.link.is_none() {
                *l = base_only.clone();
                *named = true;
                *holds = true;
            }
        }
    }
    let all: BTreeSet<u64> = layers
        .iter()
        .flat_map(|(_, l, _, _)| l.iter().copied())
        .collect();
    let lacks = |layer: u64, holders_only: bool| {
        layers
            .iter()
            .any(|(_, l, named, holds)| *named && (*holds || !holders_only) && !l.contains(&layer))
    };
    if all.iter().any(|&l| lacks(l, false)) {
        out.layers = Some(
            layers
                .iter()
                .map(|(n, l, _, _)| (*n, l.iter().copied().collect()))
                .collect(),
        );
    }
    // Layers some replica holding the chunk has and another lacks: a block one of them
    // lists may sit in another layer elsewhere.
    let uneven: BTreeSet<u64> = all.iter().copied().filter(|&l| lacks(l, true)).collect();
    if answers.iter().any(|(_, s)| s.all_dirty) {
        return out;
    }
    let dirty: BTreeSet<u64> = answers
        .iter()
        .flat_map(|(_, s)| s.dirty.iter().copied())
        .collect();
    // (layer, block) → what each answering voter lists there; block → its uneven layers.
    let mut seen: BTreeMap<(u64, u64), Vec<(u64, Held)>> = BTreeMap::new();
    let mut in_uneven: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (node, scan) in &answers {
        if !scan.holds_chunk {
            continue;
        }
        for b in &scan.blocks {
            if dirty.contains(&b.block) {
                continue;
            }
            seen.entry((b.layer, b.block))
                .or_default()
                .push((*node, b.state.into()));
            if uneven.contains(&b.layer) {
                in_uneven.entry(b.block).or_default().insert(b.layer);
            }
        }
    }
    for ((layer, block), listed) in seen {
        let holders: Vec<u64> = layers
            .iter()
            .filter(|(_, l, _, _)| l.contains(&layer))
            .map(|(n, _, _, _)| *n)
            .collect();
        let moved = in_uneven
            .get(&block)
            .is_some_and(|u| u.iter().any(|&l| l != layer));
        if moved || holders.len() < majority {
            // Not compared; a copy failing its checksum is still one (check a).
            for &(node, held) in &listed {
                if held == Held::Bad {
                    out.bad.push((node, layer, block));
                }
            }
            // A voter that did not answer may have the layer: undecided, not settled.
            if !moved && !complete {
                out.incomplete = true;
            }
            continue;
        }
        out.compared += 1;
        let states: Vec<Answer> = holders
            .iter()
            .map(|&node| Answer {
                node,
                held: listed
                    .iter()
                    .find(|(n, _)| *n == node)
                    .map_or(Held::Absent, |&(_, h)| h),
            })
            .collect();
        if !decide(layer, block, majority, complete, &states, &mut out) {
            out.incomplete = true;
        }
    }
    let links: BTreeSet<Option<(u64, u64)>> = answers.iter().map(|(_, s)| s.link).collect();
    if links.len() > 1 {
        out.links = Some(answers.iter().map(|(n, s)| (*n, s.link)).collect());
    }
    out
}

/// One block's verdict, given what each answering voter holds (`complete`: every voter
/// answered). `false`: left undecided for want of answers.
fn decide(
    layer: u64,
    block: u64,
    majority: usize,
    complete: bool,
    states: &[Answer],
    out: &mut Findings,
) -> bool {
    for a in states {
        if a.held == Held::Bad {
            out.bad.push((a.node, layer, block));
        }
    }
    let valid: BTreeSet<Held> = states
        .iter()
        .map(|a| a.held)
        .filter(|&h| h != Held::Bad)
        .collect();
    if valid.len() > 1 {
        out.divergent.push((layer, block));
    }
    // Votes: every answer (each from a voter having the layer) for its state.
    let votes = |want: Held| states.iter().filter(|a| a.held == want).count();
    // A valid copy somewhere: absence is no truth against it (clearing it could drop the
    // only good copy).
    let held_somewhere = valid.iter().any(|&h| h != Held::Absent);
    let truth = valid
        .iter()
        .copied()
        .filter(|&h| h != Held::Absent || !held_somewhere)
        .find(|&h| votes(h) >= majority);
    let plain = |a: &Answer| (a.node, a.held);
    if let Some(truth) = truth {
        let wrong: Vec<(u64, Held)> = states
            .iter()
            .filter(|a| a.held != truth)
            .map(plain)
            .collect();
        if !wrong.is_empty() {
            out.fixes.push(Fix {
                layer,
                block,
                truth,
                holders: states
                    .iter()
                    .filter(|a| a.held == truth)
                    .map(|a| a.node)
                    .collect(),
                wrong,
            });
        }
        return true;
    }
    let absent_on_majority = held_somewhere && votes(Held::Absent) >= majority;
    if absent_on_majority || complete {
        out.unrepairable.push(Unrepairable {
            layer,
            block,
            states: states.iter().map(plain).collect(),
            absent_on_majority,
        });
        return true;
    }
    false
}

#[cfg(test)]
#[path = "compare_tests.rs"]
mod tests;
