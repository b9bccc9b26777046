"""The process's one LISTEN connection: notifications in, batches of changed executions out."""

import asyncio

import structlog

from ..db import pg_async
from ..db.state_machine import NOTIFY_CHANNEL
from .backlog import Backlog
from .kept_connection import KeptConnection
from .read_pace import ReadPace

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


class PgListener(KeptConnection):
    """Keeps a dedicated LISTEN connection (kept_connection: reconnects with backoff and jitter,
    `on_connect` after each) and hands each drained batch to `on_batch`. An idle connection is
    pinged, so one that died without an error is noticed and replaced.

    Each batch is one read for the consumer, and a read costs about the same for one change as for
    fifty. While changes come slower than batches are handled, each goes out at once. When they
    keep coming faster (the listener has been behind for a while, push/backlog.py), it gathers
    them for `coalesce_seconds` before handing over the next: far fewer reads for the database
    (whose CPU the committing writers need), a few milliseconds more on the way. While they keep
    coming thick but it keeps up, it reads about once a millisecond (push/read_pace.py).
    """

    log_prefix = "listener"
    log = log

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.notifications = 0

    async def _connect(self):
        return await pg_async.connect(self._dsn, timeout=self._ping_seconds,
                                      application_name=APPLICATION_NAME)

    async def _start(self, conn):
        await pg_async.execute(conn, f"LISTEN {CHANNEL}", timeout=self._ping_seconds)
        return conn

    async def _pump(self, conn) -> None:
        """The socket is read only when the pump asks (pg_async), so the notifications that arrive
        while a batch is handled, or while it gathers, are read in one go."""
        backlog = Backlog()
        pace = ReadPace()
        while True:
            if not conn.notifies:
                if not await self._paused(pace):
                    try:
                        async with asyncio.timeout(self._ping_seconds):
                            await pg_async.ready_to(conn.fileno(), write=False)
                    except TimeoutError:  # quiet for a while: make sure the connection still answers
                        await pg_async.execute(conn, "SELECT 1", timeout=self._ping_seconds)
                        continue
                conn.poll()  # reads what arrived; raises when the connection is gone
                pace.read(found=bool(conn.notifies))
            elif await self._gathered(backlog):
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
            await self._hand_over_batch(announced)
            conn.poll()  # what came in while the batch was handled
            backlog.batch_handled(next_waiting=bool(conn.notifies))
