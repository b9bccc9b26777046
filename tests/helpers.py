"""What many tests do, in one place: read a socket's messages, scrape metrics, cut the listener
off, hold a socket that never reads, follow an execution across servers, read an event stream."""

import asyncio
import base64
import json
import os
import socket
import struct
import urllib.parse

import aiopg
from aiohttp import WSMsgType
from prometheus_client.parser import text_string_to_metric_families

from service.push import pg_listener, wal_listener

from .actors import Actor


async def next_json(ws, timeout: float = 5.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}"
    return msg.json()


async def next_status(ws, timeout: float = 5.0) -> dict:
    """The next `status` message, skipping node and log messages (as an old client does)."""
    while True:
        message = await next_json(ws, timeout)
        if message["type"] == "status":
            return message


async def drain(ws) -> list[dict]:
    """Every message until the server closes the socket."""
    received = []
    while (msg := await ws.receive(timeout=5)).type == WSMsgType.TEXT:
        received.append(msg.json())
    assert msg.type == WSMsgType.CLOSE, msg
    return received


async def drain_snapshot(ws, nodes: int = 2) -> list[dict]:
    """The connect snapshot of an execution with no log lines: the status, each node, then the
    `synced` that ends it (returned with them)."""
    received = [await next_json(ws) for _ in range(2 + nodes)]
    assert [m["type"] for m in received] == ["status"] + ["node"] * nodes + ["synced"]
    assert received[-1]["seq"] == max(m["seq"] for m in received[:-1])
    return received


async def until_synced(ws, timeout: float = 5.0) -> list[dict]:
    """Every message up to the `synced` that ends a snapshot or catch-up (not included)."""
    received = []
    while (message := await next_json(ws, timeout))["type"] != "synced":
        received.append(message)
    return received


async def until_status(ws, status: str, timeout: float = 5.0) -> list[dict]:
    """Collect status messages until one has the given status."""
    seen = []
    while True:
        message = await next_json(ws, timeout)
        if message["type"] == "status":
            seen.append(message)
            if message["status"] == status:
                return seen


async def scrape(client) -> dict[tuple[str, tuple], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def terminate_listener(database_url: str) -> None:
    async with aiopg.connect(database_url, enable_hstore=False) as conn:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ANY(%s)",
                ([pg_listener.APPLICATION_NAME, wal_listener.APPLICATION_NAME],))


async def readiness(client) -> int:
    response = await client.get("/readyz")
    return response.status


class NeverReadingClient:
    """A WebSocket client on a raw socket that completes the handshake and then stops reading."""

    def __init__(self, port: int, path: str):
        self.sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(1)
        assert self.buffer.startswith(b"HTTP/1.1 101"), self.buffer
        self.buffer = b""

    def read_all_frames(self) -> list[tuple[int, bytes]]:
        """Now read everything the server sent, to its end; returns (opcode, payload) pairs."""
        self.sock.settimeout(10)
        while chunk := self.sock.recv(1 << 20):
            self.buffer += chunk
        frames, data = [], self.buffer
        while len(data) >= 2:
            opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
            if length == 126:
                length, offset = struct.unpack(">H", data[2:4])[0], 4
            elif length == 127:
                length, offset = struct.unpack(">Q", data[2:10])[0], 10
            frames.append((opcode, data[offset:offset + length]))
            data = data[offset + length:]
        return frames

    def close(self):
        self.sock.close()


def multiplexed(actor: Actor, token: str | None = None):
    return actor.client.ws_connect("/api/v1/ws", params={"access_token": token or actor.token})


class Follower:
    """One browser tab watching one execution across servers: it reconnects with `since` and
    keeps every node and log event's seq, in the order received."""

    def __init__(self, execution_id: str, token: str):
        self.execution_id = execution_id
        self.token = token
        self.seqs: list[int] = []  # node and log events, every connection
        self.last_seq = 0  # of any message, for `since`
        self._task: asyncio.Task | None = None

    async def follow(self, client) -> None:
        """Connect to `client`'s server (leaving the previous one) and stay until told to move."""
        await self.leave()
        params = {"access_token": self.token}
        resuming = bool(self.last_seq)
        if resuming:
            params["since"] = str(self.last_seq)
        ws = await client.ws_connect(f"/api/v1/ws/executions/{self.execution_id}", params=params)
        # What the server sends on connect ends with `synced`: from then on the socket is live.
        while (message := await ws.receive_json(timeout=5))["type"] != "synced":
            self.note(message, snapshot=not resuming)
        self.note(message)
        self._task = asyncio.create_task(self._read(ws))

    def note(self, message: dict, snapshot: bool = False) -> None:
        seq = message.get("seq")
        if seq is None:
            return
        if message["type"] in ("node", "log") and not snapshot:
            self.seqs.append(seq)
        self.last_seq = max(self.last_seq, seq)

    async def _read(self, ws) -> None:
        try:
            while (msg := await ws.receive()).type == WSMsgType.TEXT:
                self.note(msg.json())
        finally:
            await ws.close()

    async def leave(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class RawEventStream:
    """A Server-Sent Events client on a raw connection (asyncio streams, no HTTP library): the
    status line and headers as sent, then the chunked body decoded and cut into SSE blocks, each
    {"id", "data" (parsed JSON), "comment", "retry"} with None for what it lacks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names
        self._text = ""
        self.ended = False  # the body's last chunk came

    @classmethod
    async def open(cls, client, path: str, headers: dict | None = None, *, version: str = "1.1",
                   accept: str | None = "text/event-stream") -> "RawEventStream":
        reader, writer = await asyncio.open_connection(client.host, client.port)
        lines = [f"GET {path} HTTP/{version}", f"Host: {client.host}:{client.port}"]
        if accept is not None:
            lines.append(f"Accept: {accept}")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        stream = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        stream.status = int(status_line.split()[1])
        for line in filter(None, header_lines):
            name, _, value = line.partition(":")
            stream.headers.setdefault(name.strip().lower(), value.strip())
        return stream

    async def json_body(self) -> dict:
        """The body of an answer that is not a stream (an error in the one shape)."""
        length = int(self.headers["content-length"])
        return json.loads(await asyncio.wait_for(self.reader.readexactly(length), 5))

    async def _chunk(self, timeout: float) -> bool:
        """One more chunk of the body into the text; False at its end (or the connection's)."""
        try:
            size_line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), timeout)
        except asyncio.IncompleteReadError:
            return False
        size = int(size_line.strip(), 16)
        data = await asyncio.wait_for(self.reader.readexactly(size + 2), timeout)
        if size == 0:
            self.ended = True
            return False
        self._text += data[:-2].decode()
        return True

    async def next_block(self, timeout: float = 5.0) -> dict | None:
        """The next SSE block; None once the stream has ended."""
        while "\n\n" not in self._text:
            if not await self._chunk(timeout):
                return None
        block, self._text = self._text.split("\n\n", 1)
        parsed = {"id": None, "data": None, "comment": None, "retry": None}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                parsed["comment"] = value
            elif field == "data":
                parsed["data"] = json.loads(value)
            elif field in ("id", "retry"):
                parsed[field] = value
        return parsed

    async def next_event(self, timeout: float = 5.0) -> dict | None:
        """The next block with data (skipping comments and the retry hint); None at the end."""
        while (block := await self.next_block(timeout)) is not None:
            if block["data"] is not None:
                return block
        return None

    async def events_until(self, predicate, timeout: float = 5.0) -> list[dict]:
        """Events (blocks with data) up to the first whose data matches, included."""
        events = []
        while True:
            event = await self.next_event(timeout)
            assert event is not None, f"the stream ended before; got {events}"
            events.append(event)
            if predicate(event["data"]):
                return events

    async def rest(self, timeout: float = 5.0) -> list[dict]:
        """Every event until the stream ends."""
        events = []
        while (event := await self.next_event(timeout)) is not None:
            events.append(event)
        return events

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def events_path(execution_id: str, **params) -> str:
    query = urllib.parse.urlencode(params)
    return f"/api/v1/executions/{execution_id}/events" + (f"?{query}" if query else "")


def log_events(path) -> list[dict]:
    """The JSON lines of a server's log file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
