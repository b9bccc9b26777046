"""Every open socket and event stream, by its outbox, whether it watches anything or not: the
heartbeat pings them, and a shutdown tells each to go away and waits for it to finish closing."""

import asyncio
from collections.abc import Iterator

from .socket_outbox import SocketOutbox


class OpenConnections:
    def __init__(self) -> None:
        self._outboxes: set[SocketOutbox] = set()
        self._emptied = asyncio.Event()
        self._emptied.set()
        # The close asked of all (code, reason), once a shutdown has begun: a connection that
        # joins later (its handshake was under way) gets it at once.
        self._closing: tuple[int, str] | None = None

    def __len__(self) -> int:
        return len(self._outboxes)

    def __iter__(self) -> Iterator[SocketOutbox]:
        return iter(list(self._outboxes))  # a copy: connections end while a round goes over them

    def add(self, outbox: SocketOutbox) -> None:
        self._outboxes.add(outbox)
        self._emptied.clear()
        if self._closing is not None:
            outbox.close(*self._closing, drain=True)

    def discard(self, outbox: SocketOutbox) -> None:
        """Once its handler is done with it: its closing handshake is over."""
        self._outboxes.discard(outbox)
        if not self._outboxes:
            self._emptied.set()

    def close_all(self, code: int, reason: str) -> None:
        """Server going away: every one is closed after what it has queued, and every one that
        opens from now on."""
        self._closing = (code, reason)
        for outbox in self:
            outbox.close(code, reason, drain=True)

    async def wait_until_empty(self) -> None:
        """After close_all: until every one has finished closing (the shutdown bounds the wait)."""
        await self._emptied.wait()
