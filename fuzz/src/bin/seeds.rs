//! Writes every target's seeds to `corpus/<target>/` (beside this crate's manifest),
//! replacing files of the same name and leaving others (inputs saved from runs) alone.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, run) in tessera_fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in tessera_fuzz::seeds::of(target) {
            // A seed must run clean, or AFL++ refuses to start from it.
            run(&bytes);
            std::fs::write(dir.join(name), bytes)?;
        }
        println!(
            "{target}: {} seeds in {}",
            tessera_fuzz::seeds::of(target).len(),
            dir.display()
        );
    }
    Ok(())
}
