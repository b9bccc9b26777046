"""A worker writing plain SQL: one connection, updates paced to a rate, each commit timestamped.

Driven by JSON lines on stdin (see protocol.py). Each UPDATE runs in autocommit, so the time
just after execute() returns is the time its COMMIT returned; `message` carries a unique tag.
"""

import json
import sys
import time

import psycopg2

from .protocol import reply_channel

UPDATE = "UPDATE executions SET message = %s, progress = %s WHERE id = %s RETURNING seq"


def run(conn, ids: list[str], rate: float, duration: float, max_count: int, tag: str, out: str,
        start_at: float = 0.0) -> dict:
    """Round-robin over ids at `rate` updates/s (0: as fast as the database commits)."""
    records = []
    cur = conn.cursor()
    while start_at and time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    cpu0 = time.process_time()
    started = time.time()
    deadline = started + duration
    n = 0
    while n < max_count:
        if rate:
            due = started + n / rate
            now = time.time()
            if due > now:
                time.sleep(due - now)
        before = time.time()
        if before >= deadline:
            break
        execution_id = ids[n % len(ids)]
        label = f"{tag}-{n}"
        cur.execute(UPDATE, (label, n % 100, execution_id))
        row = cur.fetchone()
        committed = time.time()
        if row is not None:
            records.append((execution_id, row[0], label, committed, committed - before))
        n += 1
    elapsed = time.time() - started
    with open(out, "w") as f:
        json.dump(records, f)
    return {"count": len(records), "seconds": elapsed, "per_s": len(records) / elapsed if elapsed else 0.0,
            "cpu_s": time.process_time() - cpu0, "out": out}


def main() -> None:
    reply = reply_channel()
    dsn = sys.argv[1]
    conn = psycopg2.connect(dsn, application_name="bench writer")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend_pid = cur.fetchone()[0]
    reply({"ready": True, "backend_pid": backend_pid})
    for line in sys.stdin:
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        if name == "exit":
            break
        try:
            if name == "run":
                reply(run(conn, **cmd))
            else:
                reply({"error": f"unknown command {name}"})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
    conn.close()


if __name__ == "__main__":
    main()
