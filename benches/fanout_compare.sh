#!/usr/bin/env bash
# Cross-shard reads: the same statements on one PostgreSQL holding every row (direct) and
# through pgsidecar over 4 shards holding a quarter each (fan-out and merge), in one run.
# Statements: count(*), ORDER BY … LIMIT 100 (pushed down, merged), GROUP BY with avg, and
# every row ORDER BY (merged k-way as it streams).
# Prints pgbench's mean latency and tps for each, and the sidecar's resident memory before
# and at its peak (VmHWM) across the run.
#
#   benches/fanout_compare.sh [scale=5] [seconds=10] [clients=4]
set -euo pipefail
scale=${1:-5}; seconds=${2:-10}; clients=${3:-4}
source "$(dirname "$0")/lib.sh"
start_postgres "$scale"
rows=$((scale * 100000))

# shard_server N: a PostgreSQL holding the pgbench_accounts rows with aid % 4 = N.
shard_server() {
  local port
  start_server "$1"
  eval "port=\$port_$1"
  PGPASSWORD=secret "$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U app -d app \
    -c "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))" \
    -c "INSERT INTO pgbench_accounts SELECT aid, (aid - 1) / 100000 + 1, aid % 1000, '' FROM generate_series(1, $rows) aid WHERE aid % 4 = $1" \
    -c "VACUUM ANALYZE pgbench_accounts"
}
for n in 0 1 2 3; do shard_server "$n"; done
# The oracle's rows match the shards' (pgbench -i leaves abalance at 0).
psql_su -d app -c "UPDATE pgbench_accounts SET abalance = aid % 1000" -c "VACUUM ANALYZE pgbench_accounts"

sidecar_port=$(free_port)
sharded_toml "$sidecar_port" $((clients + 2)) "pgbench_accounts aid integer" "" "" \
  "$port_0" "$port_1" "$port_2" "$port_3" >"$work/fanout.toml"
run_config "$work/fanout.toml"
sidecar_pid=${pids[-1]}
sleep 1
kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$sidecar_pid/status"; }
rss_before=$(kb VmRSS)

declare -A statements=(
  [count]="SELECT count(*) FROM pgbench_accounts;"
  [order_limit]="SELECT aid, abalance FROM pgbench_accounts ORDER BY abalance DESC, aid LIMIT 100;"
  [group_avg]="SELECT bid, count(*), avg(abalance) FROM pgbench_accounts GROUP BY bid ORDER BY bid;"
  [order_all]="SELECT aid, abalance FROM pgbench_accounts ORDER BY abalance, aid;"
)
echo "rows=$rows shards=4 clients=$clients seconds=$seconds"
for name in count order_limit group_avg order_all; do
  printf '%s\n' "${statements[$name]}" >"$work/$name.sql"
  for target in direct sidecar; do
    port=$pg_port; [ "$target" = sidecar ] && port=$sidecar_port
    out=$(PGPASSWORD=secret "$bin/pgbench" -n -f "$work/$name.sql" -c "$clients" -j "$clients" -T "$seconds" \
          -h 127.0.0.1 -p "$port" -U app app 2>&1) || true
    latency=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
    printf '%-12s %-8s latency %8s ms  tps %9s  failed %s\n' "$name" "$target" "${latency:-?}" "$(tps_of "$out")" "${failed:-?}"
  done
done
echo "sidecar memory: RSS before ${rss_before} kB, peak (VmHWM) $(kb VmHWM) kB"
