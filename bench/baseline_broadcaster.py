"""Baseline 2: what a Python developer would build today from popular libraries: Starlette +
uvicorn + broadcaster's Postgres backend; a trigger NOTIFYs the row as JSON (baseline_broadcaster.sql)
and each socket forwards the messages about its execution.

    python -m bench.baseline_broadcaster --port 8102 --dsn URL --secret S
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import uuid

import asyncpg
import jwt
import uvicorn
from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

TERMINAL = ("completed", "failed")


def status_message(row: dict) -> dict:
    execution_time = None
    if row.get("started_at") and row.get("finished_at"):
        started = datetime.datetime.fromisoformat(row["started_at"])
        finished = datetime.datetime.fromisoformat(row["finished_at"])
        execution_time = (finished - started).total_seconds()
    return {"type": "status", "execution_id": row["id"], "status": row["status"],
            "progress": row["progress"], "message": row["message"], "result": row["result"],
            "error": row["error"], "execution_time": execution_time, "seq": row["seq"]}


async def _drain(subscriber) -> None:
    async for _ in subscriber:
        pass


def create_app(dsn: str, secret: str) -> Starlette:
    broadcast = Broadcast(dsn)
    state = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await broadcast.connect()
        state["pool"] = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
        # broadcaster LISTENs on a channel's first subscribe; sockets subscribing concurrently then
        # race on its one asyncpg connection ("another operation is in progress"). The usual
        # workaround: one subscription held for the app's life (drained so its queue stays empty).
        async with broadcast.subscribe(channel="executions") as keeper:
            drain = asyncio.create_task(_drain(keeper))
            try:
                yield
            finally:
                drain.cancel()
        await state["pool"].close()
        await broadcast.disconnect()

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    async def execution_socket(websocket: WebSocket):
        await websocket.accept()
        try:
            jwt.decode(websocket.query_params.get("access_token", ""), secret, algorithms=["HS256"])
            execution_id = str(uuid.UUID(websocket.path_params["id"]))
        except (jwt.InvalidTokenError, ValueError):
            await websocket.close(code=4401)
            return

        async def read_client():
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    data = await websocket.receive_text()
                    with contextlib.suppress(ValueError, AttributeError):
                        if json.loads(data).get("type") == "ping":
                            await websocket.send_json({"type": "pong"})

        async with broadcast.subscribe(channel="executions") as subscriber:
            row = await state["pool"].fetchrow(
                "SELECT row_to_json(e)::text AS j FROM executions e WHERE id = $1", uuid.UUID(execution_id))
            if row is None:
                await websocket.close(code=4404)
                return
            snapshot = status_message(json.loads(row["j"]))
            await websocket.send_text(json.dumps(snapshot))
            if snapshot["status"] in TERMINAL:
                await websocket.close(code=1000)
                return
            reader = asyncio.create_task(read_client())
            try:
                async for event in subscriber:
                    if reader.done():
                        break
                    data = json.loads(event.message)
                    if data["id"] != execution_id:
                        continue
                    message = status_message(data)
                    await websocket.send_text(json.dumps(message))
                    if message["status"] in TERMINAL:
                        await websocket.close(code=1000)
                        break
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    return Starlette(
        routes=[Route("/healthz", healthz), WebSocketRoute("/api/v1/ws/executions/{id}", execution_socket)],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.dsn, args.secret), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
