"""Survival: several processes on one database, PostgreSQL restarted under load, a reconnect storm.

Each test prints the figures it measured (run with -s to see them)."""

import asyncio
import json
import signal
import time

import aiohttp
import aiopg
import psycopg2
import pytest
from aiohttp import WSMsgType

from service.db.migrations import apply_migrations

from .actors import Actor, auth, token_for
from .databases import RestartablePostgres
from .helpers import log_events
from .servers import start_server, stop_server

pytestmark = pytest.mark.both_change_sources


async def read_until_closed(ws, timeout: float = 20) -> tuple[list[dict], int | None]:
    """Every status message until the server closes the socket, and the close code."""
    messages = []
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type != WSMsgType.TEXT:
            return messages, ws.close_code
        message = json.loads(msg.data)
        if message["type"] == "status":
            messages.append(message)


def assert_in_order_without_repeats(messages: list[dict]) -> None:
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(set(seqs)), f"pushed twice or out of order: {seqs}"


async def final_rows(database_url: str, ids: list[str]) -> dict[str, tuple[str, int, int]]:
    async with aiopg.connect(database_url, enable_hstore=False) as conn:
        async with conn.cursor() as cur:
            await cur.execute("SELECT id::text, status, progress, seq FROM executions WHERE id = ANY(%s::uuid[])",
                              (ids,))
            return {row[0]: row[1:] for row in await cur.fetchall()}


# -- two processes, one database -------------------------------------------------------------

async def test_two_processes_on_one_database_each_socket_receives_every_change(
        database_url, sql, tmp_path, change_source):
    token = token_for("two-processes", "admin")
    servers = []
    try:
        for n in range(2):
            with open(tmp_path / f"server{n}.log", "wb") as log_file:
                servers.append(await start_server(database_url, log_file, CHANGE_SOURCE=change_source))
        ports = [port for _, port in servers]
        async with aiohttp.ClientSession(headers=auth(token)) as session:
            async with session.post(f"http://127.0.0.1:{ports[0]}/api/v1/workflows",
                                    json={"name": "wf", "nodes": []}) as response:
                workflow = await response.json()
            executions = []
            for n in range(5):
                # Created through either process: both serve the same data.
                async with session.post(f"http://127.0.0.1:{ports[n % 2]}/api/v1/executions",
                                        json={"workflow_id": workflow["id"]}) as response:
                    executions.append(await response.json())
            sockets = [
                (port, execution["id"], await session.ws_connect(
                    f"http://127.0.0.1:{port}/api/v1/ws/executions/{execution['id']}"))
                for port in ports for execution in executions
            ]
            for _, _, ws in sockets:
                msg = await ws.receive(timeout=5)
                assert json.loads(msg.data)["seq"] == 1

            started = time.perf_counter()
            for progress in range(1, 31):
                for execution in executions:
                    await sql.execute("UPDATE executions SET status='running', progress=%s WHERE id=%s",
                                      (progress, execution["id"]))
            for execution in executions:
                await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution["id"],))
            results = await asyncio.gather(*(read_until_closed(ws) for _, _, ws in sockets))
            elapsed = time.perf_counter() - started
        for (port, execution_id, _), (messages, code) in zip(sockets, results):
            assert code == 1000
            assert_in_order_without_repeats(messages)
            assert (messages[-1]["status"], messages[-1]["progress"], messages[-1]["seq"]) == ("completed", 100, 32)
        print(f"\ntwo processes: 155 commits to 5 executions, 10 sockets on 2 processes all ended with "
              f"the final state in {elapsed:.2f}s")
    finally:
        for process, _ in servers:
            await stop_server(process)


# -- PostgreSQL restarted --------------------------------------------------------------------

@pytest.fixture(scope="module")
def restartable_postgres(tmp_path_factory):
    postgres = RestartablePostgres(tmp_path_factory.mktemp("restartable-postgres"))
    asyncio.run(apply_migrations(postgres.url))
    yield postgres
    postgres.cleanup()


class Writer:
    """A worker writing plain SQL that keeps going through an outage: reconnects and retries."""

    def __init__(self, url: str):
        self.url = url
        self.conn = None
        self.failed_writes = 0

    async def execute(self, sql: str, params) -> None:
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = await aiopg.connect(self.url, enable_hstore=False, timeout=2)
                async with self.conn.cursor() as cur:
                    await cur.execute(sql, params)
                return
            except (psycopg2.Error, OSError, asyncio.TimeoutError):
                self.failed_writes += 1
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
                await asyncio.sleep(0.1)

    def close(self):
        if self.conn is not None:
            self.conn.close()


async def test_postgres_restarted_under_100_sockets_every_socket_ends_with_the_last_committed_state(
        client_with, restartable_postgres):
    postgres = restartable_postgres
    client = await client_with(database_url=postgres.url, ws_max_sockets_per_subject=1000)
    user = Actor(client, "admin")
    workflow = await user.create_workflow()
    executions = [await user.create_execution(workflow["id"]) for _ in range(25)]
    ids = [e["id"] for e in executions]
    sockets = [await user.ws(execution_id).__aenter__() for execution_id in ids for _ in range(4)]
    writer = Writer(postgres.url)
    readiness: list[tuple[float, int]] = []
    stop_polling = asyncio.Event()

    async def poll_readiness():
        # Its own session: the test client's connection pool is taken by the 100 sockets.
        async with aiohttp.ClientSession() as session:
            while not stop_polling.is_set():
                async with session.get(client.make_url("/readyz")) as response:
                    readiness.append((time.perf_counter(), response.status))
                await asyncio.sleep(0.05)

    async def keep_writing(rounds: int):
        for progress in range(rounds):
            for execution_id in ids:
                await writer.execute("UPDATE executions SET status='running', progress=%s WHERE id=%s",
                                     (progress % 100, execution_id))
            await asyncio.sleep(0.01)

    readers = [asyncio.create_task(read_until_closed(ws, timeout=60)) for ws in sockets]
    poller = asyncio.create_task(poll_readiness())
    try:
        writing = asyncio.create_task(keep_writing(60))
        await asyncio.sleep(0.5)
        stopped_at = time.perf_counter()
        await asyncio.to_thread(postgres.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(postgres.start)
        restarted_at = time.perf_counter()
        await writing
        for execution_id in ids:
            await writer.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution_id,))
        committed_at = time.perf_counter()
        results = await asyncio.gather(*readers)
        delivered_at = time.perf_counter()
        while not readiness or readiness[-1][1] != 200:
            await asyncio.sleep(0.05)
    finally:
        stop_polling.set()
        await poller
        writer.close()
        for ws in sockets:
            await ws.close()

    truth = await final_rows(postgres.url, ids)
    for n, (messages, code) in enumerate(results):
        execution_id = ids[n // 4]
        status, progress, seq = truth[execution_id]
        assert code == 1000, (code, messages[-1:])
        assert_in_order_without_repeats(messages)
        last = messages[-1]
        assert (last["status"], last["progress"], last["seq"]) == (status, progress, seq) == ("completed", 100, seq)
    statuses = [status for _, status in readiness]
    assert 503 in statuses and statuses[-1] == 200
    first_503 = next(at for at, status in readiness if status == 503)
    back = next(at for at, status in readiness if status == 200 and at > first_503)
    print(f"\npostgres restart: 100 sockets on 25 executions; database down {restarted_at - stopped_at:.2f}s; "
          f"/readyz 503 for {back - first_503:.2f}s (first 503 {first_503 - stopped_at:.2f}s after the stop, "
          f"200 again {back - restarted_at:.2f}s after the start); {writer.failed_writes} writes retried; "
          f"final states on every socket {delivered_at - committed_at:.2f}s after the last commit; "
          f"{sum(len(m) for m, _ in results)} messages, none repeated")


# -- reconnect storm -------------------------------------------------------------------------

STORM_CLIENTS = 300


async def test_reconnect_storm_every_client_resumes_with_since(database_url, sql, tmp_path, change_source):
    token = token_for("storm", "admin")
    with open(tmp_path / "server.log", "wb") as log_file:
        process, port = await start_server(database_url, log_file, WS_MAX_SOCKETS_PER_SUBJECT="1000",
                                           CHANGE_SOURCE=change_source)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers=auth(token)) as session:
            async with session.post(f"{base}/api/v1/workflows", json={"name": "wf", "nodes": []}) as response:
                workflow = await response.json()
            ids = []
            for _ in range(10):
                async with session.post(f"{base}/api/v1/executions",
                                        json={"workflow_id": workflow["id"]}) as response:
                    ids.append((await response.json())["id"])
            for progress in range(1, 6):  # seq 2..6
                for execution_id in ids:
                    await sql.execute("UPDATE executions SET status='running', progress=%s WHERE id=%s",
                                      (progress, execution_id))

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(headers=auth(token), connector=connector) as storm:
            async def client(n: int):
                execution_id, since = ids[n % len(ids)], 2 + n % 4  # each saw something older than seq 6
                ws = await storm.ws_connect(f"{base}/api/v1/ws/executions/{execution_id}?since={since}")
                first = json.loads((await ws.receive(timeout=30)).data)
                return ws, execution_id, first

            started = time.perf_counter()
            connected = await asyncio.gather(*(client(n) for n in range(STORM_CLIENTS)))
            resumed_in = time.perf_counter() - started
            for _, _, first in connected:
                assert (first["type"], first["seq"], first["progress"]) == ("status", 6, 5)

            async with aiohttp.ClientSession() as plain:
                async with plain.get(f"{base}/metrics") as response:
                    metrics = await response.text()
            assert f"aiagent_open_sockets {STORM_CLIENTS}.0" in metrics

            started = time.perf_counter()
            for execution_id in ids:
                await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution_id,))
            results = await asyncio.gather(*(read_until_closed(ws) for ws, _, _ in connected))
            fanned_out_in = time.perf_counter() - started
        for messages, code in results:
            assert code == 1000
            assert [(m["status"], m["seq"]) for m in messages] == [("completed", 7)]
        async with aiohttp.ClientSession() as plain:
            async with plain.get(f"{base}/readyz") as response:
                assert response.status == 200
        print(f"\nreconnect storm: {STORM_CLIENTS} clients reconnected at once with since, all resumed in "
              f"{resumed_in:.2f}s; the final change reached all {STORM_CLIENTS} in {fanned_out_in:.2f}s")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.wait_for(process.wait(), 15) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


# -- requests during an outage ---------------------------------------------------------------


async def test_during_an_outage_rest_answers_503_with_retry_after_and_new_sockets_close_1013(
        restartable_postgres, tmp_path):
    postgres = restartable_postgres
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process, port = await start_server(postgres.url, log_file)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers=auth(token_for("outage-user"))) as session:
            async with session.post(f"{base}/api/v1/workflows", json={"name": "wf", "nodes": []}) as response:
                workflow = await response.json()
            async with session.post(f"{base}/api/v1/executions",
                                    json={"workflow_id": workflow["id"]}) as response:
                execution = await response.json()

            await asyncio.to_thread(postgres.stop)
            try:
                for method, path, body in [("GET", f"/api/v1/executions/{execution['id']}", None),
                                           ("GET", "/api/v1/executions", None),
                                           ("POST", "/api/v1/executions", {"workflow_id": workflow["id"]})]:
                    async with session.request(method, base + path, json=body) as response:
                        assert response.status == 503, (path, await response.text())
                        assert int(response.headers["Retry-After"]) > 0
                        error = (await response.json())["error"]
                        assert error["code"] == "database_unavailable" and set(error) == {
                            "code", "message", "details"}
                async with session.ws_connect(f"{base}/api/v1/ws/executions/{execution['id']}") as ws:
                    msg = await ws.receive(timeout=10)
                    assert msg.type == WSMsgType.CLOSE and ws.close_code == 1013, msg
                async with session.get(f"{base}/metrics") as response:
                    assert 'status="503"' in await response.text()
            finally:
                await asyncio.to_thread(postgres.start)

            # Back: the next requests are served (the pool drops the connections the restart broke).
            for _ in range(100):
                async with session.get(f"{base}/api/v1/executions/{execution['id']}") as response:
                    if response.status == 200:
                        break
                    assert response.status == 503
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("REST did not recover after the database came back")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    events = log_events(log_path)
    unavailable = [e for e in events if e["event"] == "http.database_unavailable"]
    assert len(unavailable) >= 3
    assert all(e["level"] == "warning" and "exception" not in e for e in unavailable)
    sockets = [e for e in events if e["event"] == "ws.database_unavailable"]
    assert len(sockets) == 1 and sockets[0]["level"] == "warning" and "exception" not in sockets[0]
    assert not [e for e in events if e["event"] in ("http.unhandled", "ws.failed")], "an outage is no bug"
