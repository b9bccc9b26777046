"""Property: whatever the interleaving of writes and disconnects, a client that resumes with
`since` assembles exactly the node and log events stored, in order, and ends on the final status."""

import asyncio
import dataclasses

import aiopg
import psycopg2
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.db.state_machine import ILLEGAL_CHANGE, NODE_TRANSITIONS

from .actors import Actor

pytestmark = pytest.mark.both_change_sources

NODES = ("a", "b", "c")
OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("log"), st.sampled_from(("debug", "info", "warning", "error")), st.text(max_size=30)),
    st.tuples(st.just("node"), st.sampled_from(NODES),
              st.sampled_from(("running", "completed", "failed", "skipped"))),
    st.tuples(st.just("progress"), st.integers(0, 100)),
    st.tuples(st.just("log_batch"), st.integers(2, 5)),
    st.just(("disconnect",)),
    st.just(("reconnect",)),
    st.just(("pause",)),
), min_size=1, max_size=30)


class ResumingClient:
    """Keeps what it received; after a disconnect, reconnects with since = the last seq it saw."""

    def __init__(self, actor: Actor, execution_id: str):
        self.actor, self.execution_id = actor, execution_id
        self.received: list[dict] = []
        self.synced: list[int] = []  # the seq of each `synced`, one per connection
        self.connections = 0
        self.last_seq = 0
        self.ws = None
        self.reader: asyncio.Task | None = None
        self.close_code = None

    async def connect(self) -> None:
        self.ws = await self.actor.ws(self.execution_id, since=str(self.last_seq)).__aenter__()
        self.connections += 1
        self.reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws) -> None:
        while (msg := await ws.receive()).type == WSMsgType.TEXT:
            message = msg.json()
            assert "resync" not in message
            if message["type"] == "synced":
                # The end of the catch-up: it covers everything received so far.
                assert message["seq"] >= self.last_seq
                self.synced.append(message["seq"])
            else:
                self.received.append(message)
            self.last_seq = max(self.last_seq, message["seq"])
        self.close_code = ws.close_code

    async def disconnect(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.ws.close()
        self.ws = None

    async def finish(self) -> None:
        await asyncio.wait_for(self.reader, 10)


async def scenario(config, operations) -> None:
    async with TestClient(TestServer(create_app(config))) as client:
        user = Actor(client)
        workflow = await user.create_workflow(nodes=[(n, n.upper()) for n in NODES])
        execution = await user.create_execution(workflow["id"])
        eid = execution["id"]
        async with aiopg.connect(config.database_url, enable_hstore=False) as conn:
            async with conn.cursor() as sql:
                await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (eid,))
                watcher = ResumingClient(user, eid)
                await watcher.connect()
                node_statuses = {node: "pending" for node in NODES}
                for operation in operations:
                    kind = operation[0]
                    if kind == "disconnect" and watcher.ws is not None:
                        await watcher.disconnect()
                    elif kind == "reconnect" and watcher.ws is None:
                        await watcher.connect()
                    elif kind == "pause":
                        await asyncio.sleep(0.01)
                    else:
                        await write(sql, eid, operation, node_statuses)
                if watcher.ws is None:
                    await watcher.connect()
                await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (eid,))
                await watcher.finish()

                await sql.execute(
                    "SELECT seq, 'node', node_id, status FROM node_events WHERE execution_id=%s "
                    "UNION ALL SELECT seq, 'log', level, message FROM execution_logs WHERE execution_id=%s "
                    "ORDER BY 1", (eid, eid))
                stored = [tuple(row) for row in await sql.fetchall()]

        events = [m for m in watcher.received if m["type"] in ("node", "log")]
        assembled = [(m["seq"], "node", m["node_id"], m["status"]) if m["type"] == "node"
                     else (m["seq"], "log", m["level"], m["message"]) for m in events]
        assert assembled == stored
        seqs = [m["seq"] for m in watcher.received]
        assert seqs == sorted(set(seqs)), "nothing repeated, nothing out of order"
        assert watcher.received[-1]["type"] == "status" and watcher.received[-1]["status"] == "completed"
        # One per connection (a connection cut before its catch-up was read may miss its own).
        assert 1 <= len(watcher.synced) <= watcher.connections
        assert watcher.close_code == 1000


async def write(sql, eid: str, operation, node_statuses: dict[str, str]) -> None:
    """One write, which the database must take exactly when the model says it is legal: only a
    node move the state machine forbids may be refused, and then with AL409."""
    kind = operation[0]
    legal = True
    if kind == "node":
        node, status = operation[1:]
        legal = status == node_statuses[node] or status in NODE_TRANSITIONS.get(node_statuses[node], ())
    try:
        if kind == "log":
            await sql.execute("INSERT INTO execution_logs (execution_id, level, message) VALUES (%s, %s, %s)",
                              (eid, operation[1], operation[2].replace("\x00", "")))
        elif kind == "log_batch":
            await sql.execute("INSERT INTO execution_logs (execution_id, message)"
                              " SELECT %s, 'batch line ' || n FROM generate_series(1, %s) n",
                              (eid, operation[1]))
        elif kind == "node":
            await sql.execute("UPDATE execution_nodes SET status=%s WHERE execution_id=%s AND node_id=%s",
                              (status, eid, node))
        elif kind == "progress":
            await sql.execute("UPDATE executions SET progress=%s WHERE id=%s", (operation[1], eid))
    except psycopg2.Error as exc:
        if legal or exc.pgcode != ILLEGAL_CHANGE:
            raise
        return  # refused as it should be: nothing stored, nothing to deliver
    assert legal, f"the database took an illegal write: {operation}"
    if kind == "node":
        node_statuses[node] = status


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
# Always among the examples: a retry (failed -> running) and moves the state machine refuses.
@example(operations=[("node", "a", "running"), ("node", "a", "failed"), ("log", "info", "retrying"),
                     ("node", "a", "running"), ("node", "a", "completed"), ("node", "a", "running"),
                     ("node", "b", "completed"), ("disconnect",), ("progress", 70), ("node", "b", "skipped"),
                     ("reconnect",), ("node", "b", "running")])
def test_a_resuming_client_assembles_the_stored_sequence(config, operations):
    asyncio.run(scenario(dataclasses.replace(config, ws_log_tail=0), operations))
