"""FrameTransport against the real aiohttp: a real server, a real client, a real TCP connection.

Everything the push path assumes about aiohttp's internals is checked here, under both event
loops the service may run on (uvloop in production, asyncio's own in the other tests), so an
aiohttp or uvloop release that breaks an assumption fails this file, not production.
"""

import asyncio
import contextlib
import struct

import pytest
import uvloop
from aiohttp import WSMsgType

from service.push.frame_transport import FrameTransport, ping_frame, pong_frame, text_frame

from .socket_pairs import RawClient, connected, numbered, server

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=LOOPS)
def run(request):
    """Run a scenario to its end on a fresh event loop of each kind."""
    return lambda scenario: LOOPS[request.param](asyncio.wait_for(scenario(), timeout=60))


async def write_until_paused(frames: FrameTransport, size: int = 256 * 1024) -> int:
    """Numbered frames from 0 until the transport reports the peer behind, and still does a moment
    later (the kernel's socket buffers grow for a while first); how many were written."""
    for n in range(1000):  # 256 MiB at most: far beyond any kernel's socket buffers
        frames.write(text_frame(numbered(n, size)))
        if frames.paused:
            await asyncio.sleep(0.2)
            if frames.paused:
                return n + 1
    raise AssertionError("the transport never reported the peer behind")


def test_text_frame_lengths():
    assert text_frame("a") == b"\x81\x01a"
    assert text_frame("é" * 100)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame("x" * 70_000)[:10] == b"\x81\x7f" + struct.pack("!Q", 70_000)


def test_frames_arrive_whole_and_in_order_then_the_close(run):
    async def scenario():
        texts = ["", "a", "é" * 62, "x" * 125, "x" * 126, "y" * 65535, "z" * 65536, numbered(7, 300_000)]
        async with connected(autoping=False) as (side, ws):
            for text in texts:
                side.frames.write(text_frame(text))
            side.frames.write(ping_frame())
            side.frames.write(pong_frame(b"p" * 200))  # cut to the 125 bytes a control frame may carry
            side.frames.send_close(1000, "finished", answer_within=5)
            assert side.frames.closing is False  # our close frame is out; the connection is not
            for text in texts:
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data) == (WSMsgType.TEXT, text)
            assert (await ws.receive(timeout=5)).type == WSMsgType.PING
            pong = await ws.receive(timeout=5)
            assert (pong.type, pong.data) == (WSMsgType.PONG, b"p" * 125)
            closing = await ws.receive(timeout=5)
            assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 1000, "finished")
            # The client answered: the server's read loop ended on that answer and closed the connection.
            assert (await side.read_ended).type == WSMsgType.CLOSE
            assert ws.close_code == 1000
    run(scenario)


def test_a_peer_that_stops_reading_pauses_the_writes_and_drain_waits_until_it_reads(run):
    async def scenario():
        async with connected() as (side, ws):
            assert not side.frames.paused
            written = await write_until_paused(side.frames)
            assert side.frames.write_now(text_frame("not now")) is False  # the caller queues it
            drained = asyncio.ensure_future(side.frames.drain())
            await asyncio.sleep(0.3)
            assert not drained.done(), "drain() returned while the peer read nothing"
            for n in range(written):
                msg = await ws.receive(timeout=5)
                assert msg.data[:8] == f"{n:08d}" and len(msg.data) == 256 * 1024
            await asyncio.wait_for(drained, timeout=5)
            assert not side.frames.paused
            assert side.frames.write_now(text_frame("after")) is True
            assert (await ws.receive(timeout=5)).data == "after"
    run(scenario)


def test_a_peer_that_is_gone_is_noticed_even_mid_drain(run):
    async def scenario():
        async with server() as (side, port):
            client = await RawClient.connect(port)
            await side.ready
            await write_until_paused(side.frames)
            drained = asyncio.ensure_future(side.frames.drain())
            await asyncio.sleep(0.1)
            client.writer.transport.abort()  # the peer's host is gone: a reset, no close frame
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(drained, timeout=5)
            assert side.frames.closing  # so nothing more is written (uvloop would raise)
            assert side.frames.write_now(text_frame("to nobody")) is True  # dropped, nothing to queue
            assert (await asyncio.wait_for(side.read_ended, timeout=5)).type == WSMsgType.CLOSED
    run(scenario)


def test_a_client_busy_when_the_close_arrives_still_sees_our_code(run):
    """Why the close is not WebSocketResponse.close(): with the server's read loop in receive(),
    aiohttp would close the connection before this client could answer, and it would see 1006."""
    async def scenario():
        async with connected() as (side, ws):
            side.frames.write(text_frame("last"))
            side.frames.send_close(1013, "too slow", answer_within=5)
            await asyncio.sleep(0.2)  # busy elsewhere
            assert (await ws.receive(timeout=5)).data == "last"
            closing = await ws.receive(timeout=5)
            assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 1013, "too slow")
            assert ws.close_code == 1013
            assert (await side.read_ended).type == WSMsgType.CLOSE
    run(scenario)


def test_a_peer_that_does_not_answer_our_close_is_dropped_after_answer_within(run):
    async def scenario():
        async with server() as (side, port):
            client = await RawClient.connect(port)
            await side.ready
            loop = asyncio.get_running_loop()
            started = loop.time()
            side.frames.send_close(1001, "server going away", answer_within=0.3)
            opcode, payload = await client.read_frame()
            assert (opcode, payload) == (0x8, struct.pack("!H", 1001) + b"server going away")
            assert await asyncio.wait_for(client.reader.read(), timeout=5) == b""  # the server closed
            assert 0.25 < loop.time() - started < 3
            await asyncio.wait_for(side.read_ended, timeout=5)
            client.writer.close()
    run(scenario)


def test_a_peer_that_closes_first_is_answered(run):
    async def scenario():
        async with connected() as (side, ws):
            await ws.close(code=4000, message=b"bye")
            ended = await side.read_ended
            assert (ended.type, ended.data, ended.extra) == (WSMsgType.CLOSE, 4000, "bye")
            assert ws.close_code == 1000  # the server's answer reached the client
    run(scenario)


def test_abort_drops_the_connection_without_a_close_frame(run):
    async def scenario():
        async with connected() as (side, ws):
            side.frames.write(text_frame("before"))
            assert (await ws.receive(timeout=5)).data == "before"
            side.frames.abort()
            assert side.frames.closing
            side.frames.abort()  # again, harmlessly (the heartbeat may drop a peer already gone)
            msg = await ws.receive(timeout=5)
            assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
            assert ws.close_code == 1006
    run(scenario)
