//! The receiver session under arbitrary datagram sequences (`sim::fuzz`): no
//! panic, and its state within bounds after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopcast_proto::sim::fuzz::{Step, World};
use std::sync::LazyLock;

static WORLD: LazyLock<World> = LazyLock::new(World::new);

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = WORLD.drive_session(&Step::parse_all(data)) {
        panic!("{broken}");
    }
});
