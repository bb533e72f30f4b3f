#!/usr/bin/env bash
# Side-by-side benchmark in the namespace lab: loopcast, uftp (plain and AES-256-GCM),
# udpcast, and an iperf2 multicast ceiling, one after another on the same lab LAN.
# Tool loopcast6 is loopcast over IPv6 (group [ff15::77]:7700, hosts fd77::/64).
#
# Usage: [REPS=3] [SIZE_MIB=512] [TOOLS="..."] [SCENARIOS="a b c d"] scripts/bench.sh   (root)
#   a  no loss, 3 receivers
#   b  2% loss at every receiver
#   c  5% loss at one receiver
#   d  no loss, a fourth receiver starting 3 s after the sender
#   j  as a, with jumbo frames: every lab link at MTU 9000, loopcast --packet-size
#      9000, uftp -b 8800 (udpcast and iperf are not run)
# Each cell: wall time from the sender's start until every receiver holds a verified
# file (compared byte for byte with the source), goodput (file size / wall time),
# sender CPU seconds, receivers' CPU seconds (sum, and per receiver per GiB of
# file), and whether every receiver verified. Medians of REPS runs. The file is random (incompressible) and lives on
# tmpfs, as do the outputs. Prints a markdown table on stdout; with KEEP=DIR the logs of
# every run are copied to DIR/logs (TOOL-SCENARIO-REP-HOST.log).
# Rates: LOOPCAST_RATE (default 3G, loopcast's --rate; LOOPCAST_JUMBO_RATE in
# scenario j, default 4G; both the best fixed rates of a sweep on the 2-core
# development machine, docs/performance.md), UFTP_RATE_KBPS (default -1:
# as fast as the interface allows), UDPCAST_RATE (default: none, udpcast's own pace).
# LOOPCAST_SERVE_FLAGS adds flags to loopcast's serve (e.g. --no-gso),
# LOOPCAST_RECV_FLAGS to its receivers' (e.g. --repair copies); LOOPCAST_BIN
# runs another loopcast build instead of building this tree's. With
# LOOPCAST_BEFORE_BIN (an older build, e.g. format v3's), tool loopcast-before
# runs it on an archive it packed itself, in the same run, for a before/after.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh: the namespace lab needs root" >&2; exit 1; }

reps=${REPS:-3}
size_mib=${SIZE_MIB:-512}
tools=${TOOLS:-"loopcast uftp uftp-aes udpcast iperf"}
scenarios=${SCENARIOS:-"a b c d"}
loopcast_rate=${LOOPCAST_RATE:-3G}
jumbo_rate=${LOOPCAST_JUMBO_RATE:-4G}
uftp_rate=${UFTP_RATE_KBPS:--1}
late_wait=${LATE_WAIT:-20}   # seconds a late joiner may take after the others finished
run_limit=${RUN_LIMIT:-120}  # seconds any single run may take

need=""
for pair in ip:iproute2 nft:nftables uftp:uftp udp-sender:udpcast iperf:iperf /usr/bin/time:time; do
    command -v "${pair%%:*}" >/dev/null || need="$need ${pair#*:}"
done
if [ -n "$need" ]; then
    echo "bench.sh: installing$need" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
# LOOPCAST_BIN measures another build (e.g. an older commit's, for a before/after).
if [ -z "${LOOPCAST_BIN:-}" ]; then cargo build --release --quiet; fi
BIN=${LOOPCAST_BIN:-$PWD/target/release/loopcast}
LAB="$PWD/scripts/lab.sh -p lcb$$"

work=$(mktemp -d -p /dev/shm loopcast-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    $LAB down >/dev/null 2>&1 || true
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp -r "$work"/logs "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/logs"

$LAB up 4 >/dev/null
"$BIN" keygen -o "$work/key" >/dev/null
head -c $((size_mib << 20)) /dev/urandom > "$work/data.bin"
# loopcast packs before serving, like uftp -Y encrypts on the fly but needs no
# packing; pack once here so every run starts sending at once.
"$BIN" pack "$work/data.bin" -k "$work/key" -o "$work/data.lcar" 2>/dev/null
if [ -n "${LOOPCAST_BEFORE_BIN:-}" ]; then
    "$LOOPCAST_BEFORE_BIN" pack "$work/data.bin" -k "$work/key" -o "$work/data-before.lcar" 2>/dev/null
fi
addr() { echo "10.77.0.$((10 + $1))"; }
addr6() { echo "fd77::$((10 + $1))"; }
now() { date +%s.%N; }
# Epoch seconds $2 seconds after epoch time $1.
after() { awk -v t="$1" -v l="$2" 'BEGIN {printf "%.3f", t + l}'; }

# Starts CMD in lab host $1 under GNU time (CPU to $2.cpu, output to $2.log); sets $spawned.
spawn() {
    local host=$1 tag=$2
    shift 2
    ip netns exec "lcb$$-$host" /usr/bin/time -f '%U %S' -o "$work/$tag.cpu" "$@" \
        > "$work/logs/$tag.log" 2>&1 < /dev/null &
    spawned=$!
    pids+=("$spawned")
}

# Ends a process started by spawn: its child (the measured command) gets SIGTERM, so
# GNU time still records its CPU.
stop() {
    local pid=$1
    pkill -TERM -P "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    pkill -KILL -P "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cpu() { awk '/^[0-9.]+ [0-9.]+$/ {s += $1 + $2} END {printf "%.2f", s}' "$@" 2>/dev/null || echo 0; }

# Waits until every PID given has exited or the deadline (epoch seconds) passes.
wait_all() {
    local deadline=$1 pid
    shift
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && awk -v d="$deadline" -v n="$(now)" 'BEGIN {exit !(n < d)}'; do
            sleep 0.05
        done
    done
}

# Runs one cell: tool $1, scenario $2. Prints "wall sender_cpu receivers_cpu verified".
run_one() {
    local tool=$1 scenario=$2 n=3 late="" packet=() block=()
    [ "$scenario" = d ] && late=4
    local rate=$loopcast_rate
    [ "$scenario" = j ] && packet=(--packet-size 9000) && block=(-b 8800) && rate=$jumbo_rate
    rm -rf "$work"/out* "$work"/*.cpu
    for i in 1 2 3 4; do mkdir -p "$work/out$i"; done
    local receivers=() rtags=() server t0 t1
    case "$tool" in
        loopcast | loopcast6 | loopcast-before)
            local at=addr family=() sender=10.77.0.1 bin=$BIN archive=$work/data.lcar
            [ "$tool" = loopcast6 ] && at=addr6 family=(-g '[ff15::77]:7700') sender=fd77::1
            [ "$tool" = loopcast-before ] && bin=${LOOPCAST_BEFORE_BIN:?} archive=$work/data-before.lcar
            for i in $(seq $n); do
                spawn "r$i" "r$i" "$bin" recv -k "$work/key" -i "$($at "$i")" "${family[@]}" -o "$work/out$i" --timeout "$run_limit" ${LOOPCAST_RECV_FLAGS:-}
                receivers+=("$spawned"); rtags+=("r$i")
            done
            sleep 0.5
            t0=$(now)
            # shellcheck disable=SC2086
            spawn s s "$bin" serve "$archive" -k "$work/key" -i "$sender" "${family[@]}" --rate "$rate" "${packet[@]}" ${LOOPCAST_SERVE_FLAGS:-}
            server=$spawned
            if [ -n "$late" ]; then
                sleep 3
                spawn r4 r4 "$bin" recv -k "$work/key" -i "$($at 4)" "${family[@]}" -o "$work/out4" --timeout "$run_limit" ${LOOPCAST_RECV_FLAGS:-}
                receivers+=("$spawned"); rtags+=(r4)
            fi
            wait_all "$(after "$t0" "$run_limit")" "${receivers[@]}"
            t1=$(now)
            stop "$server"
            ;;
        uftp | uftp-aes)
            local ids="" crypt=(-Y none)
            [ "$tool" = uftp-aes ] && crypt=(-Y aes256-gcm -h sha256)
            for i in $(seq $n) $late; do ids="$ids${ids:+,}0x$(printf '%02x%02x%02x%02x' 10 77 0 $((10 + i)))"; done
            for i in $(seq $n); do
                spawn "r$i" "r$i" uftpd -d -D "$work/out$i" -I "$(addr "$i")" -B 104857600 -M 239.77.1.1
                receivers+=("$spawned"); rtags+=("r$i")
            done
            sleep 0.5
            t0=$(now)
            spawn s s uftp -I 10.77.0.1 -M 239.77.1.1 -P 239.77.1.2 -R "$uftp_rate" -B 104857600 \
                -H "$ids" "${crypt[@]}" "${block[@]}" -x 1 "$work/data.bin"
            server=$spawned
            if [ -n "$late" ]; then
                sleep 3
                spawn r4 r4 uftpd -d -D "$work/out4" -I "$(addr 4)" -B 104857600 -M 239.77.1.1
                receivers+=("$spawned"); rtags+=(r4)
            fi
            # uftp exits when every listed client has the file (or has dropped out).
            wait_all "$(after "$t0" "$run_limit")" "$server"
            t1=$(now)
            stop "$server"
            for pid in "${receivers[@]}"; do stop "$pid"; done
            ;;
        udpcast)
            for i in $(seq $n); do
                spawn "r$i" "r$i" udp-receiver --interface eth0 --file "$work/out$i/data.bin" --nokbd
                receivers+=("$spawned"); rtags+=("r$i")
            done
            sleep 0.5
            t0=$(now)
            spawn s s udp-sender --interface eth0 --file "$work/data.bin" --min-receivers $n --nokbd \
                ${UDPCAST_RATE:+--max-bitrate "$UDPCAST_RATE"}
            server=$spawned
            if [ -n "$late" ]; then
                sleep 3
                spawn r4 r4 udp-receiver --interface eth0 --file "$work/out4/data.bin" --nokbd
                receivers+=("$spawned"); rtags+=(r4)
            fi
            wait_all "$(after "$t0" "$run_limit")" "${receivers[@]:0:$n}"
            [ -n "$late" ] && wait_all "$(after "$(now)" "$late_wait")" "${receivers[$n]}"
            t1=$(now)
            stop "$server"
            for pid in "${receivers[@]}"; do stop "$pid"; done
            ;;
    esac
    local ok=yes
    for i in $(seq $n) $late; do
        cmp -s "$work/data.bin" "$work/out$i/data.bin" || ok=no
    done
    for tag in s "${rtags[@]}"; do cp "$work/logs/$tag.log" "$work/logs/$tool-$scenario-$rep-$tag.log" 2>/dev/null || true; done
    local rcpu=()
    for tag in "${rtags[@]}"; do rcpu+=("$work/$tag.cpu"); done
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') $(cpu "$work/s.cpu") $(cpu "${rcpu[@]}") $ok"
}

# iperf2 ceiling: the sender sends as fast as sendto allows for 5 s; the cell is the
# slowest receiver's received rate and its loss.
run_iperf() {
    local receivers=() i
    for i in 1 2 3; do
        spawn "r$i" "r$i" iperf -s -u -B 239.77.2.1 -l 1470 -i 5
        receivers+=("$spawned")
    done
    sleep 0.5
    spawn s s iperf -c 239.77.2.1 -u -T 1 -b 10G -l 1470 -t 5 -B 10.77.0.1
    wait_all "$(after "$(now)" 20)" "$spawned"
    sleep 1
    for pid in "${receivers[@]}"; do stop "$pid"; done
    # Receiver report lines: "... 0.0-5.0 sec  600 MBytes  1.01 Gbits/sec  0.010 ms  12/440000 (0.0027%)"
    cat "$work"/logs/r[123].log | grep -E 'bits/sec.*%' | awk '{
        for (f = 1; f <= NF; f++) if ($f ~ /bits\/sec/) { v = $(f - 1); u = $f }
        m = (u ~ /^G/) ? 1000 : (u ~ /^M/) ? 1 : (u ~ /^K/) ? 0.001 : 0.000001
        mbit = v * m; loss = $NF; gsub(/[()%]/, "", loss)
        if (min == "" || mbit < min) { min = mbit; minloss = loss }
    } END { if (min == "") print "- -"; else printf "%.0f %s\n", min / 8, minloss }'
}

median() { sort -n | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "-"}'; }

echo "bench: ${size_mib} MiB random file, $reps runs per cell, loopcast --rate $loopcast_rate (j: $jumbo_rate), uftp -R $uftp_rate" >&2
printf '| scenario | tool | wall time | goodput | sender CPU | receivers CPU | CPU-s per receiver per GiB | verified |\n|---|---|---|---|---|---|---|---|\n'
for scenario in $scenarios; do
    if [ "$scenario" = j ]; then $LAB mtu 9000; else $LAB mtu 1500; fi
    case "$scenario" in
        a | d | j) for i in 1 2 3 4; do $LAB loss "r$i" 0; done ;;
        b) for i in 1 2 3 4; do $LAB loss "r$i" 2; done ;;
        c) for i in 1 2 3 4; do $LAB loss "r$i" 0; done; $LAB loss r1 5 ;;
        *) echo "bench.sh: unknown scenario '$scenario'" >&2; exit 2 ;;
    esac
    for tool in $tools; do
        if [ "$scenario" = j ] && { [ "$tool" = udpcast ] || [ "$tool" = iperf ]; }; then
            continue
        fi
        if [ "$tool" = iperf ]; then
            [ "$scenario" = a ] || continue
            : > "$work/cells"
            for _ in $(seq "$reps"); do run_iperf >> "$work/cells"; echo -n . >&2; done
            printf '| a | iperf2 ceiling (sendto, 1470 B) | 5 s | %s MB/s (loss %s%%) | - | - | - | - |\n' \
                "$(cut -d' ' -f1 "$work/cells" | median)" "$(cut -d' ' -f2 "$work/cells" | median)"
            continue
        fi
        : > "$work/cells"
        for rep in $(seq "$reps"); do run_one "$tool" "$scenario" >> "$work/cells"; echo -n . >&2; done
        wall=$(cut -d' ' -f1 "$work/cells" | median)
        verified=$(awk '{print $4}' "$work/cells" | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep = ", "}')
        rcpu=$(cut -d' ' -f3 "$work/cells" | median)
        nrecv=3; [ "$scenario" = d ] && nrecv=4
        printf '| %s | %s | %s s | %s MB/s | %s s | %s s | %s | %s |\n' "$scenario" "$tool" "$wall" \
            "$(awk -v w="$wall" -v m="$size_mib" 'BEGIN {printf "%.1f", m * 1048576 / w / 1e6}')" \
            "$(cut -d' ' -f2 "$work/cells" | median)" "$rcpu" \
            "$(awk -v c="$rcpu" -v n="$nrecv" -v m="$size_mib" 'BEGIN {printf "%.2f", c / n / (m / 1024)}')" "$verified"
    done
done
echo >&2
