"""The real thing: `python -m service` processes, driven by an independent WebSocket library."""

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import psutil
import pytest
import websockets
from aiohttp import WSMsgType

from .actors import JWT_SECRET, auth, token_for
from .helpers import log_events
from .servers import start_server


async def test_served_process_pushes_sql_changes_to_a_websockets_client_and_stops_on_sigterm(
        database_url, sql, tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process, port = await start_server(database_url, log_file)
    token = token_for("process-user")
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            async with session.post(f"http://127.0.0.1:{port}/api/v1/workflows",
                                    json={"name": "wf", "nodes": []}) as response:
                workflow = await response.json()
            async with session.post(f"http://127.0.0.1:{port}/api/v1/executions",
                                    json={"workflow_id": workflow["id"]}) as response:
                execution = await response.json()

        url = f"ws://127.0.0.1:{port}/api/v1/ws/executions/{execution['id']}?access_token={token}"
        async with websockets.connect(url) as ws:
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (snapshot["type"], snapshot["status"]) == ("status", "pending")
            synced = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert synced == {"type": "synced", "execution_id": execution["id"], "seq": snapshot["seq"]}
            await sql.execute("UPDATE executions SET status='running', progress=40 WHERE id=%s",
                              (execution["id"],))
            pushed = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (pushed["status"], pushed["progress"]) == ("running", 40)
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}

            # Sockets that watch nothing are told to go away too: one that never subscribed, and
            # one whose only subscription has ended.
            many = f"ws://127.0.0.1:{port}/api/v1/ws?access_token={token}"
            idle = await websockets.connect(many)
            left = await websockets.connect(many)
            await left.send(json.dumps({"type": "subscribe", "execution_id": execution["id"]}))
            while json.loads(await asyncio.wait_for(left.recv(), 5))["type"] != "synced":
                pass
            await left.send(json.dumps({"type": "unsubscribe", "execution_id": execution["id"]}))
            assert json.loads(await asyncio.wait_for(left.recv(), 5))["type"] == "unsubscribed"

            process.send_signal(signal.SIGTERM)
            for each in (ws, idle, left):
                try:
                    await asyncio.wait_for(each.recv(), 10)
                    raise AssertionError("expected the socket to close")
                except websockets.ConnectionClosed as closed:
                    assert closed.rcvd is not None and closed.rcvd.code == 1001
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    logs = log_path.read_text()
    assert token not in logs and token.split(".")[2] not in logs, "a token reached the logs"
    events = [json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{")]
    assert "server.ready" in events and "ws.subscribed" in events


async def test_a_request_too_big_to_parse_gets_400_and_its_bytes_stay_out_of_the_log(database_url, tmp_path):
    """aiohttp refuses a header over 8 KiB before any handler runs, and logs its parser's error,
    which quotes the header: here an Authorization header, token and all."""
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process, port = await start_server(database_url, log_file)
    token = token_for("process-user")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/api/v1/executions",
                                   headers={"Authorization": f"Bearer {token}{'x' * 9000}"}) as response:
                assert response.status == 400
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200  # and the server serves on
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    logs = log_path.read_text()
    assert token.split(".")[1][:16] not in logs, "a token reached the logs"
    lines = logs.splitlines()
    assert all(line.startswith("{") for line in lines), [line for line in lines if not line.startswith("{")]
    refused = [event for event in map(json.loads, lines) if event["event"] == "http.unparsable_request"]
    assert [(e["level"], e["error"], e["status"]) for e in refused] == [("warning", "LineTooLong", 400)]


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs iproute2's ss to read a listen backlog")
async def test_the_server_listens_with_the_configured_backlog(database_url, tmp_path):
    with open(tmp_path / "server.log", "wb") as log_file:
        process, port = await start_server(database_url, log_file, LISTEN_BACKLOG="1000")
    try:
        ss = await asyncio.create_subprocess_exec(
            "ss", "-ltnH", f"sport = :{port}", stdout=asyncio.subprocess.PIPE)
        out, _ = await ss.communicate()
        # For a listening socket, ss shows the backlog as Send-Q (capped by net.core.somaxconn).
        [line] = out.decode().splitlines()
        with open("/proc/sys/net/core/somaxconn") as f:
            assert int(line.split()[2]) == min(1000, int(f.read()))
    finally:
        process.terminate()
        await process.wait()


async def test_migrate_twice_at_once_on_an_empty_database_applies_each_file_once(database_url, sql):
    """Two runners race on a fresh database: the lock lets one apply everything, the other nothing."""
    from psycopg2.extensions import make_dsn, parse_dsn

    from service.db.migrations import migration_files

    name = f"migrate_race_{uuid.uuid4().hex[:8]}"
    await sql.execute(f"CREATE DATABASE {name}")
    fresh_url = make_dsn(**{**parse_dsn(database_url), "dbname": name})

    async def migrate():
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "migrate",
            env={**os.environ, "DATABASE_URL": fresh_url, "JWT_SECRET": "x"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        return process.returncode, out.decode()

    try:
        results = await asyncio.gather(migrate(), migrate())
        assert [code for code, _ in results] == [0, 0], results
        outputs = sorted(out for _, out in results)
        assert outputs[0].startswith("applied 0 migration(s): none pending"), outputs
        assert outputs[1].startswith(f"applied {len(migration_files())} migration(s)"), outputs
        again = await migrate()
        assert again[0] == 0 and "none pending" in again[1]
    finally:
        await sql.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_token_command_prints_a_token_the_server_accepts(database_url):
    from service.auth import verify_token

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "token", "--sub", "alice", "--role", "worker", "--ttl", "60",
        env={**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET},
        stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    principal = verify_token(JWT_SECRET, out.decode().strip())
    assert (principal.sub, principal.role) == ("alice", "worker")


async def test_serve_refuses_to_start_without_a_secret_when_given_a_database(database_url):
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", env={**env, "DATABASE_URL": database_url},
        stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 2 and b"JWT_SECRET" in err


async def test_psql_command_runs_sql_against_the_configured_database(database_url):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "psql", "-tA", "-c", "SELECT count(*) >= 0 FROM executions",
        env={**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": "x"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()[-500:]
    assert out.decode().strip() == "t"


# -- shutdown within its bound, whatever is stuck --------------------------------------------

SHUTDOWN_BOUND = 3.0
# The interpreter's own exit after the bound: the margin a SIGTERM may take past it.
EXIT_MARGIN = 1.5


class SilentSocketClient:
    """A WebSocket client that completes the handshake, then never reads and never answers."""

    def __init__(self, port: int, path: str):
        self.sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def close(self):
        self.sock.close()


def shutdown_events(log_path) -> list[dict]:
    return [e for e in log_events(log_path) if e["event"].startswith(("shutdown.", "server."))]


async def sigterm_and_time_the_exit(process) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), SHUTDOWN_BOUND + 15)
    except TimeoutError:
        process.kill()
        await process.wait()
    return time.monotonic() - started


async def test_sigterm_exits_within_the_bound_despite_a_request_stuck_on_a_lock_and_a_silent_socket(
        database_url, sql, tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process, port = await start_server(database_url, log_file,
                                           SHUTDOWN_TIMEOUT_SECONDS=str(SHUTDOWN_BOUND))
    token = token_for("stuck-user", "admin")
    base = f"http://127.0.0.1:{port}"
    silent = None
    try:
        async with aiohttp.ClientSession(headers=auth(token)) as session:
            async with session.post(f"{base}/api/v1/workflows", json={"name": "wf", "nodes": []}) as response:
                workflow = await response.json()
            async with session.post(f"{base}/api/v1/executions",
                                    json={"workflow_id": workflow["id"]}) as response:
                execution = await response.json()
            silent = await asyncio.to_thread(
                SilentSocketClient, port, f"/api/v1/ws/executions/{execution['id']}?access_token={token}")
            # A worker's open transaction holds the row: the request's UPDATE waits in the database.
            await sql.execute("BEGIN")
            await sql.execute("SELECT 1 FROM executions WHERE id = %s FOR UPDATE", (execution["id"],))
            stuck = asyncio.create_task(session.patch(f"{base}/api/v1/executions/{execution['id']}",
                                                      json={"status": "running"}))
            await asyncio.sleep(0.5)
            assert not stuck.done()
            took = await sigterm_and_time_the_exit(process)
            stuck.cancel()
    finally:
        await sql.execute("ROLLBACK")
        if silent is not None:
            silent.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    events = shutdown_events(log_path)
    assert took < SHUTDOWN_BOUND + EXIT_MARGIN, (took, events)
    assert process.returncode == 0, events
    stuck_steps = {e["step"] for e in events if e["event"] == "shutdown.stuck"}
    assert {"sockets", "http_requests"} <= stuck_steps, events
    assert all(e["level"] == "warning" for e in events if e["event"] == "shutdown.stuck")
    assert events[-1]["event"] == "server.stopped"


@pytest.fixture
def stoppable_postgres(tmp_path_factory):
    """A PostgreSQL of this test's own, whose processes the test may freeze (SIGSTOP)."""
    from service.db.migrations import apply_migrations
    from service.dev.embedded_db import start_embedded_postgres

    server = start_embedded_postgres(tmp_path_factory.mktemp("stoppable-postgres"), throwaway=True)
    asyncio.run(apply_migrations(server.get_uri()))
    postmaster = psutil.Process(int((Path(server.pgdata) / "postmaster.pid").read_text().split()[0]))
    frozen: list[psutil.Process] = []

    def freeze():
        for process in [postmaster, *postmaster.children(recursive=True)]:
            process.send_signal(signal.SIGSTOP)
            frozen.append(process)

    yield server.get_uri(), freeze
    for process in frozen:
        try:
            process.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass
    server.cleanup()


async def test_sigterm_exits_within_the_bound_while_the_database_is_frozen(stoppable_postgres, tmp_path):
    url, freeze = stoppable_postgres
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process, port = await start_server(url, log_file, SHUTDOWN_TIMEOUT_SECONDS=str(SHUTDOWN_BOUND))
    token = token_for("frozen-user", "admin")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers=auth(token)) as session:
            async with session.post(f"{base}/api/v1/workflows", json={"name": "wf", "nodes": []}) as response:
                workflow = await response.json()
            async with session.post(f"{base}/api/v1/executions",
                                    json={"workflow_id": workflow["id"]}) as response:
                execution = await response.json()
            async with session.ws_connect(f"{base}/api/v1/ws/executions/{execution['id']}") as ws:
                await ws.receive(timeout=5)  # the status
                await ws.receive(timeout=5)  # synced
                freeze()
                # Requests that wait on the frozen database: a read and a write.
                stuck = [asyncio.create_task(session.get(f"{base}/api/v1/executions/{execution['id']}")),
                         asyncio.create_task(session.post(f"{base}/api/v1/executions",
                                                          json={"workflow_id": workflow["id"]}))]
                await asyncio.sleep(0.5)
                assert not any(task.done() for task in stuck)
                closing = asyncio.create_task(ws.receive(timeout=SHUTDOWN_BOUND + 15))  # answers the close
                took = await sigterm_and_time_the_exit(process)
                for task in stuck:
                    task.cancel()
                assert (await closing).type == WSMsgType.CLOSE and ws.close_code == 1001
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    events = shutdown_events(log_path)
    assert took < SHUTDOWN_BOUND + EXIT_MARGIN, (took, events)
    stuck_lines = [e for e in events if e["event"] == "shutdown.stuck"]
    assert any(e["step"] == "http_requests" and len(e["requests"]) == 2 for e in stuck_lines), events
    assert events[-1]["event"] == "server.stopped" and process.returncode == 0, events
