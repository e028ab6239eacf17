#!/usr/bin/env bash
# Interop with a real Fluent Bit: tail -> forward (Require_ack_response On, Shared_Key, gzip)
# -> flaghook's `fluent` source -> webhook sink -> `flaghook receive`. Every event written to
# the tailed file must reach the receiver.
#
#   bash benches/fluent-bit-forward.sh            # 20000 events
#   bash benches/fluent-bit-forward.sh 100000
#
# Fluent Bit is in no registry reached here as a binary; the npm package `fluent-bit` carries
# the Fluent Bit 1.8.15 source. It is fetched with `npm pack` and built once with cmake (only
# the tail input and the forward output; no Lua, AWS or stream processor; Debian's Oniguruma
# for the Onigmo the package lacks) into target/peers/fluent-bit (a few minutes on 2 cores).
# Needs cmake, flex, bison, libonig-dev and a C compiler: installed from Debian when missing
# and run as root. Not part of .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

events="${1:-20000}"
[[ "$events" =~ ^[1-9][0-9]*$ ]] || { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

peers="$PWD/target/peers"
fluent_bit="$peers/fluent-bit/bin/fluent-bit"

need_debian() {
  local missing=()
  for tool in cmake flex bison cc make npm; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ -e /usr/include/oniguruma.h ] || missing+=(libonig-dev)
  [ "${#missing[@]}" -eq 0 ] && return
  [ "$(id -u)" = 0 ] || { echo "missing: ${missing[*]} (install cmake flex bison build-essential npm libonig-dev)" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    cmake flex bison build-essential npm libonig-dev >/dev/null
}

build_fluent_bit() {
  [ -x "$fluent_bit" ] && return
  need_debian
  local src="$peers/fluent-bit-src"
  mkdir -p "$src"
  if [ ! -f "$src/package/src/fluent-bit/CMakeLists.txt" ]; then
    (cd "$src" && npm pack --silent fluent-bit@0.0.3 >/dev/null && tar xzf fluent-bit-0.0.3.tgz)
  fi
  local tree="$src/package/src/fluent-bit"
  # The package lacks the bundled Onigmo (regex engine, which the tail input's parsers need):
  # Debian's Oniguruma stands in for it, through a header named as Onigmo's.
  cat >"$tree/cmake/onigmo.cmake" <<'CMAKE'
find_library(ONIG_LIBRARY onig REQUIRED)
add_library(libonigmo UNKNOWN IMPORTED GLOBAL)
set_target_properties(libonigmo PROPERTIES IMPORTED_LOCATION "${ONIG_LIBRARY}")
add_custom_target(onigmo)
file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/onig-shim/onigmo.h" "#include <oniguruma.h>\n")
include_directories("${CMAKE_CURRENT_BINARY_DIR}/onig-shim")
CMAKE
  # Every plugin off, then the two this chain needs.
  local flags=()
  for option in $(sed -n 's/^option(\(FLB_\(IN\|OUT\|FILTER\|PROCESSOR\)_[A-Z0-9_]*\).*/\1/p' "$tree/CMakeLists.txt"); do
    flags+=("-D$option=Off")
  done
  echo "building Fluent Bit 1.8.15 (tail, forward) into $peers/fluent-bit" >&2
  cmake -S "$tree" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DFLB_RELEASE=On \
    -DFLB_DEBUG=Off -DFLB_EXAMPLES=Off -DFLB_SHARED_LIB=Off -DFLB_LUAJIT=Off \
    -DFLB_AWS=Off -DFLB_SIGNV4=Off -DFLB_STREAM_PROCESSOR=Off -DFLB_HTTP_SERVER=Off \
    -DFLB_PROXY_GO=Off -DFLB_CUSTOM_CALYPTIA=Off -DFLB_BACKTRACE=Off -DFLB_JEMALLOC=Off \
    -DFLB_TLS=On -DFLB_SQLDB=On \
    "${flags[@]}" -DFLB_IN_TAIL=On -DFLB_OUT_FORWARD=On -DFLB_IN_STORAGE_BACKLOG=On \
    -DCMAKE_C_FLAGS="-fcommon -Wno-error" >"$src/cmake.log" 2>&1 \
    || { tail -30 "$src/cmake.log" >&2; exit 1; }
  cmake --build "$src/build" -j"$(nproc)" >"$src/build.log" 2>&1 \
    || { grep -m5 -B2 -A5 "error" "$src/build.log" >&2; exit 1; }
  mkdir -p "$(dirname "$fluent_bit")"
  cp "$src/build/bin/fluent-bit" "$fluent_bit"
}

build_fluent_bit
cargo build --release --quiet
flaghook="$PWD/target/release/flaghook"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
receiver_port="$(free_port)"
forward_port="$(free_port)"
key="fb-$(date +%s%N)"

# GO Feature Flag feature events, one per line, each with its own userKey.
python3 - "$events" >"$work/flag-variation.json" <<'EOF'
import sys
for i in range(int(sys.argv[1])):
    print('{"kind":"feature","contextKind":"user","userKey":"user-%d","creationDate":%d,"key":"flag-%d","variation":"on","value":true,"default":false,"version":"v1","source":"SERVER"}' % (i, 1700000000 + i, i % 50))
EOF

"$flaghook" receive --listen "127.0.0.1:$receiver_port" >"$work/received.jsonl" 2>"$work/receive.log" &
pids+=($!)

cat >"$work/flaghook.toml" <<EOF
data_dir = "$work/flaghook-data"

[sources.from_fluent_bit]
type = "fluent"
address = "127.0.0.1:$forward_port"
shared_key = "\${FLUENT_SHARED_KEY}"

[sinks.webhook]
type = "webhook"
inputs = ["from_fluent_bit"]
endpoint_url = "http://127.0.0.1:$receiver_port/"
flush_interval = "200ms"
max_event_in_memory = 10000
EOF
FLUENT_SHARED_KEY="$key" "$flaghook" run --config "$work/flaghook.toml" >/dev/null 2>"$work/flaghook.log" &
pids+=($!)

cat >"$work/fluent-bit.conf" <<EOF
[SERVICE]
    Flush         1
    Log_Level     info
    storage.path  $work/fluent-bit-storage

[INPUT]
    Name              tail
    Path              $work/flag-variation.json
    Read_from_Head    On
    Refresh_Interval  1
    DB                $work/fluent-bit.db
    Buffer_Max_Size   1MB
    Skip_Long_Lines   On
    storage.type      filesystem

[OUTPUT]
    Name                  forward
    Match                 *
    Host                  127.0.0.1
    Port                  $forward_port
    Require_ack_response  On
    Compress              gzip
    Shared_Key            $key
    Self_Hostname         fluent-bit-bench
EOF
sleep 0.5
"$fluent_bit" -c "$work/fluent-bit.conf" >"$work/fluent-bit.log" 2>&1 &
pids+=($!)

# The receiver prints one JSON line per request: {"status":200,"events":N,...}.
received() { python3 -c 'import json,sys; print(sum(json.loads(l).get("events",0) for l in open(sys.argv[1]) if l.strip()))' "$work/received.jsonl"; }
start=$(date +%s)
got=0
while [ $(( $(date +%s) - start )) -lt 120 ]; do
  got="$(received)"
  [ "$got" -ge "$events" ] && break
  sleep 0.5
done
elapsed=$(( $(date +%s) - start ))
requests="$(grep -c '"status":200' "$work/received.jsonl" || true)"
echo "events written: $events; received: $got in $requests requests within ${elapsed}s of starting Fluent Bit"
grep -i -E "error|warn" "$work/fluent-bit.log" | head -5 || true
grep -i -E "WARN|ERROR" "$work/flaghook.log" | head -5 || true
if [ "$got" -lt "$events" ]; then
  echo "FAILED: $((events - got)) events did not arrive (fluent-bit log: see above)" >&2
  exit 1
fi
echo "OK: every event went tail -> forward (acks, shared key, gzip) -> flaghook -> webhook"
