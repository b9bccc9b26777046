"""Where an idle subscribed socket's memory goes: the service's app run in-process under tracemalloc.

    python -m bench.memory_probe [--sockets 2000]

Bench-only: it imports the service as a library and changes nothing in it. The figure is Python
heap per socket (tracemalloc), which is less than RSS growth (allocator slack, kernel buffers).
"""

import argparse
import asyncio
import contextlib
import tempfile
import tracemalloc

import psycopg2
import uvloop
from aiohttp import web

from service.app import create_app
from service.auth import issue_token
from service.config import Config
from service.db.migrations import apply_migrations
from service.dev.embedded_db import start_embedded_postgres
from service.logging_config import configure_logging

from .harness import SECRET, free_port
from .protocol import Child


async def probe(url: str, sockets: int, group_by: str) -> None:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("INSERT INTO workflows (owner, name) VALUES ('bench', 'probe') RETURNING id")
        wf = cur.fetchone()[0]
        cur.execute("INSERT INTO executions (workflow_id, owner) SELECT %s, 'bench' FROM generate_series(1, %s) "
                    "RETURNING id::text", (wf, sockets))
        ids = [r[0] for r in cur.fetchall()]
    port = free_port()
    runner = web.AppRunner(create_app(Config(database_url=url, jwt_secret=SECRET, log_level="warning",
                                            ws_max_sockets_per_subject=1_000_000)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    clients = Child("bench.loadgen_clients")
    try:
        await asyncio.sleep(1)
        tracemalloc.start(1)  # the allocating line is all the report groups by; more frames slow every allocation
        before = tracemalloc.take_snapshot()
        clients.send("connect", base=f"ws://127.0.0.1:{port}/api/v1/ws/executions/",
                     token=issue_token(SECRET, "bench", "admin", 3600), execution_ids=ids, concurrency=64,
                     timeout=60)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(None, clients.recv, 90)
        await asyncio.sleep(2)
        after = tracemalloc.take_snapshot()
        diff = after.compare_to(before, group_by)
        total = sum(d.size_diff for d in diff)
        print(f"{reply['with_snapshot']} sockets: {total / 1024 / sockets:.1f} KiB of Python heap per socket")
        for d in diff[:25]:
            frame = d.traceback[0] if group_by != "traceback" else d.traceback[-1]
            print(f"  {d.size_diff / sockets:8.0f} B/socket  {d.count_diff / sockets:6.2f} blocks/socket  "
                  f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}")
    finally:
        clients.send("close")
        await loop.run_in_executor(None, clients.recv, 60)
        clients.stop()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--group-by", default="lineno", choices=("lineno", "filename"))
    args = parser.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="aiagent-probe-") as data_dir:
        server = start_embedded_postgres(data_dir, throwaway=True)
        try:
            asyncio.run(apply_migrations(server.get_uri()))
            uvloop.run(probe(server.get_uri(), args.sockets, args.group_by))
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
