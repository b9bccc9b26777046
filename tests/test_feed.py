"""The executions feed on /api/v1/ws: each socket gets the changes its token may see, and only those."""

import asyncio

import pytest

from .actors import Actor
from .helpers import next_json, next_status

pytestmark = pytest.mark.both_change_sources


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
