"""What consuming the WAL messages costs the service's process: CPU per commit for wal_listener
(psycopg2's asynchronous replication on the event loop) against psycopg2's own blocking
consume_stream() in a thread, the other way to read the stream without a new dependency.

    .venv/bin/python -m bench.wal_consumer_cost [--commits 50000] [--per-commit 1]

One backend commits announcements as fast as it can (synchronous_commit off, so the walsender
gets them in bursts: the consumer's cost, not latency, is measured).
"""

import argparse
import asyncio
import contextlib
import tempfile
import threading
import time
from pathlib import Path

import psycopg2
import psycopg2.extras
import uvloop

from service.dev.embedded_db import start_embedded_postgres
from service.push import pgoutput
from service.push.wal_listener import PREFIX, PROTO_VERSION, PUBLICATION, WalListener

GENERATE = """
DO $$ BEGIN
    SET LOCAL synchronous_commit = off;
    FOR i IN 1..%(commits)s LOOP
        PERFORM pg_logical_emit_message(true, 'aiagent_live', 'e' || (i %% 1000) || ':' || (i * 10 + n))
            FROM generate_series(1, %(per_commit)s) n;
        COMMIT;
    END LOOP;
END $$"""


def generate(url: str, commits: int, per_commit: int) -> None:
    with contextlib.closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(GENERATE, {"commits": commits, "per_commit": per_commit})


async def with_wal_listener(url: str, commits: int, per_commit: int) -> tuple[float, float]:
    batches = 0

    async def on_batch(batch):
        nonlocal batches
        batches += 1

    async def on_connect():
        return None

    listener = WalListener(url, on_batch, on_connect, ping_seconds=5, backoff_min=0.1, backoff_max=1,
                           coalesce_seconds=0.010)
    task = asyncio.create_task(listener.run())
    assert await listener.wait_connected(10)
    started, cpu = time.monotonic(), time.process_time()
    writer = asyncio.create_task(asyncio.to_thread(generate, url, commits, per_commit))
    while listener.messages_decoded < commits * per_commit:
        await asyncio.sleep(0.01)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    await writer
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print(f"  batches: {batches:,}")
    return elapsed, cpu


def with_consume_stream(url: str, commits: int, per_commit: int) -> tuple[float, float]:
    conn = psycopg2.connect(url, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cursor = conn.cursor()
    cursor.execute("CREATE_REPLICATION_SLOT bench_blocking TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT")
    cursor.start_replication(slot_name="bench_blocking", status_interval=1, options={
        "proto_version": PROTO_VERSION, "publication_names": PUBLICATION, "messages": "true"})
    decoded = 0
    announced: dict[str, int] = {}

    def consume(message):
        nonlocal decoded
        payload = message.payload
        if payload[0] == pgoutput.MESSAGE:
            decoded_message = pgoutput.read_message(payload)
            if decoded_message.transactional and decoded_message.prefix == PREFIX:
                decoded += 1
                execution_id, _, seq = decoded_message.content.decode().partition(":")
                announced[execution_id] = int(seq)
        elif payload[0] == pgoutput.COMMIT:
            cursor.send_feedback(flush_lsn=pgoutput.read_commit(payload).end_lsn)
            if decoded >= commits * per_commit:
                raise psycopg2.extras.StopReplication

    started, cpu = time.monotonic(), time.process_time()
    writer = threading.Thread(target=generate, args=(url, commits, per_commit))
    writer.start()
    with contextlib.suppress(psycopg2.extras.StopReplication):
        cursor.consume_stream(consume)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    writer.join()
    conn.close()
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=50_000)
    parser.add_argument("--per-commit", type=int, default=1)
    arguments = parser.parse_args()
    server = start_embedded_postgres(Path(tempfile.mkdtemp(prefix="wal-cost-")), throwaway=True)
    try:
        url = server.get_uri()
        with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cursor:
            conn.autocommit = True
            cursor.execute(f"CREATE PUBLICATION {PUBLICATION}")
        commits, per_commit = arguments.commits, arguments.per_commit
        ways = (("wal_listener on uvloop", lambda: uvloop.run(with_wal_listener(url, commits, per_commit))),
                ("consume_stream, blocking", lambda: with_consume_stream(url, commits, per_commit)))
        for name, run in ways + ways[::-1]:  # each twice, in both orders: the server warms up
            elapsed, cpu = run()
            print(f"{name}: {commits:,} commits x {per_commit} in {elapsed:.2f} s; consumer CPU {cpu:.2f} s "
                  f"= {1e6 * cpu / commits:.1f} us per commit ({cpu / elapsed:.0%} of a core)", flush=True)
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
