#!/usr/bin/env bash
# Shard routing overhead: a single-shard select by key (pgbench custom script, simple and
# extended protocol) through pgsidecar with a 3-shard configuration (three PostgreSQL servers
# on this machine, each holding every pgbench row, so any shard answers correctly) against the
# same sidecar unsharded in front of one of them, in one run, targets interleaved round by
# round. Prints tps and the proxy's CPU time per transaction for both, and their ratios.
#
#   benches/shard_compare.sh [rounds=3] [seconds=10] [clients=16] [pool=10]
set -euo pipefail
rounds=${1:-3}; seconds=${2:-10}; clients=${3:-16}; pool=${4:-10}
source "$(dirname "$0")/lib.sh"
start_postgres 2

# Two more servers, each with the same pgbench tables.
for n in 1 2; do
  start_server "$n"
  eval "p=\$port_$n"
  "$bin/pgbench" -i -q -s 2 -h 127.0.0.1 -p "$p" -U app app >/dev/null 2>&1
done

plain_port=$(free_port); sharded_port=$(free_port)
start_sidecar "$plain_port" "$pool"
plain_pid=${pids[-1]}
sharded_toml "$sharded_port" "$pool" "pgbench_accounts aid integer" "" "" \
  "$pg_port" "$port_1" "$port_2" >"$work/sharded.toml"
run_config "$work/sharded.toml"
sharded_pid=${pids[-1]}
sleep 1

printf '\\set aid random(1, 200000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n' >"$work/by_key.sql"
tick_us=$((1000000 / $(getconf CLK_TCK)))
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A port_of=([unsharded]=$plain_port [sharded]=$sharded_port)
declare -A pid_of=([unsharded]=$plain_pid [sharded]=$sharded_pid)
declare -A tps_sum cpu_sum
for round in $(seq 1 "$rounds"); do
  for mode in simple extended; do
    for t in unsharded sharded; do
      before=$(cpu_ticks "${pid_of[$t]}")
      out=$("$bin/pgbench" -n -M "$mode" -f "$work/by_key.sql" -c "$clients" -j "$clients" -T "$seconds" \
            -h 127.0.0.1 -p "${port_of[$t]}" -U app app 2>&1) || true
      after=$(cpu_ticks "${pid_of[$t]}")
      done_tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
      failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
      tps=$(tps_of "$out")
      cpu=$(python3 -c "print(($after - $before) * $tick_us / max(${done_tx:-0}, 1))")
      printf 'round %d %-8s %-9s tps %10.1f  failed %s  cpu %.1f us/tx\n' \
        "$round" "$mode" "$t" "${tps:-0}" "${failed:-?}" "$cpu"
      tps_sum[$mode/$t]=$(python3 -c "print(${tps_sum[$mode/$t]:-0} + ${tps:-0})")
      cpu_sum[$mode/$t]=$(python3 -c "print(${cpu_sum[$mode/$t]:-0} + $cpu)")
    done
  done
done
echo
echo "clients=$clients pool=$pool seconds=$seconds rounds=$rounds (means over rounds)"
for mode in simple extended; do
  python3 -c "
u_tps = ${tps_sum[$mode/unsharded]} / $rounds; s_tps = ${tps_sum[$mode/sharded]} / $rounds
u_cpu = ${cpu_sum[$mode/unsharded]} / $rounds; s_cpu = ${cpu_sum[$mode/sharded]} / $rounds
print(f'{\"$mode\":<8} unsharded tps {u_tps:9.1f} cpu {u_cpu:5.1f} us/tx | sharded tps {s_tps:9.1f} cpu {s_cpu:5.1f} us/tx | tps ratio {s_tps / max(u_tps, 1e-9):.2f}  cpu ratio {s_cpu / max(u_cpu, 1e-9):.2f}')"
done
