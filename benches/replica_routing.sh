#!/usr/bin/env bash
# The cost of classification and routing: pgbench select-only (-S) through two pgsidecars in
# one run, rounds interleaved — one with a streaming replica that serves the reads, one that
# sends everything to the primary. Both servers share this machine, so the replica adds no
# capacity: the ratio shows what routing costs, not what a replica gains.
#
#   benches/replica_routing.sh [rounds=3] [seconds=10] [clients=16] [pool=20] [mode=simple]
set -euo pipefail
rounds=${1:-3}; seconds=${2:-10}; clients=${3:-16}; pool=${4:-20}; mode=${5:-simple}
source "$(dirname "$0")/lib.sh"
start_postgres 10
start_replica

routed=$(free_port); plain=$(free_port)
sidecar_toml "$routed" "$(free_port)" "$pool" "replicas = [\"postgres://app:secret@127.0.0.1:$replica_port/app\"]
read_your_writes = \"off\"" "" >"$work/routed.toml"
sidecar_toml "$plain" "$(free_port)" "$pool" "" "" >"$work/plain.toml"
for which in routed plain; do
  run_config "$work/$which.toml"
done
sleep 2

declare -A sum
for round in $(seq 1 "$rounds"); do
  for which in routed plain; do
    port=$routed; [ "$which" = plain ] && port=$plain
    out=$("$bin/pgbench" -n -S -M "$mode" -c "$clients" -j "$clients" -T "$seconds" \
          -h 127.0.0.1 -p "$port" -U app app 2>&1)
    tps=$(tps_of "$out")
    printf 'round %d %-7s tps %10.1f\n' "$round" "$which" "$tps"
    sum[$which]=$(python3 -c "print(${sum[$which]:-0} + $tps)")
  done
done
python3 - "${sum[routed]}" "${sum[plain]}" "$rounds" <<'PY'
import sys
routed, plain, rounds = (float(x) for x in sys.argv[1:])
print(f"routed to the replica  tps {routed / rounds:10.1f}")
print(f"primary only           tps {plain / rounds:10.1f}")
print(f"ratio routed / primary-only {routed / plain:5.3f}")
PY
