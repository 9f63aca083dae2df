#!/usr/bin/env bash
# Malformed protocol traffic against pgsidecar with a pool of one server connection: first
# one malformed session at a time (each followed by an ordinary query), then several at once
# beside an ordinary client (benches/protocol_stress.py says what they send). Any query left
# unanswered is printed with the bytes that preceded it.
#
#   benches/protocol_stress.sh [sequences=1000] [seconds=60] [sessions=6] [seed=1]
set -euo pipefail
sequences=${1:-1000}; seconds=${2:-60}; sessions=${3:-6}; seed=${4:-1}
source "$(dirname "$0")/lib.sh"
start_postgres 1
port=$(free_port)
cat >"$work/stress.toml" <<TOML
listen = "127.0.0.1:$port"
metrics_listen = "127.0.0.1:$(free_port)"
[pool]
size = 1
checkout_timeout = "30s"
[[database]]
name = "app"
primary = "postgres://app:secret@127.0.0.1:$pg_port/app"
[[user]]
name = "fz"
auth = "trust"
TOML
run_config "$work/stress.toml"
sleep 1
python3 "$root/benches/protocol_stress.py" sequential "$port" app "$sequences" "$seed"
python3 "$root/benches/protocol_stress.py" concurrent "$port" app "$seconds" "$sessions" "$seed"
