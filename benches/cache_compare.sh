#!/usr/bin/env bash
# The result cache in one run: a pgbench custom script of one whitelisted read by key (a hot
# set of HOT rows that fits the cache) against direct PostgreSQL, pgsidecar without a cache and
# pgsidecar with one, targets interleaved round by round. Prints tps (and the ratio to direct),
# latency p50/p99 from pgbench's per-transaction log, and the sidecars' CPU per transaction;
# then the cache's memory (RSS growth per byte the cache reports holding, after the hot set is
# stored) and the invalidation delay between two sidecars (a write committed through one, until
# the other's next read returns it; psycopg from target/pydeps, which .ci/run prepares).
#
#   benches/cache_compare.sh [rounds=3] [seconds=10] [clients=16] [hot=10000] [mode=prepared]
set -euo pipefail
rounds=${1:-3}; seconds=${2:-10}; clients=${3:-16}; hot=${4:-10000}; mode=${5:-prepared}
source "$(dirname "$0")/lib.sh"
start_postgres 10

cache_lines='
[cache]
max_bytes = "256MiB"
ttl = "600s"
[[cache.rule]]
database = "app"
tables = ["pgbench_accounts"]'
start_toml_sidecar() { # NAME TRAILING_LINES: a sidecar from a TOML file; sets port_NAME, metrics_NAME
  local port metrics
  port=$(free_port); metrics=$(free_port)
  sidecar_toml "$port" "$metrics" 20 "" "$2" >"$work/$1.toml"
  run_config "$work/$1.toml"
  eval "port_$1=$port; metrics_$1=$metrics; pid_$1=$!"
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
}
start_toml_sidecar plain ""
start_toml_sidecar cached "$cache_lines"
start_toml_sidecar other "$cache_lines"

cat >"$work/read.sql" <<SQL
\set aid random(1, $hot)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SQL
tick_us=$((1000000 / $(getconf CLK_TCK)))
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2}'; }

# Warm the cache: 8 reads per hot key on average (a key left out is about 1 in 3000).
rss_before=$(rss_kib "$pid_cached")
PGPASSWORD=secret "$bin/pgbench" -n -f "$work/read.sql" -M "$mode" -c 4 -j 4 -t $((hot * 2)) \
  -h 127.0.0.1 -p "$port_cached" -U app app >/dev/null 2>&1
rss_after=$(rss_kib "$pid_cached")
cache_bytes=$(metric "$metrics_cached" pgsidecar_cache_bytes)
cache_entries=$(metric "$metrics_cached" pgsidecar_cache_entries)

declare -A port=([direct]=$pg_port [no-cache]=$port_plain [cache]=$port_cached)
declare -A pid=([no-cache]=$pid_plain [cache]=$pid_cached)
declare -A tps_sum cpu_sum
targets=(direct no-cache cache)
latencies="$work/latencies"
mkdir -p "$latencies"
for round in $(seq 1 "$rounds"); do
  for t in "${targets[@]}"; do
    p=${pid[$t]:-}
    before=$([ -n "$p" ] && cpu_ticks "$p" || echo 0)
    out=$(cd "$latencies" && PGPASSWORD=secret "$bin/pgbench" -n -f "$work/read.sql" -M "$mode" \
      -c "$clients" -j "$clients" -T "$seconds" -l --log-prefix="$t.$round" \
      -h 127.0.0.1 -p "${port[$t]}" -U app app 2>&1) || true
    after=$([ -n "$p" ] && cpu_ticks "$p" || echo 0)
    done_tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    tps=$(tps_of "$out")
    cpu=$(python3 -c "print(($after - $before) * $tick_us / max(${done_tx:-0}, 1))")
    printf 'round %d %-9s tps %10.1f  cpu %s us/tx\n' "$round" "$t" "${tps:-0}" \
      "$([ -n "$p" ] && printf '%.1f' "$cpu" || echo -)"
    tps_sum[$t]=$(python3 -c "print(${tps_sum[$t]:-0} + ${tps:-0})")
    cpu_sum[$t]=$(python3 -c "print(${cpu_sum[$t]:-0} + $cpu)")
  done
done
hits=$(metric "$metrics_cached" pgsidecar_cache_hits_total)
misses=$(metric "$metrics_cached" pgsidecar_cache_misses_total)

echo
echo "clients=$clients hot=$hot mode=$mode seconds=$seconds rounds=$rounds (means over rounds)"
for t in "${targets[@]}"; do
  python3 - "$t" "$latencies" "${tps_sum[$t]}" "${tps_sum[direct]}" "${cpu_sum[$t]}" "$rounds" <<'PY'
import glob, sys
t, folder, tps, direct, cpu, rounds = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:6]), int(sys.argv[6])
lat = []
for f in glob.glob(f"{folder}/{t}.*"):
    with open(f) as fh:
        lat += [int(line.split()[2]) for line in fh if line.strip()]
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1000 if lat else 0
cpu = f"{cpu / rounds:6.1f}" if t != "direct" else "     -"
print(f"{t:<9} tps {tps / rounds:10.1f}  ratio to direct {tps / max(direct, 1e-9):5.2f}  "
      f"latency p50 {pct(0.5):6.3f} ms  p99 {pct(0.99):6.3f} ms  proxy cpu {cpu} us/tx")
PY
done
echo "cache: $cache_entries entries, $cache_bytes bytes after the warm-up; RSS grew $((rss_after - rss_before)) KiB:" \
  "$(python3 -c "print(f'{($rss_after - $rss_before) * 1024 / max($cache_bytes, 1):.2f}')") bytes of RSS per cached byte;" \
  "hits $hits, misses $misses"

# Invalidation delay: a write through one sidecar, until the other's next read returns it.
py="$root/target/pydeps/bin/python"
if [ -x "$py" ] && "$py" -c 'import psycopg' 2>/dev/null; then
  "$py" - "$port_other" "$port_cached" <<'PY'
import sys, time, psycopg
writer = psycopg.connect(host="127.0.0.1", port=sys.argv[1], user="app", password="secret", dbname="app", autocommit=True)
reader = psycopg.connect(host="127.0.0.1", port=sys.argv[2], user="app", password="secret", dbname="app", autocommit=True)
read = "SELECT abalance FROM pgbench_accounts WHERE aid = %s"
delays = []
for i in range(200):
    aid = 1 + i
    reader.execute(read, (aid,)).fetchone(); reader.execute(read, (aid,)).fetchone()  # stored
    value = 1_000_000 + i
    writer.execute("UPDATE pgbench_accounts SET abalance = %s WHERE aid = %s", (value, aid))
    start = time.perf_counter()
    while reader.execute(read, (aid,)).fetchone()[0] != value:
        pass
    delays.append((time.perf_counter() - start) * 1000)
delays.sort()
print(f"invalidation delay between two sidecars (commit acknowledged to the other's first fresh read), "
      f"200 writes: p50 {delays[100]:.3f} ms, p99 {delays[197]:.3f} ms, max {delays[-1]:.3f} ms")
PY
else
  echo "invalidation delay: skipped (no psycopg in target/pydeps; run the tests or .ci/run first)"
fi
