"""What the database's triggers cost the writers, before and after a change to migrations/.

    .venv/bin/python -m bench.trigger_cost [--before DIR] [--rounds N] [--seconds S] [--clients C]

Starts a throwaway embedded PostgreSQL with two databases: `before`, built from the migration files
in DIR as the earlier releases' runner applied them (default: tests/fixtures/releases/ccdb67b, the
last release before migrations/functions/), and `after`, by today's runner. Each holds 500 running
executions with one node. Then, alternating between the two, round after round:

- per row: one statement writing all 500 executions (a progress update, a log line, a node change)
  in a transaction that is rolled back: the triggers' own cost, as the backend's CPU time (from
  /proc/PID/schedstat, so waiting for a core does not count) and as elapsed time;
- per commit: pgbench, each client writing its own execution in single-row transactions, as a worker
  does: transactions per second, and the whole server's CPU time per transaction.
Per-commit figures are medians over the rounds.
"""

import argparse
import asyncio
import contextlib
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import psycopg2

from service.db.migrations import apply_migrations
from service.dev.embedded_db import psql_binary, start_embedded_postgres

REPO_DIR = Path(__file__).resolve().parents[1]
EXECUTIONS = 500
PER_ROW_REPEATS = 10  # per round: the per-row statements take a tenth of a second
SETUP = f"""
    INSERT INTO workflows (id, owner, name, nodes)
    VALUES ('00000000-0000-0000-0000-0000000000ff', 'bench', 'bench', '[{{"id": "n1"}}]');
    INSERT INTO executions (id, workflow_id, owner)
    SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid,
           '00000000-0000-0000-0000-0000000000ff', 'bench'
    FROM generate_series(0, {EXECUTIONS - 1}) i;
    UPDATE executions SET status = 'running';
"""
NEXT_NODE_STATUS = "CASE status WHEN 'running' THEN 'failed' ELSE 'running' END"  # a retry loop
PER_ROW = {
    "progress update": "UPDATE executions SET progress = (progress + 1) % 101",
    "log insert": "INSERT INTO execution_logs (execution_id, message) SELECT id, 'a line' FROM executions",
    "node change": f"UPDATE execution_nodes SET status = {NEXT_NODE_STATUS}",
}
# pgbench scripts: client N writes execution N (progress) or N + 100 (log lines, node changes).
OWN_EXECUTION = "('00000000-0000-0000-0000-' || lpad((:client_id + {offset})::text, 12, '0'))::uuid"
PER_COMMIT = {
    "progress update": f"UPDATE executions SET progress = (progress + 1) % 101 WHERE id = {OWN_EXECUTION}",
    "log insert": f"INSERT INTO execution_logs (execution_id, message) VALUES ({OWN_EXECUTION}, 'a line')",
    "node change": f"UPDATE execution_nodes SET status = {NEXT_NODE_STATUS}"
                   f" WHERE execution_id = {OWN_EXECUTION}",
}
OFFSETS = {"progress update": 0, "log insert": 100, "node change": 200}


def build_before(url: str, directory: Path) -> None:
    """As the earlier releases' runner did: each file in its own transaction, recorded by name."""
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL"
                    " DEFAULT now())")
        for path in sorted(directory.glob("[0-9]*.sql")):
            cur.execute(path.read_text())
            cur.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
            conn.commit()


def cpu_seconds(pid: int) -> float:
    """The time a process has run on a CPU (not waited for one): steadier than the clock on a
    machine that others share."""
    with open(f"/proc/{pid}/schedstat") as file:
        return int(file.read().split()[0]) / 1e9


def per_row_microseconds(conn, statement: str) -> tuple[float, float]:
    """The backend's CPU time and the elapsed time per row of `statement`, in a rolled-back transaction."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        [(backend,)] = cur.fetchall()
        cpu, start = cpu_seconds(backend), time.perf_counter()
        cur.execute(statement)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds(backend) - cpu
        assert cur.rowcount == EXECUTIONS, (statement, cur.rowcount)
    conn.rollback()
    return cpu / EXECUTIONS * 1e6, elapsed / EXECUTIONS * 1e6


def server_cpu_seconds(postmaster: psutil.Process) -> float:
    """CPU time of the whole server: the postmaster, its live children, and the backends it has
    reaped (pgbench's connections end with the run)."""
    times = postmaster.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in postmaster.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return total


def pgbench(url: str, script: str, clients: int, seconds: int,
            postmaster: psutil.Process) -> tuple[float, float]:
    """Transactions per second, and the server's CPU time per transaction in us."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as file:
        file.write(script + ";\n")
        file.flush()
        command = [str(psql_binary().parent / "pgbench"), url, "-n", "-M", "prepared", "-c", str(clients),
                   "-j", str(clients), "-T", str(seconds), "-f", file.name]
        cpu = server_cpu_seconds(postmaster)
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        time.sleep(0.5)  # until the postmaster has reaped the run's backends
        cpu = server_cpu_seconds(postmaster) - cpu
    tps = float(re.search(r"^tps = ([0-9.]+)", out, re.MULTILINE).group(1))
    return tps, cpu / (tps * seconds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trigger_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, default=REPO_DIR / "tests/fixtures/releases/ccdb67b")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10, help="each pgbench run")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data_dir:
        server = start_embedded_postgres(data_dir, throwaway=True)
        admin = psycopg2.connect(server.get_uri())
        admin.autocommit = True
        urls = {}
        for name in ("before", "after"):
            admin.cursor().execute(f"CREATE DATABASE {name}")
            urls[name] = server.get_uri(database=name)
        build_before(urls["before"], args.before)
        asyncio.run(apply_migrations(urls["after"]))
        for url in urls.values():
            with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
                cur.execute(SETUP)
                conn.commit()
        conns = {name: psycopg2.connect(url) for name, url in urls.items()}
        with conns["before"].cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
            postmaster = psutil.Process(cur.fetchone()[0]).parent()
        conns["before"].rollback()

        per_row = {(work, name): [] for work in PER_ROW for name in urls}
        per_commit = {(work, name): [] for work in PER_COMMIT for name in urls}
        for _ in range(args.rounds):
            for _ in range(PER_ROW_REPEATS):
                for work, statement in PER_ROW.items():
                    for name in urls:
                        per_row[work, name].append(per_row_microseconds(conns[name], statement))
            for work, script in PER_COMMIT.items():
                for name, url in urls.items():
                    per_commit[work, name].append(pgbench(url, script.format(offset=OFFSETS[work]),
                                                          args.clients, args.seconds, postmaster))
        for conn in conns.values():
            conn.close()
        admin.close()
        server.cleanup()

    repeats = args.rounds * PER_ROW_REPEATS
    print(f"per row, us: the backend's CPU (min, median of {repeats}) and elapsed (min), before -> after:")
    for work in PER_ROW:
        (cpu_before, elapsed_before), (cpu_after, elapsed_after) = (
            list(zip(*per_row[work, name])) for name in urls)
        print(f"  {work:16} CPU {min(cpu_before):6.1f} -> {min(cpu_after):6.1f},"
              f" {statistics.median(cpu_before):6.1f} -> {statistics.median(cpu_after):6.1f};"
              f"  elapsed {min(elapsed_before):6.1f} -> {min(elapsed_after):6.1f}")
    print(f"per commit, {args.clients} clients (median of {args.rounds}), before -> after:")
    for work in PER_COMMIT:
        (tps_before, cpu_before), (tps_after, cpu_after) = (
            [statistics.median(values) for values in zip(*per_commit[work, name])] for name in urls)
        print(f"  {work:16} {tps_before:6.0f} -> {tps_after:6.0f} transactions/s,"
              f"  server CPU {cpu_before:5.0f} -> {cpu_after:5.0f} us per transaction")


if __name__ == "__main__":
    main()
