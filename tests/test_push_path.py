"""The push path's fast lane over real sockets: frames written at once to a socket that keeps up,
a writer task only for one that does not, latest-wins status and never-dropped node and log events
while it is backed up, the close codes a client sees; then the hub's own prepared reads and the
push metrics, through the whole app."""

import asyncio
import json

import aiopg
import pytest
from aiohttp import WSMsgType

from service.metrics import Metrics
from service.push.messages import Event, synced_event
from service.push.open_connections import OpenConnections
from service.push.socket_outbox import SocketOutbox
from service.push.subscription_hub import CATCH_UP_READER, LIVE_READER
from service.typedefs import hub_key

from .actors import Actor
from .helpers import (
    RawEventStream,
    drain_snapshot,
    events_path,
    multiplexed,
    next_json,
    next_status,
    scrape,
    until_synced,
    value,
)
from .socket_pairs import connected, numbered

pytestmark = pytest.mark.both_change_sources

FILLER_CHARS = 256 * 1024


def status(seq: int, message: str = "", terminal: bool = False) -> Event:
    return Event("e1", seq, "status", f'{{"type":"status","seq":{seq},"message":"{message}"}}', terminal=terminal)


def node(seq: int) -> Event:
    return Event("e1", seq, "node", f'{{"type":"node","seq":{seq}}}')


def log_line(seq: int, size: int = 40) -> Event:
    return Event("e1", seq, "log", numbered(seq, size))


@pytest.fixture
async def outbox_socket():
    """A real socket, an aiohttp client on it (the test decides when it reads), and a maker of
    the SocketOutbox on its server side, made as the service makes it: (make, server side, client)."""
    async with connected() as (side, ws):
        def make(capacity: int = 64, send_timeout: float = 5, **options) -> SocketOutbox:
            box = SocketOutbox(side.frames, capacity=capacity, send_timeout=send_timeout, **options)
            side.finish = box.finish  # the end of the read loop completes the close, as in the service
            return box
        yield make, side, ws


async def back_up(box: SocketOutbox, side) -> list[Event]:
    """Log events big enough that the client, not reading, falls behind and stays behind (the
    kernel's buffers grow for a while first): the offers after these queue. Returns them."""
    events = []
    for seq in range(1, 1000):
        events.append(log_line(seq, FILLER_CHARS))
        box.offer(events[-1])
        if side.frames.paused:
            await asyncio.sleep(0.2)
            if side.frames.paused:
                return events
    raise AssertionError("the client never fell behind")


def slow_client_closes(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value("aiagent_slow_client_closes_total", {"reason": reason})


async def received(ws, count: int) -> list[str]:
    return [(await ws.receive(timeout=10)).data for _ in range(count)]


async def assert_closed_with(ws, code: int, reason: str) -> None:
    closing = await ws.receive(timeout=10)
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, code, reason)
    assert ws.close_code == code


async def test_an_idle_socket_is_written_at_once_without_a_task(outbox_socket):
    make, side, ws = outbox_socket
    box = make()
    tasks = len(asyncio.all_tasks())
    assert box.offer(status(1, "a")) and box.offer(status(2, "b"))
    assert not box.offer(status(2, "b")), "not needed twice"
    assert len(asyncio.all_tasks()) == tasks
    assert await received(ws, 2) == [status(1, "a").text, status(2, "b").text]


async def test_a_backed_up_socket_sends_the_latest_status_and_every_node_and_log_in_order(outbox_socket):
    make, side, ws = outbox_socket
    box = make()
    backlog = await back_up(box, side)
    seq = len(backlog)
    box.offer(status(seq + 1, "older"))
    box.offer(status(seq + 2, "newer"))  # replaces the queued older one: latest wins
    box.send_text('{"type":"pong"}')  # a reply keeps its place
    box.offer(log_line(seq + 3))
    box.offer(node(seq + 4))
    box.offer(status(seq + 5, "older again"))
    box.offer(status(seq + 6, "newest"))
    box.offer(log_line(seq + 7))
    expected = [e.text for e in backlog] + [
        status(seq + 2, "newer").text, '{"type":"pong"}', log_line(seq + 3).text, node(seq + 4).text,
        status(seq + 6, "newest").text, log_line(seq + 7).text]
    assert await received(ws, len(expected)) == expected
    # Caught up: the writer is gone and the next event goes straight out again.
    await asyncio.sleep(0.1)
    tasks = len(asyncio.all_tasks())
    box.offer(status(seq + 8, "live"))
    assert len(asyncio.all_tasks()) == tasks
    assert await received(ws, 1) == [status(seq + 8, "live").text]


async def test_a_terminal_status_is_the_last_message_then_1000(outbox_socket):
    make, side, ws = outbox_socket
    box = make()
    box.offer(status(1))
    box.offer(status(2, "done", terminal=True))
    assert not box.offer(status(3)), "nothing after the final status"
    assert await received(ws, 2) == [status(1).text, status(2, "done", terminal=True).text]
    await assert_closed_with(ws, 1000, "finished")
    assert (await side.read_ended).type == WSMsgType.CLOSE  # the client answered; the handshake is whole


async def test_a_terminal_status_behind_a_backlog_closes_1000_after_everything_before_it(outbox_socket):
    make, side, ws = outbox_socket
    box = make()
    backlog = await back_up(box, side)
    seq = len(backlog)
    box.offer(node(seq + 1))
    box.offer(status(seq + 2, "done", terminal=True))
    box.offer(log_line(seq + 3))  # after the final status: never sent
    expected = [e.text for e in backlog] + [node(seq + 1).text, status(seq + 2, "done", terminal=True).text]
    assert await received(ws, len(expected)) == expected
    await assert_closed_with(ws, 1000, "finished")


async def test_a_full_queue_closes_1013_and_is_counted(outbox_socket):
    make, side, ws = outbox_socket
    metrics = Metrics()
    box = make(capacity=4, metrics=metrics)
    backlog = await back_up(box, side)
    for n in range(8):
        box.send_text(f'{{"n":{n}}}')  # replies never merge: the queue overflows
    assert box.closing
    texts = await received(ws, len(backlog))
    assert texts == [e.text for e in backlog]
    # What was queued is dropped with the close: the client resumes from its last seq instead.
    await assert_closed_with(ws, 1013, "too slow")
    assert slow_client_closes(metrics, "queue_full") == 1


async def test_a_frame_that_cannot_leave_within_the_send_timeout_closes_1013_and_is_counted(outbox_socket):
    make, side, ws = outbox_socket
    metrics = Metrics()
    box = make(send_timeout=0.3, metrics=metrics)
    backlog = await back_up(box, side)
    box.offer(status(len(backlog) + 1))
    await asyncio.sleep(1)  # the client reads nothing for longer than the send timeout
    assert box.closing
    assert slow_client_closes(metrics, "send_timeout") == 1
    # Everything written before the close still reaches a client that reads again, then the 1013.
    texts = []
    while (msg := await ws.receive(timeout=10)).type == WSMsgType.TEXT:
        texts.append(msg.data)
    assert texts[:len(backlog)] == [e.text for e in backlog]
    assert texts[len(backlog):] in ([], [status(len(backlog) + 1).text])
    assert (msg.type, msg.data, msg.extra, ws.close_code) == (WSMsgType.CLOSE, 1013, "too slow", 1013)


def sent(metrics: Metrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("aiagent_messages_sent_total", {"type": kind})


async def test_messages_are_counted_as_they_leave_not_as_they_are_offered(outbox_socket):
    """A status replaced in the queue by a newer one, and a live event held during a snapshot
    that the snapshot makes redundant, are never written: aiagent_messages_sent_total does not
    count them. Everything the client receives is counted once."""
    make, side, ws = outbox_socket
    metrics = Metrics()
    box = make(metrics=metrics)
    backlog = await back_up(box, side)
    box.offer(status(len(backlog) + 1, "replaced"))
    box.offer(status(len(backlog) + 2, "latest"))  # latest wins while both wait in the queue
    texts = await received(ws, len(backlog) + 1)
    assert texts[-1] == status(len(backlog) + 2, "latest").text
    assert (sent(metrics, "log"), sent(metrics, "status")) == (len(backlog), 1)

    box.hold("e2")
    box.offer(Event("e2", 5, "status", '{"type":"status","execution_id":"e2","seq":5}'))
    box.offer_snapshot("e2", [Event("e2", 6, "status", '{"type":"status","execution_id":"e2","seq":6}')],
                       synced=synced_event("e2", 6))
    texts = await received(ws, 2)
    assert [json.loads(t)["type"] for t in texts] == ["status", "synced"]
    assert (sent(metrics, "status"), sent(metrics, "synced")) == (2, 1)


async def test_live_events_wait_while_held_and_are_never_sent_twice(outbox_socket):
    make, side, ws = outbox_socket
    box = make()
    box.hold("e1")
    box.offer(status(3, "live"))  # arrives between subscribing and the snapshot
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.2)
    synced = synced_event("e1", 3)
    box.offer_snapshot("e1", [status(3, "live")], synced=synced)
    box.offer(status(4))
    assert await received(ws, 3) == [status(3, "live").text, synced.text, status(4).text]


async def test_a_connection_that_opens_once_a_shutdown_has_begun_is_told_to_go_away_too(outbox_socket):
    """Its handshake was under way when every open connection was closed."""
    make, _, ws = outbox_socket
    connections = OpenConnections()
    connections.close_all(1001, "server going away")
    connections.add(make())
    await assert_closed_with(ws, 1001, "server going away")


async def test_a_client_that_closes_first_is_answered_and_nothing_more_is_sent(outbox_socket):
    make, side, ws = outbox_socket
    box = make()
    box.offer(status(1))
    assert await received(ws, 1) == [status(1).text]
    await ws.close(code=1000)
    assert (await side.read_ended).type == WSMsgType.CLOSE
    assert ws.close_code == 1000  # our answer reached it
    assert not box.offer(status(2))


async def test_hub_reads_survive_losing_their_connection(user, sql, database_url):
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        await next_status(ws)
        await sql.execute("UPDATE executions SET status='running', message='one' WHERE id=%s", (execution["id"],))
        assert (await next_status(ws))["message"] == "one"
        async with aiopg.connect(database_url, enable_hstore=False) as conn:
            async with conn.cursor() as cur:
                await cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = %s", (LIVE_READER,))
        await sql.execute("UPDATE executions SET message='two' WHERE id=%s", (execution["id"],))
        # The first read fails; the reconcile (1 s in tests) reads again on a fresh connection.
        assert (await next_status(ws, timeout=10))["message"] == "two"
        await sql.execute("UPDATE executions SET message='three' WHERE id=%s", (execution["id"],))
        assert (await next_status(ws))["message"] == "three"


async def test_a_new_subscriber_is_served_after_the_catch_up_connection_was_terminated(user, database_url):
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        await drain_snapshot(ws)
    async with aiopg.connect(database_url, enable_hstore=False) as conn:
        async with conn.cursor() as cur:
            await cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = %s", (CATCH_UP_READER,))
            assert (await cur.fetchone())[0] >= 1
    # A terminated backend is noticed (its connection closes), and the next read opens a new one.
    async with user.ws(execution["id"]) as ws:
        snapshot = await drain_snapshot(ws)
        assert snapshot[0]["execution_id"] == execution["id"]


async def test_a_read_that_fails_closes_the_socket_1011_or_fails_that_subscription(client_with):
    """A failure of ours, not the client's: a clear close code to reconnect on, not a dropped connection."""
    # A negative log tail makes PostgreSQL refuse every snapshot read (LIMIT must not be negative).
    client = await client_with(ws_log_tail=-1)
    user = Actor(client)
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        closing = await ws.receive(timeout=10)
        assert (closing.type, ws.close_code) == (WSMsgType.CLOSE, 1011)
    # On the multiplexed socket only that subscription fails; the socket stays and answers.
    async with client.ws_connect("/api/v1/ws", headers=user.headers) as ws:
        await ws.send_json({"type": "subscribe", "execution_id": execution["id"]})
        refused = await ws.receive_json(timeout=10)
        assert (refused["type"], refused["execution_id"]) == ("error", execution["id"])
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=5))["type"] == "pong"
    status, body = await user.request("GET", f"/api/v1/executions/{execution['id']}")
    assert (status, body["id"]) == (200, execution["id"])
    # The subscription and the socket were released: nothing left behind in the hub.
    assert client.app[hub_key].subscription_count == 0


async def test_changes_committed_together_leave_in_seq_order_on_every_socket(client, user, sql):
    """Changes committed in one transaction: each socket gets them in seq
    order, the status as it is now (a status is a row: the `running` in between is replaced by
    the newer state), a single-execution socket closes after the final one, and each message is
    counted once per socket that got it, with one latency sample."""
    execution = await user.create_execution()
    eid = execution["id"]
    async with user.ws(eid) as single, multiplexed(user) as multi:
        await drain_snapshot(single)
        await multi.send_json({"type": "subscribe", "execution_id": eid})
        await drain_snapshot(multi)
        before = await scrape(client)
        await sql.execute(
            "BEGIN;"
            " UPDATE executions SET status = 'running' WHERE id = %s;"
            " INSERT INTO execution_logs (execution_id, message) VALUES (%s, 'working');"
            " INSERT INTO execution_logs (execution_id, message) VALUES (%s, 'wrapping up');"
            " UPDATE executions SET status = 'completed' WHERE id = %s;"
            " COMMIT", (eid,) * 4)
        expected = [("log", "working"), ("log", "wrapping up"), ("status", "completed")]
        for ws in (multi, single):
            got = [await next_json(ws) for _ in expected]
            assert [(m["type"], m.get("status") or m.get("message")) for m in got] == expected
            assert [m["seq"] for m in got] == sorted({m["seq"] for m in got})
        closing = await single.receive(timeout=5)
        assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 1000, "finished")
        after = await scrape(client)
    for kind, messages in (("status", 1), ("log", 2)):
        assert value(after, "aiagent_messages_sent_total", type=kind) == value(
            before, "aiagent_messages_sent_total", type=kind) + 2 * messages  # on two sockets
    # One latency sample per message, not per socket.
    assert value(after, "aiagent_commit_to_send_seconds_count") == value(
        before, "aiagent_commit_to_send_seconds_count") + 3


async def test_messages_sent_match_what_the_sockets_received_on_every_path(client, user, sql):
    """aiagent_messages_sent_total against what a client received, by type: a snapshot and its
    synced, live changes, on a socket and on an event stream, the feed, a catch-up after a
    reconnect with `since`."""
    execution = await user.create_execution()
    eid = execution["id"]
    got: list[dict] = []

    async def until_pong(ws) -> None:
        # Whatever was written before the pong has arrived once the pong has.
        await ws.send_json({"type": "ping"})
        while (message := await next_json(ws))["type"] != "pong":
            got.append(message)

    before = await scrape(client)
    async with user.ws(eid) as single, multiplexed(user) as feed:
        await feed.send_json({"type": "subscribe", "feed": "executions"})
        assert await next_json(feed) == {"type": "subscribed", "feed": "executions"}
        got.extend(await drain_snapshot(single))
        resume_from = got[-1]["seq"]
        stream = await RawEventStream.open(client, events_path(eid), user.headers)
        try:
            snapshot = await stream.events_until(lambda m: m["type"] == "synced")
            got.extend(event["data"] for event in snapshot)
            await sql.execute("INSERT INTO execution_logs (execution_id, message) VALUES (%s, 'hello')",
                              (eid,))
            await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (eid,))
            got.extend([(await stream.next_event())["data"], (await stream.next_event())["data"]])
        finally:
            await stream.close()
        got.extend([await next_json(single), await next_json(single)])
        while (message := await next_json(feed))["type"] != "status" or message["status"] != "running":
            got.append(message)
        got.append(message)
        await until_pong(single)
        await until_pong(feed)
    async with user.ws(eid, since=resume_from) as again:
        got.extend(await until_synced(again))
        got.append({"type": "synced"})
        await until_pong(again)
    after = await scrape(client)
    for kind in ("status", "node", "log", "synced"):
        counted = value(after, "aiagent_messages_sent_total", type=kind) - value(
            before, "aiagent_messages_sent_total", type=kind)
        assert (kind, counted) == (kind, sum(m["type"] == kind for m in got))


async def test_push_metrics_count_messages_latency_and_corrections(client, user, sql):
    execution = await user.create_execution()
    # The creation's own announcement must be handled before counting starts: if it came after
    # the socket below subscribed, it would be timed (commit_to_send_seconds) though the snapshot
    # made it redundant. Announcements are handled in commit order, so a later commit's message
    # arriving proves it.
    later = await user.create_execution()
    async with user.ws(later["id"]) as ws:
        await drain_snapshot(ws)
        await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (later["id"],))
        assert (await next_json(ws))["status"] == "running"
    async with user.ws(execution["id"]) as ws:
        await drain_snapshot(ws)
        before = await scrape(client)
        await sql.execute("INSERT INTO execution_logs (execution_id, message) VALUES (%s, 'hello')",
                          (execution["id"],))
        await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (execution["id"],))
        seen = []
        while len(seen) < 2:
            msg = await ws.receive(timeout=5)
            assert msg.type == WSMsgType.TEXT
            seen.append(msg.json()["type"])
        assert sorted(seen) == ["log", "status"]
        after = await scrape(client)
    for kind in ("status", "log"):
        assert value(after, "aiagent_messages_sent_total", type=kind) == value(
            before, "aiagent_messages_sent_total", type=kind) + 1
    assert value(after, "aiagent_commit_to_send_seconds_count") == value(
        before, "aiagent_commit_to_send_seconds_count") + 2
    assert value(after, "aiagent_reconcile_corrections_total") == value(
        before, "aiagent_reconcile_corrections_total")


async def test_a_new_subscribers_first_live_read_starts_after_its_snapshot_and_corrects_nothing(
        client_with, sql):
    """An execution with a long history, newly watched: a reconcile once it is caught up finds
    nothing to correct (it was caught up, not missed), and its next change reads only what is new."""
    client = await client_with(reconcile_interval_seconds=3600)  # reconciled here, when the test says
    hub, user = client.app[hub_key], Actor(client)
    execution = await user.create_execution()
    await sql.execute("INSERT INTO execution_logs (execution_id, message) "
                      "SELECT %s, 'line ' || g FROM generate_series(1, 300) g", (execution["id"],))
    # Those announcements handled (while nobody watched): a later commit's message has arrived.
    later = await user.create_execution()
    async with user.ws(later["id"]) as ws:
        await drain_snapshot(ws)
        await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (later["id"],))
        assert (await next_json(ws))["status"] == "running"
    reads = []
    events_after = hub._reader.events_after

    async def counted(after):
        rows = await events_after(after)
        reads.append({execution_id: [seq for _, e, seq, _ in rows if e == execution_id]
                      for execution_id in after})
        return rows
    hub._reader.events_after = counted  # the real read, its rows counted
    async with multiplexed(user) as ws:
        await ws.send_json({"type": "subscribe", "execution_id": execution["id"]})
        snapshot = await until_synced(ws)
        assert [m["message"] for m in snapshot if m["type"] == "log"][-1] == "line 300"
        before = await scrape(client)
        assert await hub.reconcile() == 0
        assert reads == [], "a reconcile read what the snapshot had brought"
        await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (execution["id"],))
        pushed = await next_json(ws)
        assert (pushed["type"], pushed["status"]) == ("status", "running")
    read_for_it = [read[execution["id"]] for read in reads if execution["id"] in read]
    assert read_for_it == [[pushed["seq"]]], "the first live read went back over the history"
    assert value(await scrape(client), "aiagent_reconcile_corrections_total") == value(
        before, "aiagent_reconcile_corrections_total")


async def test_a_change_committed_while_the_only_subscribers_snapshot_is_read_arrives_once_read_after_it(
        client_with, sql, database_url):
    """The change lands after the snapshot's read and is announced before the snapshot is
    offered: it reaches the socket once, after `synced`, and what is read for it starts where
    the snapshot ended (not at the execution's first event)."""
    client = await client_with(reconcile_interval_seconds=3600)
    hub, user = client.app[hub_key], Actor(client)
    execution = await user.create_execution()
    await sql.execute("INSERT INTO execution_logs (execution_id, message) "
                      "SELECT %s, 'line ' || g FROM generate_series(1, 300) g", (execution["id"],))
    later = await user.create_execution()  # those announcements handled: a later one has come
    async with user.ws(later["id"]) as ws:
        await drain_snapshot(ws)
        await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (later["id"],))
        assert (await next_json(ws))["status"] == "running"
    reads, read_catch_up = [], hub._catch_up_reader.catch_up

    async def change_after_the_read(requests, log_tail):
        rows = await read_catch_up(requests, log_tail)
        async with aiopg.connect(database_url, enable_hstore=False) as conn, conn.cursor() as cur:
            await cur.execute("UPDATE executions SET status='running' WHERE id=%s", (execution["id"],))
        for _ in range(500):  # until the hub has heard of it, its only watcher still held
            if hub._announced.get(execution["id"], 0) > rows[0][0][2]:
                break
            await asyncio.sleep(0.01)
        return rows

    async def counted(after):
        rows = await events_after(after)
        reads.append({execution_id: (after[execution_id], [seq for _, e, seq, _ in rows if e == execution_id])
                      for execution_id in after})
        return rows
    events_after = hub._reader.events_after
    hub._catch_up_reader.catch_up = change_after_the_read  # the real reads, a real commit between
    hub._reader.events_after = counted
    async with multiplexed(user) as ws:
        await ws.send_json({"type": "subscribe", "execution_id": execution["id"]})
        snapshot = await until_synced(ws)
        upto = max(m["seq"] for m in snapshot)
        pushed = await next_json(ws)
        assert (pushed["type"], pushed["status"], pushed["seq"]) == ("status", "running", upto + 1)
        with pytest.raises(asyncio.TimeoutError):
            await next_json(ws, timeout=0.5)  # and only once
    assert [read[execution["id"]] for read in reads if execution["id"] in read] == [(upto, [upto + 1])]
