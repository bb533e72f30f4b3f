# Sourced by the loopback scripts (goodput.sh, profile_recv.sh): builds this
# tree's release binary unless LOOPCAST_BIN names another build (e.g. an older
# commit's, for a before/after), makes a work directory under WORKDIR
# (default /var/tmp) that is removed on exit with the server ($server) it
# started, and packs $size_mib MiB of random data there once (data.bin,
# data.lcar, key), so every run starts sending at once.
if [ -z "${LOOPCAST_BIN:-}" ]; then cargo build --release --quiet; fi
BIN=${LOOPCAST_BIN:-$PWD/target/release/loopcast}
work=$(mktemp -d -p "${WORKDIR:-/var/tmp}")
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$BIN" keygen -o "$work/key" >/dev/null
head -c $((size_mib << 20)) /dev/urandom > "$work/data.bin"
"$BIN" pack "$work/data.bin" -k "$work/key" -o "$work/data.lcar" >/dev/null
# Starts the server of data.lcar on loopback group $1 at rate $2 (packets of
# PACKET_SIZE, default 1500) in the background; sets $server.
serve_loopback() {
    "$BIN" serve "$work/data.lcar" -k "$work/key" -i 127.0.0.1 -g "$1" --rate "$2" \
        --packet-size "${PACKET_SIZE:-1500}" 2> "$work/serve.log" &
    server=$!
}
