"""Nodes, logs, computed progress, cancellation, resume and the multiplexed socket."""

import asyncio
import os
import sys
import uuid

import psycopg2
import pytest
from aiohttp import WSMsgType

from service.db.state_machine import ILLEGAL_CHANGE
from service.typedefs import hub_key

from .actors import Actor, token_for
from .helpers import drain, multiplexed, next_json, next_status

pytestmark = pytest.mark.both_change_sources


async def execute(sql, statement: str, *params):
    await sql.execute(statement, params)


async def messages_until(ws, predicate, timeout: float = 5.0) -> list[dict]:
    received = []
    while True:
        message = await next_json(ws, timeout)
        received.append(message)
        if predicate(message):
            return received


# -- nodes -----------------------------------------------------------------------------------

async def test_an_execution_gets_a_pending_node_per_workflow_node(user):
    workflow = await user.create_workflow(nodes=[("plan", "Plan"), ("search", "Search"), ("review", "Review")])
    execution = await user.create_execution(workflow["id"])
    status, body = await user.request("GET", f"/api/v1/executions/{execution['id']}/nodes")
    assert status == 200
    assert [(n["node_id"], n["title"], n["status"], n["attempt"]) for n in body["items"]] == [
        ("plan", "Plan", "pending", 0), ("search", "Search", "pending", 0), ("review", "Review", "pending", 0)]


async def test_node_and_log_events_written_in_sql_reach_the_socket_in_seq_order(user, sql):
    execution = await user.create_execution()
    eid = execution["id"]
    async with user.ws(eid) as ws:
        snapshot = [await next_json(ws) for _ in range(4)]
        assert [m["type"] for m in snapshot] == ["status", "node", "node", "synced"]
        await execute(sql, "UPDATE executions SET status='running' WHERE id=%s", eid)
        await execute(sql, "UPDATE execution_nodes SET status='running' WHERE execution_id=%s AND node_id='plan'", eid)
        await execute(sql, "INSERT INTO execution_logs (execution_id, node_id, message) VALUES (%s, 'plan', 'thinking')", eid)
        await execute(sql, "UPDATE execution_nodes SET status='completed', output='{\"steps\": 3}' "
                           "WHERE execution_id=%s AND node_id='plan'", eid)
        received = await messages_until(ws, lambda m: m["type"] == "status" and m["progress"] == 50)
        # Node and log events exactly; the status is a state, so a read that comes late may
        # merge "running" (seq 2) into the latest status (seq 6).
        assert [(m["type"], m["seq"]) for m in received if m["type"] != "status"] == [
            ("node", 3), ("log", 4), ("node", 5)]
        assert [m["seq"] for m in received if m["type"] == "status"] in ([2, 6], [6])
        assert [m["seq"] for m in received] == sorted(m["seq"] for m in received)
        plan_running, line, plan_done = [m for m in received if m["type"] != "status"]
        assert (plan_running["node_id"], plan_running["status"], plan_running["attempt"]) == ("plan", "running", 1)
        assert plan_running["title"] == "Plan" and plan_running["started_at"]
        assert (line["level"], line["node_id"], line["message"]) == ("info", "plan", "thinking")
        assert (plan_done["status"], plan_done["output"], plan_done["output_truncated"]) == (
            "completed", {"steps": 3}, False)


async def test_worker_patches_nodes_through_their_state_machine(user, worker):
    execution = await user.create_execution()
    path = f"/api/v1/executions/{execution['id']}/nodes/plan"
    status, body = await worker.request("PATCH", path, json={"status": "running"})
    assert (status, body["status"], body["attempt"]) == (200, "running", 1)
    status, body = await worker.request("PATCH", path, json={"status": "failed", "error": "timeout"})
    assert (status, body["status"], body["error"]) == (200, "failed", "timeout")
    status, body = await worker.request("PATCH", path, json={"status": "running"})
    assert (status, body["attempt"]) == (200, 2), "a retry bumps the attempt"
    status, body = await worker.request("PATCH", path, json={"status": "completed", "output": {"ok": 1}})
    assert (status, body["output"]) == (200, {"ok": 1})

    status, body = await worker.request("PATCH", path, json={"status": "running"})
    assert (status, body["error"]["code"]) == (409, "conflict")
    status, body = await worker.request("PATCH", f"/api/v1/executions/{execution['id']}/nodes/nope",
                                        json={"status": "running"})
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await worker.request("PATCH", path, json={"status": "exploded"})
    assert (status, body["error"]["code"]) == (422, "validation_failed")
    status, body = await user.request("PATCH", path, json={"status": "skipped"})
    assert (status, body["error"]["code"]) == (403, "forbidden")


async def test_illegal_node_transition_in_sql_raises(user, sql):
    execution = await user.create_execution()
    with pytest.raises(psycopg2.Error) as refused:
        await execute(sql, "UPDATE execution_nodes SET status='completed' WHERE execution_id=%s AND node_id='plan'",
                      execution["id"])
    assert refused.value.pgcode == ILLEGAL_CHANGE


async def test_progress_is_computed_from_nodes_until_a_worker_sets_it(user, worker):
    workflow = await user.create_workflow(nodes=[("a", "A"), ("b", "B"), ("c", "C"), ("d", "D")])
    execution = await user.create_execution(workflow["id"])
    base = f"/api/v1/executions/{execution['id']}"
    await worker.request("PATCH", base, json={"status": "running"})
    await worker.request("PATCH", f"{base}/nodes/a", json={"status": "running"})
    await worker.request("PATCH", f"{base}/nodes/a", json={"status": "completed"})
    await worker.request("PATCH", f"{base}/nodes/b", json={"status": "skipped"})
    status, body = await user.request("GET", base)
    assert body["progress"] == 50
    await worker.request("PATCH", base, json={"progress": 10})
    await worker.request("PATCH", f"{base}/nodes/c", json={"status": "skipped"})
    status, body = await user.request("GET", base)
    assert body["progress"] == 10, "an explicit progress is not overwritten"


# -- logs ------------------------------------------------------------------------------------

async def test_logs_are_appended_one_or_many_and_paged(user, worker):
    execution = await user.create_execution()
    path = f"/api/v1/executions/{execution['id']}/logs"
    status, body = await worker.request("POST", path, json={"message": "hello", "level": "warning"})
    assert status == 201 and [(l["seq"], l["level"]) for l in body["items"]] == [(2, "warning")]
    status, body = await worker.request("POST", path, json={"lines": [
        {"message": f"line {i}", "node_id": "plan" if i % 2 else None} for i in range(7)]})
    assert status == 201 and [l["seq"] for l in body["items"]] == list(range(3, 10))

    seen, after = [], 0
    while after is not None:
        status, body = await user.request("GET", path, params={"after_seq": str(after), "limit": "3"})
        assert status == 200
        seen += [l["message"] for l in body["items"]]
        after = body["next_after_seq"]
    assert seen == ["hello"] + [f"line {i}" for i in range(7)]


@pytest.mark.parametrize("payload, status_code", [
    ({"message": "x", "node_id": "nope"}, 404),
    ({"message": "x", "level": "loud"}, 422),
    ({"level": "info"}, 422),
    ({"lines": []}, 422),
    ({"lines": "x"}, 422),
    ({"message": "nul\u0000"}, 422),
    ({"lines": [{"message": "x"}] * 1001}, 413),
])
async def test_bad_log_requests(user, worker, payload, status_code):
    execution = await user.create_execution()
    path = f"/api/v1/executions/{execution['id']}/logs"
    status, body = await worker.request("POST", path, json=payload)
    assert status == status_code, body
    status, body = await user.request("GET", path)
    assert body["items"] == [], "a refused batch leaves nothing behind"


@pytest.mark.parametrize("params", [{"after_seq": "-1"}, {"after_seq": "x"}, {"limit": "0"}, {"limit": "1001"}])
async def test_bad_log_queries_are_422(user, params):
    execution = await user.create_execution()
    status, body = await user.request("GET", f"/api/v1/executions/{execution['id']}/logs", params=params)
    assert (status, body["error"]["code"]) == (422, "validation_failed")


# -- cancellation ----------------------------------------------------------------------------

async def test_cancelling_a_running_execution_closes_every_socket_with_the_final_status(user, worker, other_user):
    execution = await user.create_execution()
    base = f"/api/v1/executions/{execution['id']}"
    await worker.request("PATCH", base, json={"status": "running"})
    await worker.request("PATCH", f"{base}/nodes/plan", json={"status": "running"})
    sockets = [await user.ws(execution["id"]).__aenter__() for _ in range(3)]
    try:
        for ws in sockets:
            await messages_until(ws, lambda m: m["type"] == "synced")
        status, body = await other_user.request("POST", f"{base}/cancel")
        assert status == 404
        status, body = await user.request("POST", f"{base}/cancel")
        assert (status, body["status"]) == (200, "cancelled")
        for ws in sockets:
            received = await drain(ws)
            assert [(m["type"], m["status"]) for m in received] == [("node", "cancelled"), ("status", "cancelled")]
            assert ws.close_code == 1000
    finally:
        for ws in sockets:
            await ws.close()
    status, body = await user.request("POST", f"{base}/cancel")
    assert (status, body["error"]["code"]) == (409, "conflict")


# -- connect and resume ----------------------------------------------------------------------

async def test_connect_snapshot_is_status_then_nodes_then_the_last_log_lines(client_with):
    client = await client_with(ws_log_tail=3)
    user, worker = Actor(client), Actor(client, "worker")
    execution = await user.create_execution()
    path = f"/api/v1/executions/{execution['id']}/logs"
    await worker.request("POST", path, json={"lines": [{"message": f"m{i}"} for i in range(6)]})
    async with user.ws(execution["id"]) as ws:
        received = [await next_json(ws) for _ in range(6)]
    assert [m["type"] for m in received] == ["status", "node", "node", "log", "log", "log"]
    assert [m["message"] for m in received[3:]] == ["m3", "m4", "m5"]


async def test_resume_since_sends_every_event_after_it_once_in_order(user, worker):
    execution = await user.create_execution()
    base = f"/api/v1/executions/{execution['id']}"
    await worker.request("PATCH", base, json={"status": "running"})                      # 2
    await worker.request("POST", f"{base}/logs", json={"message": "a"})                  # 3
    await worker.request("PATCH", f"{base}/nodes/plan", json={"status": "running"})      # 4
    await worker.request("POST", f"{base}/logs", json={"message": "b"})                  # 5
    await worker.request("PATCH", f"{base}/nodes/plan", json={"status": "completed"})    # 6, progress 50 → 7
    async with user.ws(execution["id"], since="3") as ws:
        received = await messages_until(ws, lambda m: m["type"] == "synced")
        assert [(m["type"], m["seq"]) for m in received] == [
            ("node", 4), ("log", 5), ("node", 6), ("status", 7), ("synced", 7)]
        await worker.request("POST", f"{base}/logs", json={"message": "live"})
        live = await next_json(ws)
        assert (live["type"], live["seq"], live["message"]) == ("log", 8, "live")


async def test_resume_older_than_retention_gets_a_resync_snapshot(user, worker, database_url):
    execution = await user.create_execution()
    base = f"/api/v1/executions/{execution['id']}"
    await worker.request("PATCH", base, json={"status": "running"})
    await worker.request("POST", f"{base}/logs", json={"message": "old"})
    await worker.request("PATCH", base, json={"status": "completed"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "prune", "--older-than", "0",
        env={**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": "x"},
        stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert process.returncode == 0 and b"pruned" in out, out
    status, body = await user.request("GET", f"{base}/logs")
    assert body["items"] == [], out
    status, body = await user.request("GET", base)
    assert body["status"] == "completed", "the execution itself stays"
    async with user.ws(execution["id"], since="2") as ws:
        received = await drain(ws)
    assert received[0]["type"] == "status" and received[0]["resync"] is True
    assert all(m["resync"] for m in received[:-1]) and ws.close_code == 1000
    assert received[-1] == {"type": "synced", "execution_id": execution["id"], "seq": body["seq"]}


# -- one socket, many executions -------------------------------------------------------------


async def test_one_socket_watches_many_executions(user, worker, other_user):
    first, second = await user.create_execution(), await user.create_execution()
    theirs = await other_user.create_execution()
    async with multiplexed(user) as ws:
        await ws.send_json({"type": "subscribe", "execution_id": first["id"]})
        await ws.send_json({"type": "subscribe", "execution_id": second["id"], "since": 1})
        await ws.send_json({"type": "subscribe", "execution_id": theirs["id"]})
        missing = str(uuid.uuid4())
        await ws.send_json({"type": "subscribe", "execution_id": missing})
        received = [await next_json(ws) for _ in range(7)]
        errors = [m for m in received if m["type"] == "error"]
        assert {m["execution_id"] for m in errors} == {theirs["id"], missing}
        assert len(errors) == 2 and len({m["message"] for m in errors}) == 1, "not yours looks like missing"
        assert [m["type"] for m in received if m.get("execution_id") == first["id"]] == [
            "status", "node", "node", "synced"]
        # Up to date already: told so, with nothing before it.
        assert [m for m in received if m.get("execution_id") == second["id"]] == [
            {"type": "synced", "execution_id": second["id"], "seq": 1}]

        await worker.request("PATCH", f"/api/v1/executions/{second['id']}", json={"status": "running"})
        message = await next_status(ws)
        assert (message["execution_id"], message["status"]) == (second["id"], "running")

        await ws.send_json({"type": "unsubscribe", "execution_id": second["id"]})
        assert (await next_json(ws))["type"] == "unsubscribed"
        await worker.request("PATCH", f"/api/v1/executions/{second['id']}", json={"progress": 5})
        await worker.request("PATCH", f"/api/v1/executions/{first['id']}", json={"status": "running"})
        message = await next_status(ws)
        assert message["execution_id"] == first["id"], "nothing more from an unsubscribed execution"
        await worker.request("PATCH", f"/api/v1/executions/{first['id']}", json={"status": "completed"})
        message = await next_status(ws)
        assert message["status"] == "completed"
        await ws.send_json({"type": "ping"})
        assert await next_json(ws) == {"type": "pong"}, "a finished execution does not close this socket"


async def test_feed_streams_status_changes_including_new_executions(user, other_user, worker):
    workflow = await user.create_workflow()
    async with multiplexed(user) as ws:
        await ws.send_json({"type": "subscribe", "feed": "executions", "workflow_id": workflow["id"]})
        assert await next_json(ws) == {"type": "subscribed", "feed": "executions"}
        await other_user.create_execution()
        await user.create_execution()  # another workflow: filtered out
        created = await user.create_execution(workflow["id"])
        message = await next_status(ws)
        assert (message["execution_id"], message["status"]) == (created["id"], "pending")
        await worker.request("PATCH", f"/api/v1/executions/{created['id']}", json={"status": "running"})
        message = await next_status(ws)
        assert (message["execution_id"], message["status"]) == (created["id"], "running")


@pytest.mark.parametrize("frame, fragment", [
    ({"type": "subscribe"}, "no such execution"),
    ({"type": "subscribe", "execution_id": 5}, "no such execution"),
    ({"type": "subscribe", "execution_id": "x" * 5000}, "no such execution"),
    ({"type": "subscribe", "execution_id": str(uuid.uuid4()), "since": -1}, "since"),
    ({"type": "subscribe", "execution_id": str(uuid.uuid4()), "since": "abc"}, "since"),
    ({"type": "subscribe", "execution_id": str(uuid.uuid4()), "since": True}, "since"),
    ({"type": "subscribe", "feed": "everything"}, "feed"),
    ({"type": "subscribe", "feed": "executions", "status": "weird"}, "status"),
    ({"type": "unsubscribe", "execution_id": None}, "no such execution"),
    ({"type": "auth"}, "token"),
    ({"type": "auth", "token": "garbage"}, "auth refused"),
])
async def test_bad_multiplexed_messages_get_an_error_and_the_socket_stays(user, frame, fragment):
    async with multiplexed(user) as ws:
        await ws.send_json(frame)
        reply = await next_json(ws)
        assert reply["type"] == "error" and fragment in reply["message"], reply
        await ws.send_json({"type": "ping"})
        assert await next_json(ws) == {"type": "pong"}


async def test_subscription_limit_and_a_subscribe_flood(client_with):
    client = await client_with(ws_max_subscriptions=3, ws_messages_per_second=10_000, ws_message_burst=10_000)
    user = Actor(client)
    executions = [await user.create_execution() for _ in range(4)]
    async with multiplexed(user) as ws:
        for execution in executions:
            await ws.send_json({"type": "subscribe", "execution_id": execution["id"], "since": 1})
        replies = [await next_json(ws) for _ in range(4)]
        assert [r["type"] for r in replies] == ["synced"] * 3 + ["error"]
        reply = replies[-1]
        assert "limit 3" in reply["message"] and reply["execution_id"] == executions[3]["id"]
        for _ in range(300):
            await ws.send_json({"type": "subscribe", "execution_id": executions[0]["id"], "since": 1})
            await ws.send_json({"type": "unsubscribe", "execution_id": executions[0]["id"]})
        replies = [await next_json(ws) for _ in range(600)]
        assert [r["type"] for r in replies] == ["synced", "unsubscribed"] * 300
        hub = client.app[hub_key]
        assert hub.subscription_count == 2, "the flood left nothing behind"


async def test_token_refresh_keeps_the_socket_past_the_first_expiry(user):
    async with multiplexed(user, token_for(user.sub, ttl=2)) as ws:
        await ws.send_json({"type": "auth", "token": token_for(user.sub, ttl=60)})
        assert (await next_json(ws))["type"] == "auth_ok"
        await asyncio.sleep(3)
        await ws.send_json({"type": "ping"})
        assert await next_json(ws) == {"type": "pong"}


async def test_without_a_refresh_the_socket_closes_4401_at_expiry(user):
    async with multiplexed(user, token_for(user.sub, ttl=2)) as ws:
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.CLOSE and ws.close_code == 4401


async def test_a_refresh_to_another_user_drops_what_it_may_not_see(user, other_user):
    execution = await user.create_execution()
    async with multiplexed(user) as ws:
        await ws.send_json({"type": "subscribe", "execution_id": execution["id"], "since": 1})
        await ws.send_json({"type": "auth", "token": other_user.token})
        replies = [await next_json(ws) for _ in range(2)]
        assert {"type": "unsubscribed", "execution_id": execution["id"], "reason": "no such execution"} in replies
