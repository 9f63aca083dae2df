# Shared setup for the pgbench scripts in benches/ (sourced, not run): finds or installs the
# PostgreSQL binaries, builds the release binary, starts a throwaway PostgreSQL on loopback with
# a pgbench database `app` (role app/secret), starts pgsidecar, and stops everything at exit.
# Sets: bin root work pg_port; functions as_pg free_port psql_su start_postgres start_replica
# start_server start_sidecar start_pgbouncer run_config sidecar_toml sharded_toml
# pgbench_groups tps_of.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi
(cd "$root" && cargo build --release -q)

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/pgsidecar-bench.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$work"
pids=()
servers=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "${servers[@]}"; do as_pg "$bin/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true; done
  pkill -f "$work/pgbouncer.ini" 2>/dev/null || true
  as_pg "$bin/pg_ctl" -D "$work/replica" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# start_postgres SCALE: initdb, start, and pgbench -i at that scale.
start_postgres() {
  pg_port=$(free_port)
  as_pg "$bin/initdb" -D "$work/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
  as_pg "$bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
    -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off" start >/dev/null
  psql_su -d postgres -c "CREATE ROLE app LOGIN PASSWORD 'secret'" -c "CREATE DATABASE app OWNER app"
  export PGPASSWORD=secret
  "$bin/pgbench" -i -q -s "$1" -h 127.0.0.1 -p "$pg_port" -U app app >/dev/null 2>&1
}
# start_replica: a streaming replica of it (pg_basebackup -R) on $replica_port.
start_replica() {
  replica_port=$(free_port)
  as_pg "$bin/pg_basebackup" -D "$work/replica" -h "$work" -p "$pg_port" -U postgres -R -X stream --checkpoint=fast
  as_pg "$bin/pg_ctl" -D "$work/replica" -l "$work/replica.log" -w \
    -o "-p $replica_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
}
psql_su() { "$bin/psql" -X -q -h "$work" -p "$pg_port" -U postgres "$@"; }

# start_server N [SERVER_OPTIONS]: another PostgreSQL (shards) with role app/secret and an
# empty database app; sets port_N; stopped at exit.
start_server() {
  local dir="$work/shard$1" port
  port=$(free_port)
  mkdir -p "$dir" && [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_pg "$bin/initdb" -D "$dir" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
  servers+=("$dir")
  as_pg "$bin/pg_ctl" -D "$dir" -l "$dir.log" -w \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off ${2:-}" start >/dev/null
  "$bin/psql" -X -q -h "$work" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE app LOGIN PASSWORD 'secret'" -c "CREATE DATABASE app OWNER app"
  eval "port_$1=$port"
}

# start_sidecar PORT POOL [WRAPPER…]: pgsidecar in transaction mode in front of the database,
# run under WRAPPER (such as valgrind) when given; returns once it accepts connections.
start_sidecar() {
  local port=$1 pool=$2
  shift 2
  "$@" "$root/target/release/pgsidecar" run --upstream "postgres://app:secret@127.0.0.1:$pg_port/app" \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(free_port)" \
    --pool-size "$pool" --pool-mode transaction 2>"$work/sidecar-$port.log" & pids+=($!)
  for _ in $(seq 1 100); do "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
}

# start_pgbouncer PORT POOL [WRAPPER…]: PgBouncer (installed with apt-get when missing) in
# transaction mode in front of the database, SCRAM like pgsidecar, run under WRAPPER (such as
# valgrind) when given; sets bouncer_pid once it accepts connections.
start_pgbouncer() {
  local port=$1 pool=$2
  shift 2
  if ! command -v pgbouncer >/dev/null; then
    apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null
  fi
  cat >"$work/pgbouncer.ini" <<INI
[databases]
app = host=127.0.0.1 port=$pg_port dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 1000
logfile = $work/pgbouncer.log
INI
  echo '"app" "secret"' >"$work/userlist.txt"
  [ "$(id -u)" = 0 ] && chown postgres "$work/pgbouncer.ini" "$work/userlist.txt"
  as_pg "$@" pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 & pids+=($!)
  for _ in $(seq 1 100); do "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
  bouncer_pid=$(pgrep -f "^pgbouncer $work/pgbouncer.ini" | head -n1 || true)
}

# run_config FILE: pgsidecar with this configuration file (stderr to FILE without .toml, .log);
# its pid is ${pids[-1]}.
run_config() {
  "$root/target/release/pgsidecar" run --config "$1" 2>"${1%.toml}.log" & pids+=($!)
}

# sharded_toml PORT POOL "TABLE COLUMN TYPE" TOP_LINES DATABASE_LINES SHARD_PORT…: a config
# for database `app` (user app/secret) over shards on these ports, TABLE sharded by COLUMN of
# TYPE; TOP_LINES are top-level settings, DATABASE_LINES go in its [[database]].
sharded_toml() {
  local port=$1 pool=$2 table column type top=$4 database=$5
  read -r table column type <<<"$3"
  shift 5
  printf 'listen = "127.0.0.1:%s"\nmetrics_listen = "127.0.0.1:%s"\n%s\n[pool]\nsize = %s\n' \
    "$port" "$(free_port)" "$top" "$pool"
  printf '[[database]]\nname = "app"\n%s\n' "$database"
  for p in "$@"; do
    printf '[[database.shards]]\nprimary = "postgres://app:secret@127.0.0.1:%s/app"\n' "$p"
  done
  printf '[[sharded_table]]\ndatabase = "app"\ntable = "%s"\ncolumn = "%s"\ntype = "%s"\n' \
    "$table" "$column" "$type"
  printf '[[user]]\nname = "app"\npassword = "secret"\n'
}

# sidecar_toml PORT METRICS_PORT POOL DATABASE_LINES TRAILING_LINES: a config for database
# `app` (user app/secret) with these extra [[database]] lines and sections after [[user]].
sidecar_toml() {
  cat <<TOML
listen = "127.0.0.1:$1"
metrics_listen = "127.0.0.1:$2"
[pool]
size = $3
[[database]]
name = "app"
primary = "postgres://app:secret@127.0.0.1:$pg_port/app"
$4
[[user]]
name = "app"
password = "secret"
$5
TOML
}

# pgbench_groups PORT TENANTS PGBENCH_ARGS…: four pgbench processes of four clients at once,
# logging in as app.t1 … app.t4 (TENANTS = yes) or as app; prints the summed tps.
pgbench_groups() {
  local port=$1 tenants=$2 outs=() total=0
  shift 2
  for g in 1 2 3 4; do
    local user=app
    [ "$tenants" = yes ] && user="app.t$g"
    PGPASSWORD=secret "$bin/pgbench" -n "$@" -c 4 -j 4 -h 127.0.0.1 -p "$port" -U "$user" app \
      >"$work/out.$g" 2>&1 &
    outs+=($!)
  done
  for p in "${outs[@]}"; do wait "$p" || true; done
  for g in 1 2 3 4; do
    total=$(python3 -c "print($total + $(tps_of "$(cat "$work/out.$g")"))")
  done
  echo "$total"
}

# tps_of OUTPUT: the tps pgbench reported.
tps_of() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$1"; }
