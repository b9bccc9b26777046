"""Which sockets watch which executions, and the one read per batch of changes that feeds them."""

import asyncio
import contextlib

import aiopg
import structlog

from . import repository
from .messages import Event, status_event
from .socket_outbox import SocketOutbox

log = structlog.get_logger(__name__)


class SubscriptionHub:
    """Turns "these executions changed" into one read, one encoding, and an offer to each socket.

    It never writes to a socket: offers go into each socket's bounded outbox, and that socket's
    own writer sends them.
    """

    def __init__(self, pool: aiopg.Pool):
        self._pool = pool
        self._watchers: dict[str, set[SocketOutbox]] = {}
        # Highest seq already offered to the watchers of each execution.
        self._published: dict[str, int] = {}
        self._emptied = asyncio.Event()

    @property
    def subscription_count(self) -> int:
        return sum(len(outboxes) for outboxes in self._watchers.values())

    @contextlib.contextmanager
    def subscription(self, execution_id: str, outbox: SocketOutbox):
        """Watch an execution for the duration of the block. Register before reading the snapshot."""
        self._watchers.setdefault(execution_id, set()).add(outbox)
        self._emptied.clear()
        try:
            yield
        finally:
            watchers = self._watchers.get(execution_id)
            if watchers is not None:
                watchers.discard(outbox)
                if not watchers:
                    del self._watchers[execution_id]
                    self._published.pop(execution_id, None)
                    if not self._watchers:
                        self._emptied.set()

    async def snapshot(self, execution_id: str, outbox: SocketOutbox) -> dict | None:
        """Read one execution now and offer it to a new socket (and to any watcher it is news to)."""
        row = await repository.get_execution(self._pool, execution_id)
        if row is not None:
            event = status_event(row)
            self._publish(event)
            outbox.offer(event)
        return row

    async def on_notified(self, announced: dict[str, int]) -> None:
        """The listener's batch: execution id -> highest seq announced. Reads only what is news."""
        stale = [
            execution_id for execution_id, seq in announced.items()
            if execution_id in self._watchers and seq > self._published.get(execution_id, 0)
        ]
        if stale:
            for row in await repository.get_executions(self._pool, stale):
                self._publish(status_event(row))

    async def reconcile(self) -> int:
        """Re-read every watched execution; returns how many had moved without being announced."""
        watched = list(self._watchers)
        if not watched:
            return 0
        seqs = await repository.get_execution_seqs(self._pool, watched)
        moved = [eid for eid, seq in seqs.items() if seq > self._published.get(eid, 0)]
        if moved:
            for row in await repository.get_executions(self._pool, moved):
                self._publish(status_event(row))
            log.info("hub.reconciled", moved=len(moved))
        return len(moved)

    def _publish(self, event: Event) -> None:
        watchers = self._watchers.get(event.execution_id)
        if not watchers or event.seq <= self._published.get(event.execution_id, 0):
            return
        self._published[event.execution_id] = event.seq
        for outbox in watchers:
            outbox.offer(event)

    def close_all(self, code: int, reason: str) -> None:
        """Server going away: every socket is closed after what it has queued."""
        for watchers in self._watchers.values():
            for outbox in watchers:
                outbox.close(code, reason, drain=True)

    async def wait_until_empty(self, timeout: float) -> bool:
        """After close_all: wait for the sockets to finish closing; False if some did not in time."""
        if not self._watchers:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._emptied.wait()
            return True
        except TimeoutError:
            return False
