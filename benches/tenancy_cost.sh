#!/usr/bin/env bash
# The cost of tenant context: pgbench select-only (-S) with 16 clients spread over 4 tenants
# (4 pgbench processes of 4 clients, logging in as app.t1 … app.t4) through a pgsidecar with
# [tenancy] (enforcement on, signed tenant), against the same clients logging in as app through
# one without, rounds interleaved. With tenants, a server connection last used by another tenant
# is reset with DISCARD ALL and gets the tenant setting and the signed token (pipelined) before
# the client's statement, and every statement passes the tenant guard.
#
#   benches/tenancy_cost.sh [rounds=3] [seconds=10] [pool=8] [mode=simple]
set -euo pipefail
rounds=${1:-3}; seconds=${2:-10}; pool=${3:-8}; mode=${4:-simple}
source "$(dirname "$0")/lib.sh"
start_postgres 10

on=$(free_port); off=$(free_port)
on_metrics=$(free_port)
sidecar_toml "$on" "$on_metrics" "$pool" "" "[tenancy]
signing_key = \"bench-signing-key-0123456789abcdefghijk\"" >"$work/on.toml"
# The signed tenant is verified by pgsidecar.tenant(), installed once per database.
"$root/target/release/pgsidecar" tenancy-sql --config "$work/on.toml" | psql_su -d app >/dev/null
sidecar_toml "$off" "$(free_port)" "$pool" "" "" >"$work/off.toml"
for which in on off; do
  run_config "$work/$which.toml"
done
sleep 2

declare -A sum
for round in $(seq 1 "$rounds"); do
  for which in on off; do
    if [ "$which" = on ]; then
      tps=$(pgbench_groups "$on" yes -S -M "$mode" -T "$seconds")
    else
      tps=$(pgbench_groups "$off" no -S -M "$mode" -T "$seconds")
    fi
    printf 'round %d tenancy %-3s tps %10.1f\n' "$round" "$which" "$tps"
    sum[$which]=$(python3 -c "print(${sum[$which]:-0} + $tps)")
  done
done
metric() { python3 -c "import urllib.request; t=urllib.request.urlopen('http://127.0.0.1:$on_metrics/metrics').read().decode(); print(next(l.split()[1] for l in t.splitlines() if l.startswith('$1 ')))"; }
echo "tenant settings re-applied on checkout (tenancy on, all rounds): $(metric pgsidecar_settings_applied_total)"
echo "tenant hops (DISCARD ALL between tenants, all rounds): $(metric pgsidecar_tenant_hops_total)"
python3 - "${sum[on]}" "${sum[off]}" "$rounds" "$pool" <<'PY'
import sys
on, off, rounds, pool = (float(x) for x in sys.argv[1:])
print(f"16 clients over 4 tenants, pool {pool:.0f}, means over {rounds:.0f} rounds")
print(f"tenancy on   tps {on / rounds:10.1f}")
print(f"tenancy off  tps {off / rounds:10.1f}")
print(f"ratio on / off {on / off:5.3f}")
PY
