"""The real thing: `python -m service` processes, driven by an independent WebSocket library."""

import asyncio
import json
import os
import shutil
import signal
import sys
import uuid

import aiohttp
import pytest
import websockets

from .actors import JWT_SECRET, token_for
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
            await sql.execute("UPDATE executions SET status='running', progress=40 WHERE id=%s",
                              (execution["id"],))
            pushed = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (pushed["status"], pushed["progress"]) == ("running", 40)
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}

            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.recv(), 10)
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
