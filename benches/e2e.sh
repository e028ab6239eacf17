#!/usr/bin/env bash
# End-to-end benchmark of flaghook (issues 4 and 14): GO Feature Flag events from a file, a TCP
# connection (through the source's journal), Vector envelopes over TCP, the Fluent Forward and
# HTTP sources (acknowledged) and a `schema = "any"` sink, to a signature-verifying webhook receiver on loopback, against syslog-ng tuned for
# throughput doing the same job and against the floor (a micro-benchmark of what no
# implementation can skip); plus memory, a latency probe and an idle check.
#
#   bash benches/e2e.sh               # everything: receiver check, throughput table, memory,
#                                     # latency, idle (about 5 minutes after the builds, on a quiet machine)
#   bash benches/e2e.sh throughput    # the receiver check and the throughput table only
#   bash benches/e2e.sh receiver      # the receiver alone (load check)
#   bash benches/e2e.sh memory        # peak RSS of flaghook with 10 000- and 100 000-event batches
#   bash benches/e2e.sh latency       # p50/p99 from append to arrival, flush_interval = "100ms"
#   bash benches/e2e.sh idle          # CPU% of flaghook tailing 100 quiet files
#   bash benches/e2e.sh jetstream     # edge (file -> nats sink) -> NATS JetStream -> 1 and 2
#                                     # central flaghooks (nats source -> webhook): events/s from
#                                     # the edge's start to the last event at the receiver
#
# Environment (defaults in brackets):
#   N [2000000]        events in the generated file (~190 bytes each)
#   RUNS [3]           runs of each tool; the table shows the median and the range
#   BATCH [10000]      events per request (flaghook's max_event_in_memory, syslog-ng's batch-lines)
#   COMPRESSION [none] flaghook's `compression` (none, gzip, zstd) in every flaghook run; the receiver
#                      verifies the signature over the bytes sent, then decodes them
#   REQUEST_CONCURRENCY [1]  flaghook's `request_concurrency` in every flaghook run
#   RECV_DELAY_MS [0]  the receiver answers each webhook POST this many ms after its body arrived, as a
#                      remote collector would (20: one request in flight then caps flaghook at
#                      BATCH x 50 events/s; compare REQUEST_CONCURRENCY=1 and 4); the receiver-alone
#                      check is skipped then
#   TOOLS ["file tcp tcp-always vector fluent http any syslog-ng floor"]  the throughput runs, taking turns:
#                      file:       flaghook, file source -> webhook
#                      tcp:        flaghook, TCP source -> journal (journal_fsync = "interval") -> webhook
#                      tcp-always: the same with journal_fsync = "always"
#                      vector:     flaghook, TCP source fed Vector envelopes (the event escaped in
#                                  `message`) -> journal -> webhook
#                      fluent:     flaghook, fluent source -> journal -> webhook, fed by `fhbench
#                                  send-forward`: PackedForward entries of FEED_LINES records
#                                  `{"log": "<event>"}` (Fluent Bit's tail without a parser), each
#                                  with a `chunk` id, FEED_IN_FLIGHT awaiting their ack at once
#                      http:       flaghook, http source -> journal -> webhook, fed by `fhbench
#                                  post`: newline-delimited bodies of FEED_LINES events over
#                                  FEED_IN_FLIGHT connections, each answered 200 before the next
#                      any:        flaghook, file source -> webhook with schema = "any"
#                      syslog-ng:  syslog-ng 3.x tuned for throughput, file() -> http() (apt-get
#                                  installed when missing, as root)
#                      floor:      benches/micro.rs over the same events (read + split + validate +
#                                  build + HMAC on one core): its CPU seconds per million events
#   FEED_LINES [1000]  fluent, http: events per Forward entry / per HTTP body
#   FEED_IN_FLIGHT [4] fluent: entries awaiting their ack at once; http: connections (one request
#                      in flight on each) [2 for http]
#   IDLE_WAIT [20]     before each run, wait up to this many seconds for the machine to be idle
#                      (then run anyway, and say so); IDLE_MAX [0.25] cores busy counts as idle
#   QUIET_OTHERS [0.5] with BASELINE_BIN, the ratio is also shown over the "quiet pairs" alone: both
#                      runs during which other processes took less than this many CPU seconds
#   SYSLOG_NG_WORKERS [1]  http() workers of syslog-ng
#   RUN_TIMEOUT [300]  seconds after which one run is stopped and reported as failed
#   LAT_RATE [1000] LAT_SECS [10]    latency probe: events/s appended, for how long
#   IDLE_FILES [100] IDLE_SECS [10]  idle check: quiet files tailed, seconds measured
#   PER_MESSAGE [100]  jetstream: events per NATS message (the edge's nats sink `max_events`)
#   CENTRALS ["1 2"]   jetstream: the numbers of central instances, one row each
#   NATS_CONCURRENCY [16]  jetstream: PubAcks the edge awaits at once (its `request_concurrency`)
#   KEEP [0]           1 keeps the work folder (configs, logs, events) for inspection
#   BUILD [1]          0 uses the binaries already built (target/release/flaghook, target/release/fhbench,
#                      the newest target/release/deps/micro-* for the floor, or MICRO_BIN)
#   FLAGHOOK_BIN [target/release/flaghook]  the flaghook binary measured
#   BASELINE_BIN [unset]  another flaghook binary (e.g. one built from an older commit): every
#                      flaghook run (file, tcp, memory) is then made with both, taking turns in
#                      each repetition (baseline, then current), and the output shows both with
#                      the ratio current / baseline of events/s, CPU s and peak RSS. The memory
#                      runs are then repeated RUNS times (median and range) rather than once;
#                      latency and idle measure the current binary only.
#
# All traffic stays on 127.0.0.1; every process started here is stopped on exit.
# Needs: cargo, GNU time (/usr/bin/time, installed when missing), syslog-ng-core and
# syslog-ng-mod-http for the comparison, nats-server for jetstream (installed when missing).
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:-all}
N=${N:-2000000}
RUNS=${RUNS:-3}
BATCH=${BATCH:-10000}
COMPRESSION=${COMPRESSION:-none}
REQUEST_CONCURRENCY=${REQUEST_CONCURRENCY:-1}
RECV_DELAY_MS=${RECV_DELAY_MS:-0}
TOOLS=${TOOLS:-file tcp tcp-always vector fluent http any syslog-ng floor}
FEED_LINES=${FEED_LINES:-1000}
FEED_IN_FLIGHT=${FEED_IN_FLIGHT:-}
IDLE_WAIT=${IDLE_WAIT:-20}
IDLE_MAX=${IDLE_MAX:-0.25}
QUIET_OTHERS=${QUIET_OTHERS:-0.5}
SYSLOG_NG_WORKERS=${SYSLOG_NG_WORKERS:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
LAT_RATE=${LAT_RATE:-1000}
LAT_SECS=${LAT_SECS:-10}
IDLE_FILES=${IDLE_FILES:-100}
IDLE_SECS=${IDLE_SECS:-10}
PER_MESSAGE=${PER_MESSAGE:-100}
CENTRALS=${CENTRALS:-1 2}
NATS_CONCURRENCY=${NATS_CONCURRENCY:-16}
KEEP=${KEEP:-0}
BUILD=${BUILD:-1}
BASELINE=${BASELINE_BIN:-}

case "$COMPRESSION" in none|gzip|zstd) ;; *) echo "e2e: error: COMPRESSION=$COMPRESSION: use none, gzip or zstd" >&2; exit 64 ;; esac
[[ "$REQUEST_CONCURRENCY" =~ ^[1-9][0-9]*$ ]] || { echo "e2e: error: REQUEST_CONCURRENCY=$REQUEST_CONCURRENCY: a number from 1" >&2; exit 64; }
[[ "$RECV_DELAY_MS" =~ ^[0-9]+$ ]] || { echo "e2e: error: RECV_DELAY_MS=$RECV_DELAY_MS: a number of milliseconds" >&2; exit 64; }
[[ "$PER_MESSAGE" =~ ^[1-9][0-9]*$ ]] || { echo "e2e: error: PER_MESSAGE=$PER_MESSAGE: a number from 1" >&2; exit 64; }
[[ "$FEED_LINES" =~ ^[1-9][0-9]*$ ]] || { echo "e2e: error: FEED_LINES=$FEED_LINES: a number from 1" >&2; exit 64; }
[[ -z "$FEED_IN_FLIGHT" || "$FEED_IN_FLIGHT" =~ ^[1-9][0-9]*$ ]] || { echo "e2e: error: FEED_IN_FLIGHT=$FEED_IN_FLIGHT: a number from 1" >&2; exit 64; }
[[ "$NATS_CONCURRENCY" =~ ^[1-9][0-9]*$ ]] || { echo "e2e: error: NATS_CONCURRENCY=$NATS_CONCURRENCY: a number from 1" >&2; exit 64; }

case "$MODE" in
  all|throughput|receiver|memory|latency|idle|jetstream) ;;
  -h|--help|help) sed -n '2,/^set -E/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: bash benches/e2e.sh [all|throughput|receiver|memory|latency|idle|jetstream]" >&2; exit 64 ;;
esac

FLAGHOOK=${FLAGHOOK_BIN:-$ROOT/target/release/flaghook}
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || { echo "e2e: error: BASELINE_BIN=$BASELINE is not an executable file" >&2; exit 64; }
  BASELINE=$(cd "$(dirname "$BASELINE")" && pwd)/$(basename "$BASELINE")
fi
FHB=$ROOT/target/release/fhbench
export FLAGHOOK_BENCH_SECRET=${FLAGHOOK_BENCH_SECRET:-bench-secret-$$-$RANDOM}
CLK_TCK=$(getconf CLK_TCK)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flaghook-e2e.XXXXXX")
PIDS=()
FAILURES=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    # bounded: anything still there after 5 s is killed hard
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then echo "work folder kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'e2e: error: %s\n' "$*" >&2; exit 1; }
warn() { printf 'e2e: warning: %s\n' "$*" >&2; }
now_ns() { date +%s%N; }

# Starts "$@" in the background and remembers its pid (in $BG_PID) for the cleanup.
bg() { "$@" & BG_PID=$!; PIDS+=("$BG_PID"); }

# Forgets a pid that was waited for (so that the cleanup never signals a reused pid).
forget() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

# Waits for a pid started with bg; sets $WAIT_RC.
wait_rc() { WAIT_RC=0; wait "$1" || WAIT_RC=$?; forget "$1"; }

# Runs "$@" to its end, in the background so that a signal to this script (Ctrl-C, TERM) is
# handled at once rather than after the command (bash runs traps only between commands).
run() { local p rc=0; "$@" & p=$!; PIDS+=("$p"); wait "$p" || rc=$?; forget "$p"; return "$rc"; }
nap() { run sleep "$1"; }

# CPU seconds (user+sys, every thread) of a live process, from /proc.
proc_cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
proc_hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
proc_ctxt() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }

# Busy CPU ticks of the whole machine (every process, every core: user, nice, system, irq,
# softirq), from /proc/stat.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }

# The machine, in one line: CPU model, SHA-NI or not, cores, memory, kernel.
machine_line() {
  local model sha
  model=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
  if grep -qw sha_ni /proc/cpuinfo; then sha="SHA-NI"; else sha="no SHA-NI"; fi
  printf '%s (%s), %s cores, %s, %s\n' "$model" "$sha" "$(nproc)" \
    "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)" "$(uname -sr)"
}

# Cores busy over the next second (every process on the machine).
busy_cores() {
  local a b
  a=$(machine_ticks); nap 1; b=$(machine_ticks)
  awk -v a="$a" -v b="$b" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}'
}

# Waits (up to IDLE_WAIT seconds) until at most IDLE_MAX cores are busy, so that runs start on
# a quiet machine; the machine is shared, so after the wait the run goes on anyway, and says so.
# Sets BUSY_BEFORE (cores busy in the last second before the run).
wait_idle() {
  local start=$SECONDS busy
  while :; do
    busy=$(busy_cores)
    awk -v b="$busy" -v m="$IDLE_MAX" 'BEGIN {exit !(b <= m)}' && break
    if [ $(( SECONDS - start )) -ge "$IDLE_WAIT" ]; then
      warn "the machine is still busy ($busy cores) after ${IDLE_WAIT}s of waiting (IDLE_WAIT); running anyway"
      break
    fi
  done
  BUSY_BEFORE=$busy
  MACHINE_TICKS0=$(machine_ticks)
}

# CPU seconds that other processes (not the tool, the receiver or the sender) spent during the
# run that began at wait_idle. Usage: others_cpu CPU-SECONDS-OF-OURS.
others_cpu() {
  awk -v a="$MACHINE_TICKS0" -v b="$(machine_ticks)" -v hz="$CLK_TCK" -v ours="$1" \
    'BEGIN {o = (b - a) / hz - ours; printf "%.2f", (o > 0 ? o : 0)}'
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {printf "%.10g\n", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
minimum() { printf '%s\n' "$@" | sort -g | head -1; }
maximum() { printf '%s\n' "$@" | sort -g | tail -1; }

# ------------------------------------------------------------------------------------------------
# prerequisites

apt_install() {
  [ "$(id -u)" = 0 ] || die "missing $*; install them with: sudo apt-get install $* (or leave syslog-ng out: TOOLS=\"file tcp\")"
  command -v apt-get >/dev/null || die "missing $* and no apt-get here: install them by hand (or leave syslog-ng out: TOOLS=\"file tcp\")"
  log "installing $* (apt-get)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$WORK/apt.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$WORK/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$WORK/apt.log" 2>&1 \
      || { tail -20 "$WORK/apt.log" >&2; die "apt-get install $* failed"; }
  fi
}

wants() { [[ " $TOOLS " == *" $1 "* ]]; }

need_syslog_ng() {
  wants syslog-ng || return 1
  case "$MODE" in all|throughput) return 0 ;; *) return 1 ;; esac
}

prerequisites() {
  command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
  [ -x /usr/bin/time ] || apt_install time
  if need_syslog_ng; then
    if ! command -v syslog-ng >/dev/null || ! dpkg -s syslog-ng-mod-http >/dev/null 2>&1; then
      apt_install syslog-ng-core syslog-ng-mod-http
    fi
    SYSLOG_NG_BIN=$(command -v syslog-ng || echo /usr/sbin/syslog-ng)
    SYSLOG_NG_VERSION=$("$SYSLOG_NG_BIN" --version 2>/dev/null | sed -n 1p || true)
  fi
  if [ "$MODE" = jetstream ]; then
    command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
    NATS_SERVER_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
  fi
}

build() {
  if [ "$BUILD" = 0 ]; then
    [ -x "$FLAGHOOK" ] && [ -x "$FHB" ] || die "BUILD=0 but $FLAGHOOK or $FHB is missing"
    FLAGHOOK_VERSION=$("$FLAGHOOK" --version 2>/dev/null || echo "flaghook (version unknown)")
    baseline_version
    build_floor
    return
  fi
  log "building flaghook (release)"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  [ -x "$FLAGHOOK" ] || die "$FLAGHOOK not found after the build"
  log "building the bench tools (benches/tools)"
  (cd "$ROOT" && cargo build --release --quiet -p flaghook-bench-tools) || die "building benches/tools failed"
  [ -x "$FHB" ] || die "$FHB not found after the build"
  FLAGHOOK_VERSION=$("$FLAGHOOK" --version 2>/dev/null || echo "flaghook (version unknown)")
  baseline_version
  build_floor
}

# The floor is benches/micro.rs run with FLAGHOOK_FLOOR_EVENTS set; sets MICRO_BIN. With
# BUILD=0, the newest micro binary already built (or MICRO_BIN as given).
build_floor() {
  wants floor || return 0
  case "$MODE" in all|throughput) ;; *) return 0 ;; esac
  if [ "$BUILD" = 0 ]; then
    MICRO_BIN=${MICRO_BIN:-$(ls -t "$ROOT"/target/release/deps/micro-* 2>/dev/null | grep -v '\.d$' | head -1)}
  else
    log "building the micro-benchmarks (benches/micro.rs, for the floor)"
    # cargo lists every executable it built (flaghook's own binary too, in no set order):
    # the benchmark's is the one under deps/ named after it.
    MICRO_BIN=$(cd "$ROOT" && cargo bench --bench micro --no-run --message-format=json 2>/dev/null \
      | grep -o '"executable":"[^"]*/deps/micro-[^"]*"' | tail -1 | sed 's/^"executable":"//; s/"$//')
  fi
  [ -n "${MICRO_BIN:-}" ] && [ -x "$MICRO_BIN" ] || die "the micro-benchmark binary (benches/micro.rs) was not found: build it with cargo bench --bench micro --no-run, or leave the floor out of TOOLS"
}

# With BASELINE_BIN: the line naming both binaries (printed above the tables).
baseline_version() {
  [ -n "$BASELINE" ] || return 0
  BINARIES_LINE="current: $FLAGHOOK ($FLAGHOOK_VERSION); baseline: $BASELINE ($("$BASELINE" --version 2>/dev/null || echo "version unknown"))"
}

generate() {
  EVENTS=$WORK/events.jsonl
  log "generating $N GO Feature Flag feature events"
  run "$FHB" gen --out "$EVENTS" --n "$N" >"$WORK/gen.out" || die "event generator failed"
  GEN_INFO=$(cat "$WORK/gen.out")
  log "  $GEN_INFO"
  run cat "$EVENTS" >/dev/null # in the page cache for every tool alike
  if wants vector; then
    # the same events (same seed), each inside a Vector envelope
    VECTOR_EVENTS=$WORK/vector.jsonl
    run "$FHB" gen --out "$VECTOR_EVENTS" --n "$N" --envelope vector >"$WORK/gen-vector.out" || die "event generator failed"
    log "  Vector envelopes: $(cat "$WORK/gen-vector.out")"
    run cat "$VECTOR_EVENTS" >/dev/null
  fi
}

# The receiver: verifies every signature, parses every body, counts every event.
# Usage: start_receiver NAME [--latency]; sets RECV_ADDR_<NAME>.
start_receiver() {
  local name=$1; shift
  local port_file=$WORK/receiver-$name.port
  bg "$FHB" receive --listen 127.0.0.1:0 --secret-env FLAGHOOK_BENCH_SECRET --port-file "$port_file" \
    --delay-ms "$RECV_DELAY_MS" "$@" \
    2>"$WORK/receiver-$name.log"
  for _ in $(seq 100); do [ -s "$port_file" ] && break; sleep 0.05; done
  [ -s "$port_file" ] || { cat "$WORK/receiver-$name.log" >&2; die "the receiver did not start"; }
  printf -v "RECV_ADDR_$name" '127.0.0.1:%s' "$(cat "$port_file")"
  printf -v "RECV_PID_$name" '%s' "$BG_PID"
}

# Zeroes the main receiver's counters before a run and notes its CPU ticks (see recv_cpu).
reset_main() { "$FHB" reset --addr "$RECV_ADDR_main"; RECV_TICKS0=$(proc_cpu_ticks "$RECV_PID_main"); }
# CPU seconds the receiver spent since reset_main (it shares the 2 cores with the tool measured).
recv_cpu() { awk -v a="$RECV_TICKS0" -v b="$(proc_cpu_ticks "$RECV_PID_main")" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / hz}'; }

# Reads the receiver's counters into variables S_<name> (S_events, S_requests, S_sig_verified, ...).
read_stats() {
  local out k v
  out=$("$FHB" stats --addr "$1") || die "cannot read the receiver's counters at $1"
  while IFS='=' read -r k v; do printf -v "S_$k" '%s' "$v"; done <<<"$out"
}

# ------------------------------------------------------------------------------------------------
# the receiver alone

receiver_check() {
  local addr=$RECV_ADDR_main requests=$(( N / BATCH )) out
  [ "$requests" -ge 100 ] || requests=100
  RECV_CHECK=""
  for conns in 1 2; do
    "$FHB" reset --addr "$addr"
    run "$FHB" load --addr "$addr" --input "$EVENTS" --secret-env FLAGHOOK_BENCH_SECRET \
      --batch "$BATCH" --requests "$requests" --conns "$conns" >"$WORK/load.out" || die "receiver load check failed"
    out=$(cat "$WORK/load.out")
    read_stats "$addr"
    local rate=${out##*events_per_s=}; rate=${rate%% *}
    [ "$S_events" = $(( requests * BATCH )) ] && [ "$S_sig_verified" = "$requests" ] \
      || die "receiver load check: counted $S_events events, $S_sig_verified signatures for $requests requests"
    RECV_CHECK+="  receiver alone, $conns connection$([ "$conns" = 1 ] || echo s): $(commas "$rate") events/s ($requests signed requests of $BATCH events, every signature verified, every event counted)"$'\n'
    [ "$conns" = 1 ] && RECV_RATE_1=$rate
  done
  printf '%s' "$RECV_CHECK"
  if [ "${RECV_RATE_1%.*}" -lt 3000000 ]; then
    warn "the receiver absorbs only $RECV_RATE_1 events/s on one connection (< 3M/s): the machine is busy or slow; figures below may be capped by it"
  fi
  "$FHB" reset --addr "$addr"
}

# ------------------------------------------------------------------------------------------------
# one run of each tool; each appends a line to $WORK/results/<tool>.tsv:
# rate cpu_s rss_kib events requests sig_verified sig_failed sig_missing wall_s ok

record() { # tool rate cpu rss events requests verified failed missing wall ok others busy_before
  local tool=$1; shift
  printf '%s\n' "$*" >>"$WORK/results/$tool.tsv"
}

# Columns of a results line (see record); compare_row pairs the lines of two files.
RESULT_COLUMNS=12

# The flaghook runs: which source, fed with what, and the sink's schema.
#   file, any: file source over $EVENTS (any: schema = "any")
#   tcp, tcp-always, vector: TCP source (journal_fsync "interval" or "always"), fed $EVENTS or
#   $VECTOR_EVENTS by one connection
#   fluent, http: fluent or http source (each ack or 200 after the lines are fsynced in the
#   journal), fed $EVENTS by fhbench send-forward or fhbench post (see feed_command)
flaghook_config() { # kind DIR [PORT]
  local kind=$1 dir=$2 port=${3:-} schema=goff
  mkdir -p "$dir/data"
  [ "$kind" = any ] && schema=any
  {
    printf 'data_dir = "%s"\n\n' "$dir/data"
    case "$kind" in
      file|any) printf '[sources.bench_in]\ntype = "file"\ninclude = ["%s"]\nread_from = "beginning"\n' "$EVENTS" ;;
      fluent|http) printf '[sources.bench_in]\ntype = "%s"\naddress = "127.0.0.1:%s"\n' "$kind" "$port" ;;
      *) printf '[sources.bench_in]\ntype = "tcp"\naddress = "127.0.0.1:%s"\n' "$port" ;;
    esac
    # only when set, so that a BASELINE_BIN that predates the journal still reads the config
    [ "$kind" != tcp-always ] || printf 'journal_fsync = "always"\n'
    cat <<EOF

[sinks.bench_hook]
type = "webhook"
inputs = ["bench_in"]
endpoint_url = "http://$RECV_ADDR_main/hook"
secret = "\${FLAGHOOK_BENCH_SECRET}"
schema = "$schema"
max_event_in_memory = $BATCH
flush_interval = "1s"
meta = { bench = "e2e" }
EOF
    # only when set, so that a BASELINE_BIN that predates these keys still reads the config
    [ "$COMPRESSION" = none ] || printf 'compression = "%s"\n' "$COMPRESSION"
    [ "$REQUEST_CONCURRENCY" = 1 ] || printf 'request_concurrency = %s\n' "$REQUEST_CONCURRENCY"
  } >"$dir/flaghook.toml"
}

# Checks a finished flaghook --once run; prints the problem and returns 1 when it failed.
check_flaghook_run() { # label dir rc
  local label=$1 dir=$2 rc=$3 summary
  summary=$(grep '^summary ' "$dir/stdout" | tail -1 || true)
  local problem=""
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then problem="did not finish within ${RUN_TIMEOUT}s (RUN_TIMEOUT)"
  elif [ "$rc" != 0 ]; then problem="exited with status $rc"
  elif [ -z "$summary" ]; then problem="printed no summary line"
  elif [[ "$summary" != *"events_delivered=$N "* ]]; then problem="summary is '$summary', expected events_delivered=$N"
  elif [ "$S_events" != "$N" ]; then problem="the receiver counted $S_events events, expected $N"
  elif [ "$S_sig_verified" != "$S_requests" ] || [ "$S_sig_failed" != 0 ]; then
    problem="$S_sig_verified of $S_requests signatures verified ($S_sig_failed failed, $S_sig_missing missing)"
  elif [ "$S_bad_bodies" != 0 ]; then problem="$S_bad_bodies bodies did not parse"
  fi
  if [ -n "$problem" ]; then
    printf 'e2e: error: %s %s\n  config: %s%s\n  summary: %s\n  last lines of its log:\n' \
      "$label" "$problem" "$dir/flaghook.toml" "$([ "$KEEP" = 1 ] || echo ' (KEEP=1 keeps it)')" "${summary:-none}" >&2
    tail -15 "$dir/stderr" | sed 's/^/    /' >&2
    FAILURES=$(( FAILURES + 1 ))
    return 1
  fi
}

# The label names the results (spaces as dashes: "flaghook file" -> results/flaghook-file.tsv)
# and the run's folder; the binary is $FLAGHOOK unless given (the baseline's, with BASELINE_BIN).
run_flaghook_file() { # run-number [label [binary [kind]]]
  local label=${2:-flaghook file} bin=${3:-$FLAGHOOK} kind=${4:-file} t0 t1
  local dir=$WORK/${label// /-}-$1
  flaghook_config "$kind" "$dir"
  wait_idle
  reset_main
  t0=$(now_ns)
  bg timeout -k 5 "$RUN_TIMEOUT" /usr/bin/time -o "$dir/time" -f '%e %U %S %M' \
    "$bin" run --once --config "$dir/flaghook.toml" >"$dir/stdout" 2>"$dir/stderr"
  wait_rc "$BG_PID"
  t1=$(now_ns)
  read_stats "$RECV_ADDR_main"
  finish_flaghook_run "$label" "$dir" "$WAIT_RC" "$t0" "$t1"
}

# The sender of a listening source's run (kind tcp, tcp-always, vector, fluent or http), into
# the array FEED: it retries connecting until flaghook listens (or its process FH_PID exited),
# sends INPUT, then closes its connections; fluent and http senders close only once every
# entry or body was acknowledged (an ack, a 200: the lines are fsynced in flaghook's journal),
# and with --once, flaghook ends once its connections have all closed.
feed_command() { # kind port input fh-pid
  local kind=$1 target=(--addr "127.0.0.1:$2" --input "$3" --connect-timeout 30 --pid "$4")
  case "$kind" in
    fluent) FEED=("$FHB" send-forward "${target[@]}" --records "$FEED_LINES" --in-flight "${FEED_IN_FLIGHT:-4}") ;;
    http) FEED=("$FHB" post "${target[@]}" --lines "$FEED_LINES" --conns "${FEED_IN_FLIGHT:-2}") ;;
    *) FEED=("$FHB" send "${target[@]}") ;;
  esac
}

run_flaghook_tcp() { # run-number [label [binary [kind [input]]]]
  local label=${2:-flaghook tcp} bin=${3:-$FLAGHOOK} kind=${4:-tcp} input=${5:-$EVENTS} t0 t1 port fh_pid sender_rc
  local dir=$WORK/${label// /-}-$1
  port=$("$FHB" freeport)
  flaghook_config "$kind" "$dir" "$port"
  wait_idle
  reset_main
  t0=$(now_ns)
  bg timeout -k 5 "$RUN_TIMEOUT" /usr/bin/time -o "$dir/time" -f '%e %U %S %M' \
    "$bin" run --once --config "$dir/flaghook.toml" >"$dir/stdout" 2>"$dir/stderr"
  fh_pid=$BG_PID
  # the sender retries connecting until flaghook listens, streams the file, then closes
  feed_command "$kind" "$port" "$input" "$fh_pid"
  bg timeout -k 5 "$RUN_TIMEOUT" /usr/bin/time -o "$dir/sender.time" -f '%U %S' \
    "${FEED[@]}" >"$dir/sender.out" 2>"$dir/sender.log"
  wait_rc "$BG_PID"; sender_rc=$WAIT_RC
  # without a connection, flaghook --once would wait for one until RUN_TIMEOUT
  [ "$sender_rc" = 0 ] || kill "$fh_pid" 2>/dev/null || true
  wait_rc "$fh_pid"
  t1=$(now_ns)
  [ "$sender_rc" = 0 ] || { warn "the $kind sender failed (status $sender_rc):"; cat "$dir/sender.log" >&2; }
  read_stats "$RECV_ADDR_main"
  finish_flaghook_run "$label" "$dir" "$WAIT_RC" "$t0" "$t1"
}

finish_flaghook_run() { # label dir rc t0 t1
  local label=$1 dir=$2 rc=$3 t0=$4 t1=$5 wall elapsed user sys rss ok=1 rate cpu rcpu scpu others
  rcpu=$(recv_cpu)
  scpu=$( (grep -E '^[0-9.]+ [0-9.]+$' "$dir/sender.time" 2>/dev/null || echo "0 0") | awk '{printf "%.2f", $1 + $2}')
  check_flaghook_run "$label" "$dir" "$rc" || ok=0
  read -r elapsed user sys rss < <(grep -E '^[0-9.]+ [0-9.]+ [0-9.]+ [0-9]+$' "$dir/time" || echo "0 0 0 0")
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
  rate=$(awk -v n="$S_events" -v w="$wall" 'BEGIN {printf "%.0f", (w > 0 ? n / w : 0)}')
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')
  others=$(others_cpu "$(awk -v a="$cpu" -v b="$rcpu" -v c="$scpu" 'BEGIN {print a + b + c}')")
  record "${label// /-}" "$rate $cpu $rss $S_events $S_requests $S_sig_verified $S_sig_failed $S_sig_missing $wall $ok $others $BUSY_BEFORE"
  log "  $label: ${wall}s, $rate events/s, CPU ${cpu}s, peak RSS $(( rss / 1024 )) MiB, $S_events events in $S_requests requests, $S_sig_verified signatures verified$([ $ok = 1 ] || echo ' (FAILED)'); receiver CPU ${rcpu}s$([ "$scpu" = 0.00 ] || echo ", sender CPU ${scpu}s"); others' CPU ${others}s (${BUSY_BEFORE} cores busy before)"
}

# The floor (benches/micro.rs, one pass over the events on one core): CPU seconds per million.
run_floor() { # run-number
  local out per ok=1
  wait_idle
  out=$(FLAGHOOK_FLOOR_EVENTS=$EVENTS FLAGHOOK_FLOOR_BATCH=$BATCH FLAGHOOK_FLOOR_PASSES=1 "$MICRO_BIN" 2>&1) || ok=0
  per=$(sed -n 's/.*cpu_s_per_million=\([0-9.]*\).*/\1/p' <<<"$out")
  [ -n "$per" ] || { ok=0; per=0; printf 'e2e: error: the floor failed: %s\n' "$out" >&2; FAILURES=$(( FAILURES + 1 )); }
  printf '%s %s %s\n' "$per" "$ok" "$BUSY_BEFORE" >>"$WORK/results/floor.tsv"
  log "  floor: $per CPU s per million events (read + split + validate + build + HMAC, one core; ${BUSY_BEFORE} cores busy before)"
}

# syslog-ng as its users tune it for throughput (issue 14): threaded(yes) and a large
# log-fifo-size in the options; on the file source, log-fetch-limit(1000) (lines per poll) and
# log-iw-size (the flow-control window) as large as the fifo; on http(), batch-lines = BATCH
# and batch-bytes(16 MiB). Flow control: the file is read no faster than it is delivered, and
# nothing is dropped.
syslog_ng_config() { # dir
  local dir=$1 fifo=$(( BATCH * 2 > 200000 ? BATCH * 2 : 200000 ))
  cat >"$dir/syslog-ng.conf" <<EOF
@version: 3.38
# The same workload as flaghook's: the generated file, read from its beginning, each line sent
# unparsed as one element of a JSON array, $BATCH lines per POST, to the same receiver.
# syslog-ng cannot sign a body: the receiver counts these requests as unsigned.
options {
  stats-freq(0);
  log-msg-size(65536);
  threaded(yes);
  log-fifo-size($fifo);
};
source s_bench {
  file("$EVENTS" flags(no-parse) follow-freq(1) log-fetch-limit(1000) log-iw-size($fifo));
};
destination d_hook {
  http(
    url("http://$RECV_ADDR_main/hook")
    method("POST")
    headers("Content-Type: application/json")
    body-prefix("{\"meta\":{},\"events\":[")
    body("\${MESSAGE}")
    delimiter(",")
    body-suffix("]}")
    batch-lines($BATCH)
    batch-bytes(16777216)
    batch-timeout(1000)
    workers($SYSLOG_NG_WORKERS)
  );
};
log { source(s_bench); destination(d_hook); flags(flow-control); };
EOF
}

run_syslog_ng() { # run-number
  local dir=$WORK/syslog-ng-$1 t0 pid wall rate cpu rss ok=1 ticks wait_rc_cmd=0
  mkdir -p "$dir"
  syslog_ng_config "$dir"
  wait_idle
  reset_main
  t0=$(now_ns)
  bg timeout -k 5 "$RUN_TIMEOUT" "$SYSLOG_NG_BIN" -F --no-caps -f "$dir/syslog-ng.conf" -R "$dir/syslog-ng.persist" \
    -p "$dir/syslog-ng.pid" -c "$dir/syslog-ng.ctl" >"$dir/stdout" 2>"$dir/stderr"
  local tpid=$BG_PID
  # syslog-ng runs until stopped: its job is done when the receiver has counted every event
  pid=""
  for _ in $(seq 100); do pid=$(cat "/proc/$tpid/task/$tpid/children" 2>/dev/null | awk '{print $1}'); [ -n "$pid" ] && break; sleep 0.02; done
  [ -n "$pid" ] || die "syslog-ng did not start"
  run "$FHB" wait --addr "$RECV_ADDR_main" --events "$N" --timeout "$RUN_TIMEOUT" --pid "$pid" >/dev/null || wait_rc_cmd=$?
  if [ -e "/proc/$pid/stat" ]; then
    ticks=$(proc_cpu_ticks "$pid"); rss=$(proc_hwm_kib "$pid")
  else
    ticks=0; rss=0
  fi
  local rcpu others
  rcpu=$(recv_cpu)
  others=$(others_cpu "$(awk -v t="$ticks" -v hz="$CLK_TCK" -v r="$rcpu" 'BEGIN {print t / hz + r}')")
  kill "$tpid" 2>/dev/null || true
  wait_rc "$tpid"
  read_stats "$RECV_ADDR_main"
  wall=$(awk -v a="$t0" -v b="$S_last_ns" 'BEGIN {printf "%.3f", (b > a ? (b - a) / 1e9 : 0)}')
  rate=$(awk -v n="$S_events" -v w="$wall" 'BEGIN {printf "%.0f", (w > 0 ? n / w : 0)}')
  cpu=$(awk -v t="$ticks" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
  if [ "$wait_rc_cmd" != 0 ] || [ "$S_events" != "$N" ] || [ "$S_bad_bodies" != 0 ]; then
    ok=0
    printf 'e2e: error: syslog-ng delivered %s of %s events (%s bad bodies; wait status %s)\n  config: %s%s\n  last lines of its log:\n' \
      "$S_events" "$N" "$S_bad_bodies" "$wait_rc_cmd" "$dir/syslog-ng.conf" "$([ "$KEEP" = 1 ] || echo ' (KEEP=1 keeps it)')" >&2
    tail -15 "$dir/stderr" | sed 's/^/    /' >&2
    FAILURES=$(( FAILURES + 1 ))
  fi
  record syslog-ng "$rate $cpu $rss $S_events $S_requests $S_sig_verified $S_sig_failed $S_sig_missing $wall $ok $others $BUSY_BEFORE"
  log "  syslog-ng: ${wall}s, $rate events/s, CPU ${cpu}s, peak RSS $(( rss / 1024 )) MiB, $S_events events in $S_requests requests (unsigned)$([ $ok = 1 ] || echo ' (FAILED)'); receiver CPU ${rcpu}s; others' CPU ${others}s (${BUSY_BEFORE} cores busy before)"
}

# ------------------------------------------------------------------------------------------------
# the table

col() { awk -v c="$1" '{print $c}' "$2"; }

commas() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }

TABLE_FORMAT='%-36s %-29s %7s %6s %8s %9s %21s %21s %8s\n'

table_row() { # tool-key label
  local f=$WORK/results/$1.tsv label=$2
  [ -s "$f" ] || return 0
  local rates cpus rsss med lo hi runs events_min requests_max ver_min failed_sum okc sigs rate_cell note="" vs_file="" per_m
  mapfile -t rates < <(col 1 "$f"); mapfile -t cpus < <(col 2 "$f"); mapfile -t rsss < <(col 3 "$f")
  med=$(median "${rates[@]}"); lo=$(minimum "${rates[@]}"); hi=$(maximum "${rates[@]}")
  runs=${#rates[@]}
  events_min=$(minimum $(col 4 "$f"))
  ver_min=$(minimum $(col 6 "$f"))
  requests_max=$(maximum $(col 5 "$f"))
  failed_sum=$(col 7 "$f" | awk '{s += $1} END {print s + 0}')
  okc=$(col 10 "$f" | awk '{s += $1} END {print s + 0}')
  if [ "$ver_min" = 0 ] && [ "$1" = syslog-ng ]; then sigs="0 (unsigned)"
  else sigs="$ver_min of $requests_max"; [ "$failed_sum" = 0 ] || sigs+=" ($failed_sum FAILED)"; fi
  [ "$okc" = "$runs" ] || note="  [$(( runs - okc )) of $runs runs FAILED]"
  [ "$runs" = "$RUNS" ] || note+="  [$runs of $RUNS runs made]"
  rate_cell="$(commas "${med%.*}") ($(commas "$lo")-$(commas "$hi"))"
  [ -z "${MEDIAN_flaghook_file:-}" ] || vs_file=$(awk -v a="$med" -v b="$MEDIAN_flaghook_file" 'BEGIN {printf "%.2fx", a / b}')
  per_m=$(awk -v c="$(median "${cpus[@]}")" -v n="$N" 'BEGIN {printf "%.3f", c * 1e6 / n}')
  # shellcheck disable=SC2059
  printf "$TABLE_FORMAT" "$label" "$rate_cell" "$vs_file" "$(printf '%.2f' "$(median "${cpus[@]}")")" "$per_m" \
    "$(awk -v k="$(maximum "${rsss[@]}")" 'BEGIN {printf "%.1f", k / 1024}')" \
    "$(commas "$events_min") of $(commas "$N")" "$sigs$note" "$(median $(col 11 "$f"))"
  if [ "$okc" = "$runs" ]; then # the targets below are judged on tools whose runs all succeeded
    printf -v "MEDIAN_${1//-/_}" '%s' "${med%.*}"
    printf -v "RSS_${1//-/_}" '%s' "$(maximum "${rsss[@]}")"
    printf -v "PERM_${1//-/_}" '%s' "$per_m"
  fi
}

# Cores busy before each run (the last second of wait_idle), over every results file: min-max.
busy_range() {
  local f all=()
  for f in "$WORK"/results/*.tsv; do
    [ -s "$f" ] || continue
    if [ "$(basename "$f")" = floor.tsv ]; then mapfile -t -O "${#all[@]}" all < <(col 3 "$f")
    else mapfile -t -O "${#all[@]}" all < <(col 12 "$f"); fi
  done
  [ "${#all[@]}" -gt 0 ] && printf '%s-%s' "$(minimum "${all[@]}")" "$(maximum "${all[@]}")"
}

print_table() {
  echo
  echo "flaghook end-to-end benchmark: $N events (${GEN_INFO##*avg_bytes=} bytes avg), $BATCH events per request, $RUNS runs each, taking turns"
  echo "machine: $(machine_line)"
  echo "load: $(busy_range) cores busy in the second before each run (IDLE_MAX $IDLE_MAX, waited up to ${IDLE_WAIT}s); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "$FLAGHOOK_VERSION; ${SYSLOG_NG_VERSION:-syslog-ng not run}"
  echo "flaghook: compression = \"$COMPRESSION\", request_concurrency = $REQUEST_CONCURRENCY; receiver answers after ${RECV_DELAY_MS} ms"
  [ -z "$BASELINE" ] || echo "$BINARIES_LINE"
  printf '%s' "$RECV_CHECK"
  echo
  # the file path first: the other rows are compared with it
  [ ! -s "$WORK/results/flaghook-file.tsv" ] || table_row flaghook-file "x" >/dev/null
  # shellcheck disable=SC2059
  printf "$TABLE_FORMAT" "tool" "events/s: median (min-max)" "vs file" "CPU s" "CPU s/M" "RSS MiB" "events received" "signatures verified" "others"
  [ -z "$BASELINE" ] || table_row baseline-file "baseline file->webhook"
  table_row flaghook-file "flaghook file->webhook"
  [ -z "$BASELINE" ] || table_row baseline-tcp "baseline tcp->webhook"
  table_row flaghook-tcp "flaghook tcp->journal->webhook"
  table_row flaghook-tcp-always "flaghook tcp->journal(always)->hook"
  table_row flaghook-vector "flaghook tcp, Vector envelopes"
  table_row flaghook-fluent "flaghook fluent->journal->webhook"
  table_row flaghook-http "flaghook http->journal->webhook"
  table_row flaghook-any "flaghook file, schema = \"any\""
  table_row syslog-ng "syslog-ng file->http (tuned)"
  if [ -s "$WORK/results/floor.tsv" ]; then
    # Only the runs that worked (a failed one is recorded as 0 with ok = 0).
    local floors
    floors=$(awk '$2 == 1 {print $1}' "$WORK/results/floor.tsv")
    if [ -n "$floors" ]; then
      FLOOR_PERM=$(median $floors)
      printf 'floor (benches/micro.rs: read + split + validate + build + HMAC, one core): %s CPU s per million events (median; %s-%s)\n' \
        "$FLOOR_PERM" "$(minimum $floors)" "$(maximum $floors)"
    else
      echo "floor (benches/micro.rs): failed (see the errors above); the target against it is not judged"
    fi
  fi
  echo
  echo "events/s = events received / wall time (flaghook: process start to exit of run --once;"
  echo "syslog-ng: process start to the arrival of its last event). CPU s = user+sys of the tool"
  echo "(median); CPU s/M = per million events; RSS = peak, max over the runs; others = CPU s of"
  echo "other processes on the machine during the run (median; not the tool, the receiver or the"
  echo "TCP, Forward or HTTP sender). syslog-ng cannot sign: its requests go unsigned."
  [ ! -s "$WORK/results/flaghook-fluent.tsv" ] || echo "fluent: PackedForward entries of $FEED_LINES {\"log\": event} records, ${FEED_IN_FLIGHT:-4} awaiting their ack (sent after an fsync)."
  [ ! -s "$WORK/results/flaghook-http.tsv" ] || echo "http: NDJSON bodies of $FEED_LINES events over ${FEED_IN_FLIGHT:-2} connections, each answered 200 (after an fsync) before the next."
  if [ -n "$BASELINE" ]; then
    echo
    echo "current / baseline (the figures of the table; paired = each run of the current binary over the"
    echo "baseline's run just before it, min-max; within 5% = events/s >= 0.95x and peak RSS <= 1.05x):"
    compare_row baseline-file flaghook-file "file->webhook" max
    compare_row baseline-tcp flaghook-tcp "tcp->webhook" max
  fi
  if [ -n "${MEDIAN_syslog_ng:-}" ] && [ "${MEDIAN_syslog_ng%.*}" -gt 0 ]; then
    [ -n "${MEDIAN_flaghook_file:-}" ] && awk -v a="$MEDIAN_flaghook_file" -v b="$MEDIAN_syslog_ng" \
      'BEGIN {printf "ratio flaghook file / syslog-ng: %.2fx\n", a / b}'
    [ -n "${MEDIAN_flaghook_tcp:-}" ] && awk -v a="$MEDIAN_flaghook_tcp" -v b="$MEDIAN_syslog_ng" \
      'BEGIN {printf "ratio flaghook tcp / syslog-ng:  %.2fx\n", a / b}'
  fi
  echo
  echo "targets (issue 14, judged in this run):"
  if [ -n "${MEDIAN_syslog_ng:-}" ] && [ -n "${MEDIAN_flaghook_file:-}" ]; then
    ratio_target "file >= 4x syslog-ng tuned" "$MEDIAN_flaghook_file" "$MEDIAN_syslog_ng" 4
  fi
  if [ -n "${FLOOR_PERM:-}" ] && [ -n "${PERM_flaghook_file:-}" ]; then
    awk -v a="$PERM_flaghook_file" -v b="$FLOOR_PERM" 'BEGIN {r = a / b;
      if (a == 0) { print "  not judged: file CPU s per million events against the floor (the runs were too short for the CPU timer: raise N)"; exit }
      printf "  %-7s file CPU s per million events <= 1.2x the floor (%.3f vs %.3f: %.2fx)\n", (r <= 1.2 ? "met" : "MISSED"), a, b, r}'
  fi
  if [ -n "${MEDIAN_flaghook_file:-}" ]; then
    [ -z "${MEDIAN_flaghook_tcp:-}" ] || ratio_target "tcp >= 0.85x file" "$MEDIAN_flaghook_tcp" "$MEDIAN_flaghook_file" 0.85
    [ -z "${MEDIAN_flaghook_vector:-}" ] || ratio_target "Vector envelopes >= 0.85x file" "$MEDIAN_flaghook_vector" "$MEDIAN_flaghook_file" 0.85
    [ -z "${MEDIAN_flaghook_any:-}" ] || ratio_target "schema = \"any\" >= 0.8x file" "$MEDIAN_flaghook_any" "$MEDIAN_flaghook_file" 0.8
  fi
  if [ -n "${MEDIAN_flaghook_tcp:-}" ] && [ -n "${MEDIAN_baseline_tcp:-}" ]; then
    ratio_target "tcp -> journal >= 0.8x direct tcp (BASELINE_BIN's, if it predates the journal)" "$MEDIAN_flaghook_tcp" "$MEDIAN_baseline_tcp" 0.8
  fi
  if [ -n "${RSS_flaghook_file:-}" ]; then
    local worst=$RSS_flaghook_file k
    for k in tcp tcp_always vector fluent http any; do
      local v="RSS_flaghook_$k"; [ -z "${!v:-}" ] || worst=$(maximum "$worst" "${!v}")
    done
    if [ "$worst" -le $(( 40 * 1024 )) ]; then echo "  met     peak RSS <= 40 MiB at $BATCH-event batches ($(( worst / 1024 )) MiB)"
    else echo "  MISSED  peak RSS <= 40 MiB at $BATCH-event batches ($(( worst / 1024 )) MiB)"; fi
  fi
}

# One line "current / baseline" for two result files of runs that took turns (line k of each is
# repetition k). rss: "max" (the throughput table's figure) or "median" (the memory runs').
compare_row() { # baseline-key current-key label max|median
  local fb=$WORK/results/$1.tsv fc=$WORK/results/$2.tsv label=$3 how=$4
  [ -s "$fb" ] && [ -s "$fc" ] || return 0
  local okb okc nb nc
  nb=$(wc -l <"$fb"); nc=$(wc -l <"$fc")
  okb=$(col 10 "$fb" | awk '{s += $1} END {print s + 0}'); okc=$(col 10 "$fc" | awk '{s += $1} END {print s + 0}')
  if [ "$okb" != "$nb" ] || [ "$okc" != "$nc" ]; then
    printf '  %-16s not compared: a run FAILED (baseline %s of %s ok, current %s of %s ok)\n' "$label" "$okb" "$nb" "$okc" "$nc"
    return 0
  fi
  local rb rc cb cc mb mc rate_r cpu_r rss_r pr pm
  rb=$(median $(col 1 "$fb")); rc=$(median $(col 1 "$fc"))
  cb=$(median $(col 2 "$fb")); cc=$(median $(col 2 "$fc"))
  if [ "$how" = max ]; then mb=$(maximum $(col 3 "$fb")); mc=$(maximum $(col 3 "$fc"))
  else mb=$(median $(col 3 "$fb")); mc=$(median $(col 3 "$fc")); fi
  rate_r=$(awk -v a="$rc" -v b="$rb" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')
  cpu_r=$(awk -v a="$cc" -v b="$cb" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')
  rss_r=$(awk -v a="$mc" -v b="$mb" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')
  pr=$(paste -d' ' "$fb" "$fc" | awk -v w="$RESULT_COLUMNS" '$1 > 0 {print $(w + 1) / $1}')
  pm=$(paste -d' ' "$fb" "$fc" | awk -v w="$RESULT_COLUMNS" '$3 > 0 {print $(w + 3) / $3}')
  # the pairs in which other processes took less than QUIET_OTHERS CPU seconds in both runs
  local quiet
  quiet=$(paste -d' ' "$fb" "$fc" | awk -v w="$RESULT_COLUMNS" -v q="$QUIET_OTHERS" '$1 > 0 && $11 < q && $(w + 11) < q {print $(w + 1) / $1}')
  # shellcheck disable=SC2086
  printf '  %-16s events/s %sx (paired %.3f-%.3f; per run: %s; quiet pairs: %s)  CPU s %sx  peak RSS %sx (paired %.3f-%.3f)  within 5%%: events/s %s, peak RSS %s\n' \
    "$label" "$rate_r" "$(minimum $pr)" "$(maximum $pr)" "$(printf '%.3f ' $pr | sed 's/ $//')" \
    "$( [ -n "$quiet" ] && printf 'median %.3f of %s' "$(median $quiet)" "$(wc -w <<<"$quiet")" || echo none)" "$cpu_r" "$rss_r" "$(minimum $pm)" "$(maximum $pm)" \
    "$(awk -v r="$rate_r" 'BEGIN {print (r >= 0.95 ? "yes" : "NO")}')" "$(awk -v r="$rss_r" 'BEGIN {print (r <= 1.05 ? "yes" : "NO")}')"
}

target() { # label value threshold
  [ -n "$2" ] || return 0
  if [ "${2%.*}" -ge "$3" ]; then printf '  met     %s (%s)\n' "$1" "$2"
  else printf '  MISSED  %s (%s, %s%% of the target)\n' "$1" "$2" "$(( ${2%.*} * 100 / $3 ))"; fi
}

ratio_target() { # label value reference factor
  awk -v l="$1" -v a="$2" -v b="$3" -v f="$4" 'BEGIN {r = a / b;
    printf "  %-7s %s (%.2fx)\n", (r >= f ? "met" : "MISSED"), l, r}'
}

# After a failed run, a tool is not run again (its failure is reported; each run could take
# RUN_TIMEOUT).
ok_so_far() { [ ! -s "$WORK/results/$1.tsv" ] || [ "$(tail -1 "$WORK/results/$1.tsv" | awk '{print $10}')" = 1 ]; }
floor_ok_so_far() { [ ! -s "$WORK/results/floor.tsv" ] || [ "$(tail -1 "$WORK/results/floor.tsv" | awk '{print $2}')" = 1 ]; }

# One turn of one tool (see TOOLS); with BASELINE_BIN, the file and tcp turns run the baseline
# binary first, then the current one.
turn() { # tool run-number
  local tool=$1 i=$2
  case "$tool" in
    file)
      if [ -n "$BASELINE" ] && ok_so_far baseline-file; then run_flaghook_file "$i" "baseline file" "$BASELINE"; fi
      if ok_so_far flaghook-file; then run_flaghook_file "$i"; fi ;;
    tcp)
      if [ -n "$BASELINE" ] && ok_so_far baseline-tcp; then run_flaghook_tcp "$i" "baseline tcp" "$BASELINE"; fi
      if ok_so_far flaghook-tcp; then run_flaghook_tcp "$i"; fi ;;
    tcp-always) if ok_so_far flaghook-tcp-always; then run_flaghook_tcp "$i" "flaghook tcp-always" "$FLAGHOOK" tcp-always; fi ;;
    vector) if ok_so_far flaghook-vector; then run_flaghook_tcp "$i" "flaghook vector" "$FLAGHOOK" vector "$VECTOR_EVENTS"; fi ;;
    fluent) if ok_so_far flaghook-fluent; then run_flaghook_tcp "$i" "flaghook fluent" "$FLAGHOOK" fluent; fi ;;
    http) if ok_so_far flaghook-http; then run_flaghook_tcp "$i" "flaghook http" "$FLAGHOOK" http; fi ;;
    any) if ok_so_far flaghook-any; then run_flaghook_file "$i" "flaghook any" "$FLAGHOOK" any; fi ;;
    syslog-ng) if need_syslog_ng && ok_so_far syslog-ng; then run_syslog_ng "$i"; fi ;;
    floor) if floor_ok_so_far; then run_floor "$i"; fi ;;
    *) die "TOOLS: unknown tool '$tool' (file tcp tcp-always vector fluent http any syslog-ng floor)" ;;
  esac
}

throughput() {
  mkdir -p "$WORK/results"
  local i k tools
  read -ra tools <<<"$TOOLS"
  for i in $(seq "$RUNS"); do
    # the tools take turns, each repetition starting one tool further, so that a noisy moment
    # on the machine does not hit one tool only, nor always the same one first
    log "run $i of $RUNS"
    for k in $(seq 0 $(( ${#tools[@]} - 1 ))); do
      turn "${tools[$(( (k + i - 1) % ${#tools[@]} ))]}" "$i"
    done
  done
  print_table
}

# ------------------------------------------------------------------------------------------------
# memory: peak RSS of flaghook (file -> webhook) with 10 000- and 100 000-event batches

memory() {
  mkdir -p "$WORK/results"
  local b f i reps=1 rss_small="" rss_big=""
  [ -z "$BASELINE" ] || reps=$RUNS # with a baseline, repeated: the two binaries are compared
  MEM_LINES=""
  for b in 10000 100000; do
    local BATCH=$b # read by flaghook_config
    for i in $(seq "$reps"); do
      log "memory: flaghook file -> webhook, max_event_in_memory = $b$([ -z "$BASELINE" ] || echo ", run $i of $reps (baseline, then current)")"
      if [ -n "$BASELINE" ] && ok_so_far "baseline-batch-$b"; then run_flaghook_file "mem-$i" "baseline batch-$b" "$BASELINE"; fi
      if ok_so_far "flaghook-batch-$b"; then run_flaghook_file "mem-$i" "flaghook batch-$b"; fi
    done
    f=$WORK/results/flaghook-batch-$b.tsv
    if [ -n "$BASELINE" ]; then
      MEM_LINES+=$(mem_line "$b" baseline "$WORK/results/baseline-batch-$b.tsv")$'\n'
      MEM_LINES+=$(mem_line "$b" current "$f")$'\n'
      MEM_LINES+=$(compare_row "baseline-batch-$b" "flaghook-batch-$b" "batch $b" median)$'\n'
      [ "$(col 10 "$f" | awk '{s += $1} END {print s + 0}')" = "$(wc -l <"$f")" ] || continue
      local rss; rss=$(median $(col 3 "$f"))
      [ "$b" = 10000 ] && rss_small=$rss || rss_big=$rss
      continue
    fi
    [ "$(tail -1 "$f" | awk '{print $10}')" = 1 ] || continue
    local rss; rss=$(tail -1 "$f" | awk '{print $3}')
    [ "$b" = 10000 ] && rss_small=$rss || rss_big=$rss
    MEM_LINES+="  max_event_in_memory = $(printf '%-6s' "$b"): peak RSS $(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}') MiB, $(commas "$(tail -1 "$f" | awk '{print $1}')") events/s, $(tail -1 "$f" | awk '{print $5}') requests"$'\n'
  done
  echo
  echo "memory (file -> webhook, $(commas "$N") events of ${GEN_INFO##*avg_bytes=} bytes avg):"
  [ -z "$BASELINE" ] || echo "$BINARIES_LINE; $reps runs each, taking turns; median (min-max)"
  printf '%s' "$MEM_LINES"
  if [ -n "$rss_small" ] && [ -n "$rss_big" ]; then
    awk -v a="$rss_small" -v b="$rss_big" -v ev="${GEN_INFO##*avg_bytes=}" 'BEGIN {
      printf "  growth: %.1f MiB for 90,000 more events per batch (%.0f bytes per extra event held; one batch of 90,000 events is %.1f MiB of JSON)\n",
        (b - a) / 1024, (b - a) * 1024 / 90000, 90000 * ev / 1048576 }'
  fi
  echo "  machine: $(machine_line); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  local b k
  for b in 10000:40 100000:64; do
    k=$([ "${b%%:*}" = 10000 ] && echo "$rss_small" || echo "$rss_big")
    [ -n "$k" ] || continue
    awk -v k="$k" -v b="${b%%:*}" -v t="${b##*:}" 'BEGIN {
      printf "  %-7s peak RSS <= %d MiB at %d-event batches (%.1f MiB)\n", (k <= t * 1024 ? "met" : "MISSED"), t, b, k / 1024}'
  done
}

# With BASELINE_BIN: one binary's memory runs at one batch size, median (min-max) of the runs.
mem_line() { # batch who results-file
  local b=$1 who=$2 f=$3 runs okc
  [ -s "$f" ] || { printf '  max_event_in_memory = %-6s %-8s no run made' "$b" "$who"; return 0; }
  runs=$(wc -l <"$f"); okc=$(col 10 "$f" | awk '{s += $1} END {print s + 0}')
  # shellcheck disable=SC2046
  printf '  max_event_in_memory = %-6s %-8s peak RSS %s MiB (%s-%s), %s events/s (%s-%s), CPU %ss, %s requests%s' \
    "$b" "$who" \
    "$(awk -v k="$(median $(col 3 "$f"))" 'BEGIN {printf "%.1f", k / 1024}')" \
    "$(awk -v k="$(minimum $(col 3 "$f"))" 'BEGIN {printf "%.1f", k / 1024}')" \
    "$(awk -v k="$(maximum $(col 3 "$f"))" 'BEGIN {printf "%.1f", k / 1024}')" \
    "$(commas "$(printf '%.0f' "$(median $(col 1 "$f"))")")" "$(commas "$(minimum $(col 1 "$f"))")" "$(commas "$(maximum $(col 1 "$f"))")" \
    "$(printf '%.2f' "$(median $(col 2 "$f"))")" "$(maximum $(col 5 "$f"))" \
    "$([ "$okc" = "$runs" ] || echo "  [$(( runs - okc )) of $runs runs FAILED]")"
}

# ------------------------------------------------------------------------------------------------
# latency: events appended to a tailed file at a steady rate, flush_interval = "100ms"

latency() {
  local dir=$WORK/latency want
  mkdir -p "$dir/data" "$dir/in"
  : >"$dir/in/flag-variation-bench.json"
  start_receiver lat --latency
  cat >"$dir/flaghook.toml" <<EOF
data_dir = "$dir/data"

[sources.tailed]
type = "file"
include = ["$dir/in/*.json"]
read_from = "beginning"

[sinks.hook]
type = "webhook"
inputs = ["tailed"]
endpoint_url = "http://$RECV_ADDR_lat/hook"
secret = "\${FLAGHOOK_BENCH_SECRET}"
schema = "goff"
max_event_in_memory = $BATCH
flush_interval = "100ms"
EOF
  log "latency: appending $LAT_RATE events/s for ${LAT_SECS}s to a tailed file (flush_interval = \"100ms\")"
  bg timeout -k 5 $(( LAT_SECS + 60 )) "$FLAGHOOK" run --config "$dir/flaghook.toml" >"$dir/stdout" 2>"$dir/stderr"
  local fh=$BG_PID
  nap 1
  kill -0 "$fh" 2>/dev/null || { tail -15 "$dir/stderr" >&2; die "flaghook (latency) exited at start"; }
  run "$FHB" append --out "$dir/in/flag-variation-bench.json" --rate "$LAT_RATE" --duration "$LAT_SECS" \
    >"$dir/append.out" || die "latency appender failed"
  want=$(sed 's/^events=//' "$dir/append.out")
  run "$FHB" wait --addr "$RECV_ADDR_lat" --events "$want" --timeout 15 --pid "$fh" >/dev/null \
    || warn "latency: not every appended event arrived"
  read_stats "$RECV_ADDR_lat"
  kill -TERM "$fh" 2>/dev/null || true
  wait_rc "$fh"
  LAT_LINE=$(awk -v n="$S_lat_count" -v w="$want" -v p50="$S_lat_p50_us" -v p99="$S_lat_p99_us" -v mx="$S_lat_max_us" \
    -v r="$LAT_RATE" -v s="$LAT_SECS" -v req="$S_requests" -v sf="$S_sig_failed" \
    'BEGIN {printf "latency (append -> arrival, flush_interval 100ms): %d of %d events at %d/s for %ds in %d requests: p50 %.1f ms, p99 %.1f ms, max %.1f ms; target p99 <= 150 ms: %s%s",
      n, w, r, s, req, p50 / 1000, p99 / 1000, mx / 1000, (n == w && p99 <= 150000 ? "met" : "MISSED"), (sf > 0 ? "; " sf " signatures FAILED" : "")}')
  echo "$LAT_LINE"
  [ "$S_lat_count" = "$want" ] || FAILURES=$(( FAILURES + 1 ))
}

# ------------------------------------------------------------------------------------------------
# idle: 100 quiet files tailed; flaghook's CPU from /proc/PID/stat

idle() {
  local dir=$WORK/idle i t0 t1 c0 c1 cpu0 cpu1 n_files=$IDLE_FILES
  mkdir -p "$dir/data" "$dir/in"
  [ -n "${RECV_ADDR_main:-}" ] || start_receiver main
  reset_main
  "$FHB" gen --out "$dir/events.jsonl" --n "$n_files" --seed 9 >/dev/null || die "event generator failed"
  (cd "$dir/in" && split -l 1 -a 3 -d --additional-suffix=.json "$dir/events.jsonl" quiet-)
  cat >"$dir/flaghook.toml" <<EOF
data_dir = "$dir/data"

[sources.quiet]
type = "file"
include = ["$dir/in/quiet-*.json"]
read_from = "beginning"

[sinks.hook]
type = "webhook"
inputs = ["quiet"]
endpoint_url = "http://$RECV_ADDR_main/hook"
secret = "\${FLAGHOOK_BENCH_SECRET}"
schema = "goff"
max_event_in_memory = $BATCH
flush_interval = "1s"
EOF
  log "idle: tailing $n_files quiet files (one event each), CPU measured over ${IDLE_SECS}s"
  bg timeout -k 5 $(( IDLE_SECS + 60 )) "$FLAGHOOK" run --config "$dir/flaghook.toml" >"$dir/stdout" 2>"$dir/stderr"
  local fh=$BG_PID pid
  pid=""
  for _ in $(seq 100); do pid=$(cat "/proc/$fh/task/$fh/children" 2>/dev/null | awk '{print $1}'); [ -n "$pid" ] && break; sleep 0.02; done
  [ -n "$pid" ] || die "flaghook (idle) did not start"
  # the one event of every file first arrives; from then on nothing happens
  run "$FHB" wait --addr "$RECV_ADDR_main" --events "$n_files" --timeout 20 --pid "$pid" >/dev/null \
    || warn "idle: the $n_files events of the quiet files did not all arrive"
  nap 2
  kill -0 "$pid" 2>/dev/null || { tail -15 "$dir/stderr" >&2; die "flaghook (idle) exited"; }
  cpu0=$(proc_cpu_ticks "$pid"); c0=$(proc_ctxt "$pid"); t0=$(now_ns)
  nap "$IDLE_SECS"
  cpu1=$(proc_cpu_ticks "$pid"); c1=$(proc_ctxt "$pid"); t1=$(now_ns)
  local threads; threads=$(ls "/proc/$pid/task" | wc -l)
  kill -TERM "$fh" 2>/dev/null || true
  wait_rc "$fh"
  IDLE_LINE=$(awk -v d="$(( cpu1 - cpu0 ))" -v hz="$CLK_TCK" -v ns="$(( t1 - t0 ))" -v cs="$(( c1 - c0 ))" -v f="$n_files" -v th="$threads" \
    'BEGIN {s = ns / 1e9; pct = d / hz / s * 100; printf "idle (%d quiet files tailed, %.1fs): flaghook CPU %.2f%% of a core, %.0f context switches/s over %d threads; target <= 0.5%%: %s",
      f, s, pct, cs / s, th, (pct <= 0.5 ? "met" : "MISSED")}')
  echo "$IDLE_LINE"
}

# ------------------------------------------------------------------------------------------------
# jetstream: edge flaghook (file -> nats sink) -> nats-server -js -> central flaghooks sharing one
# durable consumer (nats source -> webhook sink) -> the receiver

# A nats-server with JetStream on a free loopback port, its store in DIR; sets NATS_URL, NATS_PID.
start_nats() { # dir
  local dir=$1 port
  port=$("$FHB" freeport)
  mkdir -p "$dir/nats-store"
  bg "$NATS_SERVER_BIN" -js -a 127.0.0.1 -p "$port" -sd "$dir/nats-store" -l "$dir/nats-server.log"
  NATS_PID=$BG_PID
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { cat "$dir/nats-server.log" >&2; die "nats-server did not start"; }
  NATS_URL=nats://127.0.0.1:$port
}

edge_config() { # dir
  mkdir -p "$1/data"
  cat >"$1/flaghook.toml" <<EOF
data_dir = "$1/data"

[sources.bench_in]
type = "file"
include = ["$EVENTS"]
read_from = "beginning"

[sinks.bench_nats]
type = "nats"
inputs = ["bench_in"]
url = "$NATS_URL"
subject = "bench.events"
max_events = $PER_MESSAGE
flush_interval = "1s"
request_concurrency = $NATS_CONCURRENCY
EOF
}

central_config() { # dir
  mkdir -p "$1/data"
  cat >"$1/flaghook.toml" <<EOF
data_dir = "$1/data"

[sources.bench_nats]
type = "nats"
url = "$NATS_URL"
stream = "BENCH"
consumer = "central"
subjects = ["bench.events"]
create = true
ack_wait = "30s"
max_ack_pending = 1000000

[sinks.bench_hook]
type = "webhook"
inputs = ["bench_nats"]
endpoint_url = "http://$RECV_ADDR_main/hook"
secret = "\${FLAGHOOK_BENCH_SECRET}"
max_event_in_memory = $BATCH
flush_interval = "1s"
request_concurrency = $REQUEST_CONCURRENCY
meta = { bench = "e2e" }
EOF
}

# One run: the central instances, then the edge (--once) over the generated file; the time is
# from the edge's start to the receiver counting N events (at most RUN_TIMEOUT).
run_jetstream() { # centrals run-number
  local centrals=$1 dir=$WORK/jetstream-$1-$2 c p t0 t1 edge_pid edge_rc ok=1
  local pids=() central_ticks=0 rss=0
  mkdir -p "$dir"
  start_nats "$dir"
  for c in $(seq "$centrals"); do
    central_config "$dir/central-$c"
    bg "$FLAGHOOK" run --config "$dir/central-$c/flaghook.toml" >"$dir/central-$c/stdout" 2>"$dir/central-$c/stderr"
    pids+=("$BG_PID")
  done
  for c in $(seq "$centrals"); do
    for _ in $(seq 200); do grep -q "reading the consumer" "$dir/central-$c/stderr" && break; sleep 0.05; done
    grep -q "reading the consumer" "$dir/central-$c/stderr" || { tail -5 "$dir/central-$c/stderr" >&2; die "central $c did not read the consumer"; }
  done
  edge_config "$dir/edge"
  reset_main
  t0=$(now_ns)
  bg timeout -k 5 "$RUN_TIMEOUT" /usr/bin/time -o "$dir/edge/time" -f '%e %U %S %M' \
    "$FLAGHOOK" run --once --config "$dir/edge/flaghook.toml" >"$dir/edge/stdout" 2>"$dir/edge/stderr"
  edge_pid=$BG_PID
  local deadline=$(( $(date +%s) + RUN_TIMEOUT ))
  while :; do
    read_stats "$RECV_ADDR_main"
    [ "$S_events" -ge "$N" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || { ok=0; break; }
    nap 0.1
  done
  t1=$(now_ns)
  wait_rc "$edge_pid"; edge_rc=$WAIT_RC
  for p in "${pids[@]}"; do
    central_ticks=$(( central_ticks + $(proc_cpu_ticks "$p") ))
    rss=$(maximum "$rss" "$(proc_hwm_kib "$p")")
    kill "$p" 2>/dev/null || true; wait_rc "$p"
  done
  kill "$NATS_PID" 2>/dev/null || true; wait_rc "$NATS_PID"
  [ "$edge_rc" = 0 ] || { warn "the edge exited with status $edge_rc"; tail -5 "$dir/edge/stderr" >&2; ok=0; }
  [ "$ok" = 1 ] || { warn "jetstream, $centrals central(s): the receiver counted $S_events of $N events"; FAILURES=$(( FAILURES + 1 )); }
  local elapsed user sys edge_rss wall rate cpu
  read -r elapsed user sys edge_rss < <(grep -E '^[0-9.]+ [0-9.]+ [0-9.]+ [0-9]+$' "$dir/edge/time" || echo "0 0 0 0")
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')
  rate=$(awk -v n="$N" -v w="$wall" -v ok="$ok" 'BEGIN {printf "%.0f", (ok && w > 0 ? n / w : 0)}')
  cpu=$(awk -v u="$user" -v s="$sys" -v t="$central_ticks" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", u + s + t / hz}')
  record "jetstream-$centrals" "$rate $cpu $rss $S_events $S_requests $S_sig_verified $S_sig_failed $S_sig_missing $wall $ok"
  log "  jetstream, $centrals central(s), $PER_MESSAGE events/message: ${wall}s, $rate events/s, CPU ${cpu}s (edge and centrals), peak RSS edge $(( edge_rss / 1024 )) MiB, central $(( rss / 1024 )) MiB, $S_events events in $S_requests requests"
}

jetstream() {
  mkdir -p "$WORK/results"
  local i c rates
  for i in $(seq "$RUNS"); do
    log "run $i of $RUNS"
    for c in $CENTRALS; do
      if ok_so_far "jetstream-$c"; then run_jetstream "$c" "$i"; fi
    done
  done
  echo
  echo "edge -> JetStream -> central, $(commas "$N") events, $PER_MESSAGE events per message, webhook batches of $BATCH (median of $RUNS runs, range):"
  for c in $CENTRALS; do
    [ -s "$WORK/results/jetstream-$c.tsv" ] || continue
    mapfile -t rates < <(col 1 "$WORK/results/jetstream-$c.tsv")
    printf '  %s central instance(s): %s events/s (%s - %s)\n' "$c" "$(commas "$(median "${rates[@]}")")" \
      "$(commas "$(minimum "${rates[@]}")")" "$(commas "$(maximum "${rates[@]}")")"
  done
}

# ------------------------------------------------------------------------------------------------

prerequisites
build
RECV_CHECK=""
case "$MODE" in
  all|throughput|receiver|memory|jetstream)
    generate
    start_receiver main
    if [ "$MODE" != memory ] && [ "$MODE" != jetstream ] && [ "$RECV_DELAY_MS" = 0 ]; then
      log "the receiver alone (load check)"
      receiver_check
    elif [ "$MODE" != memory ] && [ "$MODE" != jetstream ]; then
      log "receiver-alone check skipped: the receiver answers after ${RECV_DELAY_MS} ms (RECV_DELAY_MS)"
    fi
    ;;
esac
case "$MODE" in all|throughput) throughput ;; esac
case "$MODE" in all|memory) memory ;; esac
case "$MODE" in all|latency) latency ;; esac
case "$MODE" in all|idle) idle ;; esac
case "$MODE" in jetstream) jetstream ;; esac

if [ "$FAILURES" -gt 0 ]; then
  echo "e2e: $FAILURES run(s) failed (see the errors above)" >&2
  exit 1
fi
