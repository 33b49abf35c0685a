//! Replays the committed fuzz corpus (server/fuzz/corpus: seeds, everything
//! the fuzzers kept for new coverage, and any input that once crashed)
//! through the fuzz targets' own harness, so every run of the test command
//! checks that none of it panics any more.

use std::path::Path;

#[path = "../fuzz/src/harness.rs"]
mod harness;

/// A fuzz target's name (its corpus directory) and its harness.
type Target = (&'static str, fn(&[u8]));

#[test]
fn every_committed_fuzz_input_is_handled_without_a_panic() {
    let targets: [Target; 4] = [
        ("ws_frame", harness::ws_frame),
        ("json_bodies", harness::json_bodies),
        ("query_and_ids", harness::query_and_ids),
        ("jwt", harness::jwt),
    ];
    for (target, run) in targets {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            run(&bytes);
            inputs += 1;
        }
        assert!(inputs > 0, "no corpus for {target} in {}", dir.display());
    }
}
