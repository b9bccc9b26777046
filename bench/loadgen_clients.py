"""A WebSocket client process: holds many sockets, timestamps every message on arrival.

Driven by JSON lines on stdin (see protocol.py): connect, count, drop, reconnect, dump, close, exit.
Arrival times are wall-clock (time.time()), comparable with the writer's commit times.
"""

import asyncio
import json
import resource
import sys
import time

import aiohttp

from .protocol import reply_channel


class Sock:
    __slots__ = ("execution_id", "ws", "events", "epoch", "since", "close_code", "task", "connected_at")

    def __init__(self, execution_id: str):
        self.execution_id = execution_id
        self.ws = None
        self.events: list[tuple[float, str, int]] = []  # (arrival, raw text, epoch)
        self.epoch = 0
        self.since: list[int | None] = []  # the since sent at each epoch's connect
        self.close_code = None
        self.task = None
        self.connected_at: list[float] = []

    def last_seq(self) -> int | None:
        for _, text, _ in reversed(self.events):
            message = json.loads(text)
            if message.get("type") == "status" and message.get("seq") is not None:
                return int(message["seq"])
        return None


class Clients:
    def __init__(self):
        self.session: aiohttp.ClientSession | None = None
        self.socks: list[Sock] = []
        self.base = ""
        self.token = ""
        self.messages = 0

    async def start(self):
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    async def _open(self, sock: Sock, since: int | None, limiter: asyncio.Semaphore, timeout: float) -> bool:
        params = {"access_token": self.token}
        if since is not None:
            params["since"] = str(since)
        async with limiter:
            for attempt in range(3):
                try:
                    sock.ws = await self.session.ws_connect(
                        self.base + sock.execution_id, params=params, autoping=True, heartbeat=None,
                        timeout=aiohttp.ClientWSTimeout(ws_close=5), max_msg_size=0,
                    )
                    break
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    if attempt == 2:
                        return False
                    await asyncio.sleep(0.2 * (attempt + 1))
        sock.since.append(since)
        sock.connected_at.append(time.time())
        sock.close_code = None
        sock.task = asyncio.create_task(self._read(sock, sock.ws, sock.epoch))
        return True

    async def _read(self, sock: Sock, ws, epoch: int):
        events = sock.events
        try:
            while True:
                msg = await ws.receive()
                now = time.time()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    events.append((now, msg.data, epoch))
                    self.messages += 1
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
        except (asyncio.CancelledError, aiohttp.ClientError, OSError):
            pass
        finally:
            if sock.epoch == epoch:
                sock.close_code = ws.close_code

    async def connect(self, base: str, token: str, execution_ids: list[str], concurrency: int,
                      timeout: float) -> dict:
        self.base, self.token = base, token
        new = [Sock(eid) for eid in execution_ids]
        self.socks.extend(new)
        limiter = asyncio.Semaphore(concurrency)
        started = time.time()
        ok = await asyncio.wait_for(
            asyncio.gather(*(self._open(s, None, limiter, timeout) for s in new)), timeout)
        # Every socket is connected once it has its snapshot.
        first = await self._wait_first(new, epoch=0, deadline=started + timeout)
        return {"connected": sum(ok), "failed": len(ok) - sum(ok), "with_snapshot": first,
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
            if sock.ws is not None and not sock.ws.closed:
                # aiohttp has no public "abort": reach the transport through its writer.
                transport = sock.ws._writer.transport
                if transport is not None:
                    transport.abort()
            sock.epoch += 1
        await asyncio.gather(*(s.task for s in self.socks if s.task), return_exceptions=True)
        return {"dropped": len(self.socks), "at": at}

    async def reconnect(self, concurrency: int, timeout: float) -> dict:
        limiter = asyncio.Semaphore(concurrency)
        started = time.time()
        ok = await asyncio.wait_for(asyncio.gather(
            *(self._open(s, s.last_seq(), limiter, timeout) for s in self.socks)), timeout)
        return {"connected": sum(ok), "failed": len(ok) - sum(ok), "started": started,
                "seconds": time.time() - started}

    async def close(self) -> dict:
        await asyncio.gather(*(s.ws.close() for s in self.socks if s.ws is not None and not s.ws.closed),
                             return_exceptions=True)
        for s in self.socks:
            if s.task:
                s.task.cancel()
        await asyncio.gather(*(s.task for s in self.socks if s.task), return_exceptions=True)
        self.socks = []
        self.messages = 0
        return {"closed": True}

    def dump(self, path: str) -> dict:
        """Per socket: its execution, and each status message as [arrival, seq, message, status, epoch]."""
        out = []
        for s in self.socks:
            events = []
            for t, text, epoch in s.events:
                m = json.loads(text)
                if m.get("type") == "status":
                    events.append([t, m.get("seq"), m.get("message"), m.get("status"), epoch])
            out.append({"execution_id": s.execution_id, "events": events, "since": s.since,
                        "connected_at": s.connected_at, "close_code": s.close_code})
        with open(path, "w") as f:
            json.dump(out, f)
        return {"path": path, "sockets": len(out)}


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    reply = reply_channel()
    clients = Clients()
    await clients.start()
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
            elif name == "count":
                reply({"messages": clients.messages,
                       "open": sum(1 for s in clients.socks if s.ws is not None and not s.ws.closed)})
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
    await clients.session.close()


if __name__ == "__main__":
    asyncio.run(main())
