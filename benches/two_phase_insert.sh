#!/usr/bin/env bash
# A multi-row INSERT of 1,000 rows spanning 4 shards: on one PostgreSQL holding every row
# (direct), through pgsidecar with two-phase commit (one statement, split by key, all or none),
# and through pgsidecar without it (the client sends each shard's rows as its own INSERT —
# four statements, not atomic), in one run. Prints pgbench's mean latency and tps.
#
#   benches/two_phase_insert.sh [seconds=10] [clients=2]
set -euo pipefail
seconds=${1:-10}; clients=${2:-2}
source "$(dirname "$0")/lib.sh"
start_postgres 1

# shard_server N: a PostgreSQL that can prepare transactions, with an empty items table.
shard_server() {
  local port
  start_server "$1" "-c max_prepared_transactions=50"
  eval "port=\$port_$1"
  PGPASSWORD=secret "$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U app -d app \
    -c "CREATE TABLE items (customer_id bigint, note text)"
}
for n in 0 1 2 3; do shard_server "$n"; done
psql_su -d app -c "CREATE TABLE items (customer_id bigint, note text)" \
  -c "CREATE TABLE hp (k bigint) PARTITION BY HASH (k)" -c "ALTER TABLE items OWNER TO app"

# One statement of 1,000 rows; and the same rows as one INSERT per shard (placed as the
# sidecar places them: Postgres's hash partitioning with modulus 4).
values=$(python3 -c "print(', '.join(f\"({k}, 'row {k}')\" for k in range(1, 1001)))")
echo "INSERT INTO items (customer_id, note) VALUES $values;" >"$work/one.sql"
psql_su -d app -At -c "SELECT 'INSERT INTO items (customer_id, note) VALUES ' || string_agg(format('(%s, ''row %s'')', k, k), ', ') || ';'
  FROM generate_series(1, 1000) k, generate_series(0, 3) n
  WHERE satisfies_hash_partition('hp'::regclass, 4, n, k::bigint) GROUP BY n ORDER BY n" >"$work/per_shard.sql"

config() {  # config PORT TWO_PHASE
  sharded_toml "$1" $((clients + 2)) "items customer_id bigint" "state_dir = \"$work/state-$1\"" \
    "two_phase_commit = $2" "$port_0" "$port_1" "$port_2" "$port_3"
}
with_port=$(free_port); without_port=$(free_port)
config "$with_port" true >"$work/with.toml"
config "$without_port" false >"$work/without.toml"
for f in with without; do run_config "$work/$f.toml"; done
sleep 1

run() {  # run NAME PORT SCRIPT
  local out latency
  out=$(PGPASSWORD=secret "$bin/pgbench" -n -f "$3" -c "$clients" -j "$clients" -T "$seconds" \
        -h 127.0.0.1 -p "$2" -U app app 2>&1) || true
  latency=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out")
  printf '%-34s latency %8s ms  tps %8s  failed %s\n' "$1" "${latency:-?}" "$(tps_of "$out")" \
    "$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")"
}
echo "1,000 rows per transaction, 4 shards, clients=$clients seconds=$seconds"
run "direct (one server)" "$pg_port" "$work/one.sql"
run "sidecar, two-phase commit" "$with_port" "$work/one.sql"
run "sidecar, per-shard INSERTs (no 2PC)" "$without_port" "$work/per_shard.sql"
for n in 0 1 2 3; do
  eval "p=\$port_$n"
  left=$(PGPASSWORD=secret "$bin/psql" -X -At -h 127.0.0.1 -p "$p" -U app -d app -c "SELECT count(*) FROM pg_prepared_xacts")
  [ "$left" = 0 ] || echo "shard $n: $left prepared transactions left"
done
