"""One socket's bounded send queue: written at once while the socket keeps up, through a writer
task of its own only while it does not, so no socket waits on another."""

import asyncio
import collections
import operator
from collections.abc import KeysView

import structlog
from aiohttp import WSCloseCode

from .frame_transport import FrameTransport, pong_frame
from .messages import PING, Event, control_event

log = structlog.get_logger(__name__)

CLOSE_FINISHED = WSCloseCode.OK
CLOSE_TOO_SLOW = WSCloseCode.TRY_AGAIN_LATER
PEER_GONE = (0, "")


class SocketOutbox:
    """Events queued for one WebSocket.

    Per execution, only events newer than the last accepted `seq` get in, so a snapshot and a
    live change that carry the same state are sent once. While nothing is queued and the peer
    is not behind, an event's frame (encoded once for every socket) is written at once;
    otherwise it is queued and a writer task, started then and gone once the queue is empty,
    sends it. A queued `status` that is still waiting is replaced by a newer one (latest wins);
    every other message keeps its place. A snapshot or catch-up ends with its `synced`, ahead of
    the live events held while it was read. A full queue, or a frame that cannot leave within the
    send timeout, closes the socket with 1013. A close frame leaves after what is to be sent
    before it; the connection (frame_transport.py) does the rest of the closing handshake.
    """

    __slots__ = ("_frames", "_capacity", "_send_timeout", "_close_on_terminal", "_metrics", "_written",
                 "_queue", "_writer", "_cursors", "_held", "_close", "unanswered_ping")

    # The bytes of an event on this kind of connection: its WebSocket frame (event_stream.py's
    # outbox writes its Server-Sent Events chunk instead). Both are built once per event.
    _wire = operator.attrgetter("frame")

    def __init__(self, frames: FrameTransport, *, capacity: int, send_timeout: float,
                 close_on_terminal: bool = True, metrics=None):
        self._frames = frames
        self._capacity = capacity
        self._send_timeout = send_timeout
        self._close_on_terminal = close_on_terminal
        self._metrics = metrics
        # Messages written, by kind (metrics.py exports them); counted when they leave, so an
        # event held and then made redundant by a snapshot, or replaced in the queue, is not.
        self._written = metrics.written if metrics is not None else collections.Counter()
        # Created on first need: most sockets never queue anything.
        self._queue: collections.deque[Event] | None = None
        self._writer: asyncio.Task | None = None
        # The executions this socket watches, from hold() to forget(), and the last seq offered of each.
        self._cursors: dict[str, int] = {}
        # Executions being caught up: their live events wait here until the snapshot is in.
        self._held: dict[str, list[Event]] | None = None
        # The close asked for (code, reason), or PEER_GONE: from then on nothing more is sent.
        self._close: tuple[int, str] | None = None
        # Set by ping(), cleared by heard(): still set at the next heartbeat round means the peer is gone.
        self.unanswered_ping = False

    @property
    def watching(self) -> KeysView[str]:
        """The executions this socket is subscribed to."""
        return self._cursors.keys()

    def position(self, execution_id: str) -> int | None:
        """The seq up to which this socket has every event of an execution it watches; None while
        its snapshot or catch-up is still being read."""
        if self._held and execution_id in self._held:
            return None
        return self._cursors.get(execution_id, 0)

    @property
    def closing(self) -> bool:
        return self._close is not None

    @property
    def close_code(self) -> int | None:
        """The code this side closed with; None if the peer closed first or was lost."""
        return None if self._close in (None, PEER_GONE) else int(self._close[0])

    def offer(self, event: Event) -> bool:
        """Send or queue an event without waiting; False when it was not needed or the socket is closing."""
        if self._close is not None:
            return False
        execution_id = event.execution_id
        if self._held and execution_id in self._held:
            self._held[execution_id].append(event)
            return True
        if event.seq <= self._cursors.get(execution_id, 0):
            return False
        self._cursors[execution_id] = event.seq
        queue = self._queue
        if queue:
            last = queue[-1]
            if event.kind == "status" and last.kind == "status" and last.execution_id == execution_id:
                queue[-1] = event
                return True
            return self._append(event)
        return self._send(event)

    def hold(self, execution_id: str) -> None:
        """Subscribed (watched from now until forget), snapshot not read yet: keep its live events
        back, so none leaves before (or twice beside) the snapshot or catch-up that
        offer_snapshot/offer_catch_up bring."""
        self._cursors.setdefault(execution_id, 0)
        if self._held is None:
            self._held = {}
        self._held.setdefault(execution_id, [])

    def _release(self, execution_id: str) -> list[Event]:
        held = self._held.pop(execution_id, []) if self._held else []
        if not self._held:
            self._held = None
        return held

    def offer_snapshot(self, execution_id: str, events: list[Event], synced: Event) -> None:
        """A fresh view of one execution, sent in the order given and standing for everything up
        to `synced.seq`; then `synced`, which tells the client so; then live events of it
        already queued, if newer."""
        queued = [*self._take_queued(execution_id), *self._release(execution_id)]
        for event in events:
            if self._close is not None or not self._send(event):
                return
        self._synced(synced)
        self._reoffer(queued)

    def offer_catch_up(self, execution_id: str, events: list[Event], after: int, synced: Event) -> None:
        """Every event after `after`, in seq order, then `synced`, ahead of live events already queued."""
        queued = [*self._take_queued(execution_id), *self._release(execution_id)]
        self._cursors[execution_id] = after
        self._reoffer(events)
        self._synced(synced)
        self._reoffer(queued)

    def _synced(self, synced: Event) -> None:
        """The end of a snapshot or catch-up: the cursor moves to its seq (live events up to it,
        held or queued, are not news), and it is sent even when that seq is not news: a client
        that was up to date already is told so too."""
        if self._close is None:
            self._cursors[synced.execution_id] = synced.seq
            self._send(synced)

    def _take_queued(self, execution_id: str) -> list[Event]:
        if not self._queue:
            return []
        queued = [e for e in self._queue if e.execution_id == execution_id]
        if queued:
            self._queue = collections.deque(e for e in self._queue if e.execution_id != execution_id)
        return queued

    def _reoffer(self, events: list[Event]) -> None:
        for event in events:
            self.offer(event)

    def offer_feed(self, event: Event) -> None:
        """A status from a feed subscription; not for an execution this socket also watches,
        whose subscription sends its every status in seq order among its node and log events
        (the feed's read can be newer than the subscription's, and would put a status ahead of a
        log line still to come). Fed statuses are not deduplicated here: a cursor per fed
        execution would grow without bound."""
        if event.execution_id not in self._cursors and self._close is None:
            self._send(event)

    def forget(self, execution_id: str) -> None:
        """Unsubscribed: drop its cursor, so a flood of subscribe/unsubscribe holds no memory."""
        self._cursors.pop(execution_id, None)
        self._release(execution_id)

    def send_text(self, text: str) -> None:
        """A reply to the client (pong, error): never merged, never deduplicated."""
        self.send_reply(Event("", 0, "reply", text))

    def send_reply(self, reply: Event) -> None:
        """The same, encoded already: one message for many sockets."""
        if self._close is None:
            self._send(reply)

    # -- the heartbeat (heartbeat.py) -----------------------------------------------------------

    def heard(self) -> None:
        """A frame came from the peer (a pong or anything else): it is alive."""
        self.unanswered_ping = False

    def ping(self) -> None:
        if self._close is None:
            self._send(PING)
            self.unanswered_ping = True

    def send_pong(self, payload: bytes) -> None:
        """The answer a ping from the peer is owed (RFC 6455 5.5.2), in order with the rest."""
        if self._close is None:
            self._send(control_event(pong_frame(payload)))

    def drop_silent_peer(self) -> None:
        """No frame since the last ping: drop the connection, and what is buffered for it, with
        no close frame (as for a lost one; a peer that reads nothing would never take one)."""
        log.info("ws.peer_silent")
        self._close = PEER_GONE
        if self._queue:
            self._queue.clear()
        self._frames.abort()

    def close(self, code: int, reason: str, *, drain: bool) -> None:
        """Close the socket once the queue is sent (drain) or at once, dropping what is queued."""
        if self._close is not None:
            return
        self._close = (code, reason)
        if not drain and self._queue:
            self._queue.clear()
        if self._writer is None:
            self._frames.send_close(code, reason, answer_within=self._send_timeout)
        # else the writer sends the close frame once it is done

    # -- sending -----------------------------------------------------------------------------

    def _send(self, event: Event) -> bool:
        """In order after whatever is queued; at once when nothing is and the peer keeps up."""
        # A closing connection "takes" it too, unsent: its reader notices and ends the socket.
        if self._writer is None and not self._queue and self._frames.write_now(self._wire(event)):
            self._written[event.kind] += 1  # or dropped: the connection was closing already
            if event.terminal and self._close_on_terminal:
                self.close(CLOSE_FINISHED, "finished", drain=False)
            return True
        return self._append(event)

    def _append(self, event: Event) -> bool:
        if self._queue is None:
            self._queue = collections.deque()
        if len(self._queue) >= self._capacity:
            self._too_slow("queue_full")
            return False
        self._queue.append(event)
        self._start_writer()
        return True

    def _too_slow(self, reason: str) -> None:
        log.info("ws.too_slow", reason=reason, queued=len(self._queue or ()))
        if self._metrics is not None:
            self._metrics.slow_client_closes.labels(reason).inc()
        self.close(CLOSE_TOO_SLOW, "too slow", drain=False)

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_queued())

    async def _write_queued(self) -> None:
        """The writer, while needed: send queued frames in order, each within the send timeout,
        then the close frame if a close was asked for."""
        frames = self._frames
        try:
            # self._queue, not a local: a catch-up may replace it while this waits
            while self._queue:
                if frames.closing:
                    self._close = PEER_GONE
                    break
                event = self._queue.popleft()
                frames.write(self._wire(event))
                self._written[event.kind] += 1
                if frames.paused:
                    try:
                        async with asyncio.timeout(self._send_timeout):
                            await frames.drain()
                    except TimeoutError:
                        self._too_slow("send_timeout")
                        break
                if event.terminal and self._close_on_terminal:
                    self.close(CLOSE_FINISHED, "finished", drain=False)
                    break
        except ConnectionError:
            self._close = PEER_GONE
        finally:
            self._writer = None
        if self._close not in (None, PEER_GONE):
            code, reason = self._close
            frames.send_close(code, reason, answer_within=self._send_timeout)

    async def finish(self) -> None:
        """The socket's reading has ended: the peer answered our close frame, or closed first,
        or is gone, or the session failed. What is still queued stays unsent; the closing
        handshake completes (a peer that closed first is answered with 1000, as aiohttp would)."""
        if self._writer is not None:
            self._writer.cancel()
        code, reason = CLOSE_FINISHED, ""
        if self._close in (None, PEER_GONE):
            self._close = PEER_GONE
        else:
            code, reason = self._close  # ours, sent already or still waiting behind queued frames
        await self._frames.finish_close(code, reason, timeout=self._send_timeout)
