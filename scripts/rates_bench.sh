#!/usr/bin/env bash
# Several rates and unicast fallback, measured in the namespace lab (root only).
# Usage: [REPS=3] [SIZE_MIB=64] [RATE=200M] [UNICAST_RATE=1G] scripts/rates_bench.sh
#  1. One receiver on one channel vs the same receiver with --aggregate on two
#     channels of equal rate (serve --rates RATE,RATE): time to a verified file.
#  2. Unicast fallback goodput: a receiver whose namespace drops all multicast, given
#     only --server (and with --unicast), from serve --unicast-max-rate UNICAST_RATE.
# Each cell is the median of REPS runs; the time is the receiver's own "complete and
# verified in" (from following the file to a verified file on disk).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${REPS:-3}; size_mib=${SIZE_MIB:-64}; rate=${RATE:-200M}; unicast_rate=${UNICAST_RATE:-1G}
cargo build --release --quiet
BIN=$PWD/target/release/loopcast
LAB="$PWD/scripts/lab.sh -p lcrb$$"
work=$(mktemp -d -p "${WORKDIR:-/dev/shm}")
cleanup() { $LAB down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
$LAB up 2 >/dev/null
$LAB block-multicast r2
"$BIN" keygen -o "$work/key" >/dev/null
head -c $((size_mib << 20)) /dev/urandom > "$work/data.bin"
"$BIN" pack "$work/data.bin" -k "$work/key" -o "$work/data.lcar" >/dev/null
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
group=239.77.0.1:7700

# Runs one receiver in HOST with extra flags; appends its verified time to FILE.
receive() {
    local host=$1 file=$2; shift 2
    local iface; iface=$($LAB addr "$host")
    rm -rf "$work/out"
    $LAB exec "$host" "$BIN" recv -k "$work/key" -i "$iface" -g "$group" -o "$work/out" \
        --timeout 300 "$@" 2> "$work/recv.log"
    cmp "$work/data.bin" "$work/out/data.bin"
    sed -nE 's/.*complete and verified in ([0-9.]+) s.*/\1/p' "$work/recv.log" >> "$file"
}

server=""
serve() {
    server=$($LAB spawn s "$work/serve.log" "$BIN" serve "$work/data.lcar" -k "$work/key" \
        -i 10.77.0.1 -g "$group" "$@")
    sleep 1
}

# Stops the server this script started, by its PID.
stop_server() {
    kill -INT "$server" 2>/dev/null || true
    sleep 1
}

: > "$work/one"; : > "$work/two"; : > "$work/unicast"; : > "$work/unicast-only"
serve --rates "$rate,$rate"
for _ in $(seq "$reps"); do
    receive r1 "$work/one"
    receive r1 "$work/two" --aggregate
done
stop_server
serve --rate "$rate" --unicast-max-rate "$unicast_rate"
for _ in $(seq "$reps"); do
    receive r2 "$work/unicast" --server 10.77.0.1 --sync-timeout 1
    receive r2 "$work/unicast-only" --server 10.77.0.1 --unicast
done
stop_server

row() {
    local secs; secs=$(median < "$work/$2")
    awk -v n="$1" -v s="$secs" -v m="$size_mib" -v r="$reps" \
        'BEGIN {printf "| %s | %d | %.2f s | %.0f Mbit/s |\n", n, r, s, m * 1048576 * 8 / s / 1e6}'
}
echo "$size_mib MiB, channels at $rate, unicast cap $unicast_rate"
echo "| receiver | runs | median time to verified file | goodput |"
echo "|---|---|---|---|"
row "one channel of $rate" one
row "two aggregated channels of $rate (--aggregate)" two
row "unicast fallback (multicast dropped, --server, --sync-timeout 1)" unicast
row "unicast only (--unicast --server)" unicast-only
