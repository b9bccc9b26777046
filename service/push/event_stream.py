"""Server-Sent Events written to an aiohttp chunked response's connection: the one module that
knows how the push path goes around StreamResponse.write() (the SSE counterpart of
frame_transport.py), and EventStreamOutbox, the outbox of such a stream.

A change is encoded once, as a whole HTTP/1.1 chunk holding its SSE text, cached on the Event,
and the same bytes are written to every stream that watches it. StreamResponse.write() would
frame the chunk again for each stream and has to be awaited (a task per stream to fan out).
Every call here is public (request.transport, asyncio's Transport, StreamResponse.prepare(),
enable_chunked_encoding() and write_eof(), what prepare() returns); what is not is the
assumption that makes it safe: once prepare() has returned, aiohttp has written the headers to
that same transport, adds nothing to the body until write_eof(), and write_eof() puts the last
chunk behind ours. tests/test_event_stream.py checks that against the real aiohttp.
"""

import asyncio
import random

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .messages import Event, control_event
from .socket_outbox import CLOSE_TOO_SLOW, SocketOutbox

# The `retry:` hint (how long EventSource waits before it reconnects), drawn for each stream from
# this range: a restarted server is not met by every browser in the same millisecond.
RETRY_MS = (1000, 3000)


def retry_ms() -> int:
    return random.randint(*RETRY_MS)


def http_chunk(payload: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body (RFC 9112 7.1)."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def event_text(event: Event) -> bytes:
    """The SSE form of an event: `id:` its seq where that is a resume cursor (Event.in_order),
    then its JSON as one `data:` line (JSON text never holds a raw line break: json escapes them)."""
    data = b"data: " + event.text.encode() + b"\n\n"
    return b"id: %d\n%s" % (event.seq, data) if event.in_order else data


def sse_chunk(event: Event) -> bytes:
    """The event's chunk, built by the first stream that needs it and kept on the event for the others."""
    chunk = event.sse_chunk
    if chunk is None:
        chunk = http_chunk(event_text(event))
        object.__setattr__(event, "sse_chunk", chunk)
    return chunk


def comment_event(text: str) -> Event:
    """A comment line, which EventSource ignores: the heartbeat that keeps proxies from timing out."""
    event = control_event(b"")
    object.__setattr__(event, "sse_chunk", http_chunk(b": " + text.encode() + b"\n\n"))
    return event


HEARTBEAT = comment_event("ping")  # the same chunk for every stream


class EventStream:
    """One SSE response's connection, as the outbox writes to it: chunks, flow control, the end.

    Made before the response starts, so that its outbox can subscribe (and hold live events)
    before the first read, and the response can still be a 404 or a 204; start() sends the
    headers. Nothing is written to it before that: until then an outbox only holds events.
    """

    __slots__ = ("_request", "_response", "_transport", "_stream", "_ended")

    def __init__(self, request: web.Request, response: web.StreamResponse):
        self._request = request
        self._response = response
        self._transport: asyncio.Transport | None = None
        # What response.prepare() returned: its drain() is the connection's flow control.
        self._stream: AbstractStreamWriter | None = None
        # Done when the stream is over: ended by the outbox, or its connection found gone.
        self._ended = asyncio.get_running_loop().create_future()

    async def start(self, retry_ms: int) -> None:
        """The headers, then the `retry:` hint. A connection gone meanwhile ends the stream."""
        self._response.enable_chunked_encoding()  # each write here is a whole chunk
        self._stream = await self._response.prepare(self._request)
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self._end()
            return
        self._transport = transport
        transport.write(http_chunk(b"retry: %d\n\n" % retry_ms))

    @property
    def started(self) -> bool:
        return self._transport is not None

    async def wait_ended(self) -> None:
        await self._ended

    def _end(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)

    @property
    def closing(self) -> bool:
        """The connection is gone or going: write nothing more. Nobody reads from a stream's
        connection (a WebSocket's reader would notice its end), so whoever finds it so ends the stream."""
        if self._transport.is_closing():
            self._end()
            return True
        return False

    @property
    def paused(self) -> bool:
        """More is buffered for this peer than the transport's high-water mark: the peer is behind."""
        transport = self._transport
        size = transport.get_write_buffer_size()
        return size > 0 and size > transport.get_write_buffer_limits()[1]

    def write_now(self, chunk: bytes) -> bool:
        """write() unless the peer is behind; False then: queue the chunk, and write() it after
        drain(). True for a connection that is gone too (the stream ends): nothing to queue."""
        transport = self._transport
        if transport.is_closing():
            self._end()
            return True
        size = transport.get_write_buffer_size()
        if size > 0 and size > transport.get_write_buffer_limits()[1]:
            return False
        transport.write(chunk)
        return True

    def write(self, chunk: bytes) -> None:
        """Queue one whole chunk behind everything written before it; never waits."""
        self._transport.write(chunk)

    async def drain(self) -> None:
        """Until the peer has taken enough that writing may go on; ConnectionError (the stream
        ends) when the connection is lost meanwhile."""
        try:
            await self._stream.drain()
        except ConnectionError:
            self._end()
            raise

    def send_close(self, code: int, reason: str, *, answer_within: float) -> None:
        """The outbox closes, after everything it was to send first: the stream ends. Too slow:
        the connection is dropped, as what is buffered for it would not leave either (the client
        reconnects with Last-Event-ID); otherwise finish_close() ends the body properly."""
        if code == CLOSE_TOO_SLOW and self._transport is not None:
            self._transport.abort()
        self._end()

    async def finish_close(self, code: int, reason: str, *, timeout: float) -> None:
        """The handler is done: the body's last chunk (EventSource then reconnects by itself,
        after `retry`), unless the connection is gone; a peer that does not take it in time is
        dropped. (aiohttp's own write_eof() after the handler then has nothing left to do.)"""
        if self._transport is None or self._transport.is_closing():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._response.write_eof()
        except (TimeoutError, ConnectionError):
            self._transport.abort()

    def abort(self) -> None:
        """Drop the connection at once, buffered chunks too."""
        if self._transport is not None:
            self._transport.abort()
        self._end()


class EventStreamOutbox(SocketOutbox):
    """A stream's outbox: the socket's bounded queue, latest-wins status, holds and catch-ups, and
    slow-client close, writing Server-Sent Events. Its client sends nothing, so the heartbeat's
    ping is a comment that expects no answer, and a gone peer is found by writing to it."""

    __slots__ = ()

    _wire = staticmethod(sse_chunk)

    def ping(self) -> None:
        if self._close is None:
            self._send(HEARTBEAT)
