"""psycopg 3 against pgsidecar in transaction mode, with fewer server connections than clients.

Run by tests/drivers.rs with PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE set to the sidecar.
Exits non-zero (with the failing assertion) if anything is not as PostgreSQL would do it.
"""

import threading

import psycopg

CLIENTS = 4


def connect(**kwargs):
    return psycopg.connect(connect_timeout=10, **kwargs)


def prepared_and_transactions(n, errors):
    try:
        with connect() as conn:
            # The same query run often enough becomes a server-side prepared statement.
            conn.prepare_threshold = 2
            for i in range(30):
                row = conn.execute("SELECT %s::int * %s::int + %s::int", (i, 3, n)).fetchone()
                assert row[0] == i * 3 + n, (n, i, row)
                conn.commit()
            # A session setting outlives the transaction that made it.
            conn.execute("SET statement_timeout = '%ss'" % (n + 1))
            conn.commit()
            for _ in range(5):
                value = conn.execute("SHOW statement_timeout").fetchone()[0]
                conn.commit()
                assert value == "%ss" % (n + 1), (n, value)
            # Rolled back work stays rolled back.
            conn.execute("INSERT INTO items (client, v) VALUES (%s, -1)", (n,))
            conn.rollback()
            with conn.transaction():
                conn.execute("INSERT INTO items (client, v) VALUES (%s, 1)", (n,))
            # Pipeline mode: many statements, one round trip.
            with conn.pipeline():
                for i in range(20):
                    conn.execute("INSERT INTO items (client, v) VALUES (%s, %s)", (n, i))
            conn.commit()
            count = conn.execute("SELECT count(*) FROM items WHERE client = %s", (n,)).fetchone()[0]
            assert count == 21, (n, count)
            # COPY in and out.
            with conn.cursor() as cur:
                with cur.copy("COPY items (client, v) FROM STDIN") as copy:
                    for i in range(100):
                        copy.write_row((n, 1000 + i))
                conn.commit()
                out = bytearray()
                with cur.copy("COPY (SELECT v FROM items WHERE client = %s AND v >= 1000 ORDER BY v) TO STDOUT", (n,)) as copy:
                    for data in copy:
                        out += data
                conn.commit()
                assert out.decode().split() == [str(1000 + i) for i in range(100)], (n, out[:50])
    except BaseException as e:  # noqa: BLE001 - reported to the main thread
        errors.append((n, repr(e)))


def main():
    with connect(autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS items")
        setup.execute("CREATE TABLE items (client int, v int)")
    errors = []
    threads = [threading.Thread(target=prepared_and_transactions, args=(n, errors)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    # LISTEN/NOTIFY keeps working while the listener's server connection is shared.
    with connect(autocommit=True) as listener, connect(autocommit=True) as sender:
        listener.execute("LISTEN jobs")
        for i in range(3):
            sender.execute("SELECT pg_notify('jobs', %s)", (str(i),))
        got = []
        for notify in listener.notifies(timeout=10, stop_after=3):
            got.append((notify.channel, notify.payload))
        assert got == [("jobs", "0"), ("jobs", "1"), ("jobs", "2")], got
        sender_pid = sender.info.backend_pid
        sender.execute("NOTIFY jobs, 'pid'")
        notify = next(listener.notifies(timeout=10, stop_after=1))
        assert notify.pid == sender_pid, (notify.pid, sender_pid)
    print("psycopg", psycopg.__version__, "ok")


if __name__ == "__main__":
    main()
