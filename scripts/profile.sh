#!/usr/bin/env bash
# Where a server's time goes per answer, on one core: the server pinned to CPU 0, the load
# generator (zen-client bench) on CPU 1. The figures behind "Where the time goes" in docs/performance.md.
#
#   scripts/profile.sh instructions [SERVER]  callgrind (valgrind): user-space instructions per
#                                             answer by component, at one answer per wake-up
#                                             (50 connections paced at 1,000 questions/s in all), as
#                                             the difference of a 2 s and a 6 s run; the costliest
#                                             functions; allocations per answer
#   scripts/profile.sh cpu [SERVER]           perf (cpu-clock, 5 s) under 50 connections paced at
#                                             50,000 questions/s: each component's share of the
#                                             server's CPU time per answer, kernel included
#   scripts/profile.sh --help                 this text
#
# SERVER is `zen` (default: target/release/zen-server), `reference` (src/bin/plain-tokio.rs),
# `actix` (src/bin/plain-actix.rs) or the path of a zen-server binary (an older build, say). `--smoke` after the command runs briefly and
# checks only that the tools work. Binaries are built into ${CARGO_TARGET_DIR:-target}/release/.
# Needs: taskset, python3; valgrind for `instructions`, perf (Debian linux-perf) for `cpu`.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

case "${1:-}" in
  instructions|cpu) command="$1"; shift ;;
  -h|--help) usage; exit 0 ;;
  *) echo "usage: $0 instructions|cpu [zen|reference|actix|PATH] [--smoke]; $0 --help" >&2; exit 2 ;;
esac
server=zen
smoke=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    *) server="$arg" ;;
  esac
done

source "$(dirname "$0")/project.sh"
cargo build --release --features yardstick --bins
client="$target/release/zen-client"
case "$server" in
  zen) binary="$target/release/zen-server" ;;
  reference) binary="$target/release/plain-tokio" ;;
  actix) binary="$target/release/plain-actix" ;;
  *) binary="$server" ;;
esac
[ -x "$binary" ] || { echo "profile: $binary is not an executable" >&2; exit 2; }
for tool in taskset python3 $([ "$command" = instructions ] && echo valgrind callgrind_annotate || echo perf); do
  command -v "$tool" >/dev/null || { echo "profile: $tool not found" >&2; exit 1; }
done

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Starts the server, under the command given as arguments (valgrind, say), pinned to CPU 0;
# sets server_pid and server_addr.
start_server() {
  server_addr=""
  ZEN_LOG__LEVEL=warn,zen_server::server=info taskset -c 0 "$@" "$binary" --listen 127.0.0.1:0 \
    >/dev/null 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 600); do
    server_addr="$(grep -o 'addr=[0-9.:]*' "$work/server.log" | head -1 | cut -d= -f2 || true)"
    [ -n "$server_addr" ] && return
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "profile: $binary did not start; its output:" >&2
  cat "$work/server.log" >&2
  exit 1
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=""
}

# Paced load on CPU 1: $1 questions/s in all for $2 seconds; prints the report as JSON.
load() {
  taskset -c 1 "$client" bench --addr "$server_addr" --conns 50 --rate "$1" --duration "$2" \
    --warmup 0 --server-pid "$server_pid" --json 2>/dev/null
}

# The answers of a report, failing on any error.
answers() {
  python3 -c 'import json, sys
report = json.load(sys.stdin)
sys.exit("profile: %d errors in the load" % report["errors"]) if report["errors"] else print(report["answers"])'
}

if [ "$command" = instructions ]; then
  short=2 long=6
  [ "$smoke" = 1 ] && short=1 long=2
  for seconds in "$short" "$long"; do
    start_server valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$seconds"
    load 1000 "$seconds" | answers > "$work/answers.$seconds"
    stop_server
  done
  python3 scripts/profile_report.py instructions \
    "$work/callgrind.$short" "$(cat "$work/answers.$short")" "$work/callgrind.$long" "$(cat "$work/answers.$long")"
else
  seconds=5
  [ "$smoke" = 1 ] && seconds=1
  start_server
  load 50000 $((seconds + 3)) > "$work/report.json" &
  load_pid=$!
  sleep 2
  perf record -e cpu-clock -F 4999 -p "$server_pid" -o "$work/perf.data" -- sleep "$seconds" >/dev/null 2>&1
  wait "$load_pid"
  stop_server
  per_answer="$(python3 -c 'import json, sys
report = json.load(open(sys.argv[1]))
sys.exit("profile: %d errors in the load" % report["errors"]) if report["errors"] else print(report["server_cpu_us_per_answer"])' "$work/report.json")"
  python3 scripts/profile_report.py cpu "$work/perf.data" "$per_answer"
  echo "(the CPU per answer was measured with perf attached, which adds to it; compare shares, and take"
  echo " CPU per answer from scripts/bench.sh)"
fi
