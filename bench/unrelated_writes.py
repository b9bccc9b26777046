"""What each change source costs while other tables are written: the walsender decodes every commit
in the cluster, and sends the wal listener a keepalive after each one it has caught up with;
NOTIFY costs nothing for commits that do not announce.

    .venv/bin/python -m bench.unrelated_writes [--rounds 3] [--seconds 10] [--clients 4]
                                               [--service-tree PATH]

pgbench updates a table of its own (no trigger of ours) as fast as it can, with no service running,
with a `serve` process on notify, and with one on wal; each round takes the three in a different
order. Reported per run and as medians: the writers' commits/s, and the service's and the
walsender's CPU in % of a core. --service-tree runs `serve` from another checkout (as in
bench.harness), to compare versions.
"""

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import psycopg2

from service.db.migrations import apply_migrations
from service.dev.embedded_db import start_embedded_postgres
from service.push.wal_listener import APPLICATION_NAME as WAL_LISTENER_NAME

from .harness import REPO_DIR, SECRET, free_port, service_process
from .trigger_cost import psql_binary

SOURCES = ("none", "notify", "wal")
ROWS = 1000
SCRIPT = f"\\set id random(1, {ROWS})\nUPDATE unrelated SET n = n + 1 WHERE id = :id;\n"


def cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


@contextlib.contextmanager
def serving(url: str, source: str, service_tree: Path):
    """A `serve` process on `source`, ready; yields it and its walsender (None for notify)."""
    port = free_port()
    cwd, env = service_process(service_tree)
    env.update(DATABASE_URL=url, JWT_SECRET=SECRET, CHANGE_SOURCE=source, PORT=str(port), HOST="127.0.0.1",
               LOG_LEVEL="warning")
    env.pop("PUSH_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"serve ({source}) did not become ready")
            time.sleep(0.1)
        walsender = None
        if source == "wal":
            with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT pid FROM pg_stat_replication WHERE application_name = %s",
                               (WAL_LISTENER_NAME,))
                walsender = psutil.Process(cursor.fetchone()[0])
        yield psutil.Process(proc.pid), walsender
    finally:
        proc.terminate()
        proc.wait(30)


def run(url: str, script: Path, source: str, clients: int, seconds: int, service_tree: Path) -> dict:
    with contextlib.ExitStack() as stack:
        server, walsender = (None, None) if source == "none" else stack.enter_context(
            serving(url, source, service_tree))
        time.sleep(1)
        before = cpu_seconds(server), cpu_seconds(walsender)
        started = time.monotonic()
        out = subprocess.run(
            [str(psql_binary().parent / "pgbench"), url, "-n", "-M", "prepared", "-c", str(clients),
             "-j", str(clients), "-T", str(seconds), "-f", str(script)],
            capture_output=True, text=True, check=True).stdout
        elapsed = time.monotonic() - started
        service_cpu = (cpu_seconds(server) - before[0]) / elapsed * 100
        walsender_cpu = (cpu_seconds(walsender) - before[1]) / elapsed * 100
    tps = float(next(line for line in out.splitlines() if line.startswith("tps = ")).split()[2])
    return {"commits_per_s": round(tps), "service_cpu": round(service_cpu, 1),
            "walsender_cpu": round(walsender_cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.unrelated_writes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="each pgbench run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--service-tree", type=Path, default=REPO_DIR)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_embedded_postgres(Path(tmp), throwaway=True)
        try:
            url = server.get_uri()
            asyncio.run(apply_migrations(url))
            with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cursor:
                conn.autocommit = True
                cursor.execute("CREATE TABLE unrelated (id int PRIMARY KEY, n int NOT NULL)")
                cursor.execute("INSERT INTO unrelated SELECT g, 0 FROM generate_series(1, %s) g", (ROWS,))
            script = Path(tmp) / "unrelated.sql"
            script.write_text(SCRIPT)
            results = {source: [] for source in SOURCES}
            for r in range(args.rounds):
                for source in SOURCES[r % 3:] + SOURCES[:r % 3]:
                    result = run(url, script, source, args.clients, args.seconds, args.service_tree)
                    results[source].append(result)
                    print(f"round {r + 1} {source:6s} {result}", flush=True)
        finally:
            server.cleanup()
    print("\nmedians: source, commits/s, service CPU %, walsender CPU %")
    for source, runs in results.items():
        print(f"  {source:6s}", *(statistics.median(run[key] for run in runs)
                                  for key in ("commits_per_s", "service_cpu", "walsender_cpu")))


if __name__ == "__main__":
    main()
