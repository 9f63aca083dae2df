#!/usr/bin/env bash
# No lost commits, flat memory: pgbench TPC-B through pgsidecar (16 clients, pool 10) for
# MINUTES, sampling the sidecar's RSS and open file descriptors every 30 s; then pgbench's count
# of processed transactions must equal the rows of pgbench_history (each transaction inserts
# one). Also 3000 concurrent idle clients against the pool of 10 that then all run one query:
# how many succeed, how many get 53300, RSS, and the time until all are done.
#
#   benches/soak.sh [minutes=10] [idle_clients=3000]
set -euo pipefail
minutes=${1:-10}; idle=${2:-3000}
source "$(dirname "$0")/lib.sh"
start_postgres 10
psql_su -d app -c "TRUNCATE pgbench_history"
port=$(free_port); metrics=$(free_port)
sidecar_toml "$port" "$metrics" 10 "" "" >"$work/soak.toml"
sed -i 's/^\[pool\]$/[pool]\ncheckout_timeout = "30s"/' "$work/soak.toml"
"$root/target/release/pgsidecar" run --config "$work/soak.toml" 2>"$work/soak.log" & sidecar=$!
pids+=($sidecar)
sleep 1
sample() {
  printf 'rss_kib %s fds %s\n' "$(awk '/VmRSS/ {print $2}' /proc/$sidecar/status)" \
    "$(ls /proc/$sidecar/fd | wc -l)"
}
echo "t=0s $(sample)"
"$bin/pgbench" -n -c 16 -j 4 -T "$((minutes * 60))" -h 127.0.0.1 -p "$port" -U app app \
  >"$work/pgbench.out" 2>&1 & bench=$!
for ((t = 30; t <= minutes * 60; t += 30)); do
  sleep 30
  kill -0 "$bench" 2>/dev/null || break
  echo "t=${t}s $(sample)"
done
wait "$bench" || true
processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/pgbench.out")
failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$work/pgbench.out")
history=$(psql_su -d app -Atc "SELECT count(*) FROM pgbench_history")
echo "pgbench processed $processed (failed ${failed:-0}), pgbench_history rows $history"
[ "$processed" = "$history" ] && echo "no lost commits" || echo "MISMATCH"
echo "after the load: $(sample)"

# Idle clients: all connect, then all run one query at once.
python3 - "$port" "$idle" "$sidecar" <<'PY'
import asyncio, sys, time
import struct
port, n, sidecar = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def sample():
    rss = next(l.split()[1] for l in open(f"/proc/{sidecar}/status") if l.startswith("VmRSS"))
    return f"rss_kib {rss} fds {len(os.listdir(f'/proc/{sidecar}/fd'))}"
import hashlib, hmac, base64, os
def msg(tag, body=b""): return tag + struct.pack("!i", len(body) + 4) + body
async def read_msg(r):
    head = await r.readexactly(5)
    return head[0:1], await r.readexactly(struct.unpack("!i", head[1:])[0] - 4)
async def login(r, w):
    body = struct.pack("!i", 196608) + b"user\0app\0database\0app\0\0"
    w.write(struct.pack("!i", len(body) + 4) + body)
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    while True:
        tag, body = await read_msg(r)
        if tag == b"R":
            code = struct.unpack("!i", body[:4])[0]
            if code == 10:
                first = ("n,," + first_bare).encode()
                w.write(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
            elif code == 11:
                server_first = body[4:].decode()
                f = dict(kv.split("=", 1) for kv in server_first.split(","))
                salted = hashlib.pbkdf2_hmac("sha256", b"secret", base64.b64decode(f["s"]), int(f["i"]))
                ck = hmac.new(salted, b"Client Key", "sha256").digest()
                final_bare = f"c=biws,r={f['r']}"
                auth = f"{first_bare},{server_first},{final_bare}".encode()
                sig = hmac.new(hashlib.sha256(ck).digest(), auth, "sha256").digest()
                proof = base64.b64encode(bytes(a ^ b for a, b in zip(ck, sig))).decode()
                w.write(msg(b"p", f"{final_bare},p={proof}".encode()))
        elif tag == b"Z":
            return
        elif tag == b"E":
            raise RuntimeError(body)
async def query(r, w):
    w.write(msg(b"Q", b"SELECT 1\0"))
    code = None
    while True:
        tag, body = await read_msg(r)
        if tag == b"E":
            code = body.split(b"\0C")[1][:5].decode() if b"\0C" in body else "?"
        if tag == b"Z":
            return code
async def main():
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await login(r, w)
        conns.append((r, w))
    print(f"{n} idle clients connected: {sample()}", flush=True)
    start = time.time()
    codes = await asyncio.gather(*(query(r, w) for r, w in conns))
    took = time.time() - start
    ok = sum(c is None for c in codes)
    full = sum(c == "53300" for c in codes)
    print(f"{n} idle clients then one query each: {ok} answered, {full} got 53300, "
          f"{n - ok - full} other errors, all done in {took:.1f} s")
asyncio.run(main())
PY
echo "after the idle clients left: $(sample)"
