"""EventStream against the real aiohttp: a real server, real clients, a real TCP connection.

What event_stream.py assumes about aiohttp (the headers on the transport once prepare() returns,
nothing of aiohttp's in the body before write_eof(), whose last chunk follows ours) is checked
here under both event loops the service may run on, with aiohttp's own client decoding the body.
"""

import asyncio
import contextlib

import aiohttp
import pytest
import uvloop
from aiohttp import web

from service.push.event_stream import HEARTBEAT, EventStream, event_text, http_chunk, sse_chunk
from service.push.messages import Event, synced_event
from service.push.socket_outbox import CLOSE_FINISHED, CLOSE_TOO_SLOW

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=LOOPS)
def run(request):
    return lambda scenario: LOOPS[request.param](asyncio.wait_for(scenario(), timeout=60))


class StreamServer:
    """One SSE route set up as the service's (a StreamResponse, its EventStream started); the
    handler returns once the stream has ended and finish_close() has run."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.stream: EventStream | None = None
        self.ready = loop.create_future()

    async def handler(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        self.stream = EventStream(request, response)
        await self.stream.start(1234)
        self.ready.set_result(None)
        await self.stream.wait_ended()
        await self.stream.finish_close(CLOSE_FINISHED, "", timeout=5)
        return response


async def plain(request: web.Request) -> web.Response:
    return web.Response(text="plain")


@contextlib.asynccontextmanager
async def stream_server():
    side = StreamServer()
    app = web.Application()
    app.router.add_get("/events", side.handler)
    app.router.add_get("/plain", plain)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield side, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def log_event(seq: int, size: int = 10) -> Event:
    return Event("e1", seq, "log", f'{{"seq":{seq},"pad":"{"x" * size}"}}', in_order=True)


def test_the_encoding_of_events_ids_comments_and_chunks():
    in_view = Event("e1", 3, "node", '{"type":"node"}')
    assert event_text(in_view) == b'data: {"type":"node"}\n\n'
    assert event_text(synced_event("e1", 7)) == (
        b'id: 7\ndata: {"type":"synced","execution_id":"e1","seq":7}\n\n')
    assert http_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert HEARTBEAT.sse_chunk == b"8\r\n: ping\n\n\r\n"
    event = log_event(1)
    assert sse_chunk(event) is sse_chunk(event), "built once, kept on the event"
    assert event.sse_chunk == http_chunk(event_text(event))


def test_chunks_arrive_whole_and_in_order_then_the_body_ends(run):
    async def scenario():
        async with stream_server() as (side, base), aiohttp.ClientSession() as session:
            async with session.get(f"{base}/events") as response:
                await side.ready
                events = [log_event(seq, size) for seq, size in enumerate((0, 1, 100, 70_000, 300_000), 1)]
                for event in events:
                    if not side.stream.write_now(sse_chunk(event)):  # behind: the outbox would queue it
                        side.stream.write(sse_chunk(event))
                side.stream.write(sse_chunk(HEARTBEAT))
                side.stream.send_close(CLOSE_FINISHED, "finished", answer_within=5)
                assert response.headers["Transfer-Encoding"] == "chunked"
                body = await response.read()  # to the body's end: a clean last chunk, or this raises
            assert body == b"retry: 1234\n\n" + b"".join(event_text(e) for e in events) + b": ping\n\n"
    run(scenario)


def test_the_connection_serves_the_next_request_after_the_stream(run):
    """Nothing stray after the body's last chunk (aiohttp's write_eof() after ours adds nothing)."""
    async def scenario():
        async with stream_server() as (side, base):
            reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
            writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            await side.ready
            side.stream.write_now(sse_chunk(log_event(1)))
            side.stream.send_close(CLOSE_FINISHED, "finished", answer_within=5)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
            body = await reader.readuntil(b"0\r\n\r\n")
            assert body == http_chunk(b"retry: 1234\n\n") + sse_chunk(log_event(1)) + b"0\r\n\r\n"
            writer.write(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(reader.readuntil(b"plain"), 5)
            assert answer.startswith(b"HTTP/1.1 200")
            writer.close()
    run(scenario)


def test_a_peer_that_does_not_read_is_reported_behind_and_can_be_dropped(run):
    async def scenario():
        async with stream_server() as (side, base):
            reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
            writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            await side.ready
            chunk = sse_chunk(log_event(1, 256 * 1024))
            for _ in range(1000):
                if not side.stream.write_now(chunk):
                    break
                await asyncio.sleep(0)
            else:
                raise AssertionError("never reported behind")
            assert side.stream.paused
            side.stream.send_close(CLOSE_TOO_SLOW, "too slow", answer_within=5)
            await side.stream.wait_ended()
            assert side.stream.closing  # dropped, buffered chunks and all
            writer.close()
    run(scenario)


def test_a_client_gone_ends_the_stream_at_the_first_write_that_finds_it(run):
    async def scenario():
        async with stream_server() as (side, base), aiohttp.ClientSession() as session:
            response = await session.get(f"{base}/events")
            await side.ready
            response.close()  # the connection, not just the response
            for _ in range(100):
                if side.stream.closing:
                    break
                await asyncio.sleep(0.02)
            assert side.stream.write_now(sse_chunk(HEARTBEAT)) is True, "nothing to queue for a gone client"
            await asyncio.wait_for(side.stream.wait_ended(), 1)
    run(scenario)
