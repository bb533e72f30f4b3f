#!/usr/bin/env bash
# A real broadcast on loopback: one server loops two files on multicast, receiver A
# starts with it, receiver B joins 2 s later; both outputs are checked byte for byte.
# Multicast stays on 127.0.0.1. Everything lives in a temporary directory that is
# removed at the end, and only the processes started here are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-64}
RATE=${RATE:-400M}
GROUP=${GROUP:-239.255.77.1:7700}
cargo build --release --quiet
BIN=$PWD/target/release/loopcast
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
"$BIN" keygen -o demo.key
head -c $((SIZE_MB << 20)) /dev/urandom > random.bin
seq 1 3000000 > numbers.txt
echo "== serving random.bin (${SIZE_MB} MiB) and numbers.txt at $RATE per channel on $GROUP (loopback)"
"$BIN" serve random.bin numbers.txt -k demo.key -i 127.0.0.1 -g "$GROUP" --rate "$RATE" --cache-dir cache &
pids+=($!)
"$BIN" recv -k demo.key -i 127.0.0.1 -g "$GROUP" -o receiver-a --timeout 120 &
recv_a=$!
pids+=($recv_a)
sleep 2
echo "== receiver B joins 2 s late"
"$BIN" recv -k demo.key -i 127.0.0.1 -g "$GROUP" -o receiver-b --timeout 120
wait "$recv_a"
"$BIN" ls -i 127.0.0.1 -g "$GROUP"
echo "== digests"
sha256sum random.bin numbers.txt receiver-a/* receiver-b/*
for f in random.bin numbers.txt; do
    cmp "$f" "receiver-a/$f" && cmp "$f" "receiver-b/$f"
done
echo "== OK: both receivers hold byte-identical copies of both files"
