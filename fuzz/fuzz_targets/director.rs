//! The director under arbitrary datagram sequences (`sim::fuzz`): no panic, no
//! answer longer than its question, and its registry within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopcast_proto::sim::fuzz::{Step, World};
use std::sync::LazyLock;

static WORLD: LazyLock<World> = LazyLock::new(World::new);

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = WORLD.drive_director(&Step::parse_all(data)) {
        panic!("{broken}");
    }
});
