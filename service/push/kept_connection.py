"""What both change sources do with their one connection: keep it.

Open it, say so (`connected`, which /readyz and systemd's READY wait for), call `on_connect` so the
hub re-reads what changed while nobody was listening, then pump batches of {execution id: seq} to
`on_batch` until the connection fails; then open it again after a backoff with jitter. A listener
(pg_listener, wal_listener) says how to open and start its connection, and how to pump it.
"""

import asyncio
import random
from collections.abc import Awaitable, Callable

import psycopg2
import structlog

from .backlog import Backlog
from .read_pace import PAUSE_SECONDS, ReadPace


class ServerSetupRefused(Exception):
    """The server answers, but is set up so that this connection must not serve it: said in the
    log as an error naming what to change, then tried again after the backoff, like a lost one."""


class KeptConnection:
    # Set by each listener: the prefix of its log events, and its module's logger.
    log_prefix: str
    log: structlog.stdlib.BoundLogger

    def __init__(
        self,
        dsn: str,
        on_batch: Callable[[dict[str, int]], Awaitable[None]],
        on_connect: Callable[[], Awaitable[object]],
        *,
        ping_seconds: float,
        backoff_min: float,
        backoff_max: float,
        coalesce_seconds: float = 0.0,
    ):
        self._dsn = dsn
        self._on_batch = on_batch
        self._on_connect = on_connect
        self._ping_seconds = ping_seconds
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._coalesce_seconds = coalesce_seconds
        self._connected = asyncio.Event()
        # Read at scrape time: what the metrics export.
        self.reconnects = 0
        self.gathered_batches = 0
        self.read_pauses = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        delay = self._backoff_min
        refused = ""  # what the last refusal said
        while True:
            conn = None
            try:
                conn = await self._connect()
                stream = await self._start(conn)
                self._connected.set()
                refused = ""
                self.log.info(f"{self.log_prefix}.connected", reconnects=self.reconnects, **self._described())
                delay = self._backoff_min
                await self._on_connect()
                await self._pump(stream)
            except ServerSetupRefused as exc:
                # An error once per setup found wrong; its retries meanwhile at debug.
                said, refused = refused, str(exc)
                say = self.log.debug if said == refused else self.log.error
                say(f"{self.log_prefix}.refused", detail=refused)
            except (psycopg2.Error, OSError, asyncio.TimeoutError) as exc:
                self.log.warning(f"{self.log_prefix}.disconnected", error=type(exc).__name__,
                                 detail=str(exc)[:200])
            finally:
                self._connected.clear()
                self._forget_partial()
                if conn is not None:
                    conn.close()
            self.reconnects += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, self._backoff_max)

    async def _hand_over_batch(self, announced: dict[str, int]) -> None:
        try:
            await self._on_batch(announced)
        except Exception:  # a failed read must not kill the listener; the reconcile retries
            self.log.exception(f"{self.log_prefix}.batch_failed", executions=len(announced))

    # When to read: both listeners wait the same ways ----------------------------------------------

    async def _gathered(self, backlog: Backlog) -> bool:
        """Waits `coalesce_seconds` before the next batch once the consumer has been behind for a
        while (push/backlog.py); whether it did."""
        if not (self._coalesce_seconds and backlog.sustained):
            return False
        self.gathered_batches += 1
        await asyncio.sleep(self._coalesce_seconds)
        return True

    async def _paused(self, pace: ReadPace) -> bool:
        """Sleeps a millisecond instead of waiting for the socket while what it reads keeps coming
        thick (push/read_pace.py); whether it did."""
        if not pace.pause():
            return False
        self.read_pauses += 1
        await asyncio.sleep(PAUSE_SECONDS)
        return True

    async def audit(self) -> None:
        """Asked every reconcile period: a check of what may change while the connection is kept."""

    # What each listener says --------------------------------------------------------------------

    async def _connect(self):
        """A new connection; closed by run() once it fails, whatever failed."""
        raise NotImplementedError

    async def _start(self, conn):
        """Ready the connection to deliver changes; what `_pump` reads from."""
        raise NotImplementedError

    async def _pump(self, stream) -> None:
        """Hands over batches until the connection fails (raising psycopg2.Error, OSError or
        TimeoutError)."""
        raise NotImplementedError

    def _described(self) -> dict:
        """What the connected log line says beyond the reconnect count."""
        return {}

    def _forget_partial(self) -> None:
        """After a lost connection: drop what was read but not handed over (read again anyway)."""
