"""Committed changes, whoever writes them, reach every socket watching the execution."""

import asyncio

import pytest
from aiohttp import WSMsgType

LEGACY_STATUS_FIELDS = {"type", "execution_id", "status", "progress", "message", "result", "error", "execution_time"}


async def next_json(ws, timeout: float = 5.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}"
    return msg.json()


async def until_status(ws, status: str, timeout: float = 5.0) -> list[dict]:
    """Collect status messages until one has the given status."""
    seen = []
    while True:
        message = await next_json(ws, timeout)
        if message["type"] == "status":
            seen.append(message)
            if message["status"] == status:
                return seen


async def test_snapshot_then_sql_update_then_final_close(user, sql):
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        snapshot = await next_json(ws)
        assert LEGACY_STATUS_FIELDS <= snapshot.keys()
        assert snapshot["type"] == "status"
        assert snapshot["execution_id"] == execution["id"]
        assert snapshot["status"] == "pending"
        assert snapshot["seq"] == 1

        await sql.execute("UPDATE executions SET status='running', progress=40 WHERE id=%s", (execution["id"],))
        running = await next_json(ws)
        assert (running["status"], running["progress"], running["seq"]) == ("running", 40, 2)

        await sql.execute(
            "UPDATE executions SET status='completed', result='{\"answer\": 42}' WHERE id=%s", (execution["id"],)
        )
        final = await next_json(ws)
        assert final["status"] == "completed"
        assert final["result"] == {"answer": 42}
        assert final["progress"] == 100
        assert isinstance(final["execution_time"], float) and final["execution_time"] >= 0
        closing = await ws.receive(timeout=5)
        assert closing.type == WSMsgType.CLOSE
        assert ws.close_code == 1000
