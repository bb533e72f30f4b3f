//! Every input kept under `fuzz/regressions/<target>/` (crashes the fuzzers found,
//! once fixed, and a few corpus seeds) run through the same code as its fuzz
//! target, on every `cargo test`.

use loopcast_proto::sim::fuzz::{Step, World, decode_everything};
use std::path::PathBuf;

/// The inputs kept for `target`; at least one, so the test cannot pass vacuously.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    inputs
}

#[test]
fn kept_decoder_inputs_do_not_panic() {
    for (_, bytes) in inputs("decoders") {
        decode_everything(&bytes);
    }
}

#[test]
fn kept_server_endpoint_inputs_keep_its_bounds() {
    let world = World::new();
    for (path, bytes) in inputs("server_endpoint") {
        let on_demand = bytes.first().is_some_and(|b| b & 0x80 != 0);
        let steps = Step::parse_all(&bytes);
        assert_eq!(
            world.drive_server(&steps, on_demand),
            Ok(()),
            "{}",
            path.display()
        );
    }
}

#[test]
fn kept_receiver_session_inputs_keep_its_bounds() {
    let world = World::new();
    for (path, bytes) in inputs("receiver_session") {
        let steps = Step::parse_all(&bytes);
        assert_eq!(world.drive_session(&steps), Ok(()), "{}", path.display());
    }
}

#[test]
fn kept_director_inputs_keep_its_bounds() {
    let world = World::new();
    for (path, bytes) in inputs("director") {
        let steps = Step::parse_all(&bytes);
        assert_eq!(world.drive_director(&steps), Ok(()), "{}", path.display());
    }
}
