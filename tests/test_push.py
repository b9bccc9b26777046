"""Committed changes, whoever writes them, reach every socket watching the execution."""

import asyncio
import contextlib
import json
import uuid

import pytest
from aiohttp import WSCloseCode, WSMsgType

from service.push.subscription_hub import FEW_WATCHERS
from service.typedefs import hub_key

from .actors import Actor, token_for
from .helpers import drain, drain_snapshot, next_json, next_status, until_status

pytestmark = pytest.mark.both_change_sources

LEGACY_STATUS_FIELDS = {"type", "execution_id", "status", "progress", "message", "result", "error", "execution_time"}


async def test_snapshot_then_sql_update_then_final_close(user, sql):
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        snapshot = await next_status(ws)
        assert LEGACY_STATUS_FIELDS <= snapshot.keys()
        assert snapshot["type"] == "status"
        assert snapshot["execution_id"] == execution["id"]
        assert snapshot["status"] == "pending"
        assert snapshot["seq"] == 1

        await sql.execute("UPDATE executions SET status='running', progress=40 WHERE id=%s", (execution["id"],))
        running = await next_status(ws)
        assert (running["status"], running["progress"], running["seq"]) == ("running", 40, 2)

        await sql.execute(
            "UPDATE executions SET status='completed', result='{\"answer\": 42}' WHERE id=%s", (execution["id"],)
        )
        final = await next_status(ws)
        assert final["status"] == "completed"
        assert final["result"] == {"answer": 42}
        assert final["progress"] == 100
        assert isinstance(final["execution_time"], float) and final["execution_time"] >= 0
        closing = await ws.receive(timeout=5)
        assert closing.type == WSMsgType.CLOSE
        assert ws.close_code == 1000


async def test_sql_updates_reach_three_sockets_in_commit_order_without_duplicates(user, sql):
    execution = await user.create_execution()
    sockets = [await user.ws(execution["id"]).__aenter__() for _ in range(3)]
    try:
        for ws in sockets:
            assert (await next_status(ws))["seq"] == 1
        for progress in range(1, 21):
            status = "running"
            await sql.execute("UPDATE executions SET status=%s, progress=%s WHERE id=%s",
                              (status, progress, execution["id"]))
        await sql.execute("UPDATE executions SET status='failed', error='boom' WHERE id=%s", (execution["id"],))
        for ws in sockets:
            seen = await until_status(ws, "failed")
            seqs = [m["seq"] for m in seen]
            # Consecutive statuses may be merged into the latest, never reordered or repeated.
            assert seqs == sorted(set(seqs)), seqs
            progresses = [m["progress"] for m in seen[:-1]]
            assert progresses == sorted(progresses)
            assert (seen[-1]["seq"], seen[-1]["error"], seen[-1]["progress"]) == (22, "boom", 20)
            assert (await ws.receive(timeout=5)).type == WSMsgType.CLOSE and ws.close_code == 1000
    finally:
        for ws in sockets:
            await ws.close()


@pytest.mark.parametrize("watchers", [3, FEW_WATCHERS + 4])
async def test_sockets_leaving_a_watched_execution_stop_getting_it_and_the_others_do_not(client, user, sql,
                                                                                        watchers):
    """A few watchers are kept in a tuple, more in a set: both ways, leaving and staying work."""
    execution = await user.create_execution()
    sockets = [await user.ws(execution["id"]).__aenter__() for _ in range(watchers)]
    try:
        for ws in sockets:
            await next_status(ws)
        leaving, staying = sockets[:watchers - 2], sockets[watchers - 2:]
        for ws in leaving:
            await ws.close()
        hub = client.app[hub_key]
        async with asyncio.timeout(5):
            while hub.subscription_count != len(staying):
                await asyncio.sleep(0.01)
        await sql.execute("UPDATE executions SET status='running', progress=7 WHERE id=%s", (execution["id"],))
        for ws in staying:
            assert (await next_status(ws))["progress"] == 7
    finally:
        for ws in sockets:
            await ws.close()


async def test_each_commit_is_seen_when_the_writer_waits_for_it(user, sql):
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        await next_json(ws)
        for n in range(1, 6):
            await sql.execute("UPDATE executions SET status='running', message=%s WHERE id=%s",
                              (f"step {n}", execution["id"]))
            message = await next_status(ws)
            assert (message["message"], message["seq"]) == (f"step {n}", n + 1)


async def test_late_joiner_gets_the_current_status(user, worker):
    execution = await user.create_execution()
    path = f"/api/v1/executions/{execution['id']}"
    await worker.request("PATCH", path, json={"status": "running", "progress": 70, "message": "almost"})
    async with user.ws(execution["id"]) as ws:
        message = await next_status(ws)
        assert (message["status"], message["progress"], message["message"], message["seq"]) == (
            "running", 70, "almost", 2)


async def test_a_live_change_and_a_later_snapshot_of_the_same_state_are_the_same_message(user, sql):
    """The live read and the snapshot read build a status from different statements: a client
    that reconnects must see exactly what a watching one saw (nested JSON, escapes, floats)."""
    execution = await user.create_execution()
    eid = execution["id"]
    result = {"é": [1, 2.5, None, 1e-7], "nested": {"b": True, "a": "line\nbreak \"quoted\" ✓"}}
    async with user.ws(eid) as watching:
        await drain_snapshot(watching)
        await sql.execute("UPDATE executions SET status = 'running', progress = 33, message = %s "
                          "WHERE id = %s", ("tab\there, emoji 🚀, <b>", eid))
        await sql.execute("UPDATE executions SET status = 'completed', result = %s WHERE id = %s",
                          (json.dumps(result), eid))
        live = (await until_status(watching, "completed"))[-1]
    async with user.ws(eid) as joining:
        snapshot = await next_status(joining)
    assert live == snapshot
    assert (live["result"], live["message"]) == (result, "tab\there, emoji 🚀, <b>")
    assert isinstance(live["execution_time"], float) and isinstance(live["progress"], int)


async def test_joining_a_finished_execution_gets_the_final_status_and_1000(user, worker):
    execution = await user.create_execution()
    path = f"/api/v1/executions/{execution['id']}"
    await worker.request("PATCH", path, json={"status": "running"})
    await worker.request("PATCH", path, json={"status": "completed", "result": [1, 2, 3]})
    async with user.ws(execution["id"]) as ws:
        message = await next_status(ws)
        assert (message["status"], message["result"]) == ("completed", [1, 2, 3])
        rest = await drain(ws)
        assert [m["type"] for m in rest] == ["node", "node", "synced"]
        assert rest[-1] == {"type": "synced", "execution_id": execution["id"], "seq": message["seq"]}
        assert ws.close_code == 1000
    # A client that already saw the final status is told it is up to date, then closed.
    async with user.ws(execution["id"], since=str(message["seq"])) as ws:
        assert await drain(ws) == [{"type": "synced", "execution_id": execution["id"], "seq": message["seq"]}]
        assert ws.close_code == 1000


async def test_since_skips_what_was_already_seen(user, sql):
    execution = await user.create_execution()
    await sql.execute("UPDATE executions SET status='running', progress=10 WHERE id=%s", (execution["id"],))
    async with user.ws(execution["id"], since="2") as ws:
        # Nothing newer than 2 yet: no snapshot. The first message is the next change.
        await sql.execute("UPDATE executions SET progress=20 WHERE id=%s", (execution["id"],))
        message = await next_status(ws)
        assert (message["seq"], message["progress"]) == (3, 20)
    async with user.ws(execution["id"], since="1") as ws:
        message = await next_status(ws)
        assert (message["seq"], message["progress"]) == (3, 20)


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "", "99999999999999999999999"])
async def test_bad_since_gets_an_error_and_the_snapshot(user, since):
    execution = await user.create_execution()
    async with user.ws(execution["id"], since=since) as ws:
        first = await next_json(ws)
        assert first["type"] == "error" and "since" in first["message"]
        assert (await next_status(ws))["type"] == "status"


# -- authentication and authorisation --------------------------------------------------------

async def test_missing_bad_and_expired_tokens_close_with_4401(client, user):
    import time

    import jwt

    execution = await user.create_execution()
    path = f"/api/v1/ws/executions/{execution['id']}"
    forged = jwt.encode({"sub": user.sub, "role": "user", "exp": time.time() + 60}, "x" * 32, "HS256")
    unsigned = jwt.encode({"sub": user.sub, "role": "user", "exp": time.time() + 60}, None, "none")
    for headers, params in (
        ({}, {}),
        ({"Authorization": "Bearer garbage"}, {}),
        ({"Authorization": f"Bearer {forged}"}, {}),
        ({"Authorization": f"Bearer {token_for(user.sub, ttl=-5)}"}, {}),
        ({}, {"access_token": unsigned}),
    ):
        async with client.ws_connect(path, headers=headers, params=params) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type == WSMsgType.CLOSE, msg
            assert ws.close_code == 4401


async def test_access_token_query_parameter_works_for_browsers(client, user):
    execution = await user.create_execution()
    async with client.ws_connect(f"/api/v1/ws/executions/{execution['id']}",
                                 params={"access_token": user.token}) as ws:
        assert (await next_status(ws))["execution_id"] == execution["id"]


async def test_another_users_execution_looks_missing_4404(user, other_user):
    execution = await user.create_execution()
    reasons = []
    for execution_id in (execution["id"], str(uuid.uuid4()), "not-a-uuid"):
        async with other_user.ws(execution_id) as ws:
            msg = await ws.receive(timeout=5)
            assert msg.type == WSMsgType.CLOSE and ws.close_code == 4404
            reasons.append(msg.extra)
    assert len(set(reasons)) == 1


async def test_socket_closes_with_4401_when_its_token_expires(client, user):
    execution = await user.create_execution()
    short = token_for(user.sub, ttl=2)
    async with client.ws_connect(f"/api/v1/ws/executions/{execution['id']}", params={"access_token": short}) as ws:
        await drain_snapshot(ws)
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.CLOSE and ws.close_code == 4401


# -- client frames ---------------------------------------------------------------------------

async def test_ping_pong_and_malformed_frames_keep_the_socket_usable(user):
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        await drain_snapshot(ws)
        await ws.send_str('{"type": "ping"}')
        assert await next_json(ws) == {"type": "pong"}
        for frame in ("not json", "[1, 2]", '"ping"', "{}", '{"type": 5}', '{"type": "dance"}',
                      '{"type": "' + "x" * 10000 + '"}', "[" * 10000, '{"type": NaN}'):
            await ws.send_str(frame)
            reply = await next_json(ws)
            assert reply["type"] == "error" and reply["message"], frame
            assert len(reply["message"]) < 200
        await ws.send_bytes(b"\x00\x01binary")
        reply = await next_json(ws)
        assert reply["type"] == "error" and "binary" in reply["message"]
        await ws.send_json({"type": "ping"})
        assert await next_json(ws) == {"type": "pong"}


async def test_oversized_client_frame_closes_with_1009(user, config):
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        await drain_snapshot(ws)
        await ws.send_str('{"type": "ping", "pad": "' + "x" * config.ws_max_message_bytes + '"}')
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE and ws.close_code == 1009


@contextlib.asynccontextmanager
async def socket_with_heartbeat(client_with, seconds: float, **ws_options):
    """A socket past its snapshot, on an app of its own whose heartbeat period is `seconds`."""
    client = await client_with(ws_heartbeat_seconds=seconds)
    user = Actor(client)
    execution = await user.create_execution()
    async with client.ws_connect(f"/api/v1/ws/executions/{execution['id']}",
                                 headers=user.headers, **ws_options) as ws:
        await drain_snapshot(ws)
        yield ws, execution["id"]


async def test_protocol_heartbeat_closes_a_peer_that_does_not_answer(client_with):
    async with socket_with_heartbeat(client_with, 0.5, autoping=False) as (ws, _):
        # The server pings; this client never pongs, so the server gives up on it.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                break
            assert msg.type == WSMsgType.PING and asyncio.get_running_loop().time() < deadline


async def test_a_peer_that_answers_pings_stays_through_many_heartbeats(client_with, sql):
    # aiohttp's client answers pings by itself (autoping, while receiving) and sends nothing else.
    async with socket_with_heartbeat(client_with, 0.2) as (ws, execution_id):
        # Seven rounds with nothing to read: a missed answer would have closed it after two.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 1.5)
        await sql.execute("UPDATE executions SET status='running', message='still here' WHERE id=%s",
                          (execution_id,))
        assert (await next_status(ws))["message"] == "still here"


async def test_a_zero_heartbeat_turns_pings_off(client_with):
    async with socket_with_heartbeat(client_with, 0, autoping=False) as (ws, _):
        with pytest.raises(asyncio.TimeoutError):  # a ping would be returned: autoping is off
            await ws.receive(timeout=1)


async def test_a_protocol_ping_from_the_client_gets_its_pong(user):
    async with user.client.ws_connect(f"/api/v1/ws/executions/{(await user.create_execution())['id']}",
                                      headers=user.headers, autoping=False) as ws:
        await drain_snapshot(ws)
        await ws.ping(b"are you there")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")
        await ws.send_json({"type": "ping"})
        assert await next_json(ws) == {"type": "pong"}


# -- large rows, dead listeners, slow clients ------------------------------------------------

async def test_a_1mb_result_reaches_the_socket_intact(user, sql):
    execution = await user.create_execution()
    result = {"chunks": ["%06d" % i + "y" * 94 for i in range(10_000)], "emoji": "🚀✓"}
    async with user.ws(execution["id"]) as ws:
        await next_status(ws)
        await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (execution["id"],))
        await sql.execute("UPDATE executions SET status='completed', result=%s WHERE id=%s",
                          (json.dumps(result), execution["id"]))
        final = (await until_status(ws, "completed"))[-1]
        assert final["result"] == result
        assert len(json.dumps(final["result"])) > 1_000_000


async def test_a_transaction_of_10000_log_lines_and_a_10_mb_result_arrive_whole(user, sql):
    """Read as a client that resumes with `since` when closed 1013 for reading too slowly."""
    execution = await user.create_execution()
    await sql.execute("UPDATE executions SET status = 'running' WHERE id = %s", (execution["id"],))
    result = {"text": "x" * (10 * 1024 * 1024)}
    received: list[dict] = []

    def connect(since: int):
        return user.client.ws_connect(f"/api/v1/ws/executions/{execution['id']}", headers=user.headers,
                                      params={"since": str(since)}, max_msg_size=0)

    async with connect(since=2) as ws:
        await sql.execute("INSERT INTO execution_logs (execution_id, message) "
                          "SELECT %s, 'line ' || n FROM generate_series(1, 10000) AS n", (execution["id"],))
        await sql.execute("UPDATE executions SET status = 'completed', result = %s WHERE id = %s",
                          (json.dumps(result), execution["id"]))
        closed_with = await read_until_close(ws, received)
    while closed_with == WSCloseCode.TRY_AGAIN_LATER:
        async with connect(since=received[-1]["seq"]) as ws:
            closed_with = await read_until_close(ws, received)
    assert closed_with == WSCloseCode.OK
    logs = [m["message"] for m in received if m["type"] == "log"]
    assert logs == [f"line {n}" for n in range(1, 10001)], "every line once, in order"
    final = received[-1]
    assert (final["type"], final["status"]) == ("status", "completed") and final["result"] == result


async def read_until_close(ws, into: list) -> int:
    while (msg := await ws.receive(timeout=30)).type == WSMsgType.TEXT:
        into.append(msg.json())
    return ws.close_code
