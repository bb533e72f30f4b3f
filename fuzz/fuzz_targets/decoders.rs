//! Every decoder of bytes from the network or the disk, on arbitrary input
//! (`sim::fuzz::decode_everything`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| loopcast_proto::sim::fuzz::decode_everything(data));
