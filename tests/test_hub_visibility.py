"""A change announced a moment before other sessions can see it (the wal source decodes a commit
once its record is flushed, and the writer makes it visible just after) still goes out at once:
the hub reads again after short pauses, instead of leaving it to the reconcile."""

import asyncio

from service.typedefs import hub_key, listener_task_key

from .actors import Actor
from .helpers import next_json, next_status


async def without_listener(client):
    """Only the test announces: the app's own listener is stopped (and the reconcile 30 s away)."""
    task = client.app[listener_task_key]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return client.app[hub_key]


async def commit_later(sql, delay: float, statement: str, params) -> None:
    await asyncio.sleep(delay)
    await sql.execute(statement, params)


async def test_a_status_announced_before_it_is_visible_reaches_its_socket(client, user, sql):
    execution = await user.create_execution()
    hub = await without_listener(client)
    async with user.ws(execution["id"]) as ws:
        await next_status(ws)
        # The announcement of seq 2 comes first; the commit that makes it, 30 ms later.
        await asyncio.gather(
            hub.on_notified({execution["id"]: 2}),
            commit_later(sql, 0.03, "UPDATE executions SET status = 'running' WHERE id = %s",
                         (execution["id"],)))
        message = await next_status(ws, timeout=1)  # the reconcile is 30 s away
        assert (message["status"], message["seq"]) == ("running", 2)


async def test_a_new_execution_announced_before_it_is_visible_reaches_the_feed(client, sql):
    user = Actor(client)
    workflow = await user.create_workflow()
    hub = await without_listener(client)
    async with client.ws_connect("/api/v1/ws", params={"access_token": user.token}) as ws:
        await ws.send_json({"type": "subscribe", "feed": "executions"})
        assert (await next_json(ws))["type"] == "subscribed"
        await sql.execute("SELECT gen_random_uuid()::text")
        (execution_id,) = await sql.fetchone()
        await asyncio.gather(
            hub.on_notified({execution_id: 1}),
            commit_later(sql, 0.03, "INSERT INTO executions (id, workflow_id, owner) VALUES (%s, %s, %s)",
                         (execution_id, workflow["id"], user.sub)))
        message = await next_status(ws, timeout=1)
        assert (message["execution_id"], message["status"]) == (execution_id, "pending")
