"""One user never reads, watches, changes or cancels another user's execution, by any route."""

import pytest
from aiohttp import WSMsgType

from .actors import Actor
from .helpers import RawEventStream, events_path, next_json, next_status

REST_ROUTES = [
    ("GET", "/api/v1/executions/{id}", None),
    ("PATCH", "/api/v1/executions/{id}", {"progress": 5}),
    ("POST", "/api/v1/executions/{id}/cancel", None),
    ("GET", "/api/v1/executions/{id}/nodes", None),
    ("PATCH", "/api/v1/executions/{id}/nodes/plan", {"status": "running"}),
    ("GET", "/api/v1/executions/{id}/logs", None),
    ("POST", "/api/v1/executions/{id}/logs", {"message": "sneaky"}),
    ("GET", "/api/v1/executions/{id}/events", None),
]


@pytest.fixture
async def victim_execution(user, worker):
    execution = await user.create_execution()
    await worker.request("PATCH", f"/api/v1/executions/{execution['id']}", json={"status": "running"})
    return execution


@pytest.mark.parametrize("method, path, body", REST_ROUTES)
async def test_another_user_gets_404_from_every_execution_route(victim_execution, other_user, user, method, path, body):
    status, reply = await other_user.request(method, path.format(id=victim_execution["id"]), json=body)
    assert (status, reply["error"]["code"], reply["error"]["message"]) == (404, "not_found", "no such execution")
    status, current = await user.request("GET", f"/api/v1/executions/{victim_execution['id']}")
    assert (current["status"], current["progress"], current["seq"]) == ("running", 0, 2), "nothing changed"
    status, logs = await user.request("GET", f"/api/v1/executions/{victim_execution['id']}/logs")
    assert logs["items"] == []


async def test_another_user_cannot_see_or_use_the_workflow(user, other_user):
    workflow = await user.create_workflow()
    status, reply = await other_user.request("GET", f"/api/v1/workflows/{workflow['id']}")
    assert status == 404
    status, reply = await other_user.request("POST", "/api/v1/executions", json={"workflow_id": workflow["id"]})
    assert status == 422 and "workflow_id" in reply["error"]["details"]["fields"]
    status, listing = await other_user.request("GET", "/api/v1/workflows")
    assert workflow["id"] not in [w["id"] for w in listing["items"]]


async def test_lists_show_only_your_own(victim_execution, other_user):
    for query in ({}, {"status": "running"}, {"workflow_id": victim_execution["workflow_id"]}):
        status, listing = await other_user.request("GET", "/api/v1/executions", params=query)
        assert status == 200 and victim_execution["id"] not in [e["id"] for e in listing["items"]]


async def test_another_user_cannot_watch_by_any_socket(victim_execution, other_user, user, worker):
    async with other_user.ws(victim_execution["id"]) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE and ws.close_code == 4404
    async with other_user.ws(victim_execution["id"], since="0") as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE and ws.close_code == 4404

    async with other_user.client.ws_connect("/api/v1/ws", headers=other_user.headers) as ws:
        await ws.send_json({"type": "subscribe", "execution_id": victim_execution["id"], "since": 0})
        reply = await next_json(ws)
        assert (reply["type"], reply["message"]) == ("error", "no such execution")
        await ws.send_json({"type": "subscribe", "feed": "executions"})
        assert (await next_json(ws))["type"] == "subscribed"
        # The victim's execution changes; the other user's feed stays silent about it, and
        # shows its own changes.
        await worker.request("PATCH", f"/api/v1/executions/{victim_execution['id']}", json={"progress": 9})
        own = await other_user.create_execution()
        message = await next_status(ws)
        assert message["execution_id"] == own["id"]


async def test_another_user_cannot_watch_by_any_event_stream(victim_execution, client, other_user, worker):
    eid = victim_execution["id"]
    for headers, path in ((other_user.headers, events_path(eid)),
                          (other_user.headers, events_path(eid, since="0")),
                          (other_user.headers, events_path(eid, since="1")),
                          ({**other_user.headers, "Last-Event-ID": "1"}, events_path(eid)),
                          ({}, events_path(eid, access_token=other_user.token))):
        stream = await RawEventStream.open(client, path, headers)
        body = await stream.json_body()
        await stream.close()
        assert (stream.status, body["error"]["code"], body["error"]["message"]) == (
            404, "not_found", "no such execution")
    # No token at all: 401 before anything is looked up.
    stream = await RawEventStream.open(client, events_path(eid), {})
    body = await stream.json_body()
    await stream.close()
    assert (stream.status, body["error"]["code"]) == (401, "unauthorized")

    # The other user's feed stays silent about the victim's execution, and shows its own.
    feed = await RawEventStream.open(client, "/api/v1/executions/events", other_user.headers)
    try:
        assert (await feed.next_event())["data"]["type"] == "subscribed"
        await worker.request("PATCH", f"/api/v1/executions/{eid}", json={"progress": 9})
        own = await other_user.create_execution()
        message = (await feed.next_event())["data"]
        assert (message["type"], message["execution_id"]) == ("status", own["id"])
    finally:
        await feed.close()


async def test_workers_and_admins_see_everything(victim_execution, client):
    for role in ("worker", "admin"):
        actor = Actor(client, role)
        status, body = await actor.request("GET", f"/api/v1/executions/{victim_execution['id']}")
        assert status == 200
        async with actor.ws(victim_execution["id"]) as ws:
            assert (await next_status(ws))["execution_id"] == victim_execution["id"]
        stream = await RawEventStream.open(client, events_path(victim_execution["id"]), actor.headers)
        event = await stream.next_event()
        await stream.close()
        assert (event["data"]["type"], event["data"]["execution_id"]) == ("status", victim_execution["id"])
