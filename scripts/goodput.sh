#!/usr/bin/env bash
# Receiver goodput and peak RSS on loopback multicast, one receiver, no loss.
# Usage: [REPS=3] [LOOPCAST_BIN=path] scripts/goodput.sh SIZE_MIB RATE [RATE...]   e.g. scripts/goodput.sh 512 1G 2G 4G
# For each rate, REPS runs: a fresh server loops a random file; the receiver joins as
# the server starts; its own "complete and verified" line gives the time from joining
# to a verified file on disk, GNU time its peak RSS. Medians are printed.
# Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:?size in MiB}; shift
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install -y time" >&2; exit 1; }
# LOOPCAST_BIN measures another build (e.g. an older commit's, for a before/after).
if [ -z "${LOOPCAST_BIN:-}" ]; then cargo build --release --quiet; fi
BIN=${LOOPCAST_BIN:-$PWD/target/release/loopcast}
work=$(mktemp -d -p "${WORKDIR:-/var/tmp}")
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$BIN" keygen -o "$work/key" >/dev/null
head -c $((size_mib << 20)) /dev/urandom > "$work/data.bin"
# Pack once so every run starts sending at once.
"$BIN" pack "$work/data.bin" -k "$work/key" -o "$work/data.lcar" >/dev/null
reps=${REPS:-3}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
printf '| rate | runs | median time to last packet | median time to verified file | median goodput (verified) | median duplicates | max receiver peak RSS |\n|---|---|---|---|---|---|---|\n'
for rate in "$@"; do
    : > "$work/times"; : > "$work/held"; : > "$work/dups"; : > "$work/rsses"
    for _ in $(seq "$reps"); do
        rm -rf "$work/out"
        # GNU time runs the receiver and reports its peak RSS (KiB).
        /usr/bin/time -f '%M' -o "$work/rss" "$BIN" recv -k "$work/key" -i 127.0.0.1 -g 239.255.78.1:7800 \
            -o "$work/out" --timeout 600 2> "$work/recv.log" &
        recv_pid=$!
        sleep 0.3
        "$BIN" serve "$work/data.lcar" -k "$work/key" -i 127.0.0.1 -g 239.255.78.1:7800 --rate "$rate" 2> "$work/serve.log" &
        server=$!
        wait "$recv_pid"
        kill "$server"; wait "$server" 2>/dev/null || true; server=""
        cmp "$work/data.bin" "$work/out/data.bin"
        grep 'packets held after' "$work/recv.log" | sed -E 's/.*held after ([0-9.]+) s.*/\1/' >> "$work/held"
        line=$(grep 'complete and verified' "$work/recv.log")
        sed -E 's/.*verified in ([0-9.]+) s.*/\1/' <<<"$line" >> "$work/times"
        sed -E 's/.* ([0-9]+) duplicates.*/\1/' <<<"$line" >> "$work/dups"
        tail -1 "$work/rss" >> "$work/rsses"
    done
    secs=$(median < "$work/times")
    goodput=$(awk -v s="$secs" -v m="$size_mib" 'BEGIN {printf "%.2f Gbit/s", m * 1048576 * 8 / s / 1e9}')
    printf '| %s | %s | %s s | %s s | %s | %s | %s MiB |\n' "$rate" "$reps" "$(median < "$work/held")" "$secs" "$goodput" "$(median < "$work/dups")" "$(( $(sort -n "$work/rsses" | tail -1) / 1024 ))"
done
