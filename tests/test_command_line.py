"""The command line as a person meets it, in real processes: `watch` ends with a one-line reason
and a status a script can test, reconnects across a server restart; `serve` on a busy port says
so in one line (and, in process, when the port is taken a moment too late for its early check)."""

import asyncio
import dataclasses
import json
import os
import signal
import sys

import aiohttp
import pytest

from service.app import create_app
from service.listen_address import CannotListen
from service.server import serve_until_signalled
from service.typedefs import config_key, db_pool_key, listener_task_key

from .actors import JWT_SECRET, auth, token_for
from .servers import free_port, start_server, stop_server


@pytest.fixture
async def server(database_url, tmp_path):
    """One `serve` process: its port."""
    with open(tmp_path / "server.log", "wb") as log_file:
        process, port = await start_server(database_url, log_file)
    yield port
    await stop_server(process)


async def new_execution(port: int) -> str:
    async with aiohttp.ClientSession(headers=auth(token_for("cli-user", "admin"))) as session:
        base = f"http://127.0.0.1:{port}/api/v1"
        async with session.post(f"{base}/workflows", json={"name": "wf", "nodes": []}) as response:
            workflow = await response.json()
        async with session.post(f"{base}/executions", json={"workflow_id": workflow["id"]}) as response:
            return (await response.json())["id"]


def as_from_a_terminal() -> None:
    """In the child, before exec: SIGINT at its default, as a terminal's foreground process has
    it. A test run started in the background (a script's `&`, nohup) ignores SIGINT, children
    inherit that, and Ctrl-C would then be tested against a process that cannot hear it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def start_command(database_url: str, *args: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", *args,
        env={**os.environ, "DATABASE_URL": database_url, "JWT_SECRET": JWT_SECRET, "LOG_FORMAT": "json",
             **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=as_from_a_terminal)


async def run_command(database_url: str, *args: str, **env: str) -> tuple[int, str, str]:
    process = await start_command(database_url, *args, **env)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out.decode(), err.decode()


async def next_message(watch: asyncio.subprocess.Process) -> dict:
    """The next message watch printed, skipping the end-of-snapshot marker (as old clients do)."""
    while True:
        line = await asyncio.wait_for(watch.stdout.readline(), 10)
        assert line, "watch ended early"
        message = json.loads(line)
        if message["type"] != "synced":
            return message


# -- watch -----------------------------------------------------------------------------------

async def test_watch_prints_each_message_and_exits_0_when_the_execution_finishes(database_url, sql, server):
    execution_id = await new_execution(server)
    watch = await start_command(database_url, "watch", execution_id, PORT=str(server))
    assert (await next_message(watch))["status"] == "pending"
    await sql.execute("UPDATE executions SET status='running', progress=40 WHERE id=%s", (execution_id,))
    assert (await next_message(watch))["progress"] == 40
    await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution_id,))
    assert (await next_message(watch))["status"] == "completed"
    out, err = await asyncio.wait_for(watch.communicate(), 10)
    assert (watch.returncode, out, err.decode()) == (0, b"", "finished (1000)\n")


async def test_watch_of_a_stopped_server_says_so_in_one_line_and_exits_1(database_url):
    port = free_port()
    code, out, err = await run_command(database_url, "watch", "00000000-0000-0000-0000-000000000000",
                                       PORT=str(port))
    assert (code, out) == (1, "")
    assert err == f"cannot connect to http://127.0.0.1:{port} (connection refused): is the server running?\n"


async def test_watch_of_no_such_execution_closed_4404_says_so_and_exits_1(database_url, server):
    missing = "00000000-0000-0000-0000-000000000000"
    code, out, err = await run_command(database_url, "watch", missing, PORT=str(server))
    assert (code, out) == (1, "")
    assert err == f"closed 4404: no execution {missing} on http://127.0.0.1:{server}\n"


async def test_watch_with_a_token_the_server_refuses_closed_4401_says_why_and_exits_1(database_url, server):
    execution_id = await new_execution(server)
    code, out, err = await run_command(database_url, "watch", execution_id, PORT=str(server),
                                       JWT_SECRET="another-secret-that-is-long-enough-for-hs256")
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert err.startswith("closed 4401: the server refused the token (invalid token)")
    assert "JWT_SECRET" in err


async def test_watch_ends_quietly_on_ctrl_c(database_url, server):
    execution_id = await new_execution(server)
    watch = await start_command(database_url, "watch", execution_id, PORT=str(server))
    assert (await next_message(watch))["status"] == "pending"
    watch.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(watch.communicate(), 10)
    assert (watch.returncode, err) == (130, b"")


async def test_watch_resumes_across_a_server_restart_with_nothing_missed_or_repeated(
        database_url, sql, tmp_path):
    with open(tmp_path / "first.log", "wb") as log_file:
        first, port = await start_server(database_url, log_file)
    second = None
    watch = None
    try:
        execution_id = await new_execution(port)
        watch = await start_command(database_url, "watch", execution_id, PORT=str(port))
        assert (await next_message(watch))["seq"] == 1
        await sql.execute("UPDATE executions SET status='running', progress=10 WHERE id=%s", (execution_id,))
        assert (await next_message(watch))["seq"] == 2
        assert await stop_server(first) == 0  # its sockets closed 1001
        # Committed while no server runs: the next one must deliver it.
        await sql.execute("UPDATE executions SET progress=20 WHERE id=%s", (execution_id,))
        with open(tmp_path / "second.log", "wb") as log_file:
            second, _ = await start_server(database_url, log_file, port=port)
        resumed = await next_message(watch)
        assert (resumed["seq"], resumed["progress"]) == (3, 20)
        await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution_id,))
        final = await next_message(watch)
        assert (final["seq"], final["status"]) == (4, "completed")
        out, err = await asyncio.wait_for(watch.communicate(), 10)
        assert (watch.returncode, out) == (0, b"")
        assert err.decode().splitlines() == ["closed 1001 (server going away): reconnecting, since=2",
                                             "finished (1000)"]
    finally:
        if watch is not None and watch.returncode is None:
            watch.kill()
            await watch.wait()
        await stop_server(first)
        if second is not None:
            await stop_server(second)


# -- serve -----------------------------------------------------------------------------------

async def test_a_second_serve_on_a_busy_port_says_so_in_one_line_and_exits_1(database_url, server):
    code, out, err = await run_command(database_url, "serve", PORT=str(server))
    assert (code, out) == (1, "")
    assert err == (f"port {server} is already in use on 127.0.0.1 (another aiagent-live?): "
                   f"stop that process, or choose another port with PORT (the `port` setting), "
                   f"e.g. PORT={server + 1}\n")
    async with aiohttp.ClientSession() as session:  # the first one serves on
        async with session.get(f"http://127.0.0.1:{server}/readyz") as response:
            assert response.status == 200


async def test_a_port_taken_after_the_early_check_undoes_the_startup_and_says_so(config, server):
    """The race ensure_can_listen cannot close: the port is taken between its look and the bind.
    The pool and the listener the startup opened are closed, and only the one line is raised."""
    app = create_app(dataclasses.replace(config, port=server))
    with pytest.raises(CannotListen, match=f"^port {server} is already in use on 127.0.0.1 "):
        await serve_until_signalled(app, app[config_key], on_ready=lambda: None)
    assert app[listener_task_key].done()
    assert app[db_pool_key].closed
