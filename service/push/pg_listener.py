"""The process's one LISTEN connection: notifications in, batches of changed executions out."""

import asyncio
import random
from collections.abc import Awaitable, Callable

import psycopg2
import structlog

from ..db import pg_async
from ..db.state_machine import NOTIFY_CHANNEL
from .backlog import Backlog

log = structlog.get_logger(__name__)

CHANNEL = NOTIFY_CHANNEL  # a constant: LISTEN is never built from outside text
APPLICATION_NAME = "aiagent-live listener"  # how operators (and tests) find it in pg_stat_activity


def parse_payload(payload: str) -> tuple[str, int] | None:
    """'<execution id>:<seq>' as the trigger sends it; None for anything else."""
    execution_id, _, seq = payload.partition(":")
    try:
        return execution_id, int(seq)
    except ValueError:
        return None


class PgListener:
    """Keeps a dedicated LISTEN connection alive and hands each drained batch to `on_batch`.

    Reconnects with exponential backoff and jitter; after every (re)connect it calls `on_connect`
    so consumers re-read what changed while nobody was listening. An idle connection is pinged,
    so one that died without an error is noticed and replaced.

    Each batch is one read for the consumer, and a read costs about the same for one change as for
    fifty. While changes come slower than batches are handled, each goes out at once. When they
    keep coming faster (the listener has been behind for a while, push/backlog.py), it gathers
    them for `coalesce_seconds` before handing over the next: far fewer reads for the database
    (whose CPU the committing writers need), a few milliseconds more on the way.
    """

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
        self.reconnects = 0
        self.notifications = 0
        self.gathered_batches = 0

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
        while True:
            conn = None
            try:
                conn = await pg_async.connect(self._dsn, timeout=self._ping_seconds,
                                              application_name=APPLICATION_NAME)
                await pg_async.execute(conn, f"LISTEN {CHANNEL}", timeout=self._ping_seconds)
                self._connected.set()
                log.info("listener.connected", reconnects=self.reconnects)
                delay = self._backoff_min
                await self._on_connect()
                await self._pump(conn)
            except (psycopg2.Error, OSError, asyncio.TimeoutError) as exc:
                log.warning("listener.disconnected", error=type(exc).__name__, detail=str(exc)[:200])
            finally:
                self._connected.clear()
                if conn is not None:
                    conn.close()
            self.reconnects += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, self._backoff_max)

    async def _pump(self, conn) -> None:
        """The socket is read only when the pump asks (pg_async), so the notifications that arrive
        while a batch is handled, or while it gathers, are read in one go."""
        backlog = Backlog()
        while True:
            if not conn.notifies:
                try:
                    async with asyncio.timeout(self._ping_seconds):
                        await pg_async.ready_to(conn.fileno(), write=False)
                except TimeoutError:  # quiet for a while: make sure the connection still answers
                    await pg_async.execute(conn, "SELECT 1", timeout=self._ping_seconds)
                    continue
                conn.poll()  # reads what arrived; raises when the connection is gone
            elif self._coalesce_seconds and backlog.sustained:
                self.gathered_batches += 1
                await asyncio.sleep(self._coalesce_seconds)
                conn.poll()
            batch, conn.notifies[:] = conn.notifies[:], []
            if not batch:  # what was read was not a notification (a notice, a partial message)
                continue
            self.notifications += len(batch)
            announced: dict[str, int] = {}
            for notification in batch:
                parsed = parse_payload(notification.payload)
                if parsed is not None:
                    execution_id, seq = parsed
                    announced[execution_id] = max(seq, announced.get(execution_id, 0))
            try:
                await self._on_batch(announced)
            except Exception:  # a failed read must not kill the listener; the reconcile retries
                log.exception("listener.batch_failed", executions=len(announced))
            conn.poll()  # what came in while the batch was handled
            backlog.batch_handled(next_waiting=bool(conn.notifies))
