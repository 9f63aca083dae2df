"""What psycopg 3 can tell about its connection through pgsidecar, compared with a direct one.

Run by tests/drivers.rs (both pool modes) with PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE set
to the sidecar. Exits non-zero (with the failing assertion) on any difference.
"""

import os

import psycopg


def connect(**kwargs):
    return psycopg.connect(connect_timeout=10, autocommit=True, **kwargs)


def client_encoding_is_the_clients_own():
    # Clients that change their encoding and leave...
    for _ in range(3):
        with connect() as conn:
            conn.execute("SET client_encoding TO latin9")
            conn.execute("SELECT 1")
    # ...never make the next one believe it has theirs.
    os.environ["PGCLIENTENCODING"] = "utf8"
    try:
        for options in ({}, {"application_name": "enc"}):
            with connect(**options) as conn:
                status = conn.info.parameter_status("client_encoding")
                status = status.decode() if isinstance(status, bytes) else status
                assert status == "UTF8", status
                assert conn.info.encoding == "utf-8", conn.info.encoding
                text = conn.execute("SELECT %s::text", ["grüße €"]).fetchone()[0]
                assert text == "grüße €", text
    finally:
        del os.environ["PGCLIENTENCODING"]


def more_statements_than_prepared_max():
    with connect() as conn:
        conn.prepare_threshold = 0
        conn.prepared_max = 4
        for round_ in range(3):
            for i in range(12):
                row = conn.execute("SELECT %s::int + " + str(i), [round_]).fetchone()
                assert row[0] == round_ + i, (round_, i, row)


def own_notifications_before_the_reply():
    with connect() as conn:
        got = []
        conn.add_notify_handler(lambda n: got.append(n.payload))
        conn.execute("LISTEN jobs")
        for i in range(50):
            conn.execute("NOTIFY jobs, %s" % psycopg.sql.quote(str(i)))
            assert got == [str(j) for j in range(i + 1)], (i, got)


def terminate_by_backend_pid():
    with connect() as victim, connect() as killer:
        pid = victim.info.backend_pid
        assert pid > 1 << 22, pid
        assert killer.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0] is True
        try:
            victim.execute("SELECT 1")
        except psycopg.OperationalError as e:
            assert "terminating connection" in str(e) or victim.closed, e
        else:
            raise AssertionError("the terminated session still runs queries")
        assert killer.execute("SELECT 1").fetchone()[0] == 1


def main():
    client_encoding_is_the_clients_own()
    more_statements_than_prepared_max()
    own_notifications_before_the_reply()
    terminate_by_backend_pid()
    print("psycopg", psycopg.__version__, "libpq", psycopg.pq.version(), "ok")


if __name__ == "__main__":
    main()
