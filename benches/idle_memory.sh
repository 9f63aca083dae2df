#!/usr/bin/env bash
# Resident memory of the sidecar per idle client connection: RSS with N authenticated, idle
# clients (pgbench clients that only sleep) minus RSS with none, divided by N.
#
#   benches/idle_memory.sh [clients=1000]
#
# Release build; PostgreSQL and the sidecar on 127.0.0.1 only; everything stops at exit.
set -euo pipefail
clients=${1:-1000}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
(cd "$root" && cargo build --release -q)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d /tmp/pgsidecar-mem.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$work"
sidecar=""
cleanup() {
  [ -n "$sidecar" ] && kill "$sidecar" 2>/dev/null || true
  as_pg "$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
pg_port=$(free_port); port=$(free_port); metrics=$(free_port)
as_pg "$bin/initdb" -D "$work/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
as_pg "$bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1" start >/dev/null
"$bin/psql" -X -q -h "$work" -p "$pg_port" -U postgres -d postgres \
  -c "CREATE ROLE app LOGIN PASSWORD 'secret'" -c "CREATE DATABASE app OWNER app"
"$root/target/release/pgsidecar" run --upstream "postgres://app:secret@127.0.0.1:$pg_port/app" \
  --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" --pool-size 10 2>/dev/null &
sidecar=$!
sleep 1
export PGPASSWORD=secret
# Warm up: one client, so the pool, the startup cache and the allocator are in place.
"$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U app app -c 'SELECT 1' >/dev/null
rss() { awk '/^VmRSS/ {print $2}' "/proc/$sidecar/status"; }
before=$(rss)
printf '\\sleep 20 s\n' >"$work/idle.sql"
"$bin/pgbench" -n -c "$clients" -j 2 -T 15 -f "$work/idle.sql" -h 127.0.0.1 -p "$port" -U app app \
  >"$work/pgbench.log" 2>&1 &
load=$!
connected=0
for _ in $(seq 1 100); do
  sleep 0.2
  connected=$(curl -s "127.0.0.1:$metrics/metrics" | awk '/^pgsidecar_client_connections / {print $2}')
  [ "${connected:-0}" -ge "$clients" ] && break
done
sleep 1
during=$(rss)
echo "clients connected: $connected"
echo "RSS before: ${before} KiB, with $clients idle clients: ${during} KiB"
python3 -c "print(f'per idle client connection: {($during - $before) * 1024 / $connected / 1024:.1f} KiB')"
kill "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true
