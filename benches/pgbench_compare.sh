#!/usr/bin/env bash
# Load comparison in one run: pgbench against direct PostgreSQL, PgBouncer (transaction mode)
# and pgsidecar (transaction mode; with its default runtime threads, one per core, and as
# `pgsidecar-1w` with one, as PgBouncer runs), same pool size, targets interleaved round by
# round.
# Prints each target's tps and mean latency and its ratio to direct, and for the two proxies
# their CPU time per transaction (utime + stime of the proxy process from /proc/<pid>/stat
# across each run, divided by the transactions pgbench processed) — steadier than tps on a
# shared machine. Quote ratios, not absolute numbers: the machine is small and noisy.
#
#   benches/pgbench_compare.sh [rounds=3] [seconds=10] [clients=16] [pool=20] [workloads]
#   workloads (comma-separated, default all five):
#     select-simple    pgbench -S -M simple          (proxy-bound reads)
#     select-extended  pgbench -S -M extended        (Parse/Bind/Execute/Sync per query)
#     select-prepared  pgbench -S -M prepared        (named statements; PgBouncer 1.18 cannot
#                                                     pool these in transaction mode)
#     select-connect   pgbench -S -M simple -C       (a new connection, with SCRAM, per transaction)
#     tpcb             the default pgbench script    (writes, BEGIN…END)
#
# Needs the PostgreSQL server binaries, pgbench and pgbouncer (installed with apt-get when
# missing and running as root). Everything listens on 127.0.0.1 only and stops at exit.
set -euo pipefail
rounds=${1:-3}; seconds=${2:-10}; clients=${3:-16}; pool=${4:-20}
workloads=${5:-select-simple,select-extended,select-prepared,select-connect,tpcb}
source "$(dirname "$0")/lib.sh"
start_postgres 10
bouncer_port=$(free_port); sidecar_port=$(free_port)
start_pgbouncer "$bouncer_port" "$pool"
start_sidecar "$sidecar_port" "$pool"
sidecar_pid=${pids[-1]}
# The same sidecar on one runtime thread (PGSIDECAR_WORKERS=1), as PgBouncer runs on one.
sidecar1_port=$(free_port)
PGSIDECAR_WORKERS=1 start_sidecar "$sidecar1_port" "$pool"
sidecar1_pid=${pids[-1]}
tick_us=$((1000000 / $(getconf CLK_TCK)))
# cpu_ticks PID: utime + stime so far (fields 14 and 15; the command name has no spaces).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A proxy_pid=([pgbouncer]=$bouncer_pid [pgsidecar]=$sidecar_pid [pgsidecar-1w]=$sidecar1_pid)

workload_args() {
  case "$1" in
    select-simple) echo "-S -M simple" ;;
    select-extended) echo "-S -M extended" ;;
    select-prepared) echo "-S -M prepared" ;;
    select-connect) echo "-S -M simple -C" ;;
    tpcb) echo "-M simple" ;;
    *) echo "unknown workload $1" >&2; exit 2 ;;
  esac
}
targets=(direct pgbouncer pgsidecar pgsidecar-1w)
declare -A ports=([direct]=$pg_port [pgbouncer]=$bouncer_port [pgsidecar]=$sidecar_port [pgsidecar-1w]=$sidecar1_port)
declare -A tps_sum lat_sum cpu_sum
IFS=, read -r -a wl <<<"$workloads"
for round in $(seq 1 "$rounds"); do
  for w in "${wl[@]}"; do
    # shellcheck disable=SC2207
    args=($(workload_args "$w"))
    for t in "${targets[@]}"; do
      pid=${proxy_pid[$t]:-}
      before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
      # One thread per client: -M prepared prepares synchronously (see tests/prepared.rs).
      out=$("$bin/pgbench" -n "${args[@]}" -c "$clients" -j "$clients" -T "$seconds" \
            -h 127.0.0.1 -p "${ports[$t]}" -U app app 2>&1) || true  # a target may fail a workload
      after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
      done_tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
      cpu=$(python3 -c "print(($after - $before) * $tick_us / max(${done_tx:-0}, 1))")
      tps=$(tps_of "$out")
      lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
      failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
      printf 'round %d %-16s %-12s tps %10.1f  latency %7.3f ms  failed %s  cpu %s us/tx\n' \
        "$round" "$w" "$t" "${tps:-0}" "${lat:-0}" "${failed:-?}" "$([ -n "$pid" ] && printf '%.1f' "$cpu" || echo -)"
      cpu_sum[$w/$t]=$(python3 -c "print(${cpu_sum[$w/$t]:-0} + $cpu)")
      tps_sum[$w/$t]=$(python3 -c "print(${tps_sum[$w/$t]:-0} + ${tps:-0})")
      lat_sum[$w/$t]=$(python3 -c "print(${lat_sum[$w/$t]:-0} + ${lat:-0})")
    done
  done
done
echo
echo "clients=$clients pool=$pool seconds=$seconds rounds=$rounds (means over rounds)"
for w in "${wl[@]}"; do
  for t in "${targets[@]}"; do
    python3 -c "
tps = ${tps_sum[$w/$t]} / $rounds; lat = ${lat_sum[$w/$t]} / $rounds; d = ${tps_sum[$w/direct]} / $rounds
cpu = ${cpu_sum[$w/$t]} / $rounds
cpu = f'{cpu:7.1f}' if '$t' != 'direct' else '      -'
print(f'{\"$w\":<16} {\"$t\":<12} tps {tps:10.1f}  latency {lat:7.3f} ms  tps ratio to direct {tps / max(d, 1e-9):5.2f}  proxy cpu {cpu} us/tx')"
  done
done
