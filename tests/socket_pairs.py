"""Real WebSockets below the app: an aiohttp server with one socket route set up as the service's
(its WebSocketResponse, its FrameTransport, its read loop), and real clients of it over TCP."""

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import WSMsgType, web

from service.push.frame_transport import FrameTransport, websocket_response

READ_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


class ServerSide:
    """The server's end of one socket: its FrameTransport, and a read loop like the service's."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.frames: FrameTransport | None = None
        self.ready = loop.create_future()
        self.read_ended = loop.create_future()  # resolved with the message that ended the read loop
        # What runs once the read loop has ended (SocketOutbox.finish in the service).
        self.finish: Callable[[], Awaitable[None]] = lambda: self.frames.finish_close(1000, "", timeout=5)

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = websocket_response(max_msg_size=1 << 20)
        await ws.prepare(request)
        self.frames = await FrameTransport.of(ws, request)
        self.ready.set_result(None)
        while (msg := await ws.receive()).type not in READ_ENDS:
            pass
        self.read_ended.set_result(msg)
        await self.finish()
        return ws


@contextlib.asynccontextmanager
async def server():
    """A server for one socket: (its ServerSide, its port)."""
    side = ServerSide()
    app = web.Application()
    app.router.add_get("/ws", side.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield side, runner.addresses[0][1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def connected(**client_options):
    """A socket: (the server's ServerSide, an aiohttp client's ClientWebSocketResponse)."""
    async with server() as (side, port), aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws", **client_options) as ws:
            await side.ready
            yield side, ws


class RawClient:
    """A client that does the handshake and then only what a test says: read frames, or not, or
    vanish without a close frame."""

    @classmethod
    async def connect(cls, port: int) -> "RawClient":
        client = cls()
        client.reader, client.writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        client.writer.write((
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the server."""
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return first & 0x0F, await self.reader.readexactly(size)


def numbered(n: int, size: int) -> str:
    """A text of `size` characters that starts with n, to check order and wholeness at once."""
    return f"{n:08d}".ljust(size, "x")
