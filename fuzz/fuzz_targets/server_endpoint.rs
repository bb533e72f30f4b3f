//! The server endpoint under arbitrary datagram sequences (`sim::fuzz`): no panic,
//! and its state within bounds after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopcast_proto::sim::fuzz::{Step, World};
use std::sync::LazyLock;

static WORLD: LazyLock<World> = LazyLock::new(World::new);

fuzz_target!(|data: &[u8]| {
    let steps = Step::parse_all(data);
    let on_demand = data.first().is_some_and(|b| b & 0x80 != 0);
    if let Err(broken) = WORLD.drive_server(&steps, on_demand) {
        panic!("{broken}");
    }
});
