#!/usr/bin/env bash
# Benchmarks zen-server against the plain-tokio reference (src/bin/plain-tokio.rs), in the same
# run, alternating which goes first, with the server pinned to CPU 0 and the load to CPU 1, then
# unpinned; writes bench/RESULTS.md and bench/chart.svg from the medians. Redis (redis-server,
# asked PING with `zen-client bench --protocol redis-ping`) runs as a third server, in turn with
# the others, where CPU per answer and saturated throughput are compared: cpu50k, cpu10k,
# c50x1, c50x16 and c1000x1. Without redis-server, it says so on one line and leaves Redis out.
# plain-actix (src/bin/plain-actix.rs: zen-server's design written as actix's examples write
# it) runs as a fourth in those and in churn.
#
#   scripts/bench.sh              full run (about 40 minutes on 2 cores), writes bench/
#   scripts/bench.sh --reps 5     more repetitions per scenario (default 3)
#   scripts/bench.sh --out DIR    write RESULTS.md, chart.svg and raw.jsonl to DIR (default bench)
#   scripts/bench.sh --scenarios "tls50k tlschurn"
#                                 only these scenarios (a partial run: give --out elsewhere)
#   scripts/bench.sh --smoke      about a minute: each scenario once, briefly, unpinned, into
#                                 a temporary directory; checks that the tools work and that no
#                                 answer is wrong (figures from it mean nothing)
#   scripts/bench.sh --help       this text
#
# Scenarios: cNxD (N connections, D questions in flight each); shared (c50x1 for zen-server with
# its default workers and with each count from 1 to the CPUs, beside plain-tokio and plain-actix:
# unpinned, the load generator competes with the server for every core); cpu50k (50 connections paced at
# 50,000 questions/s in all, a rate every server sustains: the server's CPU time per answer),
# cpu10k (1,000 connections each asking every 100 ms, one question at a time, as the book's
# clients ask), churn, idle and many. Every report also gives the load generator's own CPU share,
# and says when it, not the server, was the bottleneck; the paced ones, how many answers each
# wake-up of the server carried.
#
# TLS, with a certificate made here by openssl: tls50k (cpu50k over long-lived TLS connections)
# and tlschurn (churn over TLS, every connection a full handshake), for zen-server on tls.listen
# (zen-tls), Redis with its TLS port (redis-tls, asked PING; tls50k and tlschurn) and plain
# zen-server behind stunnel terminating TLS (stunnel; tls50k), whose CPU is the two processes'
# together. Without openssl, the TLS scenarios are skipped; without stunnel4, that server.
#
# Binaries are built into ${CARGO_TARGET_DIR:-target}/release/.
# Needs: a Rust toolchain, python3, taskset (util-linux), a hard limit of open files of at least
# 16,000 (`ulimit -Hn`) for the 15,000-connection scenario; optionally redis-server (Debian's
# redis-server package, built with TLS), openssl and stunnel4.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

reps=3
smoke=0
out=
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps="$2"; shift 2 ;;
    --scenarios) only=" $2 "; shift 2 ;;
    --smoke) smoke=1; reps=1; shift ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "usage: $0 [--reps N] [--smoke] [--out DIR] [--scenarios LIST] [--help]" >&2; exit 2 ;;
  esac
done

source "$(dirname "$0")/project.sh"
# A brief run's report is not the project's: it goes to a temporary directory unless told.
if [ -z "$out" ]; then
  if [ "$smoke" = 1 ]; then out="$(mktemp -d)"; else out=bench; fi
fi

if [ "$smoke" = 1 ]; then
  duration=1 warmup=0.3 churn_duration=1 idle_conns=500 idle_hold=1 many_conns=1000 sweep="50"
  placements="unpinned"
else
  duration=5 warmup=1 churn_duration=3 idle_conns=10000 idle_hold=6 many_conns=15000 sweep="1 10 50 200 1000"
  placements="pinned unpinned"
fi

cargo build --release --features yardstick --bins
zen="$target/release/zen-server"
reference="$target/release/plain-tokio"
actix="$target/release/plain-actix"
client="$target/release/zen-client"
redis="$(command -v redis-server || true)"
if [ -z "$redis" ]; then
  echo "bench: redis-server not found: Redis is skipped (apt-get install redis-server)" >&2
fi
stunnel="$(command -v stunnel4 || true)"
# Debian's redis-server links OpenSSL for its TLS port; one built without TLS cannot take part.
redis_tls="$redis"
if [ -n "$redis" ] && ! ldd "$redis" 2>/dev/null | grep -q libssl; then
  echo "bench: $redis has no TLS: Redis is left out of the TLS scenarios" >&2
  redis_tls=""
fi
tls_dir=""
if command -v openssl >/dev/null; then
  # A CA and a certificate for localhost and 127.0.0.1 signed by it, as a deployment has.
  tls_dir="$(mktemp -d)"
  (
    cd "$tls_dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
      -days 2 -subj "/CN=bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr \
      -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
      -extfile server.ext 2>/dev/null
  )
  trap 'rm -rf "$tls_dir"' EXIT
else
  echo "bench: openssl not found: the TLS scenarios are skipped (apt-get install openssl)" >&2
fi
if [ -n "$tls_dir" ] && [ -z "$stunnel" ]; then
  echo "bench: stunnel4 not found: zen-server behind stunnel is skipped (apt-get install stunnel4)" >&2
fi

ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((many_conns + 1000)) ]; then
  echo "bench: need 'ulimit -n' of at least $((many_conns + 1000)); have $(ulimit -n)" >&2
  exit 1
fi

mkdir -p "$out"
raw="$out/raw.jsonl"
: > "$raw"
server_pid=""
server_addr=""
# Beside the server: a proxy in front of it (stunnel), whose CPU counts with the server's.
proxy_pid=""

# A TCP port free on 127.0.0.1 right now, for a server that cannot be given port 0: below the
# ephemeral range, where no outgoing connection (nor one in TIME-WAIT) can hold it.
free_port() {
  python3 - <<'EOF'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for port in random.sample(range(10000, low), min(200, low - 10000)) if low > 11000 else [0]:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
EOF
}

# Whether the server at 127.0.0.1:$1 answers Redis's PING with +PONG; over TLS trusting the CA
# in $2, if given.
answers_ping() {
  python3 - "$1" "${2:-}" 2>/dev/null <<'EOF'
import socket, ssl, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
    if sys.argv[2]:
        s = ssl.create_default_context(cafile=sys.argv[2]).wrap_socket(s, server_hostname="localhost")
    s.sendall(b"PING\r\n")
    sys.exit(s.makefile("rb").read(7) != b"+PONG\r\n")
EOF
}

# Starts server $1 (zen, zen-wN for server.workers = N, reference, actix, redis, zen-tls,
# redis-tls or stunnel) with CPU prefix $2;
# sets server_pid and server_addr (and proxy_pid for stunnel, with zen-server as server_pid).
start_server() {
  local log port=""
  log="$(mktemp)"
  server_addr=""
  proxy_pid=""
  case "$1" in
    zen|stunnel) env ZEN_LOG__LEVEL=warn,zen_server::server=info ZEN_LIMITS__MAX_CONNECTIONS=20000 \
           $2 "$zen" --listen 127.0.0.1:0 2>"$log" & ;;
    zen-tls) env ZEN_LOG__LEVEL=warn,zen_server::server=info ZEN_LIMITS__MAX_CONNECTIONS=20000 \
           ZEN_SERVER__LISTEN= ZEN_TLS__LISTEN=127.0.0.1:0 ZEN_TLS__CERT_FILE="$tls_dir/server.pem" \
           ZEN_TLS__KEY_FILE="$tls_dir/server.key" $2 "$zen" 2>"$log" & ;;
    zen-w*) env ZEN_LOG__LEVEL=warn,zen_server::server=info ZEN_LIMITS__MAX_CONNECTIONS=20000 \
           ZEN_SERVER__WORKERS="${1#zen-w}" $2 "$zen" --listen 127.0.0.1:0 2>"$log" & ;;
    reference) $2 "$reference" --listen 127.0.0.1:0 2>"$log" & ;;
    actix) $2 "$actix" --listen 127.0.0.1:0 2>"$log" & ;;
    redis)
      # Port 0 means "no TCP" to Redis. In the foreground, logging to standard output, writing
      # no snapshot and no append-only file.
      port="$(free_port)"
      $2 "$redis" --port "$port" --bind 127.0.0.1 --protected-mode no --save "" --appendonly no \
        --daemonize no --logfile "" >"$log" 2>&1 & ;;
    redis-tls)
      port="$(free_port)"
      $2 "$redis" --port 0 --tls-port "$port" --tls-cert-file "$tls_dir/server.pem" \
        --tls-key-file "$tls_dir/server.key" --tls-ca-cert-file "$tls_dir/ca.pem" --tls-auth-clients no \
        --bind 127.0.0.1 --protected-mode no --save "" --appendonly no --daemonize no --logfile "" \
        >"$log" 2>&1 & ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do
    if [ "$1" = redis ]; then
      if answers_ping "$port"; then server_addr="127.0.0.1:$port"; fi
    elif [ "$1" = redis-tls ]; then
      if answers_ping "$port" "$tls_dir/ca.pem"; then server_addr="127.0.0.1:$port"; fi
    else
      server_addr="$(grep -o 'addr=[0-9.:]*' "$log" | head -1 | cut -d= -f2 || true)"
    fi
    [ -n "$server_addr" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$server_addr" ]; then
    echo "bench: $1 did not start; its output:" >&2
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  if [ "$1" = stunnel ]; then start_stunnel "$2"; fi
}

# Starts stunnel with CPU prefix $1 in front of the zen-server at server_addr, terminating TLS;
# sets proxy_pid and makes server_addr stunnel's.
start_stunnel() {
  local port conf
  port="$(free_port)"
  conf="$tls_dir/stunnel.conf"
  printf 'foreground = yes\npid =\ndebug = 3\n[zen]\naccept = 127.0.0.1:%s\nconnect = %s\ncert = %s\nkey = %s\n' \
    "$port" "$server_addr" "$tls_dir/server.pem" "$tls_dir/server.key" > "$conf"
  $1 "$stunnel" "$conf" 2>/dev/null &
  proxy_pid=$!
  for _ in $(seq 100); do
    if "$client" probe --tls --ca "$tls_dir/ca.pem" --addr "127.0.0.1:$port" >/dev/null 2>&1; then
      server_addr="127.0.0.1:$port"
      return
    fi
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: stunnel did not start" >&2
  exit 1
}

stop_server() {
  if [ -n "$proxy_pid" ]; then
    kill "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
  fi
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}

# Waits while the kernel's connection-tracking table is more than a third full: a full table
# silently drops new connections, and a closed connection stays in it for 120 s.
wait_for_conntrack() {
  local count=/proc/sys/net/netfilter/nf_conntrack_count max=/proc/sys/net/netfilter/nf_conntrack_max
  [ -r "$count" ] || return 0
  while [ "$(cat "$count")" -gt $(( $(cat "$max") / 3 )) ]; do
    echo "bench: waiting for the connection-tracking table to empty ($(cat "$count") entries)" >&2
    sleep 10
  done
}

# Records one result: $1 server, $2 placement, $3 scenario, $4 repetition, $5 JSON report.
record() {
  python3 -c 'import json,sys; r=json.loads(sys.argv[5]); r.update(server=sys.argv[1], placement=sys.argv[2], scenario=sys.argv[3], rep=int(sys.argv[4])); print(json.dumps(r))' \
    "$1" "$2" "$3" "$4" "$5" >> "$raw"
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
line = "  {server:>9} {placement:>8} {scenario:<8} answers/s {answers_per_sec:>10.0f} conn/s {connections_per_sec:>7.0f} p99 {p99:>7} us errors {errors}".format(p99=r["latency_us"]["p99"], **r)
if r.get("server_cpu_us_per_answer") is not None:
    line += " server cpu {:.2f} us/answer".format(r["server_cpu_us_per_answer"])
if r.get("client_cpu_percent") is not None:
    line += " client cpu {:.0f}%".format(r["client_cpu_percent"])
if r.get("client_bound"):
    line += " (client-bound)"
print(line)' "$(tail -1 "$raw")"
}

# Runs scenario $3 against server $1 in placement $2, repetition $4.
run_scenario() {
  local server=$1 placement=$2 scenario=$3 rep=$4 server_cpu="" client_cpu="" protocol=zen json
  local tls=() pids
  if [ "$placement" = pinned ]; then server_cpu="taskset -c 0"; client_cpu="taskset -c 1"; fi
  if [[ "$server" == redis* ]]; then protocol=redis-ping; fi
  if [[ "$scenario" == tls* ]]; then tls=(--tls --ca "$tls_dir/ca.pem" --server-name localhost); fi
  [[ "$scenario" == *churn ]] && wait_for_conntrack
  start_server "$server" "$server_cpu"
  pids=(--server-pid "$server_pid")
  if [ -n "$proxy_pid" ]; then pids+=(--server-pid "$proxy_pid"); fi
  case "$scenario" in
    tls50k)
      json="$($client_cpu "$client" bench "${tls[@]}" --protocol "$protocol" --addr "$server_addr" \
               --conns 50 --rate 50000 "${pids[@]}" --duration "$duration" --warmup "$warmup" \
               --json 2>/dev/null)" ;;
    tlschurn)
      json="$($client_cpu "$client" bench "${tls[@]}" --protocol "$protocol" --addr "$server_addr" \
               --mode churn --conns 50 "${pids[@]}" --duration "$churn_duration" --warmup 0.5 \
               --json 2>/dev/null)" ;;
    cpu50k|cpu10k)
      local conns=50 rate=50000
      if [ "$scenario" = cpu10k ]; then conns=1000 rate=10000; fi
      json="$($client_cpu "$client" bench --protocol "$protocol" --addr "$server_addr" --conns "$conns" \
               --rate "$rate" --server-pid "$server_pid" --duration "$duration" --warmup "$warmup" \
               --json 2>/dev/null)" ;;
    c*x*|shared)
      local conns=50 depth=1
      if [ "$scenario" != shared ]; then conns=${scenario#c}; conns=${conns%x*}; depth=${scenario#*x}; fi
      json="$($client_cpu "$client" bench --protocol "$protocol" --addr "$server_addr" --conns "$conns" \
               --depth "$depth" --duration "$duration" --warmup "$warmup" --json 2>/dev/null)" ;;
    churn)
      json="$($client_cpu "$client" bench --protocol "$protocol" --addr "$server_addr" --mode churn \
               --conns 50 --duration "$churn_duration" --warmup 0.5 --json 2>/dev/null)" ;;
    idle)
      json="$($client_cpu "$client" bench --protocol "$protocol" --addr "$server_addr" --mode idle \
               --conns "$idle_conns" --hold "$idle_hold" --server-pid "$server_pid" --json 2>/dev/null)" ;;
    many)
      # Hold many connections; meanwhile, measure how fast the server answers 10 other clients.
      local hold_log held_json
      hold_log="$(mktemp)"
      $client_cpu "$client" bench --protocol "$protocol" --addr "$server_addr" --mode idle \
        --conns "$many_conns" --hold "$(python3 -c "print($warmup + $duration + 3)")" \
        --server-pid "$server_pid" --json >"$hold_log.json" 2>"$hold_log" &
      local holder=$!
      for _ in $(seq 600); do grep -q "^holding" "$hold_log" && break; sleep 0.1; done
      json="$($client_cpu "$client" bench --protocol "$protocol" --addr "$server_addr" --conns 10 \
               --depth 1 --duration "$duration" --warmup "$warmup" --json 2>/dev/null || true)"
      wait "$holder" || true
      held_json="$(cat "$hold_log.json")"
      rm -f "$hold_log" "$hold_log.json"
      json="$(python3 -c 'import json,sys; p=json.loads(sys.argv[1]); h=json.loads(sys.argv[2]); p["held"]=h; p["errors"]+=h["errors"]; print(json.dumps(p))' "$json" "$held_json")" ;;
  esac
  stop_server
  record "$server" "$placement" "$scenario" "$rep" "$json"
}

# Prints the words after $1 rotated left by $1 places: each repetition, another server goes first.
rotate() {
  local by=$1 i
  shift
  local words=("$@")
  for ((i = 0; i < $#; i++)); do printf '%s ' "${words[$(((i + by) % $#))]}"; done
}

scenarios=""
for conns in $sweep; do scenarios="$scenarios c${conns}x1"; done
scenarios="$scenarios shared c50x16 cpu50k cpu10k churn idle many"
if [ -n "$tls_dir" ]; then scenarios="$scenarios tls50k tlschurn"; fi
# Where Redis runs too: CPU per answer at a fixed rate, and saturated throughput.
redis_scenarios=" cpu50k cpu10k c50x1 c50x16 c1000x1 "
# Where the same design written plainly in actix runs too: the same, and churn.
actix_scenarios=" cpu50k cpu10k c50x1 c50x16 c1000x1 churn "

for placement in $placements; do
  for scenario in $scenarios; do
    if [ -n "$only" ] && [[ "$only" != *" $scenario "* ]]; then continue; fi
    servers="zen reference"
    if [[ "$actix_scenarios" == *" $scenario "* ]]; then servers="$servers actix"; fi
    if [ -n "$redis" ] && [[ "$redis_scenarios" == *" $scenario "* ]]; then servers="$servers redis"; fi
    case "$scenario" in
      # zen-server with its default workers and with each count from 1 to the CPUs, beside both
      # yardsticks: the default's choice, measured.
      shared) servers="zen $(for n in $(seq "$(nproc)"); do printf 'zen-w%s ' "$n"; done)reference actix" ;;
      tls50k) servers="zen-tls ${redis_tls:+redis-tls} ${stunnel:+stunnel}" ;;
      tlschurn) servers="zen-tls ${redis_tls:+redis-tls}" ;;
    esac
    for rep in $(seq "$reps"); do
      for server in $(rotate $((rep - 1)) $servers); do
        run_scenario "$server" "$placement" "$scenario" "$rep"
      done
    done
  done
done

python3 scripts/bench_report.py "$raw" "$out"
read -r errors per_server < <(python3 -c '
import json, sys
errors = {}
for line in open(sys.argv[1]):
    result = json.loads(line)
    errors[result["server"]] = errors.get(result["server"], 0) + result["errors"]
print(sum(errors.values()), ", ".join(f"{server} {count}" for server, count in errors.items()))' "$raw")
echo "bench: results in $out/RESULTS.md; errors: $errors ($per_server)"
[ "$errors" = 0 ]
