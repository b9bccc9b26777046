"""The push path's fast lane: frames written straight to idle sockets, a writer task only for slow
ones, the hub's own prepared reads, and the push metrics."""

import asyncio
import struct

import aiopg
import pytest
from aiohttp import WSMsgType
from prometheus_client import CollectorRegistry, Counter

from service.push.messages import Event, text_frame
from service.push.socket_outbox import CLOSE_TOO_SLOW, SocketOutbox
from service.push.subscription_hub import CATCH_UP_READER, LIVE_READER
from service.typedefs import hub_key

from .actors import Actor
from .helpers import drain_snapshot, multiplexed, next_json, next_status, scrape, value

pytestmark = pytest.mark.both_change_sources


class FakeTransport:
    def __init__(self):
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class FakeProtocol:
    """What the outbox uses of aiohttp's connection: its transport and flow control."""

    def __init__(self):
        self.transport = FakeTransport()
        self.writing_paused = False
        self._drained = asyncio.Event()

    async def _drain_helper(self) -> None:
        await self._drained.wait()

    def drain(self) -> None:
        self.writing_paused = False
        self._drained.set()


class FakeWebSocket:
    closed = False


class FakeMetrics:
    def __init__(self):
        self.slow_client_closes = Counter("slow", "", ["reason"], registry=CollectorRegistry())


def status(seq: int, message: str = "", terminal: bool = False) -> Event:
    return Event("e1", seq, "status", f'{{"type":"status","seq":{seq},"message":"{message}"}}', terminal=terminal)


def texts(transport: FakeTransport) -> list[str]:
    return [frame[2:].decode() for frame in transport.written if frame[0] == 0x81]


def close_code(transport: FakeTransport) -> int | None:
    closes = [frame for frame in transport.written if frame[0] == 0x88]
    return struct.unpack("!H", closes[0][2:4])[0] if closes else None


def outbox(protocol, **kwargs) -> SocketOutbox:
    kwargs.setdefault("capacity", 4)
    return SocketOutbox(FakeWebSocket(), protocol, send_timeout=kwargs.pop("send_timeout", 5), **kwargs)


def test_text_frame_lengths():
    assert text_frame("a") == b"\x81\x01a"
    assert text_frame("é" * 100)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame("x" * 70_000)[:10] == b"\x81\x7f" + struct.pack("!Q", 70_000)


async def test_an_idle_socket_is_written_at_once_without_a_task():
    protocol = FakeProtocol()
    box = outbox(protocol)
    tasks = len(asyncio.all_tasks())
    assert box.offer(status(1, "a")) and box.offer(status(2, "b"))
    assert not box.offer(status(2, "b")), "not needed twice"
    assert texts(protocol.transport) == [status(1, "a").text, status(2, "b").text]
    assert len(asyncio.all_tasks()) == tasks


async def test_a_paused_socket_queues_latest_wins_and_a_writer_sends_in_order():
    protocol = FakeProtocol()
    box = outbox(protocol)
    box.offer(status(1))
    protocol.writing_paused = True
    box.send_text('{"type":"pong"}')
    box.offer(status(2, "older"))
    box.offer(status(3, "newer"))  # replaces the queued 2
    assert texts(protocol.transport) == [status(1).text]
    await asyncio.sleep(0)  # the writer starts and writes the pong, then waits for the drain
    protocol.drain()
    for _ in range(5):
        await asyncio.sleep(0)
    assert texts(protocol.transport) == [status(1).text, '{"type":"pong"}', status(3, "newer").text]
    # Drained and idle again: the next one goes straight out.
    box.offer(status(4))
    assert texts(protocol.transport)[-1] == status(4).text


async def test_a_terminal_status_is_followed_by_the_close_frame():
    protocol = FakeProtocol()
    box = outbox(protocol)
    box.offer(status(5, "done", terminal=True))
    assert not box.offer(status(6))
    assert texts(protocol.transport) == [status(5, "done", terminal=True).text]
    assert close_code(protocol.transport) == 1000


async def test_a_full_queue_closes_1013_and_is_counted():
    protocol = FakeProtocol()
    metrics = FakeMetrics()
    box = outbox(protocol, capacity=2, metrics=metrics)
    protocol.writing_paused = True
    for n in range(1, 5):
        box.send_text(f'{{"n":{n}}}')  # replies never merge
    assert box.closing
    protocol.drain()
    for _ in range(5):
        await asyncio.sleep(0)
    assert close_code(protocol.transport) == CLOSE_TOO_SLOW
    assert metrics.slow_client_closes.labels("queue_full")._value.get() == 1


async def test_a_send_that_times_out_closes_1013():
    protocol = FakeProtocol()
    metrics = FakeMetrics()
    box = outbox(protocol, send_timeout=0.05, metrics=metrics)
    protocol.writing_paused = True
    box.offer(status(1))
    await asyncio.sleep(0.2)
    assert close_code(protocol.transport) == CLOSE_TOO_SLOW
    assert metrics.slow_client_closes.labels("send_timeout")._value.get() == 1


async def test_live_events_wait_while_held_and_are_never_sent_twice():
    protocol = FakeProtocol()
    box = outbox(protocol)
    box.hold("e1")
    box.offer(status(3, "live"))  # arrives between subscribing and the snapshot
    assert texts(protocol.transport) == []
    box.offer_snapshot("e1", [status(3, "live")], upto=3)
    box.offer(status(4))
    assert texts(protocol.transport) == [status(3, "live").text, status(4).text]


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


async def test_push_metrics_count_messages_latency_and_corrections(client, user, sql):
    execution = await user.create_execution()
    before = await scrape(client)
    async with user.ws(execution["id"]) as ws:
        await drain_snapshot(ws)
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
