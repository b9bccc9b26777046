"""Baseline 1: the platform's first design, faithfully: every open socket re-reads its execution
every 2 seconds and sends a `status` when it changed. Same stack as the service (aiohttp, aiopg),
same endpoint, same messages, so the comparison isolates the design.

    python -m bench.baseline_polling --port 8101 --dsn URL --secret S
"""

import argparse
import asyncio
import json
import uuid

import aiopg
import jwt
from aiohttp import WSMsgType, web

POLL_SECONDS = 2.0
TERMINAL = ("completed", "failed")
QUERY = """
    SELECT id::text, status, progress, message, result, error, seq, owner,
           EXTRACT(EPOCH FROM finished_at - started_at)::float8 AS execution_time
    FROM executions WHERE id = %s
"""


def status_message(row) -> dict:
    eid, status, progress, message, result, error, seq, _owner, execution_time = row
    return {"type": "status", "execution_id": eid, "status": status, "progress": progress,
            "message": message, "result": result, "error": error, "execution_time": execution_time,
            "seq": seq}


async def execution_socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    try:
        jwt.decode(request.query.get("access_token", ""), request.app["secret"], algorithms=["HS256"])
        execution_id = str(uuid.UUID(request.match_info["id"]))
    except (jwt.InvalidTokenError, ValueError):
        await ws.close(code=4401)
        return ws

    async def read_client():
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    if json.loads(msg.data).get("type") == "ping":
                        await ws.send_json({"type": "pong"})
                except (ValueError, AttributeError):
                    await ws.send_json({"type": "error", "message": "invalid message"})

    reader = asyncio.create_task(read_client())
    pool = request.app["pool"]
    last = None
    try:
        while not ws.closed and not reader.done():
            async with pool.acquire() as conn:
                async with conn.cursor() as cur:
                    await cur.execute(QUERY, (execution_id,))
                    row = await cur.fetchone()
            if row is None:
                await ws.close(code=4404)
                break
            message = status_message(row)
            if message != last:
                await ws.send_json(message)
                last = message
            if message["status"] in TERMINAL:
                await ws.close(code=1000)
                break
            await asyncio.sleep(POLL_SECONDS)
    except ConnectionError:
        pass
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()

    async def pool_ctx(app):
        async with aiopg.create_pool(args.dsn, minsize=1, maxsize=10, enable_hstore=False) as pool:
            app["pool"] = pool
            yield

    app = web.Application()
    app["secret"] = args.secret
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/ws/executions/{id}", execution_socket)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, shutdown_timeout=2)


if __name__ == "__main__":
    main()
