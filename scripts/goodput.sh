#!/usr/bin/env bash
# Receiver goodput, CPU, disk writes, disk space and peak RSS on loopback
# multicast, one receiver, no loss.
# Usage: [REPS=3] [WORKDIR=/var/tmp] [LOOPCAST_BIN=path] [PACKET_SIZE=1500] scripts/goodput.sh SIZE_MIB RATE [RATE...]
#   e.g. scripts/goodput.sh 512 1G 2G 4G
# For each rate, REPS runs: a fresh server loops a random file; the receiver joins as
# the server starts; its counters (RUST_LOG=loopcast::counters=debug) give the
# time to the last packet and the duplicates, its `done` event (--json) the time
# to a verified file on disk, both from its `join` event. GNU time gives its CPU seconds (user + system),
# its peak RSS and the bytes it had written to the device (ru_oublock: bytes dirtied
# less those dropped before writeback, as /proc/PID/io's write_bytes less
# cancelled_write_bytes). Disk space is the most the output directory held (du,
# sampled every 50 ms). Medians are printed; writes and space also as a multiple
# of the file. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:?size in MiB}; shift
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install -y time" >&2; exit 1; }
. scripts/loopback_archive.sh
reps=${REPS:-3}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
size_bytes=$((size_mib << 20))
printf '| rate | runs | time to last packet | time to verified file | goodput (verified) | duplicates | receiver CPU | CPU-s per GiB | device writes | peak disk space | max peak RSS |\n|---|---|---|---|---|---|---|---|---|---|---|\n'
for rate in "$@"; do
    : > "$work/times"; : > "$work/held"; : > "$work/dups"; : > "$work/rsses"
    : > "$work/cpus"; : > "$work/writes"; : > "$work/spaces"
    for _ in $(seq "$reps"); do
        rm -rf "$work/out"; mkdir "$work/out"
        # GNU time: peak RSS (KiB), CPU seconds, blocks of 512 bytes written.
        RUST_LOG=info,loopcast::counters=debug /usr/bin/time -f '%M %U %S %O' -o "$work/rss" \
            "$BIN" recv -k "$work/key" -i 127.0.0.1 -g 239.255.78.1:7800 \
            -o "$work/out" --timeout 600 --json > "$work/recv.json" 2> "$work/recv.log" &
        recv_pid=$!
        ( peak=0; while kill -0 "$recv_pid" 2>/dev/null; do
              used=$(du -s -B1 "$work/out" 2>/dev/null | cut -f1); [ "${used:-0}" -gt "$peak" ] && peak=$used
              echo "$peak" > "$work/space"; sleep 0.05
          done ) &
        sampler=$!
        sleep 0.3
        serve_loopback 239.255.78.1:7800 "$rate"
        wait "$recv_pid"
        wait "$sampler"
        kill "$server"; wait "$server" 2>/dev/null || true; server=""
        cmp "$work/data.bin" "$work/out/data.bin"
        [ -n "${SHOW_LOG:-}" ] && cat "$work/recv.log" >&2
        # Times from the receiver's join (its `join` event), not from its start.
        joined=$(grep '"event":"join"' "$work/recv.json" | grep -o '"t":[0-9.]*' | cut -d: -f2)
        grep -o 'all held: .*after_s=[0-9.]*' "$work/recv.log" | sed -E 's/.*after_s=//' |
            awk -v j="$joined" '{printf "%.3f\n", $1 - j}' >> "$work/held"
        grep '"event":"done"' "$work/recv.json" | grep -o '"t":[0-9.]*' | cut -d: -f2 |
            awk -v j="$joined" '{printf "%.3f\n", $1 - j}' >> "$work/times"
        grep -o 'counters: stored=[0-9]* resumed=[0-9]* duplicates=[0-9]*' "$work/recv.log" | sed -E 's/.*duplicates=//' >> "$work/dups"
        read -r rss user sys blocks < <(tail -1 "$work/rss")
        echo "$rss" >> "$work/rsses"
        awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}' >> "$work/cpus"
        echo $((blocks * 512)) >> "$work/writes"
        cat "$work/space" >> "$work/spaces"
    done
    secs=$(median < "$work/times")
    goodput=$(awk -v s="$secs" -v m="$size_mib" 'BEGIN {printf "%.2f Gbit/s", m * 1048576 * 8 / s / 1e9}')
    cpu=$(median < "$work/cpus")
    per_gib=$(awk -v c="$cpu" -v m="$size_mib" 'BEGIN {printf "%.2f", c * 1024 / m}')
    times_file() { awk -v b="$1" -v f="$size_bytes" 'BEGIN {printf "%.0f MiB (%.2fx)", b / 1048576, b / f}'; }
    printf '| %s | %s | %s s | %s s | %s | %s | %s s | %s | %s | %s | %s MiB |\n' "$rate" "$reps" "$(median < "$work/held")" "$secs" "$goodput" "$(median < "$work/dups")" \
        "$cpu" "$per_gib" "$(times_file "$(median < "$work/writes")")" "$(times_file "$(median < "$work/spaces")")" "$(( $(sort -n "$work/rsses" | tail -1) / 1024 ))"
done
