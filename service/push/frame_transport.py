"""Prebuilt WebSocket frames written to an aiohttp WebSocket's connection: the one module that
knows how the push path goes around aiohttp's WebSocket writer, and the one to look at when
aiohttp changes.

A change is encoded once, as a whole frame, and the same bytes are written to every socket that
watches it: a few microseconds a socket. aiohttp's writer would build the frame again for each
socket and has to be awaited (a task per socket to fan out). Every call here is public
(request.transport, asyncio's Transport, what ws.prepare() returns, WebSocketResponse.close());
what is not is the assumption that makes it safe: aiohttp writes the frames of an uncompressed
WebSocket straight to that same transport, unbuffered, so its frames and ours leave in the order
they were written. tests/test_frame_transport.py checks that and the rest against the real
aiohttp, under asyncio and uvloop, so an aiohttp release that changes it fails a test rather
than production.
"""

import asyncio
import struct

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

TEXT_OPCODE, CLOSE_OPCODE, PING_OPCODE, PONG_OPCODE = 0x1, 0x8, 0x9, 0xA


def server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, uncompressed, final frame (RFC 6455 5.2): what a server sends."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


def text_frame(text: str) -> bytes:
    return server_frame(TEXT_OPCODE, text.encode())


def ping_frame() -> bytes:
    return server_frame(PING_OPCODE, b"")


def pong_frame(payload: bytes) -> bytes:
    """The answer to a ping, with its payload (a control frame carries at most 125 bytes, RFC 6455 5.5)."""
    return server_frame(PONG_OPCODE, payload[:125])


def websocket_response(*, max_msg_size: int) -> web.WebSocketResponse:
    """A WebSocket as the push path needs it.

    No permessage-deflate: frames are built once per change and written as they are to every
    socket (compression would be per socket, and status messages are small). autoclose off: the
    closing handshake is FrameTransport's (send_close, finish_close). heartbeat and autoping off:
    heartbeat.py pings every socket on one timer, and the session answers the peer's pings itself
    (SocketSession.answer), in order with the rest of what the socket is sent.
    """
    return web.WebSocketResponse(heartbeat=None, autoping=False, max_msg_size=max_msg_size, compress=False,
                                 autoclose=False)


class FrameTransport:
    """One WebSocket's connection, as the outbox writes to it: frames, flow control, the close."""

    __slots__ = ("_ws", "_transport", "_stream", "_close_timer")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, stream: AbstractStreamWriter):
        self._ws = ws
        self._transport = transport
        # What ws.prepare() returned: its drain() is the connection's flow control, the same wait
        # aiohttp's WebSocket writer does when the peer is behind.
        self._stream = stream
        self._close_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def of(cls, ws: web.WebSocketResponse, request: web.Request) -> "FrameTransport | None":
        """The transport of a WebSocket already prepared (prepare() again only returns its
        stream); None when the connection is gone already."""
        stream = await ws.prepare(request)
        transport = request.transport
        return None if transport is None else cls(ws, transport, stream)

    @property
    def closing(self) -> bool:
        """A close has begun (aiohttp's) or the connection is gone: write nothing more."""
        return self._transport.is_closing() or self._ws.closed

    @property
    def paused(self) -> bool:
        """More is buffered for this peer than the transport's high-water mark: the peer is behind
        (the transport has paused aiohttp's protocol, and drain() waits)."""
        transport = self._transport
        size = transport.get_write_buffer_size()
        # The limits only when something is buffered: on a fan-out, nearly every peer has none.
        return size > 0 and size > transport.get_write_buffer_limits()[1]

    def write_now(self, frame: bytes) -> bool:
        """write() unless the peer is behind; False then: queue the frame, and write() it after
        drain(). True for a connection that is closing too: nothing is to be queued for it.
        (closing and paused in one call, as a change's fan-out calls this for every socket.)"""
        transport = self._transport
        if transport.is_closing() or self._ws.closed:
            return True
        size = transport.get_write_buffer_size()
        if size > 0 and size > transport.get_write_buffer_limits()[1]:
            return False
        transport.write(frame)
        return True

    def write(self, frame: bytes) -> None:
        """Queue one whole frame behind everything written before it; never waits. Only while
        not closing (uvloop refuses a write to a closed connection)."""
        self._transport.write(frame)

    async def drain(self) -> None:
        """Until the peer has taken enough that writing may go on (at once unless paused);
        returns, or raises ConnectionError, when the connection is lost meanwhile."""
        await self._stream.drain()

    # -- the closing handshake (RFC 6455 7.1.2) ---------------------------------------------------
    #
    # Not WebSocketResponse.close() while the socket's reader waits in receive(): aiohttp then
    # closes the TCP connection right after its close frame, without the peer's answer, and a
    # client busy when the close arrives (an aiohttp client, every time) finds the connection
    # gone before it can answer, and reports 1006 instead of our code (aiohttp issue 5180).

    def send_close(self, code: int, reason: str, *, answer_within: float) -> None:
        """Our close frame, after every frame written so far. The peer's answer ends the socket's
        reader, and then finish_close() closes the connection; without an answer it is closed
        after `answer_within` seconds (once what is buffered for the peer is out)."""
        if self.closing or self._close_timer is not None:
            return
        self._transport.write(server_frame(CLOSE_OPCODE, struct.pack("!H", code) + reason.encode()[:123]))
        self._close_timer = asyncio.get_running_loop().call_later(answer_within, self._transport.close)

    async def finish_close(self, code: int, reason: str, *, timeout: float) -> None:
        """The socket's reader has ended. After our close frame: the peer answered (or is gone),
        so close the connection, as aiohttp asks when autoclose is off. Otherwise: the peer closed
        first (or the session failed), and WebSocketResponse.close() answers with `code`."""
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._transport.close()
            return
        try:
            async with asyncio.timeout(timeout):
                await self._ws.close(code=code, message=reason.encode(), drain=False)
        except (TimeoutError, ConnectionError):
            pass

    def abort(self) -> None:
        """Drop the connection at once, buffered frames too, with no close frame (a lost peer)."""
        self._transport.abort()
