"""The hot standby that the service decodes from (change_source = wal, push_database_url) is
promoted under it, as in a failover: writers committed on the primary, the standby is promoted, the
old primary stopped, writers go on on the promoted server.

Two real `serve` processes decode on the standby: "following" names both servers in database_url
the way a client of a failover does (libpq's target_session_attrs=read-write: REST follows the
writable one); "pinned" names the old primary alone. What PostgreSQL 18 does: the walsender and the
temporary slot on the standby carry on across the promotion (onto the new timeline), so no socket
notices it; pg_last_wal_replay_lsn() stays where recovery ended.
"""

import asyncio
import contextlib
import time
from urllib.parse import parse_qs, urlsplit

import aiohttp
import aiopg
import psycopg2
import pytest
from aiohttp import WSMsgType

from service.db.migrations import apply_migrations
from service.dev.streaming_standby import StreamingStandby
from service.push.change_reader import PreparedReader
from service.push.subscription_hub import STANDBY_WAIT

from .actors import Actor
from .databases import RestartablePostgres, cursor
from .helpers import Follower, log_events, next_json, scrape, terminate_listener, value
from .servers import start_server, stop_server
from .standby import streaming_standby
from .wal_decoding import listening, primary_with

EXECUTIONS = 3


@pytest.fixture
def cluster(tmp_path_factory):
    """A primary of this test's own (it is stopped) and a streaming standby of it (promoted)."""
    primary = RestartablePostgres(tmp_path_factory.mktemp("promoted-primary"))
    asyncio.run(apply_migrations(primary.url))
    with contextlib.closing(psycopg2.connect(primary.url)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("SELECT include_change_source('wal')")  # before the copy, as a deployment has it
    with streaming_standby(primary.url, tmp_path_factory.mktemp("promoted-standby")) as standby:
        yield primary, standby
    primary.cleanup()


def failover_url(primary_url: str, standby: StreamingStandby) -> str:
    """database_url as clients of a failover name it: both servers, the writable one is used."""
    parts = urlsplit(primary_url)
    query = parse_qs(parts.query)
    primary_port = query.get("port", ["5432"])[0]
    return (f"postgresql://{parts.username}@/{parts.path.lstrip('/')}"
            f"?host={query['host'][0]},{standby.socket_dir}&port={primary_port},{standby.port}"
            "&target_session_attrs=read-write")


class Watcher(Follower):
    """A tab watching one execution: also every live message's seq, and how the server closed it."""

    def __init__(self, execution_id: str, token: str):
        super().__init__(execution_id, token)
        self.live_seqs: list[int] = []  # status, node and log messages after `synced`
        self.close_code: int | None = None

    async def _read(self, ws) -> None:
        try:
            while (msg := await ws.receive()).type == WSMsgType.TEXT:
                message = msg.json()
                if message["type"] != "synced":
                    self.live_seqs.append(message["seq"])
                self.note(message)
        finally:
            self.close_code = ws.close_code
            await ws.close()

    async def until_closed(self, timeout: float = 15) -> None:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)


class Readiness:
    """/readyz of one server, asked every 0.1 s: (phase of the test, status, checks)."""

    def __init__(self, base: str):
        self.base = base
        self.phase = "before"
        self.answers: list[tuple[str, int, dict]] = []

    async def poll(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(f"{self.base}/readyz") as response:
                    self.answers.append((self.phase, response.status, (await response.json())["checks"]))
                await asyncio.sleep(0.1)

    def during(self, phase: str) -> set[tuple[int, tuple]]:
        return {(status, tuple(sorted(checks.items()))) for at, status, checks in self.answers if at == phase}


READY = (200, (("database", True), ("listener", True)))
DATABASE_GONE = (503, (("database", False), ("listener", True)))
PUSH_GONE = (503, (("database", True), ("listener", False)))


async def work(url: str, execution_ids: list[str], *statements: str) -> None:
    """A worker's writes, each statement for every execution (%s: its id), in turn."""
    async with cursor(url) as cur:
        for statement in statements:
            for execution_id in execution_ids:
                await cur.execute(statement, (execution_id,))


def log_lines(tag: str, count: int) -> list[str]:
    return [f"INSERT INTO execution_logs (execution_id, message) VALUES (%s, '{tag} {n}')"
            for n in range(count)]


def node(node_id: str, status: str) -> str:
    return f"UPDATE execution_nodes SET status = '{status}' WHERE execution_id = %s AND node_id = '{node_id}'"


async def committed(url: str, execution_id: str, after: int) -> tuple[list[int], int]:
    """The node and log seqs after `after`, in order, and the execution's seq."""
    async with cursor(url) as cur:
        await cur.execute("""SELECT seq FROM node_events WHERE execution_id = %(id)s AND seq > %(after)s
                             UNION ALL
                             SELECT seq FROM execution_logs WHERE execution_id = %(id)s AND seq > %(after)s
                             ORDER BY 1""", {"id": execution_id, "after": after})
        seqs = [seq for seq, in await cur.fetchall()]
        await cur.execute("SELECT seq FROM executions WHERE id = %s", (execution_id,))
        return seqs, (await cur.fetchone())[0]


async def until(condition, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


def logged(path, event: str, **fields) -> bool:
    return any(e["event"] == event and fields.items() <= e.items() for e in log_events(path))


async def create_execution_through_failover(user: Actor, workflow_id: str) -> dict:
    """POST an execution; a 503 (a pooled connection to the stopped primary) is retried, as a
    client told Retry-After would."""
    for _ in range(50):
        status, body = await user.request("POST", "/api/v1/executions", json={"workflow_id": workflow_id})
        if status == 201:
            return body
        assert (status, body["error"]["code"]) == (503, "database_unavailable"), body
        await asyncio.sleep(0.1)
    raise AssertionError("REST never reached the promoted server")


async def test_a_promoted_standby_keeps_every_socket_going_and_rest_follows_a_failover_database_url(
        cluster, tmp_path):
    primary, standby = cluster
    env = dict(CHANGE_SOURCE="wal", PUSH_DATABASE_URL=standby.url, RECONCILE_INTERVAL_SECONDS="2",
               LISTENER_PING_SECONDS="5", LISTENER_BACKOFF_MAX_SECONDS="0.5")
    log_paths = {name: tmp_path / f"{name}.log" for name in ("following", "pinned")}
    processes = []
    with open(log_paths["following"], "wb") as log_file:
        processes.append(await start_server(failover_url(primary.url, standby), log_file, **env))
    with open(log_paths["pinned"], "wb") as log_file:
        processes.append(await start_server(primary.url, log_file, **env))
    bases = [f"http://127.0.0.1:{port}" for _, port in processes]
    readiness = [Readiness(base) for base in bases]
    pollers = [asyncio.create_task(r.poll()) for r in readiness]

    def phase(name: str) -> None:
        for r in readiness:
            r.phase = name

    async def answered_in_this_phase() -> bool:
        return all(r.during(r.phase) for r in readiness)

    try:
        async with aiohttp.ClientSession(base_url=bases[0]) as following, \
                aiohttp.ClientSession(base_url=bases[1]) as pinned:
            user, stranger = Actor(following), Actor(following)
            workflow = await user.create_workflow()
            ids = [(await user.create_execution(workflow["id"]))["id"] for _ in range(EXECUTIONS)]
            watchers = [Watcher(execution_id, user.token) for execution_id in ids * 2]
            for n, watcher in enumerate(watchers):
                await watcher.follow(following if n < EXECUTIONS else pinned)
            starts = [watcher.last_seq for watcher in watchers]

            # Writers on the primary; the standby replays all of it before it is promoted (what
            # it has not replayed then is lost with the old primary, whoever reads it).
            await work(primary.url, ids, "UPDATE executions SET status = 'running' WHERE id = %s",
                       node("plan", "running"),
                       *log_lines("on the primary", 10))
            async with cursor(primary.url) as cur:
                await cur.execute("SELECT pg_current_wal_lsn()::text")
                [written] = await cur.fetchone()
            await until(lambda: asyncio.to_thread(standby.replayed_past, written))
            decoded_before = value(await scrape(following), "aiagent_wal_messages_decoded_total")

            # Each process has seen its push database as a standby (its first periodic check).
            for path in log_paths.values():
                await until(lambda: asyncio.to_thread(logged, path, "hub.push_database", standby=True))
            phase("promoting")
            await asyncio.to_thread(standby.promote)
            phase("promoted")
            await work(standby.url, ids, *log_lines("on the promoted server", 10))
            await asyncio.sleep(0.5)
            phase("primary stopped")
            await asyncio.to_thread(primary.stop)
            await work(standby.url, ids,
                       node("plan", "completed"),
                       node("act", "running"),
                       *log_lines("after the old primary stopped", 10),
                       node("act", "completed"),
                       "UPDATE executions SET status = 'completed', result = '{\"answer\": 42}' "
                       "WHERE id = %s")

            # Every socket, on either process, ends at its execution's last state: each node and
            # log event once, everything in seq order, the final status, then 1000.
            for watcher, start in zip(watchers, starts):
                await watcher.until_closed()
                seqs, last = await committed(standby.url, watcher.execution_id, start)
                assert watcher.seqs == seqs
                assert watcher.live_seqs == sorted(set(watcher.live_seqs)), "nothing twice, in seq order"
                assert (watcher.last_seq, watcher.close_code) == (last, 1000)
            # Delivered by decoding on the promoted server, over the connection opened before it
            # was promoted (not by the reconcile).
            metrics = await scrape(following)
            assert value(metrics, "aiagent_listener_reconnects_total") == 0
            assert value(metrics, "aiagent_wal_messages_decoded_total") >= decoded_before + EXECUTIONS * 24

            # REST through the failover database_url reaches the promoted server; a socket on an
            # execution created there is served from it at once, and so is a refusal (the standby
            # wait for replay must not apply to a server that replays nothing any more).
            execution = await create_execution_through_failover(user, workflow["id"])
            started = time.monotonic()
            fresh = Watcher(execution["id"], user.token)
            await fresh.follow(following)
            assert fresh.last_seq == execution["seq"]
            async with stranger.ws(execution["id"]) as ws:
                msg = await ws.receive(timeout=STANDBY_WAIT * 2)
                assert (msg.type, ws.close_code) == (WSMsgType.CLOSE, 4404)
            assert time.monotonic() - started < STANDBY_WAIT / 2, "served without waiting for replay"
            async with user.ws(execution["id"], since=str(execution["seq"] + 5)) as ws:
                # A `since` ahead of what the promoted server has (seen from the old primary in a
                # commit the standby never replayed): a snapshot at once, marked resync.
                assert (await next_json(ws))["resync"] is True
            assert time.monotonic() - started < STANDBY_WAIT / 2

            # The listener's connection lost on the promoted server: it opens a new slot there
            # (a primary now) and the reconnect's reconcile and decoding carry on.
            phase("listener cut")
            await terminate_listener(standby.url)
            await work(standby.url, [execution["id"]],
                       "UPDATE executions SET status = 'running' WHERE id = %s",
                       *log_lines("after the reconnect", 3),
                       "UPDATE executions SET status = 'completed' WHERE id = %s")
            await fresh.until_closed()
            seqs, last = await committed(standby.url, execution["id"], execution["seq"])
            assert (fresh.seqs, fresh.last_seq, fresh.close_code) == (seqs, last, 1000)
            assert value(await scrape(following), "aiagent_listener_reconnects_total") == 1

            # The pinned process's REST has no database any more: 503, said so in its body.
            async with pinned.get(f"/api/v1/executions/{ids[0]}", headers=user.headers) as response:
                assert response.status == 503 and int(response.headers["Retry-After"]) > 0
                assert (await response.json())["error"]["code"] == "database_unavailable"
            # Said in each process's log at its next reconcile (every 2 s here).
            for path in log_paths.values():
                await until(lambda: asyncio.to_thread(logged, path, "hub.push_database_promoted"))
            phase("end")
            await until(answered_in_this_phase)
    finally:
        for poller in pollers:
            poller.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        for process, _ in processes:
            await stop_server(process)

    # /readyz: ready throughout on the following process (push never stopped; REST moved), but
    # for a check that may fail on a pooled connection to the old primary as it stops, and while
    # the listener reconnects after its connection was cut; on the pinned one, ready until its
    # database (the old primary) stopped, then 503 with database false and the listener
    # connected: push works, REST does not.
    following_readiness, pinned_readiness = readiness
    for when in ("before", "promoting", "promoted", "end"):
        assert following_readiness.during(when) <= {READY}, when
    assert following_readiness.during("primary stopped") <= {READY, DATABASE_GONE}
    assert following_readiness.during("listener cut") <= {READY, PUSH_GONE}
    for when in ("before", "promoting", "promoted"):
        assert pinned_readiness.during(when) <= {READY}, when
    assert pinned_readiness.during("end") == {DATABASE_GONE}

    # The logs say it: the push database's promotion (once, by each process), the listener's
    # one reconnect (the promotion did not cut it), no wait for a replay that cannot come.
    following_log, pinned_log = (log_events(path) for path in log_paths.values())
    for events in (following_log, pinned_log):
        promoted = [e for e in events if e["event"] == "hub.push_database_promoted"]
        assert len(promoted) == 1 and promoted[0]["level"] == "warning", promoted
        assert "database_url" in promoted[0]["hint"]
        assert not [e for e in events if e["event"] in ("hub.standby_behind", "ws.failed", "http.unhandled")]
    assert [e["event"] for e in following_log if e["event"].startswith("wal_listener.")] == [
        "wal_listener.connected", "wal_listener.disconnected", "wal_listener.connected"]
    assert [e for e in pinned_log if e["event"] == "http.database_unavailable"]


async def test_a_promoted_standby_whose_setting_comes_to_count_the_listener_is_left_at_its_audit(cluster):
    # Decoding on a standby never makes the listener a synchronous standby; once the standby is
    # promoted it is a primary like any other, and its synchronous_standby_names is audited.
    primary, standby = cluster
    reader = PreparedReader(standby.url, application_name="audit test")  # as the hub reads the push database
    try:
        async with aiopg.connect(primary.url) as conn, conn.cursor() as on_primary:
            async with listening(standby.url, connect_timeout=None,
                                 server_setup=reader.synchronous_standby_names) as (listener, recorder):
                async with asyncio.timeout(30):
                    while not await listener.wait_connected(0.2):  # the slot's consistent point
                        await on_primary.execute("SELECT pg_log_standby_snapshot()")
                await asyncio.to_thread(standby.promote)
                assert await listener.wait_connected(10)
                async with primary_with(standby.url, "*"):
                    before = listener.reconnects
                    await listener.audit()
                    # Left, then refused at the next connect.
                    await recorder.until(lambda: listener.reconnects >= before + 2 and not listener.connected)
                assert await listener.wait_connected(10)
    finally:
        reader.close()
