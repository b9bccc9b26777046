"""What each change source costs while other tables are written: the walsender reads the whole
cluster's WAL and sends the wal listener a keepalive each time it has caught up; NOTIFY costs
nothing for commits that do not announce.

    .venv/bin/python -m bench.unrelated_writes [--rounds 3] [--seconds 10] [--clients 4]
                                               [--service-tree PATH]

pgbench updates a table of its own (no trigger of ours) as fast as it can, with no service running,
with a `serve` process on notify, and with one on wal; each round takes the three in a different
order. The database and the servers are the bench's own (harness.Database, harness.Server, in
their production configuration). Reported per run and as medians: the writers' commits/s, and
the service's and its walsender's CPU in % of a core. --service-tree runs `serve` from another
checkout, to compare versions.
"""

import argparse
import contextlib
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import psycopg2

from service.push.wal_listener import APPLICATION_NAME as WAL_LISTENER_NAME

from .harness import REPO_DIR, Database, Server
from .trigger_cost import psql_binary

# Each source and the bench design that serves it ("none": pgbench alone, on notify's database).
DESIGNS = {"none": "service", "notify": "service", "wal": "service_wal"}
ROWS = 1000
SCRIPT = f"\\set id random(1, {ROWS})\nUPDATE unrelated SET n = n + 1 WHERE id = :id;\n"


def cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


def run(db: Database, workdir: Path, source: str, clients: int, seconds: int, service_tree: Path) -> dict:
    design = DESIGNS[source]
    server = None if source == "none" else Server(design, db, workdir / f"{design}.log", service_tree)
    try:
        walsender = (psutil.Process(db.walsender_pids(WAL_LISTENER_NAME)[0])
                     if source == "wal" else None)
        service = server.ps if server else None
        time.sleep(1)
        before = cpu_seconds(service), cpu_seconds(walsender)
        started = time.monotonic()
        out = subprocess.run(
            [str(psql_binary().parent / "pgbench"), db.urls[design], "-n", "-M", "prepared",
             "-c", str(clients), "-j", str(clients), "-T", str(seconds),
             "-f", str(workdir / "unrelated.sql")],
            capture_output=True, text=True, check=True).stdout
        elapsed = time.monotonic() - started
        service_cpu = (cpu_seconds(service) - before[0]) / elapsed * 100
        walsender_cpu = (cpu_seconds(walsender) - before[1]) / elapsed * 100
    finally:
        if server is not None:
            server.stop()
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
    sources = tuple(DESIGNS)
    results = {source: [] for source in sources}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        db = Database(workdir / "pg", sorted(set(DESIGNS.values())), args.service_tree)
        try:
            for url in db.urls.values():
                with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cursor:
                    conn.autocommit = True
                    cursor.execute("CREATE TABLE unrelated (id int PRIMARY KEY, n int NOT NULL)")
                    cursor.execute("INSERT INTO unrelated SELECT g, 0 FROM generate_series(1, %s) g", (ROWS,))
            (workdir / "unrelated.sql").write_text(SCRIPT)
            for r in range(args.rounds):
                for source in sources[r % 3:] + sources[:r % 3]:
                    result = run(db, workdir, source, args.clients, args.seconds, args.service_tree)
                    results[source].append(result)
                    print(f"round {r + 1} {source:6s} {result}", flush=True)
        finally:
            db.close()
    print("\nmedians: source, commits/s, service CPU %, walsender CPU %")
    for source, runs in results.items():
        print(f"  {source:6s}", *(statistics.median(run[key] for run in runs)
                                  for key in ("commits_per_s", "service_cpu", "walsender_cpu")))


if __name__ == "__main__":
    main()
