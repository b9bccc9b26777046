"""One socket's bounded send queue and the one task that writes it, so no socket waits on another."""

import asyncio
import collections

import structlog
from aiohttp import web
from aiohttp.http_websocket import WSCloseCode

from .messages import Event

log = structlog.get_logger(__name__)

CLOSE_FINISHED = WSCloseCode.OK
CLOSE_TOO_SLOW = WSCloseCode.TRY_AGAIN_LATER


class SocketOutbox:
    """Events queued for one WebSocket.

    Per execution, only events newer than the last accepted `seq` get in, so a snapshot and a
    live change that carry the same state are sent once. A queued `status` that is still waiting
    is replaced by a newer one (latest wins); every other message keeps its place. A full queue,
    or a frame that cannot leave within the send timeout, closes the socket with 1013.
    """

    def __init__(self, ws: web.WebSocketResponse, *, capacity: int, send_timeout: float,
                 close_on_terminal: bool = True):
        self._ws = ws
        self._capacity = capacity
        self._send_timeout = send_timeout
        self._close_on_terminal = close_on_terminal
        self._queue: collections.deque[Event] = collections.deque()
        self._wakeup = asyncio.Event()
        self._cursors: dict[str, int] = {}
        self._close: tuple[int, str] | None = None

    @property
    def closing(self) -> bool:
        return self._close is not None

    def offer(self, event: Event) -> bool:
        """Queue an event without waiting; False when it was not needed or the socket is closing."""
        if self._close is not None or event.seq <= self._cursors.get(event.execution_id, 0):
            return False
        self._cursors[event.execution_id] = event.seq
        last = self._queue[-1] if self._queue else None
        if (event.kind == "status" and last is not None and last.kind == "status"
                and last.execution_id == event.execution_id):
            self._queue[-1] = event
        elif not self._append(event):
            return False
        self._wakeup.set()
        return True

    def offer_snapshot(self, execution_id: str, events: list[Event], upto: int) -> None:
        """A fresh view of one execution, sent in the order given and standing for everything up
        to `upto`; live events of it already queued follow it if newer."""
        queued = self._take_queued(execution_id)
        for event in events:
            if not self._append(event):
                return
        self._cursors[execution_id] = upto
        self._reoffer(queued)

    def offer_catch_up(self, execution_id: str, events: list[Event], after: int) -> None:
        """Every event after `after`, in seq order, ahead of live events already queued."""
        queued = self._take_queued(execution_id)
        self._cursors[execution_id] = after
        self._reoffer([*events, *queued])

    def _take_queued(self, execution_id: str) -> list[Event]:
        queued = [e for e in self._queue if e.execution_id == execution_id]
        if queued:
            self._queue = collections.deque(e for e in self._queue if e.execution_id != execution_id)
        return queued

    def _reoffer(self, events: list[Event]) -> None:
        for event in events:
            self.offer(event)
        self._wakeup.set()

    def offer_feed(self, event: Event) -> None:
        """A status from a feed subscription: deduplicated only against an execution this socket
        also watches (a cursor per fed execution would grow without bound)."""
        if event.execution_id in self._cursors:
            self.offer(event)
        elif self._close is None and self._append(event):
            self._wakeup.set()

    def forget(self, execution_id: str) -> None:
        """Unsubscribed: drop its cursor, so a flood of subscribe/unsubscribe holds no memory."""
        self._cursors.pop(execution_id, None)

    def send_text(self, text: str) -> None:
        """Queue a reply to the client (pong, error): never merged, never deduplicated."""
        if self._close is None and self._append(Event("", 0, "reply", text)):
            self._wakeup.set()

    def close(self, code: int, reason: str, *, drain: bool) -> None:
        """Close the socket once the queue is sent (drain) or at once, dropping what is queued."""
        if self._close is not None:
            return
        self._close = (code, reason)
        if not drain:
            self._queue.clear()
        self._wakeup.set()

    def _append(self, event: Event) -> bool:
        if len(self._queue) >= self._capacity:
            log.info("ws.too_slow", reason="queue_full", queued=len(self._queue))
            self.close(CLOSE_TOO_SLOW, "too slow", drain=False)
            return False
        self._queue.append(event)
        return True

    def peer_gone(self) -> None:
        """The client closed or vanished: the writer stops without a close of its own."""
        if self._close is None:
            self._close = (0, "")
        self._queue.clear()
        self._wakeup.set()

    async def run(self) -> tuple[int, str] | None:
        """The writer: send queued events in order. Returns the close to send, None if the peer is gone."""
        while True:
            if not self._queue:
                if self._close is not None:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            event = self._queue.popleft()
            try:
                async with asyncio.timeout(self._send_timeout):
                    await self._ws.send_str(event.text)
            except TimeoutError:
                log.info("ws.too_slow", reason="send_timeout")
                self.close(CLOSE_TOO_SLOW, "too slow", drain=False)
                break
            except ConnectionError:
                self.peer_gone()
                break
            if event.terminal and self._close_on_terminal:
                self.close(CLOSE_FINISHED, "finished", drain=False)
        return None if self._close == (0, "") else self._close

    async def close_socket(self, code: int, reason: str) -> None:
        """The closing handshake, bounded: a peer that stopped reading cannot take the close frame
        either, so after the send timeout the connection is dropped."""
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError):
            pass
