"""A WebSocket client process: holds many sockets, timestamps every message on arrival.

Driven by JSON lines on stdin (see protocol.py): connect, connect_feed, count, drop, reconnect,
dump, close, exit. Arrival times are wall-clock (time.time()), comparable with the writer's commit
times.

Each socket is a bare asyncio protocol that parses frames as bytes arrive: no task, no queue and
no future per socket or per message. The load generator shares the 2 cores with the server and
PostgreSQL, so what it spends per message is taken from them: aiohttp's client (a reading task
per socket) cost about 100 us of CPU per message here, wsproto's parser 32 us per frame, this
one a few. Any RFC 6455 server works with it (all three designs are measured with it).
"""

import asyncio
import base64
import gc
import json
import os
import resource
import struct
import sys
import time
import urllib.parse

from .protocol import reply_channel

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# What a feed socket sends once open (41 bytes: client_frame's limit is 125).
SUBSCRIBE_FEED = json.dumps({"type": "subscribe", "feed": "executions"}).encode()


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A final, masked client frame (RFC 6455 5.3: every client frame is masked); payload <= 125 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


class HandshakeFailed(Exception):
    pass


class RawWebSocket(asyncio.Protocol):
    """One client WebSocket: the upgrade request, then server frames parsed in data_received."""

    def __init__(self, on_text, on_close, request: bytes):
        self._on_text = on_text      # (arrival time, text)
        self._on_close = on_close    # (close code or None)
        self._request = request
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._upgraded = False
        self.transport: asyncio.Transport | None = None
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes):
        now = time.time()
        buffer = self._buffer
        buffer += data
        if not self._upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(buffer[:buffer.find(b"\r\n")])
            if status_line.split(b" ", 2)[1:2] != [b"101"]:
                self._fail(HandshakeFailed(status_line.decode(errors="replace")))
                self.transport.close()
                return
            del buffer[:end + 4]
            self._upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length, start = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start:start + length])
            del buffer[:start + length]
            self._frame(first & 0x80, first & 0x0F, payload, now)

    def _frame(self, fin: int, opcode: int, payload: bytes, now: float) -> None:
        if opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
            self._fragments.append(payload)
            if fin:
                message, self._fragments = b"".join(self._fragments), []
                self._on_text(now, message.decode())
        elif opcode == OP_PING:
            self.transport.write(client_frame(OP_PONG, payload[:125]))
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.transport.is_closing():
                self.transport.write(client_frame(OP_CLOSE, payload[:2]))
                self.transport.close()

    def send_text(self, payload: bytes) -> None:
        self.transport.write(client_frame(OP_TEXT, payload))

    def close(self, code: int = 1000) -> None:
        """Our close frame; the server's answer (or connection_lost) completes `closed`."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(OP_CLOSE, struct.pack("!H", code)))

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
            self.opened.exception()  # retrieved: a caller that gave up already must not log it

    def connection_lost(self, exc):
        self._fail(HandshakeFailed(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)
            self._on_close(self.close_code)


def upgrade_request(url: urllib.parse.SplitResult, path: str, params: dict) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    target = f"{path}?{urllib.parse.urlencode(params)}" if params else path
    return (f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


class Sock:
    """One socket: on one execution (`/api/v1/ws/executions/{id}`), or, with an `owner`, on the
    executions feed of the multiplexed socket (`/api/v1/ws`) with that user's token."""

    __slots__ = ("execution_id", "owner", "path", "token", "ws", "events", "epoch", "since", "close_code",
                 "connected_at", "subscribed_at")

    def __init__(self, path: str, token: str, execution_id: str | None = None, owner: str | None = None):
        self.execution_id = execution_id
        self.owner = owner
        self.path = path
        self.token = token
        self.ws: RawWebSocket | None = None
        self.events: list[tuple[float, str, int]] = []  # (arrival, raw text, epoch)
        self.epoch = 0
        self.since: list[int | None] = []  # the since sent at each epoch's connect
        self.close_code = None
        self.connected_at: list[float] = []
        self.subscribed_at: float | None = None  # a feed socket: when the feed's `subscribed` came

    @property
    def is_feed(self) -> bool:
        return self.owner is not None

    @property
    def open(self) -> bool:
        return self.ws is not None and not self.ws.closed.done()

    def last_seq(self) -> int | None:
        for _, text, _ in reversed(self.events):
            message = json.loads(text)
            if message.get("type") == "status" and message.get("seq") is not None:
                return int(message["seq"])
        return None


class Clients:
    def __init__(self):
        self.socks: list[Sock] = []
        self.url: urllib.parse.SplitResult | None = None  # the server; each socket has its own path
        self.messages = 0

    async def _open(self, sock: Sock, since: int | None, limiter: asyncio.Semaphore, timeout: float) -> bool:
        """Open the socket (a feed socket then subscribes to the feed), at most three attempts."""
        params = {"access_token": sock.token}
        if since is not None:
            params["since"] = str(since)
        epoch, events = sock.epoch, sock.events
        request = upgrade_request(self.url, sock.path, params)

        def on_text(now: float, text: str) -> None:
            events.append((now, text, epoch))
            self.messages += 1
            if sock.subscribed_at is None and sock.is_feed and json.loads(text).get("type") == "subscribed":
                sock.subscribed_at = now

        def on_close(code: int | None) -> None:
            if sock.epoch == epoch:
                sock.close_code = code

        loop = asyncio.get_running_loop()
        async with limiter:
            for attempt in range(3):
                ws = None
                try:
                    _, ws = await loop.create_connection(
                        lambda: RawWebSocket(on_text, on_close, request), self.url.hostname, self.url.port)
                    async with asyncio.timeout(timeout):
                        await ws.opened
                    break
                except (HandshakeFailed, OSError, TimeoutError):
                    if ws is not None:
                        ws.transport.abort()
                    if attempt == 2:
                        return False
                    await asyncio.sleep(0.2 * (attempt + 1))
        sock.ws = ws
        sock.since.append(since)
        sock.connected_at.append(time.time())
        sock.close_code = None
        if sock.is_feed:
            ws.send_text(SUBSCRIBE_FEED)
        return True

    async def connect(self, base: str, token: str, execution_ids: list[str], concurrency: int,
                      timeout: float) -> dict:
        self.url = urllib.parse.urlsplit(base)
        new = [Sock(self.url.path + eid, token, execution_id=eid) for eid in execution_ids]
        self.socks.extend(new)
        limiter = asyncio.Semaphore(concurrency)
        started = time.time()
        ok = await asyncio.wait_for(
            asyncio.gather(*(self._open(s, None, limiter, timeout) for s in new)), timeout)
        # Every socket is connected once it has its snapshot.
        first = await self._wait_first(new, epoch=0, deadline=started + timeout)
        return {"connected": sum(ok), "failed": len(ok) - sum(ok), "with_snapshot": first,
                "seconds": time.time() - started}

    async def connect_feed(self, url: str, tokens: dict[str, str], owners: list[str], concurrency: int,
                           timeout: float) -> dict:
        """One feed socket per entry of `owners`, each with its owner's token; a socket counts as
        subscribed once the server has answered its subscribe."""
        self.url = urllib.parse.urlsplit(url)
        new = [Sock(self.url.path, tokens[owner], owner=owner) for owner in owners]
        self.socks.extend(new)
        limiter = asyncio.Semaphore(concurrency)
        started = time.time()
        ok = await asyncio.wait_for(
            asyncio.gather(*(self._open(s, None, limiter, timeout) for s in new)), timeout)
        deadline = started + timeout
        while time.time() < deadline and any(s.subscribed_at is None for s in new):
            await asyncio.sleep(0.05)
        return {"connected": sum(ok), "failed": len(ok) - sum(ok),
                "subscribed": sum(1 for s in new if s.subscribed_at is not None),
                "seconds": time.time() - started}

    async def _wait_first(self, socks: list[Sock], epoch: int, deadline: float) -> int:
        while time.time() < deadline:
            have = sum(1 for s in socks if any(e[2] == epoch for e in s.events))
            if have == len(socks):
                return have
            await asyncio.sleep(0.05)
        return sum(1 for s in socks if any(e[2] == epoch for e in s.events))

    async def drop(self) -> dict:
        """Every socket lost at once, as in a network blip: the transports are aborted, no close frame."""
        at = time.time()
        for sock in self.socks:
            if sock.open:
                sock.ws.transport.abort()
            sock.epoch += 1
        await asyncio.gather(*(s.ws.closed for s in self.socks if s.ws is not None))
        return {"dropped": len(self.socks), "at": at}

    async def reconnect(self, concurrency: int, timeout: float) -> dict:
        limiter = asyncio.Semaphore(concurrency)
        started = time.time()
        ok = await asyncio.wait_for(asyncio.gather(
            *(self._open(s, None if s.is_feed else s.last_seq(), limiter, timeout) for s in self.socks)),
            timeout)
        return {"connected": sum(ok), "failed": len(ok) - sum(ok), "started": started,
                "seconds": time.time() - started}

    async def close(self) -> dict:
        """A closing handshake on every open socket (at most 5 s), then the connections go."""
        open_socks = [s for s in self.socks if s.open]
        for sock in open_socks:
            sock.ws.close()
        if open_socks:
            await asyncio.wait([s.ws.closed for s in open_socks], timeout=5)
        for sock in open_socks:
            sock.ws.transport.close()
        self.socks = []
        self.messages = 0
        gc.collect()  # between steps: automatic collection is off while measuring (see main)
        return {"closed": True}

    def dump(self, path: str) -> dict:
        """Per socket: its execution (a feed socket: its owner instead), and each status message
        as [arrival, seq, message, status, epoch, execution_id]."""
        out = []
        for s in self.socks:
            events = []
            for t, text, epoch in s.events:
                m = json.loads(text)
                if m.get("type") == "status":
                    events.append([t, m.get("seq"), m.get("message"), m.get("status"), epoch,
                                   m.get("execution_id")])
            out.append({"execution_id": s.execution_id, "owner": s.owner, "events": events, "since": s.since,
                        "connected_at": s.connected_at, "subscribed_at": s.subscribed_at,
                        "close_code": s.close_code})
        with open(path, "w") as f:
            json.dump(out, f)
        return {"path": path, "sockets": len(out)}


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Every arrival is kept until the dump, so a full collection here walks all of them: 70-150 ms
    # pauses in every client process at once, mid-measurement, that would be counted as the
    # service's latency. Nothing kept here is cyclic garbage; close() collects between steps.
    gc.disable()
    reply = reply_channel()
    clients = Clients()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        try:
            if name == "exit":
                break
            elif name == "connect":
                reply(await clients.connect(**cmd))
            elif name == "connect_feed":
                reply(await clients.connect_feed(**cmd))
            elif name == "count":
                reply({"messages": clients.messages, "open": sum(1 for s in clients.socks if s.open)})
            elif name == "drop":
                reply(await clients.drop())
            elif name == "reconnect":
                reply(await clients.reconnect(**cmd))
            elif name == "dump":
                reply(clients.dump(**cmd))
            elif name == "close":
                reply(await clients.close())
            else:
                reply({"error": f"unknown command {name}"})
        except Exception as exc:  # reported to the harness, which decides
            reply({"error": f"{type(exc).__name__}: {exc}"})
    await clients.close()


if __name__ == "__main__":
    import uvloop  # the service's event loop too: the load generator should cost as little as it can

    uvloop.run(main())
