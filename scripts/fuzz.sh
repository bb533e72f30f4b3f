#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder and of both endpoints (cargo fuzz,
# libFuzzer), on the stable toolchain (RUSTC_BOOTSTRAP=1 lets it take the
# sanitizer flags).
# Usage: [FUZZ_SECONDS=600] scripts/fuzz.sh [TARGET...]   (targets: decoders server_endpoint receiver_session director)
# Each target runs SECONDS, starting from its corpus (fuzz/corpus/, kept between
# runs, not committed) and the kept inputs (fuzz/regressions/). A crash stops the
# run with exit status 1 and leaves its input in fuzz/artifacts/TARGET/: fix the
# cause, then copy the input into fuzz/regressions/TARGET/, where
# proto/tests/fuzz_regressions.rs runs it on every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-600}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decoders server_endpoint receiver_session director)
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    rm -rf "artifacts/$t"
    echo "fuzzing $t for $seconds s"
    cargo fuzz run -O "$t" "corpus/$t" "regressions/$t" -- \
        -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 |
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)|panicked|ERROR|SUMMARY' || true
    # cargo fuzz exits non-zero on a crash, leak, time-out or OOM; grep hid that,
    # so look for the input it kept.
    if compgen -G "artifacts/$t/*" >/dev/null; then
        echo "$t failed: $(ls artifacts/"$t"/*)" >&2
        exit 1
    fi
done
