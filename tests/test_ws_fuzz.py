"""Hostile WebSocket input: any frame gets a reply or a documented close, never a crash."""

import asyncio
import dataclasses
import json

from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app

from .actors import Actor
from .helpers import NeverReadingClient

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
MESSAGE_LIKE = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "auth", "ping", "pong", "status", ""]) | st.text(max_size=8)},
    optional={"execution_id": JSON | st.uuids().map(str), "since": JSON, "feed": JSON, "token": JSON,
              "workflow_id": JSON, "status": JSON},
)
FRAMES = st.lists(
    JSON.map(json.dumps) | MESSAGE_LIKE.map(json.dumps) | st.text(max_size=200)
    | st.integers(1, 3000).map(lambda n: "[" * n) | st.binary(max_size=100),
    min_size=1, max_size=25)
REPLY_TYPES = {"error", "pong", "subscribed", "unsubscribed", "auth_ok", "status", "node", "log", "synced"}


async def exchange(config, frames) -> None:
    async with TestClient(TestServer(create_app(config))) as client:
        user = Actor(client)
        execution = await user.create_execution()
        for path in ("/api/v1/ws", f"/api/v1/ws/executions/{execution['id']}"):
            async with client.ws_connect(path, headers=user.headers) as ws:
                for frame in frames:
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
                # Then a ping: the socket is still open and answers after whatever came before.
                await ws.send_str('{"type": "ping"}')
                while True:
                    msg = await ws.receive(timeout=10)
                    assert msg.type == WSMsgType.TEXT, (msg, path)
                    reply = msg.json()
                    assert reply["type"] in REPLY_TYPES, reply
                    if reply["type"] == "error":
                        assert isinstance(reply["message"], str) and 0 < len(reply["message"]) < 300
                    if reply == {"type": "pong"}:
                        break


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=FRAMES)
def test_random_frames_get_replies_and_the_socket_stays_open(config, frames):
    asyncio.run(exchange(dataclasses.replace(config, ws_outbox_capacity=10_000), frames))


async def test_invalid_utf8_text_closes_with_1007(client, user):
    execution = await user.create_execution()
    raw = await asyncio.to_thread(
        NeverReadingClient, client.port, f"/api/v1/ws/executions/{execution['id']}?access_token={user.token}")
    try:
        payload = b'{"type": "\xff\xfe"}'
        mask = b"\x00\x00\x00\x00"
        raw.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + payload)
        frames = await asyncio.to_thread(raw.read_all_frames)
        closes = [p for opcode, p in frames if opcode == 0x8]
        assert closes and int.from_bytes(closes[0][:2], "big") == 1007
    finally:
        raw.close()


async def test_sockets_per_token_subject_are_limited_with_4429(client_with):
    client = await client_with(ws_max_sockets_per_subject=2)
    user = Actor(client)
    execution = await user.create_execution()
    first, second = await user.ws(execution["id"]).__aenter__(), await user.ws(execution["id"]).__aenter__()
    try:
        async with user.ws(execution["id"]) as third:
            msg = await third.receive(timeout=5)
            assert msg.type == WSMsgType.CLOSE and third.close_code == 4429
        await first.close()
        await asyncio.sleep(0.2)
        async with user.ws(execution["id"]) as again:
            assert (await again.receive(timeout=5)).type == WSMsgType.TEXT, "a freed slot can be used"
        async with Actor(client, "worker").ws(execution["id"]) as other:
            assert (await other.receive(timeout=5)).type == WSMsgType.TEXT, "the limit is per subject"
    finally:
        await second.close()


async def test_a_message_flood_is_cut_to_the_rate_with_one_error_a_second(client_with):
    client = await client_with(ws_messages_per_second=5, ws_message_burst=10, ws_outbox_capacity=10_000)
    user = Actor(client)
    async with client.ws_connect("/api/v1/ws", headers=user.headers) as ws:
        for _ in range(500):
            await ws.send_str('{"type": "ping"}')
        replies = []
        while True:
            msg = await ws.receive(timeout=1)
            if msg.type != WSMsgType.TEXT:
                break
            replies.append(msg.json())
            if len(replies) >= 11:
                break
        pongs = [r for r in replies if r == {"type": "pong"}]
        errors = [r for r in replies if r["type"] == "error"]
        assert 10 <= len(pongs) <= 12 and len(errors) == 1 and "rate limit" in errors[0]["message"]
        await asyncio.sleep(1.5)
        await ws.send_str('{"type": "ping"}')
        while (reply := (await ws.receive(timeout=5)).json()) != {"type": "pong"}:
            assert reply["type"] in ("pong", "error")
