"""A streaming hot standby of the bench's embedded PostgreSQL, for the `service_standby` design:
built with the wheel's own pg_basebackup -R, started with hot_standby_feedback on (decoding on a
standby needs the primary to keep the catalog rows its slots read). The same recipe as
tests/standby.py, kept here so the bench does not import the test suite."""

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2

from service.dev.embedded_db import psql_binary

# The longest Unix socket path the kernel takes (sun_path is 108 bytes with its terminating zero).
MAX_SOCKET_PATH = 107
SLOT = "bench_standby"


class StandbyFailed(RuntimeError):
    """pg_basebackup or pg_ctl failed, or the standby did not catch up; the message says which."""


class Standby:
    """Build with build(), then start(); url(database) for its databases; remove() stops it, drops
    its physical slot on the primary (which would otherwise keep WAL) and deletes its data."""

    def __init__(self, primary_url: str, data_dir: Path, port: int):
        self.primary_url = primary_url
        self.pgdata = Path(data_dir) / "pgdata"
        self.port = port
        fits = len(str(self.pgdata / f".s.PGSQL.{port}")) <= MAX_SOCKET_PATH
        self.socket_dir = self.pgdata if fits else Path(tempfile.mkdtemp(prefix="bench-standby-"))
        self._bin = psql_binary().parent
        self._run_as = _server_user(primary_url)
        self.started = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def build(self) -> None:
        """Copy the primary, its settings included, and configure the copy to follow it."""
        self.pgdata.mkdir(parents=True)
        for path in (self.pgdata.parent, self.socket_dir):
            path.chmod(0o755)  # the server's user (not root, when the bench runs as root) must get in
        if self._run_as is not None:
            for path in (self.pgdata, self.socket_dir):
                shutil.chown(path, self._run_as)
        self.pgdata.chmod(0o700)
        self._run("pg_basebackup", "--pgdata", str(self.pgdata), "--dbname", self.primary_url,
                  "--write-recovery-conf", "--wal-method=stream", "--checkpoint=fast",
                  "--create-slot", "--slot", SLOT)

    def start(self, timeout: float = 60) -> None:
        """Start it and wait until it has replayed everything the primary had when asked."""
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-l", str(self.pgdata / "log"),
                  "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-o", f"-p {self.port}",
                  "-o", "-c hot_standby_feedback=on", "start")
        self.started = True
        with contextlib.closing(psycopg2.connect(self.primary_url)) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()")
            target = cur.fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.closing(psycopg2.connect(self.url())) as conn, conn.cursor() as cur:
                cur.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))
                if cur.fetchone()[0]:
                    return
            time.sleep(0.1)
        raise StandbyFailed(f"the standby did not replay up to {target} within {timeout} s")

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return None

    def remove(self) -> None:
        if self.started:
            with contextlib.suppress(StandbyFailed):
                self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", "fast", "stop")
            self.started = False
        with contextlib.suppress(psycopg2.Error), \
                contextlib.closing(psycopg2.connect(self.primary_url)) as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s", (SLOT,))
        shutil.rmtree(self.pgdata, ignore_errors=True)
        if self.socket_dir != self.pgdata:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        # Output to a file: the server pg_ctl starts keeps inherited pipes open and would hang a capture.
        with tempfile.TemporaryFile() as output:
            result = subprocess.run([str(self._bin / program), *args], stdout=output, stderr=output,
                                    user=self._run_as, timeout=120)
            if result.returncode:
                output.seek(0)
                raise StandbyFailed(f"{program} {' '.join(args)}: {output.read().decode(errors='replace')}")


def _server_user(primary_url: str) -> str | None:
    """The user the primary runs as (PostgreSQL refuses root, so the wheel then uses a user of its
    own): the standby's files must be that user's too."""
    if os.geteuid() != 0:
        return None
    with contextlib.closing(psycopg2.connect(primary_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('data_directory')")
        data_directory = cur.fetchone()[0]
    return pwd.getpwuid(os.stat(data_directory).st_uid).pw_name
