//! Repair benchmark (not a test): receivers × loss × loss kind on the simulated LAN,
//! each case with repair by copies and by parity (spec §6.5). Prints a markdown
//! table of completion time ÷ ideal, NAKs per lost packet, feedback (NAKs per
//! DATA packet) and repair overhead. Run:
//! `cargo run --release -p loopcast-proto --example repair_bench` (add `quick`
//! for a smaller sweep; `parity`, `copies` or `auto` for one kind of repair).

use loopcast_proto::client::RepairKind;
use loopcast_proto::sim::{SimConfig, run};
use std::time::Instant;

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let args: Vec<String> = std::env::args().collect();
    let asked = |kind: &str| args.iter().any(|a| a == kind);
    let kinds: &[RepairKind] = if asked("parity") {
        &[RepairKind::Parity]
    } else if asked("copies") {
        &[RepairKind::Copies]
    } else if asked("auto") {
        &[RepairKind::Auto]
    } else {
        &[RepairKind::Copies, RepairKind::Parity]
    };
    let receivers: &[usize] = if quick {
        &[1, 10, 100]
    } else {
        &[1, 10, 100, 1000]
    };
    println!(
        "16 MiB file at 100 Mbit/s, 200 µs one-way delay + up to 100 µs jitter, all receivers joined at 0, seed 1."
    );
    println!();
    println!(
        "| receivers | loss | kind | repair | worst completion ÷ ideal | NAKs per lost packet | feedback | repair overhead | sim wall time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in receivers {
        for loss in [0.0, 0.01, 0.05, 0.20] {
            for (shared, &repair) in [true, false]
                .into_iter()
                .flat_map(|shared| kinds.iter().map(move |p| (shared, p)))
            {
                if loss == 0.0 && !shared {
                    continue; // no loss is one case, not two
                }
                let config = SimConfig {
                    receivers: n,
                    file_size: 16 << 20,
                    shared_loss: if shared { loss } else { 0.0 },
                    independent_loss: if shared { 0.0 } else { loss },
                    repair,
                    ..SimConfig::default()
                };
                let started = Instant::now();
                let r = run(&config);
                let kind = if loss == 0.0 {
                    "-"
                } else if shared {
                    "shared"
                } else {
                    "independent"
                };
                let ratio = if r.all_complete() {
                    format!("{:.3}", r.worst_ratio())
                } else {
                    "did not finish".into()
                };
                let repair = format!("{repair:?}").to_lowercase();
                println!(
                    "| {n} | {:.0}% | {kind} | {repair} | {ratio} | {:.2} | {:.2}% | {:.1}% | {:.1} s |",
                    loss * 100.0,
                    r.naks_per_loss(),
                    r.feedback() * 100.0,
                    r.repair_overhead() * 100.0,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
}
