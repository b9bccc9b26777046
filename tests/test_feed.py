"""The executions feed on /api/v1/ws: each socket gets the changes its token may see, and only those."""

import asyncio

import aiopg
import pytest

from service.typedefs import hub_key, listener_key

from .actors import Actor
from .helpers import next_json, next_status, terminate_listener, until_synced

pytestmark = pytest.mark.both_change_sources


@pytest.fixture
async def worker_sql(database_url):
    """A second plain SQL connection: a worker committing while the test's own is busy."""
    async with aiopg.connect(database_url, enable_hstore=False) as conn:
        async with conn.cursor() as cur:
            yield cur


def feed_socket(actor: Actor, token: str | None = None):
    return actor.client.ws_connect("/api/v1/ws", params={"access_token": token or actor.token})


async def subscribed(ws, **filters) -> None:
    await ws.send_json({"type": "subscribe", "feed": "executions", **filters})
    assert await next_json(ws) == {"type": "subscribed", "feed": "executions"}


async def statuses_until_quiet(ws, quiet: float = 0.5) -> list[dict]:
    seen = []
    while True:
        try:
            seen.append(await next_status(ws, timeout=quiet))
        except asyncio.TimeoutError:
            return seen


async def test_many_users_feeds_each_get_their_own_and_admins_get_all(client, worker):
    users = [Actor(client) for _ in range(4)]
    admin = Actor(client, "admin")
    sockets = {}
    try:
        for actor in [*users, admin]:
            sockets[actor.sub] = [await feed_socket(actor).__aenter__() for _ in range(2)]
            for ws in sockets[actor.sub]:
                await subscribed(ws)
        created = {actor.sub: (await actor.create_execution())["id"] for actor in users}
        for execution_id in created.values():
            await worker.request("PATCH", f"/api/v1/executions/{execution_id}", json={"status": "running"})

        for actor in users:
            for ws in sockets[actor.sub]:
                seen = await statuses_until_quiet(ws)
                assert {m["execution_id"] for m in seen} == {created[actor.sub]}
                assert [m["status"] for m in seen] == ["pending", "running"]
        for ws in sockets[admin.sub]:
            seen = await statuses_until_quiet(ws)
            assert {m["execution_id"] for m in seen} == set(created.values())
    finally:
        for socket_list in sockets.values():
            for ws in socket_list:
                await ws.close()


async def test_a_token_for_another_user_moves_the_feed_to_what_that_user_may_see(client, worker):
    first, second = Actor(client), Actor(client)
    async with feed_socket(first) as ws:
        await subscribed(ws)
        await ws.send_json({"type": "auth", "token": second.token})
        assert (await next_json(ws))["type"] == "auth_ok"
        await first.create_execution()
        theirs = await second.create_execution()
        seen = await statuses_until_quiet(ws)
        assert [m["execution_id"] for m in seen] == [theirs["id"]]


async def test_feed_filters_by_status_among_the_viewers_executions(client, worker):
    user = Actor(client)
    async with feed_socket(user) as ws:
        await subscribed(ws, status="running")
        pending = await user.create_execution()
        running = await user.create_execution()
        await worker.request("PATCH", f"/api/v1/executions/{running['id']}", json={"status": "running"})
        seen = await statuses_until_quiet(ws)
        assert [(m["execution_id"], m["status"]) for m in seen] == [(running["id"], "running")]
        assert pending["id"] not in {m["execution_id"] for m in seen}


async def test_a_socket_on_the_feed_and_an_execution_gets_its_every_event_in_order(
        client, sql, worker_sql):
    """The feed's read comes after the subscription's: a status committed between the two must
    not overtake, on a socket that watches the execution too, a log line committed before it."""
    hub, user = client.app[hub_key], Actor(client)
    async with feed_socket(user) as ws:
        await subscribed(ws)
        execution = await user.create_execution()
        assert (await next_status(ws))["execution_id"] == execution["id"]  # its creation: handled
        await ws.send_json({"type": "subscribe", "execution_id": execution["id"]})
        last_seq = max(m["seq"] for m in await until_synced(ws))
        feed_statuses = hub._reader.feed_statuses
        committed_between = []

        async def commit_between(execution_ids, owners):
            # A worker commits a log line, then a status, after the subscription's read of this
            # batch and before the feed's.
            if execution["id"] in execution_ids and not committed_between:
                committed_between.append(True)
                await worker_sql.execute("INSERT INTO execution_logs (execution_id, message) "
                                         "VALUES (%s, 'between')", (execution["id"],))
                await worker_sql.execute("UPDATE executions SET status='running', message='after' "
                                         "WHERE id=%s", (execution["id"],))
            return await feed_statuses(execution_ids, owners)
        hub._reader.feed_statuses = commit_between  # the real read, after a real commit
        await sql.execute("UPDATE executions SET message='first' WHERE id=%s", (execution["id"],))
        seen = []
        while not seen or seen[-1].get("message") != "after":
            seen.append(await next_json(ws))
    assert committed_between
    assert [(m["type"], m["message"]) for m in seen] == [
        ("status", "first"), ("log", "between"), ("status", "after")]
    assert [m["seq"] for m in seen] == list(range(last_seq + 1, last_seq + 4))


async def test_feed_subscribers_are_told_to_reload_after_the_listener_missed_changes(
        client_with, config, sql):
    """Changes committed while the listener reconnects are never announced, and the feed does not
    replay: each feed socket gets `subscribed` again once it is back, and a reload over REST then
    has the change."""
    client = await client_with(listener_backoff_min_seconds=0.5)
    listener, user = client.app[listener_key], Actor(client)
    async with feed_socket(user) as ws:
        await subscribed(ws)
        execution = await user.create_execution()
        assert (await next_status(ws))["execution_id"] == execution["id"]
        await terminate_listener(config.database_url)
        for _ in range(500):
            if not listener.connected:
                break
            await asyncio.sleep(0.01)
        assert not listener.connected
        await sql.execute("UPDATE executions SET status='running', message='in the gap' WHERE id=%s",
                          (execution["id"],))
        assert await next_json(ws, timeout=10) == {"type": "subscribed", "feed": "executions"}
        status, reloaded = await user.request("GET", f"/api/v1/executions/{execution['id']}")
        assert (status, reloaded["status"], reloaded["message"]) == (200, "running", "in the gap")
        await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution["id"],))
        # Live again ("in the gap" itself may have come live too, had the listener been back).
        assert "completed" in [m["status"] for m in await statuses_until_quiet(ws)]
