#!/usr/bin/env bash
# The cost of the signed tenant in Row-Level Security policies, two ways, rounds interleaved:
#  1. inside Postgres: a server-side loop of 20,000 point selects by primary key under a role
#     the policies apply to, with the policy on the plain setting
#     (`tenant_id = current_setting('app.tenant_id')`) and on the verified one
#     (`tenant_id = (SELECT pgsidecar.tenant())`): µs per query;
#  2. through pgsidecar: pgbench select by key (16 clients over 4 tenants, tenancy on) against
#     pgbench_accounts with FORCEd RLS, the policy switched between the two between runs.
#
#   benches/policy_cost.sh [rounds=3] [seconds=10] [pool=20]
set -euo pipefail
rounds=${1:-3}; seconds=${2:-10}; pool=${3:-20}
source "$(dirname "$0")/lib.sh"
start_postgres 10

port=$(free_port)
key="bench-signing-key-0123456789abcdefghijk"
sidecar_toml "$port" "$(free_port)" "$pool" "" "[tenancy]
signing_key = \"$key\"" >"$work/sidecar.toml"
"$root/target/release/pgsidecar" tenancy-sql --config "$work/sidecar.toml" >"$work/install.sql"
psql_su -d app -f "$work/install.sql" >/dev/null
psql_su -d app <<'SQL' >/dev/null
CREATE ROLE bench_reader;
CREATE TABLE plain (id int PRIMARY KEY, tenant_id text NOT NULL, v int);
CREATE TABLE signed (LIKE plain INCLUDING ALL);
INSERT INTO plain SELECT g, 'acme', g FROM generate_series(1, 20000) g;
INSERT INTO signed SELECT * FROM plain;
ALTER TABLE plain ENABLE ROW LEVEL SECURITY; ALTER TABLE plain FORCE ROW LEVEL SECURITY;
ALTER TABLE signed ENABLE ROW LEVEL SECURITY; ALTER TABLE signed FORCE ROW LEVEL SECURITY;
CREATE POLICY p ON plain USING (tenant_id = current_setting('app.tenant_id'));
CREATE POLICY p ON signed USING (tenant_id = (SELECT pgsidecar.tenant()));
GRANT SELECT ON plain, signed TO bench_reader;
ANALYZE plain; ANALYZE signed;
ALTER TABLE pgbench_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgbench_accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON pgbench_accounts USING (current_setting('app.tenant_id') IS NOT NULL);
SQL
run_config "$work/sidecar.toml"
sleep 2

# loop_us TABLE: µs per point select in a server-side loop, straight to Postgres as a role the
# policies apply to, with a token signed for that backend (as the sidecar signs it).
loop_us() {
  psql_su -d app -At <<SQL
SELECT pg_backend_pid() AS pid \\gset
\\set token \`python3 "$work/token.py" :pid\`
SELECT set_config('pgsidecar.tenant', :'token', false) IS NULL;
SET app.tenant_id = 'acme';
SET ROLE bench_reader;
CREATE FUNCTION pg_temp.loop() RETURNS float LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp(); n int;
BEGIN
  FOR i IN 1..20000 LOOP
    SELECT v INTO n FROM $1 WHERE id = i;
    IF n IS NULL THEN RAISE EXCEPTION 'row % not visible', i; END IF;
  END LOOP;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1e6 / 20000;
END \$\$;
SELECT round(pg_temp.loop()::numeric, 2);
SQL
}
cat >"$work/token.py" <<PY
import hashlib, hmac, sys, time
key = b"$key"
kid = hashlib.sha256(key).hexdigest()[:16]
message = f"v1:{kid}:{int(time.time()) + 3600}:{sys.argv[1]}:acme::"
print(message + ":" + hmac.new(key, message.encode(), hashlib.sha256).hexdigest())
PY

printf '\\set aid random(1, 1000000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n' >"$work/select.sql"

declare -A us tps
for round in $(seq 1 "$rounds"); do
  for which in plain signed; do
    u=$(loop_us "$which" | tail -n1)
    if [ "$which" = plain ]; then
      psql_su -d app -c "ALTER POLICY by_tenant ON pgbench_accounts USING (current_setting('app.tenant_id') IS NOT NULL)"
    else
      psql_su -d app -c "ALTER POLICY by_tenant ON pgbench_accounts USING ((SELECT pgsidecar.tenant()) IS NOT NULL)"
    fi
    t=$(pgbench_groups "$port" yes -f "$work/select.sql" -T "$seconds")
    printf 'round %d policy %-6s loop %6.2f us/query  pgbench tps %10.1f\n' "$round" "$which" "$u" "$t"
    us[$which]=$(python3 -c "print(${us[$which]:-0} + $u)")
    tps[$which]=$(python3 -c "print(${tps[$which]:-0} + $t)")
  done
done
python3 - "${us[plain]}" "${us[signed]}" "${tps[plain]}" "${tps[signed]}" "$rounds" "$pool" <<'PY'
import sys
up, us_, tp, ts, rounds, pool = (float(x) for x in sys.argv[1:])
print(f"means over {rounds:.0f} rounds (pool {pool:.0f})")
print(f"server-side loop: plain {up / rounds:6.2f} us/query, signed {us_ / rounds:6.2f} us/query, "
      f"signed adds {(us_ - up) / rounds:5.2f} us/query")
print(f"pgbench select by key through the sidecar: plain {tp / rounds:10.1f} tps, "
      f"signed {ts / rounds:10.1f} tps, ratio signed / plain {ts / tp:5.3f}")
PY
