#!/usr/bin/env bash
# Instructions per transaction of PgBouncer and pgsidecar, counted by callgrind: the same
# binary and workload give the same count whatever else the machine is doing (CPU time on this
# shared machine moves by ±10% between runs). Each proxy (pgsidecar on one runtime thread, as
# PgBouncer runs) serves pgbench -S under valgrind --tool=callgrind in front of one
# PostgreSQL, once for a small and once for a large number of transactions; the difference of
# the two runs' totals over the difference in transactions is what one more transaction costs
# (start-up and the clients' SCRAM logins cancel out).
#
# A third row, tokio-pipe, is the floor under any tokio proxy: examples/byte_pipe.rs relays
# bytes with copy_bidirectional on one runtime thread, no protocol logic and no pooling (each
# client keeps its own server connection). pgsidecar's count above it is pgsidecar's own work.
# A fourth, mio-pipe, is the same pipe on an event loop of its own (examples/mio_pipe.rs: mio's
# epoll loop, no runtime, futures or wakers), as PgBouncer has: the floor without tokio.
#
#   benches/instructions.sh [clients=4] [small=1000] [large=4000] [modes=simple,extended]
#                           [proxies=pgbouncer,pgsidecar,tokio-pipe,mio-pipe]
#
# Needs valgrind, the PostgreSQL server binaries, pgbench and pgbouncer (installed with
# apt-get when missing and running as root). Everything listens on 127.0.0.1 only.
set -euo pipefail
clients=${1:-4}; small=${2:-1000}; large=${3:-4000}; modes=${4:-simple,extended}
proxies=${5:-pgbouncer,pgsidecar,tokio-pipe,mio-pipe}
source "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
start_postgres 1
(cd "$root" && cargo build --release -q --example byte_pipe --example mio_pipe)
out=$work/callgrind
mkdir -p "$out" && chmod 777 "$out"

# instructions PROXY MODE TRANSACTIONS: the proxy's total instructions for a run of pgbench
# with that many transactions per client.
instructions() {
  local proxy=$1 mode=$2 tx=$3 port file
  port=$(free_port)
  file="$out/$proxy.$mode.$tx"
  local grind=(valgrind --tool=callgrind "--callgrind-out-file=$file")
  case "$proxy" in
    pgbouncer) start_pgbouncer "$port" "$clients" "${grind[@]}" ;;
    pgsidecar) PGSIDECAR_WORKERS=1 start_sidecar "$port" "$clients" "${grind[@]}" ;;
    tokio-pipe | mio-pipe)
      local example=byte_pipe
      [ "$proxy" = mio-pipe ] && example=mio_pipe
      "${grind[@]}" "$root/target/release/examples/$example" "127.0.0.1:$port" \
        "127.0.0.1:$pg_port" 2>"$work/pipe-$port.log" & pids+=($!)
      for _ in $(seq 1 100); do "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
      ;;
  esac
  "$bin/pgbench" -n -S -M "$mode" -c "$clients" -j "$clients" -t "$tx" \
    -h 127.0.0.1 -p "$port" -U app app >/dev/null 2>&1
  case "$proxy" in
    pgbouncer) pkill -INT -f "pgbouncer $work/pgbouncer.ini" || true ;;
    pgsidecar | tokio-pipe) kill -INT "${pids[-1]}" ;;
    # No handler of its own: SIGINT is ignored by a script's background job, SIGTERM is not.
    mio-pipe) kill -TERM "${pids[-1]}" ;;
  esac
  # callgrind writes its totals when the proxy has exited.
  for _ in $(seq 1 300); do grep -q '^totals:' "$file" 2>/dev/null && break; sleep 0.2; done
  awk '/^totals:/ {print $2}' "$file"
}

printf '%-10s %-9s %14s\n' proxy mode "instr/tx"
for mode in ${modes//,/ }; do
  for proxy in ${proxies//,/ }; do
    a=$(instructions "$proxy" "$mode" "$small")
    b=$(instructions "$proxy" "$mode" "$large")
    printf '%-10s %-9s %14d\n' "$proxy" "$mode" $(( (b - a) / ((large - small) * clients) ))
  done
done
