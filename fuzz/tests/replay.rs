//! Every committed input of every target, run through the target's function: the seeds
//! (`corpus/<target>/`) and the crashes found so far (`regressions/<target>/`), which must
//! all run clean once their bug is fixed. `cargo test` in this workspace, no AFL++ needed.

use std::path::Path;

use tessera_fuzz::TARGETS;

fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut ran = 0;
    for (target, run) in TARGETS {
        let Ok(files) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = files
            .map(|f| f.expect("a directory entry").path())
            .collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).expect("read an input");
            eprintln!("{target}: {}", path.display());
            run(&bytes);
            ran += 1;
        }
    }
    ran
}

#[test]
fn every_seed_runs_clean() {
    assert!(
        replay("corpus") > 0,
        "no seeds: run `cargo run --bin seeds`"
    );
}

#[test]
fn every_crash_found_so_far_runs_clean() {
    replay("regressions");
}

/// The seeds are what `seeds` writes: regenerate them (`cargo run --bin seeds`) after
/// changing it.
#[test]
fn committed_seeds_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, _) in TARGETS {
        for (name, bytes) in tessera_fuzz::seeds::of(target) {
            let path = root.join(target).join(name);
            assert_eq!(std::fs::read(&path).ok(), Some(bytes), "{}", path.display());
        }
    }
}
