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
from .test_resilience import NeverReadingClient

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
REPLY_TYPES = {"error", "pong", "subscribed", "unsubscribed", "auth_ok", "status", "node", "log"}


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
