"""Server-Sent Events through the hub, read by a raw HTTP client: headers, ids, heartbeats,
`synced`, the end after the final status, resume with Last-Event-ID and since, the feed, and
slow clients; with writes made in plain SQL."""

import asyncio

import psycopg2
import pytest

from service.typedefs import hub_key

from .actors import Actor, auth, token_for
from .helpers import RawEventStream, events_path, scrape, value

pytestmark = pytest.mark.both_change_sources

LOG = "INSERT INTO execution_logs (execution_id, message) VALUES (%s, %s)"


async def open_stream(actor: Actor, execution_id: str, headers: dict | None = None,
                      **params) -> RawEventStream:
    return await RawEventStream.open(actor.client, events_path(execution_id, **params),
                                     {**actor.headers, **(headers or {})})


def datas(events: list[dict]) -> list[dict]:
    return [event["data"] for event in events]


async def test_a_stream_has_the_headers_the_snapshot_synced_then_live_events_with_ids(client, user, sql):
    execution = await user.create_execution()
    eid = execution["id"]
    await sql.execute(LOG, (eid, "before"))  # seq 2
    stream = await open_stream(user, eid)
    try:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        assert stream.headers["transfer-encoding"] == "chunked"
        assert stream.headers["x-request-id"]
        first = await stream.next_block()
        assert first["data"] is None and 1000 <= int(first["retry"]) <= 3000
        snapshot = await stream.events_until(lambda m: m["type"] == "synced")
        assert [m["type"] for m in datas(snapshot)] == ["status", "node", "node", "log", "synced"]
        # A snapshot is a view in workflow order, not a history: no ids, so a stream cut inside it
        # resumes from where it was before; synced carries the seq it brings the client to.
        assert [e["id"] for e in snapshot] == [None, None, None, None, "2"]
        assert snapshot[-1]["data"] == {"type": "synced", "execution_id": eid, "seq": 2}
        status, nodes, log = snapshot[0]["data"], snapshot[1]["data"], snapshot[3]["data"]
        assert (status["status"], status["seq"], nodes["node_id"], log["message"]) == (
            "pending", 1, "plan", "before")

        await sql.execute("UPDATE executions SET status='running', progress=40 WHERE id=%s", (eid,))
        await sql.execute(LOG, (eid, "live"))
        live = [await stream.next_event() for _ in range(2)]
        assert [(e["id"], e["data"]["type"], e["data"]["seq"]) for e in live] == [
            ("3", "status", 3), ("4", "log", 4)]
        assert (live[0]["data"]["status"], live[0]["data"]["progress"], live[1]["data"]["message"]) == (
            "running", 40, "live")
    finally:
        await stream.close()


async def test_heartbeat_comments_keep_an_idle_stream_open(client_with):
    client = await client_with(ws_heartbeat_seconds=0.2)
    user = Actor(client)
    execution = await user.create_execution()
    stream = await open_stream(user, execution["id"])
    try:
        await stream.events_until(lambda m: m["type"] == "synced")
        comments = [await stream.next_block(timeout=2) for _ in range(3)]
        assert [block["comment"] for block in comments] == ["ping"] * 3
    finally:
        await stream.close()


async def test_the_stream_ends_after_the_final_status_and_a_finished_one_after_synced(user, sql):
    execution = await user.create_execution()
    eid = execution["id"]
    stream = await open_stream(user, eid)
    try:
        await stream.events_until(lambda m: m["type"] == "synced")
        await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (eid,))
        await sql.execute("UPDATE executions SET status='completed', result='[1]' WHERE id=%s", (eid,))
        rest = await stream.rest()
        assert datas(rest)[-1]["status"] == "completed" and rest[-1]["id"] == str(datas(rest)[-1]["seq"])
        assert stream.ended, "the body ended with its last chunk, not a dropped connection"
    finally:
        await stream.close()
    final = datas(rest)[-1]["seq"]

    # Joining a finished execution: the final status (an old client's view), synced, the end.
    stream = await open_stream(user, eid)
    events = await stream.rest()
    await stream.close()
    assert [m["type"] for m in datas(events)] == ["status", "node", "node", "synced"]
    assert (datas(events)[0]["status"], events[-1]["id"], stream.ended) == ("completed", str(final), True)

    # Resuming from before the end: what was missed, synced, the end.
    stream = await open_stream(user, eid, {"Last-Event-ID": str(final - 1)})
    events = await stream.rest()
    await stream.close()
    assert [(e["id"], e["data"]["type"]) for e in events] == [(str(final), "status"), (str(final), "synced")]

    # Up to date with a finished execution: 204, which stops an EventSource from reconnecting.
    for headers, params in (({"Last-Event-ID": str(final)}, {}), ({}, {"since": str(final)})):
        stream = await open_stream(user, eid, headers, **params)
        assert stream.status == 204
        await stream.close()


async def test_resume_with_last_event_id_or_since_gets_each_event_once_in_order(user, sql):
    async def running_with_five_lines() -> str:
        eid = (await user.create_execution())["id"]
        await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (eid,))  # seq 2
        for i in range(5):
            await sql.execute(LOG, (eid, f"line {i}"))  # seqs 3..7
        return eid

    def received(events):
        return [(e["id"], e["data"]["type"], e["data"].get("message")) for e in events]

    expected = [("5", "log", "line 2"), ("6", "log", "line 3"), ("7", "log", "line 4"), ("7", "synced", None)]
    # ?since=, Last-Event-ID, and both: the header is what EventSource sends on a reconnect, to
    # the URL it was first given, so it wins.
    for headers, params in (({}, {"since": "4"}), ({"Last-Event-ID": "4"}, {}),
                            ({"Last-Event-ID": "4"}, {"since": "1"})):
        eid = await running_with_five_lines()
        stream = await open_stream(user, eid, headers, **params)
        try:
            assert received(await stream.events_until(lambda m: m["type"] == "synced")) == expected
            await sql.execute(LOG, (eid, "live"))
            assert received([await stream.next_event()]) == [("8", "log", "live")]
        finally:
            await stream.close()

    # A client cut off again and again, resuming each time from the last id it got, while lines
    # are written: every line once, in order.
    eid = await running_with_five_lines()
    written, seen, last_id = [], [], "7"
    for round_ in range(4):
        stream = await open_stream(user, eid, {"Last-Event-ID": last_id})
        try:
            for i in range(3):
                await sql.execute(LOG, (eid, f"round {round_}.{i}"))
                written.append(f"round {round_}.{i}")
            for event in await stream.events_until(lambda m: m.get("message") == f"round {round_}.1"):
                if event["data"]["type"] == "log":
                    seen.append(event["data"]["message"])
                last_id = event["id"]
        finally:
            await stream.close()
    stream = await open_stream(user, eid, {"Last-Event-ID": last_id})
    for event in await stream.events_until(lambda m: m["type"] == "synced"):
        if event["data"]["type"] == "log":
            seen.append(event["data"]["message"])
    await stream.close()
    assert seen == written


async def test_a_stream_cut_inside_its_snapshot_resumes_from_before_it(user, sql):
    """EventSource keeps the last id it got: none inside a snapshot, so a reconnect asks again
    for what it had before (here nothing: a fresh snapshot), never for a seq in the middle of one."""
    execution = await user.create_execution()
    eid = execution["id"]
    for i in range(3):
        await sql.execute(LOG, (eid, f"line {i}"))
    stream = await open_stream(user, eid)
    snapshot = await stream.events_until(lambda m: m["type"] == "synced")
    await stream.close()
    assert [e["id"] for e in snapshot[:-1]] == [None] * (len(snapshot) - 1)


async def test_the_feed_stream_shows_what_its_token_may_see_through_its_filters(
        client, user, other_user, worker):
    workflow = await user.create_workflow()
    streams = {
        "all of mine": await RawEventStream.open(client, "/api/v1/executions/events", user.headers),
        "one workflow": await RawEventStream.open(
            client, f"/api/v1/executions/events?workflow_id={workflow['id']}", user.headers),
        "running only": await RawEventStream.open(
            client, "/api/v1/executions/events?status=running", user.headers),
        "a worker": await RawEventStream.open(client, "/api/v1/executions/events", worker.headers),
    }
    try:
        for stream in streams.values():
            assert stream.status == 200
            subscribed = await stream.next_event()
            assert subscribed["id"] is None
            assert subscribed["data"] == {"type": "subscribed", "feed": "executions"}
        theirs = await other_user.create_execution()
        elsewhere = await user.create_execution()
        mine = await user.create_execution(workflow["id"])
        await worker.request("PATCH", f"/api/v1/executions/{mine['id']}", json={"status": "running"})

        async def statuses(stream) -> list[tuple[str, str]]:
            events = await stream.events_until(lambda m: (m.get("execution_id"), m.get("status")) == (
                mine["id"], "running"))
            assert all(e["id"] is None for e in events), "the feed has no resume: no ids"
            # A status is a state: a `pending` read after it turned `running` is not fed.
            return [(e["data"]["execution_id"], e["data"]["status"]) for e in events
                    if (e["data"]["execution_id"], e["data"]["status"]) != (mine["id"], "pending")]

        assert await statuses(streams["all of mine"]) == [
            (elsewhere["id"], "pending"), (mine["id"], "running")]
        assert await statuses(streams["one workflow"]) == [(mine["id"], "running")]
        assert await statuses(streams["running only"]) == [(mine["id"], "running")]
        assert await statuses(streams["a worker"]) == [
            (theirs["id"], "pending"), (elsewhere["id"], "pending"), (mine["id"], "running")]
        for stream in streams.values():
            with pytest.raises(asyncio.TimeoutError):
                await stream.next_event(timeout=0.3)
    finally:
        for stream in streams.values():
            await stream.close()


async def test_a_client_that_cannot_keep_up_is_dropped_and_resumes(client_with, sql):
    # The queue holds every line (so the resume's catch-up fits); a chunk that cannot leave within
    # the send timeout ends the stream.
    client = await client_with(ws_outbox_capacity=256, ws_send_timeout_seconds=0.5)
    user = Actor(client)
    execution = await user.create_execution()
    eid = execution["id"]
    before = await scrape(client)
    stream = await open_stream(user, eid)
    await stream.events_until(lambda m: m["type"] == "synced")
    # It stops reading; 200 lines of 64 KiB fill the kernel's buffers (megabytes on loopback).
    await sql.execute("INSERT INTO execution_logs (execution_id, message)"
                      " SELECT %s, n || ':' || repeat('x', 65536) FROM generate_series(1, 200) n", (eid,))
    after = before
    for _ in range(100):
        after = await scrape(client)
        if value(after, "aiagent_slow_client_closes_total", reason="queue_full") + value(
                after, "aiagent_slow_client_closes_total", reason="send_timeout") > value(
                before, "aiagent_slow_client_closes_total", reason="queue_full") + value(
                before, "aiagent_slow_client_closes_total", reason="send_timeout"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the slow stream was not dropped")
    # What it had got through is whole; then the connection is gone, without the last chunk.
    got = []
    try:
        while (event := await stream.next_event(timeout=5)) is not None:
            got.append(event)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    await stream.close()
    assert not stream.ended
    last_id = got[-1]["id"] if got else "2"
    resumed = await open_stream(user, eid, {"Last-Event-ID": last_id})
    rest = await resumed.events_until(lambda m: m["type"] == "synced", timeout=10)
    await resumed.close()
    numbers = [int(e["data"]["message"].split(":")[0]) for e in got + rest if e["data"]["type"] == "log"]
    assert numbers == list(range(1, 201)), "every line once, in order, across the drop"
    assert value(await scrape(client), "aiagent_open_event_streams") == 0


async def test_a_stream_ends_when_its_token_expires(user):
    execution = await user.create_execution()
    short_lived = auth(token_for(user.sub, ttl=2))
    stream = await RawEventStream.open(user.client, events_path(execution["id"]), short_lived)
    try:
        events = await stream.rest(timeout=10)
        assert [m["type"] for m in datas(events)] == ["status", "node", "node", "synced", "error"]
        assert datas(events)[-1]["message"] == "token expired" and stream.ended
    finally:
        await stream.close()


async def test_a_client_that_leaves_is_noticed_by_the_next_heartbeat_at_the_latest(client_with):
    client = await client_with(ws_heartbeat_seconds=0.2)
    user = Actor(client)
    execution = await user.create_execution()
    hub = client.app[hub_key]
    before = hub.subscription_count
    stream = await open_stream(user, execution["id"])
    await stream.events_until(lambda m: m["type"] == "synced")
    assert hub.subscription_count == before + 1
    assert value(await scrape(client), "aiagent_open_event_streams") == 1
    await stream.close()
    for _ in range(50):
        if hub.subscription_count == before:
            break
        await asyncio.sleep(0.05)
    assert hub.subscription_count == before
    assert value(await scrape(client), "aiagent_open_event_streams") == 0


async def test_a_stream_opened_while_the_database_is_away_ends_at_once_for_the_client_to_return(
        client, user, monkeypatch):
    execution = await user.create_execution()
    hub = client.app[hub_key]

    async def database_away(*args, **kwargs):
        raise psycopg2.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(hub, "read_catch_up", database_away)
    stream = await open_stream(user, execution["id"])
    events = await stream.rest()
    await stream.close()
    # A 200 that ends, not an error status: EventSource reconnects after `retry` only then.
    assert stream.status == 200 and stream.ended
    assert datas(events) == [{"type": "error", "message": "the database is unavailable; reconnect"}]
    monkeypatch.undo()
    stream = await open_stream(user, execution["id"])
    snapshot = datas(await stream.events_until(lambda m: m["type"] == "synced"))
    assert snapshot[0]["type"] == "status", "back: the snapshot, then synced"
    await stream.close()
