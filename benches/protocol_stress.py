"""Malformed-traffic stress for a running pgsidecar (pool of one server connection, a user
`fz` with auth = "trust"): sessions send COPY ... TO STDOUT mixed with random CopyData,
CopyDone, CopyFail, Sync, Flush, Parse, Bind, Execute and Query messages, some truncated or
bit-flipped, and leave at random; an ordinary client must keep getting answers.

  python3 protocol_stress.py concurrent PORT DB SECONDS SESSIONS SEED
      the malformed sessions run concurrently with one ordinary client; prints how many of
      its queries were answered, the slowest, and any query unanswered after 60 s.
  python3 protocol_stress.py sequential PORT DB COUNT SEED
      one malformed session at a time, each followed by an ordinary query; prints every
      sequence after which that query took over 1 s or got no answer in 30 s.
"""
import asyncio, random, struct, sys, time

HOST = "127.0.0.1"
PORT, DB = int(sys.argv[2]), sys.argv[3].encode()


def msg(tag, body=b""):
    return tag + struct.pack("!i", len(body) + 4) + body


def startup():
    body = struct.pack("!i", 196608) + b"user\0fz\0database\0" + DB + b"\0\0"
    return struct.pack("!i", len(body) + 4) + body


async def read_until_z(r, timeout):
    """True at a ReadyForQuery, False at a FATAL or a close; TimeoutError after `timeout`."""
    buf, deadline = b"", time.time() + timeout
    while True:
        while len(buf) >= 5:
            tag, length = buf[0:1], struct.unpack("!i", buf[1:5])[0]
            if len(buf) < 1 + length:
                break
            body, buf = buf[5:1 + length], buf[1 + length:]
            if tag == b"Z":
                return True
            if tag == b"E" and b"FATAL" in body:
                return False
        left = deadline - time.time()
        if left <= 0:
            raise TimeoutError
        data = await asyncio.wait_for(r.read(65536), left)
        if not data:
            return False
        buf += data


def malformed_sequence():
    m = [msg(b"Q", b"COPY (SELECT generate_series(1,50)) TO STDOUT\0")]
    extra = [msg(b"d", b"1\n"), msg(b"c"), msg(b"S"), msg(b"H"), msg(b"f", b"no\0"),
             msg(b"P", b"\0SELEC 1\0\0\0"), msg(b"Q", b"SELECT 1\0"), msg(b"B", b"\0" * 8),
             msg(b"E", b"\0" * 5), msg(b"Q", b"COPY (SELECT 1) TO STDOUT\0")]
    m += [random.choice(extra) for _ in range(random.randint(0, 3))]
    random.shuffle(m)
    if random.random() < 0.2:
        i = random.randrange(len(m))
        m[i] = m[i][:random.randint(1, len(m[i]))]
    if random.random() < 0.2:
        i = random.randrange(len(m))
        b = bytearray(m[i])
        b[random.randrange(len(b))] ^= 1 << random.randrange(8)
        m[i] = bytes(b)
    return b"".join(m)


async def malformed_session(seq, linger):
    r, w = await asyncio.open_connection(HOST, PORT)
    w.write(startup())
    await w.drain()
    if await read_until_z(r, 30):
        w.write(seq)
        await w.drain()
        try:
            await asyncio.wait_for(r.read(65536), linger)
        except asyncio.TimeoutError:
            pass
    w.close()


async def ordinary_query(timeout):
    r, w = await asyncio.open_connection(HOST, PORT)
    w.write(startup())
    await w.drain()
    started = time.time()
    await read_until_z(r, timeout)
    w.write(msg(b"Q", b"SELECT 1\0"))
    await w.drain()
    await read_until_z(r, timeout)
    w.close()
    return time.time() - started


async def concurrent(seconds, sessions):
    stop, answered = asyncio.Event(), []

    async def malformed():
        while not stop.is_set():
            try:
                await malformed_session(malformed_sequence(), random.random() * 0.05)
            except (ConnectionError, OSError, TimeoutError, asyncio.TimeoutError):
                pass

    async def ordinary():
        while not stop.is_set():
            try:
                answered.append(await ordinary_query(60))
            except (TimeoutError, asyncio.TimeoutError):
                print("HANG: an ordinary query got no answer in 60 s", flush=True)
                stop.set()

    tasks = [asyncio.create_task(malformed()) for _ in range(sessions)]
    tasks.append(asyncio.create_task(ordinary()))
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    stop.set()
    for t in tasks:
        t.cancel()
    print(f"ordinary queries answered: {len(answered)}, slowest {max(answered or [0]):.2f} s")


async def sequential(count):
    slow = 0
    for _ in range(count):
        seq = malformed_sequence()
        await malformed_session(seq, 0.02)
        try:
            took = await ordinary_query(30)
        except (TimeoutError, asyncio.TimeoutError):
            print(f"HANG after {seq!r}", flush=True)
            return
        if took > 1.0:
            slow += 1
            print(f"{took:.2f} s after {seq!r}", flush=True)
    print(f"{count} sequences, {slow} followed by a query slower than 1 s")


random.seed(int(sys.argv[-1]))
if sys.argv[1] == "concurrent":
    asyncio.run(concurrent(float(sys.argv[4]), int(sys.argv[5])))
else:
    asyncio.run(sequential(int(sys.argv[4])))
