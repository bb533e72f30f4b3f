#!/usr/bin/env bash
# Where a receiver's CPU goes: perf's top entries for one receiver taking a
# random file on loopback multicast, no loss (format v4's before and after).
# Usage: [LOOPCAST_BIN=path] [PACKET_SIZE=1500] [WORKDIR=/var/tmp] scripts/profile_recv.sh SIZE_MIB RATE
#   e.g. PACKET_SIZE=9000 scripts/profile_recv.sh 512 3G
# Needs perf (linux-perf) and root or perf_event_paranoid <= 1. Traffic stays
# on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:?size in MiB}
rate=${2:?rate, e.g. 3G}
command -v perf >/dev/null || { echo "needs perf: apt-get install -y linux-perf" >&2; exit 1; }
. scripts/loopback_archive.sh
mkdir "$work/out"
perf record -q -g -o "$work/perf.data" -- "$BIN" recv -k "$work/key" -i 127.0.0.1 -g 239.255.79.1:7900 \
    -o "$work/out" --timeout 600 2> "$work/recv.log" &
recv_pid=$!
sleep 0.5
serve_loopback 239.255.79.1:7900 "$rate"
wait "$recv_pid"
kill "$server"; wait "$server" 2>/dev/null || true; server=""
cmp "$work/data.bin" "$work/out/data.bin"
grep -E 'done, |received: ' "$work/recv.log" | tail -2 || true
perf report -q -i "$work/perf.data" --stdio --no-children --sort symbol --percent-limit 1.5 -g none 2>/dev/null |
    grep -v '^$' | head -25
