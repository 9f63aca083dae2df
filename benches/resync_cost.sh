#!/usr/bin/env bash
# Cost of carrying session state across transaction pooling, in one run with the workloads
# interleaved round by round. 16 clients in 4 groups of 4 (one pgbench process per group, run
# together) share a pool of 8 server connections; every transaction runs a 5-statement
# read-only script. Workloads:
#   none      -M extended, no session settings        (nothing to carry)
#   prepared  -M prepared: 5 named statements per client, no settings
#   same      -M prepared, and the same 3 session settings in every client (via startup
#             options) — what an application pool that sets up each connection alike does
#   distinct  -M prepared, and 3 session settings whose values differ between the groups, so
#             a connection last used by another group gets them re-applied before the client's
#             statement (pipelined, replies swallowed): the worst case
# Prints tps per workload, the ratios, and how often settings were re-applied.
#
#   benches/resync_cost.sh [rounds=3] [seconds=10] [pool=8]
set -euo pipefail
rounds=${1:-3}; seconds=${2:-10}; pool=${3:-8}
source "$(dirname "$0")/lib.sh"
start_postgres 10
port=$(free_port); metrics_port=$(free_port)
"$root/target/release/pgsidecar" run --upstream "postgres://app:secret@127.0.0.1:$pg_port/app" \
  --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port" \
  --pool-size "$pool" --pool-mode transaction 2>"$work/sidecar.log" & pids+=($!)
sleep 1

cat >"$work/five.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT bbalance FROM pgbench_branches WHERE bid = :bid;
SELECT tbalance FROM pgbench_tellers WHERE tid = :tid;
SELECT count(*) FROM pgbench_tellers WHERE bid = :bid;
SELECT current_setting('work_mem');
SQL

# run WORKLOAD: the four groups at once; prints the summed tps.
run() {
  local mode=prepared outs=() total=0
  [ "$1" = none ] && mode=extended
  for g in 1 2 3 4; do
    local options="" v=$g
    [ "$1" = same ] && v=1
    case "$1" in same | distinct) options="-c work_mem=$((4 + v))MB -c statement_timeout=${v}1s -c lock_timeout=${v}2s" ;; esac
    PGOPTIONS="$options" "$bin/pgbench" -n -f "$work/five.sql" -M "$mode" -c 4 -j 4 -T "$seconds" \
      -h 127.0.0.1 -p "$port" -U app app >"$work/out.$g" 2>&1 &
    outs+=($!)
  done
  for p in "${outs[@]}"; do wait "$p" || true; done
  for g in 1 2 3 4; do
    local out; out=$(cat "$work/out.$g")
    grep -q "number of failed transactions: 0 " <<<"$out" || { echo "$1 group $g failed: $out" >&2; exit 1; }
    total=$(python3 -c "print($total + $(tps_of "$out"))")
  done
  echo "$total"
}
metric() {
  python3 - "$metrics_port" "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
print(next(l.split()[1] for l in text.splitlines() if l.startswith(sys.argv[2] + " ")).split(".")[0])
PY
}

declare -A sum
workloads=(none prepared same distinct)
for round in $(seq 1 "$rounds"); do
  for w in "${workloads[@]}"; do
    before=$(metric pgsidecar_settings_applied_total)
    tps=$(run "$w")
    after=$(metric pgsidecar_settings_applied_total)
    printf 'round %d %-9s tps %10.1f  settings re-applied %d times\n' "$round" "$w" "$tps" "$((after - before))"
    sum[$w]=$(python3 -c "print(${sum[$w]:-0} + $tps)")
  done
done
echo
python3 - "${sum[none]}" "${sum[prepared]}" "${sum[same]}" "${sum[distinct]}" "$rounds" "$pool" <<'PY'
import sys
none, prepared, same, distinct, rounds, pool = (float(x) for x in sys.argv[1:])
print(f"16 clients in 4 groups, pool {pool:.0f}, means over {rounds:.0f} rounds")
print(f"none      tps {none / rounds:10.1f}")
print(f"prepared  tps {prepared / rounds:10.1f}  ratio to none {prepared / none:5.3f}")
for name, tps in (("same", same), ("distinct", distinct)):
    print(f"{name:<9} tps {tps / rounds:10.1f}  ratio to none {tps / none:5.3f}  ratio to prepared {tps / prepared:5.3f}")
PY
