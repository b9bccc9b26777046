"""config/nginx.conf in front of two real `python -m service serve` instances, run by Debian's
nginx (`make test` installs it; without it these tests fail, they do not skip): a socket, a
resume on the other instance when one stops, the client's address, and logs without tokens.

nginx runs as the test's own process, on a free port, with the sample rendered into a temporary
directory (its upstream, listen address and log paths replaced; nothing else) beside the pid,
logs and temporary files. Under root it runs as `nobody`: nothing here needs privileges."""

import asyncio
import json
import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType

from service.config import Config

from .actors import auth, token_for
from .servers import free_port, start_server, stop_server

SAMPLE = Path(__file__).resolve().parent.parent / "config" / "nginx.conf"
# The clients' address stands for a load balancer in front of nginx: the X-Forwarded-For it sends
# is trusted. 127.0.0.2 stands for anyone else.
TRUSTED_BALANCER, UNTRUSTED_CLIENT = "127.0.0.1", "127.0.0.2"


def nginx_binary() -> str:
    path = os.environ.get("NGINX") or shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not path:
        pytest.fail("no nginx for the proxy tests: install Debian's package (apt-get install -y nginx; "
                    "make test does this), or set NGINX", pytrace=False)
    return path


def render_sample(upstream_ports: list[int], listen_port: int, directory: Path) -> str:
    """config/nginx.conf as deployed here: these instances, this port, logs in `directory`, and the
    load balancer's lines uncommented for TRUSTED_BALANCER."""
    text = SAMPLE.read_text()
    replacements = {
        "    server 10.0.0.11:8037;\n    server 10.0.0.12:8037;\n":
            "".join(f"    server 127.0.0.1:{port};\n" for port in upstream_ports),
        "    listen 80;\n": f"    listen 127.0.0.1:{listen_port};\n",
        "/var/log/nginx/": f"{directory}/",
        "    # set_real_ip_from 10.0.1.0/24;  # the load balancer's addresses\n"
        "    # real_ip_header X-Forwarded-For;\n"
        "    # real_ip_recursive on;\n":
            f"    set_real_ip_from {TRUSTED_BALANCER};\n"
            "    real_ip_header X-Forwarded-For;\n"
            "    real_ip_recursive on;\n",
    }
    for old, new in replacements.items():
        assert old in text, f"config/nginx.conf no longer has {old!r}: update render_sample"
        text = text.replace(old, new)
    return text


def main_config(directory: Path) -> str:
    """The part of /etc/nginx/nginx.conf that matters, paths in `directory`: Debian's http-level
    access log in the combined format, which logs query strings, is kept, to show that the
    sample's own access_log replaces it."""
    temp_paths = "\n".join(f"    {kind}_temp_path {directory}/{kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
events {{
    worker_connections 1024;
}}
http {{
{temp_paths}
    access_log {directory}/access.log;
    include {directory}/aiagent-live.conf;
}}
"""


class Nginx:
    """Debian's nginx in front of `upstream_ports`, on a port of its own."""

    def __init__(self, upstream_ports: list[int]):
        self.upstream_ports = upstream_ports
        self.port = free_port()
        # Not under pytest's temporary directory, which only root may enter.
        self.directory = Path(tempfile.mkdtemp(prefix="aiagent-nginx-"))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        (self.directory / "aiagent-live.conf").write_text(
            render_sample(self.upstream_ports, self.port, self.directory))
        (self.directory / "nginx.conf").write_text(main_config(self.directory))
        as_user = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.directory, nobody.pw_uid, nobody.pw_gid)
            as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        self.process = await asyncio.create_subprocess_exec(
            nginx_binary(), "-p", str(self.directory), "-c", str(self.directory / "nginx.conf"),
            "-e", str(self.directory / "error.log"), **as_user)
        for _ in range(100):
            if self.process.returncode is not None:
                raise AssertionError(f"nginx exited: {self.read('error.log')}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"nginx did not listen: {self.read('error.log')}")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def read(self, name: str) -> str:
        path = self.directory / name
        return path.read_text() if path.exists() else ""

    async def access_log(self, until_lines_with: str = "", count: int = 0) -> list[str]:
        """The access log's lines; first waiting for `count` lines with `until_lines_with` (a
        socket's line is written once nginx has closed both its sides, a moment after the client)."""
        for _ in range(100):
            lines = self.read("aiagent-live.access.log").splitlines()
            if sum(until_lines_with in line for line in lines) >= count:
                break
            await asyncio.sleep(0.05)
        return lines

    def assert_no_token_logged(self, *tokens: str) -> None:
        """Not in any file nginx wrote: the sample's logs, Debian's http-level log, the startup log."""
        for path in self.directory.iterdir():
            if path.is_file() and path.suffix == ".log":
                text = path.read_text()
                for token in tokens:
                    assert token.split(".")[2] not in text, f"a token reached {path.name}"
                assert "access_token" not in text, f"the query string reached {path.name}"


@pytest.fixture
async def proxied(database_url, tmp_path):
    """Two instances on one database, and nginx in front of them."""
    servers = []
    nginx = None
    try:
        for n in range(2):
            with open(tmp_path / f"instance{n}.log", "wb") as log_file:
                servers.append(await start_server(database_url, log_file))
        nginx = Nginx([port for _, port in servers])
        await nginx.start()
        yield nginx, servers
    finally:
        if nginx is not None:
            await nginx.stop()
        for process, _ in servers:
            await stop_server(process)


async def new_execution(session: aiohttp.ClientSession, nginx: Nginx) -> str:
    async with session.post(nginx.url("/api/v1/workflows"), json={"name": "wf", "nodes": []}) as response:
        assert response.status == 201, await response.text()
        workflow = await response.json()
    async with session.post(nginx.url("/api/v1/executions"),
                            json={"workflow_id": workflow["id"]}) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["id"]


async def open_sockets(port: int) -> float:
    """aiagent_open_sockets of one instance, asked directly (metrics are per instance)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    return float(re.search(r"^aiagent_open_sockets (\S+)$", text, re.MULTILINE).group(1))


async def next_message(ws) -> dict:
    """The next message, skipping the end-of-snapshot marker (as old clients do)."""
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        if msg.json()["type"] != "synced":
            return msg.json()


async def test_a_socket_through_nginx_gets_its_snapshot_and_each_change_committed_in_sql(proxied, sql):
    nginx, _ = proxied
    token = token_for("nginx-user", "admin")
    async with aiohttp.ClientSession(headers=auth(token)) as session:
        execution_id = await new_execution(session, nginx)
        async with session.get(nginx.url(f"/api/v1/executions/{execution_id}")) as response:
            assert response.status == 200
            request_id = response.headers["X-Request-ID"]
        async with session.get(nginx.url("/metrics")) as response:
            assert response.status == 403, "metrics are scraped per instance, not through nginx"

    # As a browser does: the token in the query string, and the Origin of a page served through
    # nginx, which the service must take for its own.
    async with aiohttp.ClientSession() as browser:
        async with browser.ws_connect(nginx.url(f"/api/v1/ws/executions/{execution_id}"),
                                      params={"access_token": token},
                                      headers={"Origin": nginx.url("")}) as ws:
            snapshot = await next_message(ws)
            assert (snapshot["type"], snapshot["status"], snapshot["seq"]) == ("status", "pending", 1)
            await sql.execute("UPDATE executions SET status='running', progress=40 WHERE id=%s",
                              (execution_id,))
            pushed = await next_message(ws)
            assert (pushed["status"], pushed["progress"], pushed["seq"]) == ("running", 40, 2)
            await ws.send_json({"type": "ping"})
            assert await next_message(ws) == {"type": "pong"}
            await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution_id,))
            assert (await next_message(ws))["status"] == "completed"
            assert (await ws.receive(timeout=10)).type == WSMsgType.CLOSE and ws.close_code == 1000

    socket_line = f'"GET /api/v1/ws/executions/{execution_id} HTTP/1.1" 101 '
    log = await nginx.access_log(until_lines_with=socket_line, count=1)
    socket_lines = [line for line in log if socket_line in line]
    assert len(socket_lines) == 1, log
    assert any(f"request_id={request_id}" in line for line in log), (request_id, log)
    nginx.assert_no_token_logged(token)
    assert nginx.read("access.log") == "", "Debian's http-level access log was not replaced"


async def test_a_client_resumes_through_nginx_on_the_other_instance_when_its_instance_stops(proxied, sql):
    nginx, servers = proxied
    token = token_for("nginx-resume", "admin")
    async with aiohttp.ClientSession(headers=auth(token)) as session:
        execution_id = await new_execution(session, nginx)
    socket_url = nginx.url(f"/api/v1/ws/executions/{execution_id}")
    seqs = []
    async with aiohttp.ClientSession() as browser:
        async with browser.ws_connect(socket_url, params={"access_token": token}) as ws:
            seqs.append((await next_message(ws))["seq"])
            await sql.execute("UPDATE executions SET status='running', progress=10 WHERE id=%s",
                              (execution_id,))
            seqs.append((await next_message(ws))["seq"])
            holding = [(process, port) for process, port in servers if await open_sockets(port) == 1]
            assert len(holding) == 1, "the socket is on exactly one instance"
            [(stopped, stopped_port)] = holding
            closing = asyncio.create_task(ws.receive(timeout=20))  # read as a client does, while it stops
            assert await stop_server(stopped) == 0
            closed = await closing
            assert (closed.type, closed.data) == (WSMsgType.CLOSE, 1001)

        # Committed while the client is away: the resume must bring it.
        await sql.execute("UPDATE executions SET progress=20 WHERE id=%s", (execution_id,))
        # The client resumes, and a newcomer connects: nginx sends one of the two handshakes to the
        # stopped instance first (round robin, and it does not know yet), then to the other.
        resumed = await browser.ws_connect(socket_url, params={"access_token": token, "since": str(seqs[-1])})
        newcomer = await browser.ws_connect(socket_url, params={"access_token": token})
        try:
            first = await next_message(resumed)
            assert (first["seq"], first["progress"]) == (3, 20)
            seqs.append(first["seq"])
            snapshot = await next_message(newcomer)
            assert (snapshot["seq"], snapshot["progress"]) == (3, 20)
            await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution_id,))
            for ws in (resumed, newcomer):
                final = await next_message(ws)
                assert (final["seq"], final["status"]) == (4, "completed")
                assert (await ws.receive(timeout=10)).type == WSMsgType.CLOSE and ws.close_code == 1000
            seqs.append(final["seq"])
        finally:
            await resumed.close()
            await newcomer.close()
    assert seqs == [1, 2, 3, 4], "missed or repeated"

    [survivor_port] = [port for _, port in servers if port != stopped_port]
    socket_lines = [line for line in await nginx.access_log("/api/v1/ws/executions/", count=3)
                    if "/api/v1/ws/executions/" in line]
    assert len(socket_lines) == 3, socket_lines
    stopped, survivor = f"127.0.0.1:{stopped_port}", f"127.0.0.1:{survivor_port}"
    failed_over = [line for line in socket_lines[1:]
                   if f"upstream={stopped}, {survivor} upstream_status=502, 101 " in line]
    direct = [line for line in socket_lines[1:] if f"upstream={survivor} upstream_status=101 " in line]
    assert (len(failed_over), len(direct)) == (1, 1), socket_lines
    # nginx's error log at its default level would now hold the failed handshake's request line,
    # token and all: the sample's does not.
    nginx.assert_no_token_logged(token)


async def test_the_client_address_comes_from_x_forwarded_for_only_when_the_balancer_sends_it(proxied):
    nginx, _ = proxied
    for source, forwarded_for, logged in ((TRUSTED_BALANCER, "203.0.113.7", "203.0.113.7"),
                                          (UNTRUSTED_CLIENT, "198.51.100.9", UNTRUSTED_CLIENT)):
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            headers = {"X-Forwarded-For": forwarded_for, "X-Request-ID": f"from-{source}"}
            async with session.get(nginx.url("/healthz"), headers=headers) as response:
                assert response.status == 200
        [line] = [line for line in await nginx.access_log(f"request_id=from-{source}", count=1)
                  if f"request_id=from-{source}" in line]
        assert line.startswith(f"{logged} "), line


async def test_an_event_stream_through_nginx_arrives_event_by_event_and_ends_after_the_final_status(
        proxied, sql):
    nginx, servers = proxied
    token = token_for("nginx-sse", "admin")
    async with aiohttp.ClientSession(headers=auth(token)) as session:
        execution_id = await new_execution(session, nginx)
        # Asked of an instance directly: does this branch serve Server-Sent Events yet?
        async with session.get(f"http://127.0.0.1:{servers[0][1]}/api/v1/executions/{execution_id}/events",
                               headers={"Accept": "text/event-stream"}) as response:
            if response.status == 404:
                pytest.skip("no /api/v1/executions/{id}/events on this branch yet: this test runs once "
                            "the Server-Sent Events branch is merged")

    async with aiohttp.ClientSession() as browser:  # EventSource: the token in the query string
        async with browser.get(nginx.url(f"/api/v1/executions/{execution_id}/events"),
                               params={"access_token": token}, headers={"Accept": "text/event-stream"},
                               timeout=aiohttp.ClientTimeout(total=30)) as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            events = read_events(stream.content)
            first = await next_status_event(events)
            assert (first["status"], first["seq"]) == ("pending", 1)
            # Each event reaches the client while the stream stays open: nginx does not buffer it.
            await sql.execute("UPDATE executions SET status='running', progress=40 WHERE id=%s",
                              (execution_id,))
            pushed = await next_status_event(events)
            assert (pushed["progress"], pushed["seq"]) == (40, 2)
            await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution_id,))
            assert (await next_status_event(events))["status"] == "completed"
            # Then the service ends the stream, and nginx with it.
            await asyncio.wait_for(stream.content.read(), 10)
    nginx.assert_no_token_logged(token)


async def read_events(content: aiohttp.StreamReader):
    """Server-Sent Events as (id, data) pairs; comments (heartbeats) and `event:` lines skipped."""
    event_id, data = None, []
    while line := await asyncio.wait_for(content.readline(), 10):
        line = line.decode().rstrip("\r\n")
        if line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif line == "" and data:
            yield event_id, "\n".join(data)
            event_id, data = None, []


async def next_status_event(events) -> dict:
    async for event_id, data in events:
        message = json.loads(data)
        if message.get("type") == "status":
            # A live event's id: is its seq; a snapshot's events have none (only its `synced`).
            assert event_id in (None, str(message["seq"])), "id: is the seq"
            return message
    raise AssertionError("the stream ended")


# -- the sample's settings, held to the service's -------------------------------------------

def test_the_sample_read_timeouts_outlast_two_heartbeats():
    timeouts = [float(seconds) for seconds in re.findall(r"proxy_read_timeout (\d+)s;", SAMPLE.read_text())]
    assert len(timeouts) == 2  # sockets and event streams
    assert all(seconds > 2 * Config().ws_heartbeat_seconds for seconds in timeouts), timeouts


def test_the_sample_event_stream_location_matches_both_stream_routes_and_nothing_else():
    [pattern] = re.findall(r"location ~ (\S+) \{", SAMPLE.read_text())
    execution = "4c76c170-2f47-49c5-9f18-7efcc105cb04"
    assert re.match(pattern, f"/api/v1/executions/{execution}/events")
    assert re.match(pattern, "/api/v1/executions/events")
    for other in (f"/api/v1/executions/{execution}", f"/api/v1/executions/{execution}/logs",
                  "/api/v1/executions"):
        assert not re.match(pattern, other), other
