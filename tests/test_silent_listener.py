"""A listener whose connection goes silent (no error, no close) is covered by the reconcile, and
replaced once its ping goes unanswered."""

import asyncio
import contextlib

import pytest
from psycopg2.extensions import parse_dsn

from service.push import pg_listener, wal_listener
from service.typedefs import listener_key

from .actors import Actor
from .helpers import next_status, scrape, value

pytestmark = pytest.mark.both_change_sources

# What each change source's connection says in its startup packet.
LISTENER_NAMES = (pg_listener.APPLICATION_NAME.encode(), wal_listener.APPLICATION_NAME.encode())


class FreezableProxy:
    """TCP in front of PostgreSQL's unix socket. `freeze_listener()` stops forwarding the
    listener's traffic in both directions while keeping its sockets open: a black hole."""

    def __init__(self, unix_path: str):
        self.unix_path = unix_path
        self.connections: list[dict] = []
        self.tasks: set[asyncio.Task] = set()
        self.server = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, client_reader, client_writer):
        self.tasks.add(asyncio.current_task())
        writers = [client_writer]
        try:
            server_reader, server_writer = await asyncio.open_unix_connection(self.unix_path)
            writers.append(server_writer)
            connection = {"listener": False, "frozen": False}
            self.connections.append(connection)
            await asyncio.gather(
                self._pipe(client_reader, server_writer, connection, inspect=True),
                self._pipe(server_reader, client_writer, connection, inspect=False))
        except (asyncio.CancelledError, ConnectionError):
            pass  # stopped, or one side hung up
        finally:
            for writer in writers:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _pipe(self, reader, writer, connection, inspect: bool):
        while data := await reader.read(65536):
            if inspect and any(name in data for name in LISTENER_NAMES):
                connection["listener"] = True
            while connection["frozen"]:
                await asyncio.sleep(0.05)  # hold the bytes: nothing arrives, nothing fails
            writer.write(data)
            await writer.drain()

    def freeze_listener(self):
        """Only the listener connections open now; a new one gets through."""
        for connection in self.connections:
            connection["frozen"] = connection["listener"]

    async def stop(self):
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def proxy(config):
    """The proxy, and the database URL that goes through it."""
    params = parse_dsn(config.database_url)
    proxy = FreezableProxy(f"{params['host']}/.s.PGSQL.{params.get('port', '5432')}")
    port = await proxy.start()
    proxy.url = f"postgresql://{params['user']}@127.0.0.1:{port}/{params['dbname']}"
    yield proxy
    await proxy.stop()


async def test_reconcile_delivers_while_the_listener_is_a_black_hole(client_with, proxy, sql):
    client = await client_with(database_url=proxy.url, reconcile_interval_seconds=0.5,
                               listener_ping_seconds=30)
    user = Actor(client)
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        await next_status(ws)
        proxy.freeze_listener()
        await sql.execute("UPDATE executions SET status='running', message='during the freeze' WHERE id=%s",
                          (execution["id"],))
        started = asyncio.get_running_loop().time()
        message = await next_status(ws, timeout=5)
        assert (message["message"], message["seq"]) == ("during the freeze", 2)
        # Within the reconcile period (plus scheduling), though no notification arrived.
        assert asyncio.get_running_loop().time() - started < 3
        assert client.app[listener_key].connected, "the listener still believes it is connected"
    samples = await scrape(client)
    assert value(samples, "aiagent_reconcile_corrections_total") == 1, "the metric shows what the listener missed"


async def test_an_unanswered_ping_replaces_a_silent_listener(client_with, proxy, sql):
    client = await client_with(database_url=proxy.url, reconcile_interval_seconds=60,
                               listener_ping_seconds=0.5)
    listener = client.app[listener_key]
    proxy.freeze_listener()
    for _ in range(100):
        if listener.reconnects >= 1 and listener.connected:
            break
        await asyncio.sleep(0.1)
    assert listener.reconnects >= 1 and listener.connected

    user = Actor(client)
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        await next_status(ws)
        await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (execution["id"],))
        assert (await next_status(ws, timeout=2))["status"] == "running", "pushed by the new listener"
