#!/usr/bin/env bash
# An isolated multicast LAN in network namespaces, for tests and benchmarks.
#
# Usage: scripts/lab.sh [-p PREFIX] COMMAND [ARGS]      (root only)
#   up N              switch namespace PREFIX-sw with a bridge (multicast snooping off),
#                     sender PREFIX-s (10.77.0.1, fd77::1) and receivers PREFIX-r1..rN
#                     (10.77.0.11.., fd77::11..); one veth each into the bridge, lo up,
#                     224.0.0.0/4 routed on the lab link (IPv6 multicast is routed there
#                     by the kernel), no default route. Nothing is created in the root
#                     namespace.
#   loss NS PERCENT   drop PERCENT% (0-100, two decimals) of UDP arriving in NS (s, r1, ...);
#                     0 removes the rule. nftables `numgen random`.
#   rate RATE|off     token bucket (tc tbf) on the sender's link, e.g. 500mbit; off removes it.
#   mtu BYTES         MTU of every lab link, both ends, and the bridge (1500; 9000 for jumbo frames).
#   block-multicast NS  drop every IPv4 multicast datagram and every IPv6 multicast UDP
#                     datagram arriving in NS (a host behind a switch that drops
#                     multicast); unicast and IPv6 neighbour discovery still flow.
#   spawn NS LOG CMD...  start CMD in NS in the background, stdout+stderr to LOG; prints its
#                     PID and records it so `down` can end it.
#   exec NS CMD...    run CMD in NS in the foreground.
#   addr NS           print the lab IPv4 address of NS.
#   addr6 NS          print the lab IPv6 address of NS.
#   link-local NS     remove NS's fd77:: address: it keeps only its link-local one,
#                     which it then prints.
#   segments N1 N2 .. a routed site instead of one LAN: segments a, b, c, .. (2 to 8) in a
#                     chain, each a switch namespace PREFIX-sw<x> with a bridge and hosts
#                     PREFIX-<x>1..<x>N (10.77.K.11.., K = 1 for a, 2 for b, ..; the first
#                     count may be 0); the sender PREFIX-s is in segment a (10.77.1.1). A
#                     router PREFIX-<x><y> joins each two neighbouring segments (ab:
#                     10.77.1.254 in a, 10.77.2.253 in b): it forwards unicast and, with no
#                     multicast routing, no multicast. Every host reaches every segment
#                     through its routers. IPv4 only; loss and spawn take these hosts too.
#   link-rate ROUTER RATE|off  token bucket (tc tbf) on both of ROUTER's interfaces,
#                     so both directions of that link carry at most RATE.
#   link-bytes ROUTER   bytes ROUTER has sent into each of its two segments, as "a=N b=M".
#   status            namespaces, addresses, loss and rate rules, recorded processes.
#   down              end the processes this lab started (by PID), delete its namespaces.
#                     Safe to run twice.
# PREFIX (-p or $LAB_PREFIX, default "lclab") names every namespace and the state
# directory, so two labs with different prefixes coexist.
set -euo pipefail

prefix=${LAB_PREFIX:-lclab}
if [ "${1:-}" = "-p" ]; then
    prefix=${2:?-p needs a prefix}
    shift 2
fi
command=${1:-}
[ -n "$command" ] || { sed -n '2,39p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift
case "$prefix" in
    *[!a-zA-Z0-9_]* | "") echo "lab.sh: prefix must be letters, digits or _: '$prefix'" >&2; exit 2 ;;
esac
[ ${#prefix} -le 12 ] || { echo "lab.sh: prefix longer than 12 characters: '$prefix'" >&2; exit 2; }
if [ "$(id -u)" != 0 ]; then
    echo "lab.sh: network namespaces need root; run as root (e.g. sudo $0 $command ...)" >&2
    exit 1
fi

state=/run/loopcast-lab/$prefix
subnet=10.77.0
subnet6=fd77
switch=$prefix-sw

die() { echo "lab.sh: $*" >&2; exit 1; }

# Namespace name for a short host name: s, r1, r2, ..., or in a routed site a1,
# b2, ... and routers ab, bc, ... (a full name is accepted too).
ns_of() {
    case "$1" in
        "$prefix"-*) echo "$1" ;;
        s | r[0-9]* | [a-h][0-9]* | [a-h][a-h]) echo "$prefix-$1" ;;
        *) die "unknown host '$1' (expected s, r1, r2, ..., or a1, b1, ..., ab, ...)" ;;
    esac
}

# A segment's number: a is 1, b 2, ...
segment_number() { echo $(( $(printf '%d' "'$1") - 96 )); }

routed() { [ -f "$state/segments" ]; }

host_addr() {
    local host=${1#"$prefix"-}
    case "$host" in
        s) if routed; then echo "10.77.1.1"; else echo "$subnet.1"; fi ;;
        r[0-9]*) echo "$subnet.$((10 + ${host#r}))" ;;
        [a-h][0-9]*) echo "10.77.$(segment_number "${host:0:1}").$((10 + ${host:1}))" ;;
        *) die "no address for '$1'" ;;
    esac
}

# The IPv6 address: the IPv4 address's last number, read as hex, in fd77::/64.
host_addr6() {
    echo "$subnet6::$(host_addr "$1" | cut -d. -f4)"
}

own_namespaces() { [ -f "$state/namespaces" ] && cat "$state/namespaces" || true; }

exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

add_host() {
    local host=$1 ns=$prefix-$1
    ip netns add "$ns"
    echo "$ns" >> "$state/namespaces"
    # No duplicate address detection: IPv6 addresses, link-local ones included,
    # are usable at once (the lab has no duplicates).
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
    # The veth is made inside the host namespace with its peer inside the switch.
    ip -n "$ns" link add eth0 type veth peer name "$host" netns "$switch"
    ip -n "$switch" link set "$host" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$(host_addr "$ns")/24" brd + dev eth0
    ip -n "$ns" -6 addr add "$(host_addr6 "$ns")/64" dev eth0 nodad
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
}

up() {
    local n=${1:?up needs the number of receivers}
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "receivers must be 1..200, not '$n'"
    exists "$switch" && die "lab '$prefix' is already up (scripts/lab.sh -p $prefix down)"
    mkdir -p "$state"
    : > "$state/namespaces"
    : > "$state/pids"
    # Whatever fails half way is undone.
    trap 'echo "lab.sh: up failed; removing what was made" >&2; down' ERR
    ip netns add "$switch"
    echo "$switch" >> "$state/namespaces"
    ip -n "$switch" link set lo up
    ip -n "$switch" link add br0 type bridge mcast_snooping 0
    ip -n "$switch" link set br0 up
    add_host s
    for i in $(seq "$n"); do add_host "r$i"; done
    trap - ERR
    echo "lab '$prefix' up: sender $prefix-s ($subnet.1), receivers $prefix-r1..r$n ($subnet.11..$subnet.$((10 + n)))"
}

# Host HOST (a1, s, ...) on segment SEG's switch at ADDR/24, with routes to the
# other segments through GATEWAYS ("10.77.1.254=10.77.2.0/24 ..."), IPv4 only.
add_routed_host() {
    local host=$1 seg=$2 addr=$3 ns=$prefix-$1 sw=$prefix-sw$2
    shift 3
    ip netns add "$ns"
    echo "$ns" >> "$state/namespaces"
    ip -n "$ns" link add eth0 type veth peer name "$host" netns "$sw"
    ip -n "$sw" link set "$host" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$addr/24" brd + dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
    local route
    for route in "$@"; do ip -n "$ns" route add "${route#*=}" via "${route%%=*}"; done
}

# The routes a host (or router side) in segment K takes to the others: segments
# before K through K's left router (10.77.K.253), after it through its right one
# (10.77.K.254); SKIP is a segment it reaches directly.
routes_from() {
    local k=$1 count=$2 skip=${3:-0} j
    for j in $(seq "$count"); do
        [ "$j" = "$k" ] || [ "$j" = "$skip" ] && continue
        if [ "$j" -lt "$k" ]; then echo "10.77.$k.253=10.77.$j.0/24"; else echo "10.77.$k.254=10.77.$j.0/24"; fi
    done
}

segments() {
    [ $# -ge 2 ] && [ $# -le 8 ] || die "segments needs 2 to 8 host counts, e.g. segments 3 6"
    local n
    for n in "$@"; do
        [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -le 100 ] || die "hosts per segment must be 0..100, not '$n'"
    done
    exists "$switch" || exists "$prefix-swa" && die "lab '$prefix' is already up (scripts/lab.sh -p $prefix down)"
    mkdir -p "$state"
    : > "$state/namespaces"
    : > "$state/pids"
    echo "$#" > "$state/segments"
    trap 'echo "lab.sh: segments failed; removing what was made" >&2; down' ERR
    local count=$# k=0 seg i
    for n in "$@"; do
        k=$((k + 1)); seg=$(printf "\\$(printf '%03o' $((96 + k)))")
        ip netns add "$prefix-sw$seg"
        echo "$prefix-sw$seg" >> "$state/namespaces"
        ip -n "$prefix-sw$seg" link set lo up
        ip -n "$prefix-sw$seg" link add br0 type bridge mcast_snooping 0
        ip -n "$prefix-sw$seg" link set br0 up
        # shellcheck disable=SC2046
        [ "$k" = 1 ] && add_routed_host s a 10.77.1.1 $(routes_from 1 "$count")
        for i in $(seq "$n"); do
            # shellcheck disable=SC2046
            add_routed_host "$seg$i" "$seg" "10.77.$k.$((10 + i))" $(routes_from "$k" "$count")
        done
        [ "$k" = 1 ] && continue
        # The router between the segment before and this one.
        local left; left=$(printf "\\$(printf '%03o' $((95 + k)))")
        local router=$prefix-$left$seg
        ip netns add "$router"
        echo "$router" >> "$state/namespaces"
        ip -n "$router" link set lo up
        ip netns exec "$router" sysctl -qw net.ipv4.ip_forward=1
        ip -n "$router" link add "to-$left" type veth peer name "$left$seg" netns "$prefix-sw$left"
        ip -n "$router" link add "to-$seg" type veth peer name "$left$seg" netns "$prefix-sw$seg"
        ip -n "$prefix-sw$left" link set "$left$seg" master br0 up
        ip -n "$prefix-sw$seg" link set "$left$seg" master br0 up
        ip -n "$router" addr add "10.77.$((k - 1)).254/24" dev "to-$left"
        ip -n "$router" addr add "10.77.$k.253/24" dev "to-$seg"
        ip -n "$router" link set "to-$left" up
        ip -n "$router" link set "to-$seg" up
        # Beyond its two segments: left of the left one, right of the right one.
        local j
        for j in $(seq "$count"); do
            if [ "$j" -lt $((k - 1)) ]; then ip -n "$router" route add "10.77.$j.0/24" via "10.77.$((k - 1)).253"; fi
            if [ "$j" -gt "$k" ]; then ip -n "$router" route add "10.77.$j.0/24" via "10.77.$k.254"; fi
        done
    done
    trap - ERR
    echo "lab '$prefix' up: $count segments in a chain, sender $prefix-s (10.77.1.1)"
}

# ROUTER's namespace and its two segments' letters.
router_of() {
    local r=${1:?needs a router like ab}
    [[ "$r" =~ ^[a-h][a-h]$ ]] || die "a router is named by its two segments, like ab, not '$r'"
    exists "$prefix-$r" || die "no router $prefix-$r"
    echo "$prefix-$r ${r:0:1} ${r:1:1}"
}

link_rate() {
    local ns left right r=${2:?link-rate needs a rate like 100mbit, or off}
    read -r ns left right <<< "$(router_of "$1")"
    local dev
    for dev in "to-$left" "to-$right"; do
        if [ "$r" = off ]; then
            tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
        else
            tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$r" burst 65536 latency 50ms
        fi
    done
}

link_bytes() {
    local ns left right
    read -r ns left right <<< "$(router_of "${1:-}")"
    echo "$left=$(ip netns exec "$ns" cat "/sys/class/net/to-$left/statistics/tx_bytes")" \
        "$right=$(ip netns exec "$ns" cat "/sys/class/net/to-$right/statistics/tx_bytes")"
}

loss() {
    local ns pct
    ns=$(ns_of "${1:?loss needs a host}")
    pct=${2:?loss needs a percentage}
    [[ "$pct" =~ ^[0-9]+(\.[0-9]{1,2})?$ ]] || die "loss must be a percentage like 5 or 0.5, not '$pct'"
    local per10k
    per10k=$(awk -v p="$pct" 'BEGIN {printf "%d", p * 100 + 0.5}')
    [ "$per10k" -le 10000 ] || die "loss above 100%: $pct"
    exists "$ns" || die "no namespace $ns"
    ip netns exec "$ns" nft delete table inet loopcast_lab 2>/dev/null || true
    [ "$per10k" = 0 ] && return 0
    ip netns exec "$ns" nft -f - <<EOF
table inet loopcast_lab {
    chain input {
        type filter hook input priority 0; policy accept;
        meta l4proto udp numgen random mod 10000 < $per10k drop
    }
}
EOF
}

rate() {
    local r=${1:?rate needs a rate like 500mbit, or off}
    local ns=$prefix-s
    exists "$ns" || die "no namespace $ns"
    if [ "$r" = off ]; then
        ip -n "$ns" link set eth0 up
        tc -n "$ns" qdisc del dev eth0 root 2>/dev/null || true
        return 0
    fi
    local bps
    bps=$(awk -v r="$r" 'BEGIN {
        n = r + 0; u = tolower(substr(r, length(n "") + 1))
        m = (u == "kbit") ? 1e3 : (u == "mbit") ? 1e6 : (u == "gbit") ? 1e9 : (u == "bit" || u == "") ? 1 : -1
        if (m < 0 || n <= 0) exit 1; printf "%d", n * m }') || die "rate must look like 500mbit or 1gbit, not '$r'"
    # Burst: 4 ms of data, at least 64 KiB, so the bucket does not starve at high rates.
    local burst=$((bps / 8 / 250))
    [ "$burst" -ge 65536 ] || burst=65536
    tc -n "$ns" qdisc replace dev eth0 root tbf rate "$r" burst "$burst" latency 50ms
}

mtu() {
    local bytes=${1:?mtu needs a size in bytes} ns host
    [[ "$bytes" =~ ^[0-9]+$ ]] && [ "$bytes" -ge 576 ] && [ "$bytes" -le 65535 ] || die "mtu must be 576..65535, not '$bytes'"
    exists "$switch" || die "lab '$prefix' is down"
    for ns in $(own_namespaces); do
        [ "$ns" = "$switch" ] && continue
        host=${ns#"$prefix"-}
        ip -n "$switch" link set "$host" mtu "$bytes"
        ip -n "$ns" link set eth0 mtu "$bytes"
    done
    ip -n "$switch" link set br0 mtu "$bytes"
}

spawn() {
    local ns log
    ns=$(ns_of "${1:?spawn needs a host}")
    log=${2:?spawn needs a log file}
    shift 2
    [ $# -gt 0 ] || die "spawn needs a command"
    exists "$ns" || die "no namespace $ns"
    ip netns exec "$ns" "$@" > "$log" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid $ns" >> "$state/pids"
    echo "$pid"
}

block_multicast() {
    local ns
    ns=$(ns_of "${1:?block-multicast needs a host}")
    exists "$ns" || die "no namespace $ns"
    ip netns exec "$ns" nft delete table inet loopcast_lab_nomcast 2>/dev/null || true
    ip netns exec "$ns" nft -f - <<EOF
table inet loopcast_lab_nomcast {
    chain input {
        type filter hook input priority 0; policy accept;
        ip daddr 224.0.0.0/4 drop
        ip6 daddr ff00::/8 meta l4proto udp drop
    }
}
EOF
}

link_local() {
    local ns
    ns=$(ns_of "${1:?link-local needs a host}")
    exists "$ns" || die "no namespace $ns"
    ip -n "$ns" -6 addr flush dev eth0 scope global
    ip -n "$ns" -6 -br addr show dev eth0 scope link | awk '{print $3}' | cut -d/ -f1
}

status() {
    local ns
    own_namespaces | grep -q . || { echo "lab '$prefix' is down"; return 0; }
    for ns in $(own_namespaces); do
        exists "$ns" || { echo "$ns: missing"; continue; }
        case "$ns" in
            "$switch" | "$prefix"-sw[a-h])
                echo "$ns: bridge $(ip -n "$ns" -br link show br0 | awk '{print $2}')"; continue ;;
            "$prefix"-[a-h][a-h])
                echo "$ns: router $(ip -n "$ns" -br -4 addr show | awk '$1 != "lo" {printf "%s ", $3}')"
                tc -n "$ns" qdisc show | grep -o 'tbf.*rate [^ ]*' | sed 's/^/  /' || true
                continue ;;
        esac
        printf '%s: %s %s' "$ns" "$(ip -n "$ns" -br -4 addr show eth0 | awk '{print $3}')" "$(ip -n "$ns" -br -6 addr show eth0 scope global | awk '{print $3}')"
        local drop
        drop=$(ip netns exec "$ns" nft list table inet loopcast_lab 2>/dev/null | grep -o 'mod 10000 < [0-9]*' | awk '{print $4 / 100 "%"}') || true
        [ -n "$drop" ] && printf ', loss %s' "$drop"
        ip netns exec "$ns" nft list table inet loopcast_lab_nomcast >/dev/null 2>&1 && printf ', multicast blocked'
        tc -n "$ns" qdisc show dev eth0 | grep -o 'tbf.*rate [^ ]*' | sed 's/^/, /' | tr -d '\n' || true
        echo
    done
    [ -s "$state/pids" ] || return 0
    local pid pns
    while read -r pid pns; do
        if kill -0 "$pid" 2>/dev/null; then echo "process $pid in $pns: running"; fi
    done < "$state/pids"
}

down() {
    local pid pns ns
    if [ -f "$state/pids" ]; then
        # A recorded PID is ended only while it still lives in the namespace it was
        # started in, so a reused PID is never hit.
        while read -r pid pns; do
            [ "$(ip netns identify "$pid" 2>/dev/null)" = "$pns" ] && kill -TERM "$pid" 2>/dev/null || true
        done < "$state/pids"
    fi
    # Anything still inside our own namespaces was started there by this lab's users.
    for ns in $(own_namespaces); do
        exists "$ns" && ip netns pids "$ns" 2>/dev/null | xargs -r kill -TERM 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=""
        for ns in $(own_namespaces); do
            exists "$ns" && [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] && alive=1
        done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    for ns in $(own_namespaces); do
        exists "$ns" && ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    done
    for ns in $(own_namespaces); do
        exists "$ns" && ip netns del "$ns"
    done
    rm -rf "$state"
    return 0
}

case "$command" in
    up) up "$@" ;;
    segments) segments "$@" ;;
    link-rate) link_rate "$@" ;;
    link-bytes) link_bytes "$@" ;;
    loss) loss "$@" ;;
    block-multicast) block_multicast "$@" ;;
    rate) rate "$@" ;;
    mtu) mtu "$@" ;;
    spawn) spawn "$@" ;;
    exec) ns=$(ns_of "${1:?exec needs a host}"); shift; exists "$ns" || die "no namespace $ns"; exec ip netns exec "$ns" "$@" ;;
    addr) host_addr "$(ns_of "${1:?addr needs a host}")" ;;
    addr6) host_addr6 "$(ns_of "${1:?addr6 needs a host}")" ;;
    link-local) link_local "$@" ;;
    status) status ;;
    down) down ;;
    *) die "unknown command '$command' (up, segments, loss, rate, link-rate, link-bytes, mtu, block-multicast, spawn, exec, addr, addr6, link-local, status, down)" ;;
esac
