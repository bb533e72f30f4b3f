//! Both endpoints and the director under random datagram sequences (after quinn-proto's
//! `random_interaction`), through `sim::fuzz`: valid datagrams of every type,
//! mutated at random and tagged anew half the time (as a key holder could, so
//! that mutations reach the code behind the tag check), from random origins, with
//! time moving on. Nothing may panic, and state stays within its bounds. The fuzz
//! targets under `fuzz/` drive the same code under coverage guidance.

use loopcast_proto::sim::fuzz::{Input, Step, World};
use proptest::prelude::*;

fn step() -> impl Strategy<Value = Step> {
    (
        0usize..13,
        proptest::collection::vec((0usize..1600, any::<u8>()), 0..4),
        proptest::option::of(0usize..1600),
        any::<bool>(),
        any::<u8>(),
        0u8..6,
        0u16..300,
    )
        .prop_map(
            |(seed, mutations, truncate, retag, origin, source, dt_ms)| Step {
                input: Input::Seed {
                    seed,
                    mutations,
                    truncate,
                },
                retag,
                origin,
                source,
                dt_ms,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_server_endpoint_takes_any_datagrams(steps in proptest::collection::vec(step(), 1..120)) {
        // On demand or looping from the start, one run in two.
        let on_demand = steps.len() % 2 == 0;
        prop_assert_eq!(World::new().drive_server(&steps, on_demand), Ok(()));
    }

    #[test]
    fn the_director_takes_any_datagrams(steps in proptest::collection::vec(step(), 1..120)) {
        prop_assert_eq!(World::new().drive_director(&steps), Ok(()));
    }

    #[test]
    fn the_receiver_session_takes_any_datagrams(steps in proptest::collection::vec(step(), 1..120)) {
        prop_assert_eq!(World::new().drive_session(&steps), Ok(()));
    }
}
