"""The WebSocket endpoint of the original design: /api/v1/ws/executions/{id}."""

import asyncio
import functools
import json
import time
import uuid

import structlog
from aiohttp import WSMsgType, web

from . import messages
from .auth import InvalidToken, token_from_request, verify_token
from .socket_outbox import SocketOutbox
from .typedefs import config_key, hub_key

log = structlog.get_logger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404


def parse_since(text: str | None) -> int | None:
    """`since` as a non-negative integer; None when absent; ValueError otherwise."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise ValueError("since must be a non-negative integer")
    return int(text)


async def close_with(ws: web.WebSocketResponse, code: int, reason: str) -> web.WebSocketResponse:
    await ws.close(code=code, message=reason.encode())
    return ws


async def execution_socket(request: web.Request) -> web.WebSocketResponse:
    config = request.app[config_key]
    ws = web.WebSocketResponse(
        heartbeat=config.ws_heartbeat_seconds, max_msg_size=config.ws_max_message_bytes,
    )
    await ws.prepare(request)

    # Browsers cannot read an HTTP status from a refused handshake: refuse with a close code.
    try:
        principal = verify_token(config.jwt_secret, token_from_request(request, allow_query=True))
    except InvalidToken as exc:
        return await close_with(ws, CLOSE_UNAUTHORIZED, str(exc))
    try:
        execution_id = str(uuid.UUID(request.match_info["id"]))
    except ValueError:
        return await close_with(ws, CLOSE_NOT_FOUND, "no such execution")
    try:
        since = parse_since(request.query.get("since"))
    except ValueError as exc:
        await ws.send_str(messages.error(str(exc)))
        since = None

    structlog.contextvars.bind_contextvars(execution_id=execution_id, sub=principal.sub)
    hub = request.app[hub_key]
    outbox = SocketOutbox(ws, capacity=config.ws_outbox_capacity, send_timeout=config.ws_send_timeout_seconds)
    if since is not None:
        outbox.start_after(execution_id, since)

    # Register first, then read: a change committed in between reaches the outbox either way,
    # and the outbox drops whichever copy is not newer than what it already has.
    with hub.subscription(execution_id, outbox):
        row = await hub.snapshot(execution_id, outbox)
        if row is None or not principal.may_see(row["owner"]):
            return await close_with(ws, CLOSE_NOT_FOUND, "no such execution")
        if row["status"] in messages.TERMINAL_STATUSES:
            # Finished: the final status (unless the client has it already), then the close.
            outbox.close(1000, "finished", drain=True)
        log.info("ws.subscribed", since=since, seq=row["seq"])
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, principal.expires_at - time.time()),
            functools.partial(outbox.close, CLOSE_UNAUTHORIZED, "token expired", drain=False),
        )
        # The handler's own task writes; a second task reads client frames. Only one task at a
        # time may receive, so the reader is stopped before the closing handshake reads the reply.
        reader = asyncio.create_task(read_client_frames(ws, outbox))
        try:
            close = await outbox.run()
        finally:
            expiry.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if close is not None:
            await outbox.close_socket(*close)
        log.info("ws.closed", code=ws.close_code)
    return ws


async def read_client_frames(ws: web.WebSocketResponse, outbox: SocketOutbox) -> None:
    """Answer each client frame through the outbox; tell it when the client is gone."""
    try:
        async for msg in ws:
            reply = handle_client_frame(msg)
            if reply is not None:
                outbox.send_text(reply)
    finally:
        outbox.peer_gone()


def handle_client_frame(msg) -> str | None:
    """The reply to one client frame: pong, an error, or nothing. Never raises."""
    if msg.type == WSMsgType.BINARY:
        return messages.error("binary frames are not supported; send JSON text")
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        data = json.loads(msg.data, parse_constant=lambda name: None)
    except (ValueError, RecursionError):
        return messages.error("message is not valid JSON")
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return messages.error('expected a JSON object with a string "type"')
    if data["type"] == "ping":
        return messages.pong()
    return messages.error(f"unknown message type {data['type'][:40]!r}")
