"""WebSocket endpoints: one execution per socket (the original design) and one socket for many.

GET /api/v1/ws/executions/{id}   the status, nodes and log of one execution; closes when it ends
GET /api/v1/ws                   {"type": "subscribe", ...} for any number of executions and a feed
"""

import dataclasses
import functools
import json
import uuid

import psycopg2
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from ..api.schemas import STATUSES
from ..auth import InvalidToken, Principal, TokenVerifier
from ..config import Config
from ..db.outages import is_database_outage
from ..typedefs import (
    config_key,
    hub_key,
    metrics_key,
    open_connections_key,
    socket_counts_key,
    token_expiries_key,
    token_verifier_key,
)
from . import messages, socket_handshake
from .expiry_timer import ExpiryTimer
from .frame_transport import FrameTransport
from .socket_handshake import CLOSE_UNAUTHORIZED
from .socket_limits import CLOSE_TOO_MANY_SOCKETS, MessageRate
from .socket_outbox import SocketOutbox
from .subscription_hub import FeedFilter, SubscriptionHub

log = structlog.get_logger(__name__)

CLOSE_FINISHED = WSCloseCode.OK
CLOSE_INTERNAL_ERROR = WSCloseCode.INTERNAL_ERROR
CLOSE_TRY_AGAIN_LATER = WSCloseCode.TRY_AGAIN_LATER  # the database is unavailable: reconnect and resume
CLOSE_NOT_FOUND = 4404
NOT_FOUND = "no such execution"
# What ends a socket's read loop: a close frame from the peer, or the connection gone.
READ_ENDS = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)


class BadMessage(Exception):
    """A client frame that cannot be acted on; its text goes back as an `error` message."""


def parse_since(value) -> int | None:
    """`since` as a non-negative integer (a query string or a JSON number); None when absent."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
        return value
    raise BadMessage("since must be a non-negative integer")


def parse_execution_id(value) -> str:
    try:
        return str(uuid.UUID(value))
    except (TypeError, ValueError, AttributeError):
        raise BadMessage(NOT_FOUND) from None


class SocketSession:
    """One open WebSocket: the token in force, its subscriptions, and its outbox."""

    __slots__ = ("ws", "principal", "verifier", "config", "hub", "single_execution", "outbox", "rate",
                 "expiries", "_expiry")

    def __init__(self, ws: web.WebSocketResponse, frames: FrameTransport, principal: Principal,
                 verifier: TokenVerifier, config: Config, hub: SubscriptionHub, expiries: ExpiryTimer, *,
                 single_execution: bool):
        self.ws = ws
        self.principal = principal
        self.verifier = verifier
        self.config = config
        self.hub = hub
        self.single_execution = single_execution
        self.outbox = SocketOutbox(frames, capacity=config.ws_outbox_capacity,
                                   send_timeout=config.ws_send_timeout_seconds,
                                   close_on_terminal=single_execution, metrics=hub.metrics)
        self.rate: MessageRate | None = None  # made by the first message: most sockets never send one
        self.expiries = expiries
        self._expiry: list | None = None

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, execution_id: str, since: int | None) -> dict | None:
        """Check, register, then read what the client lacks. None if it is not visible."""
        watching = self.outbox.watching
        if execution_id not in watching and len(watching) >= self.config.ws_max_subscriptions:
            raise BadMessage(f"too many subscriptions on this socket (limit {self.config.ws_max_subscriptions})")
        # Live events are held back until the catch-up read is in; for an execution this token
        # may not see, they are dropped unsent with the subscription.
        self.outbox.hold(execution_id)
        self.hub.subscribe(execution_id, self.outbox)
        try:
            head = await self.hub.catch_up(execution_id, self.outbox, since, self.principal)
        except BaseException:
            self.unsubscribe(execution_id)
            raise
        if head is None:
            self.unsubscribe(execution_id)
            return None
        log.info("ws.subscribed", execution_id=execution_id, since=since, seq=head["status_seq"])
        return head

    def unsubscribe(self, execution_id: str) -> None:
        self.hub.unsubscribe(execution_id, self.outbox)
        self.outbox.forget(execution_id)

    # -- tokens ------------------------------------------------------------------------------

    def use_token(self, principal: Principal) -> None:
        """Put a token in force; the socket closes with 4401 when it expires."""
        self.principal = principal
        if self._expiry is not None:
            self.expiries.cancel(self._expiry)
        self._expiry = self.expiries.call_at(principal.expires_at, self._expired)

    @staticmethod
    def _feed_viewer(principal: Principal) -> str | None:
        return None if principal.sees_everything else principal.sub

    def _expired(self) -> None:
        log.info("ws.token_expired")
        self.outbox.close(CLOSE_UNAUTHORIZED, "token expired", drain=False)

    async def refresh(self, token) -> str:
        if not isinstance(token, str):
            raise BadMessage("auth needs a string token")
        try:
            principal = await self.verifier.verify(token)
        except InvalidToken as exc:
            raise BadMessage(f"auth refused: {exc}; the previous token stays in force") from None
        self.use_token(principal)
        # Permissions are those of the token in force: drop what the new one may not see.
        feed = self.hub.feed_of(self.outbox)
        if feed is not None and feed.viewer != self._feed_viewer(principal):
            moved = dataclasses.replace(feed, viewer=self._feed_viewer(principal))
            self.hub.subscribe_feed(self.outbox, moved)
        if self.outbox.watching:
            owners = await self.hub.owners(list(self.outbox.watching))
            for execution_id in list(self.outbox.watching):
                if not principal.may_see(owners.get(execution_id, "")):
                    self.unsubscribe(execution_id)
                    if self.single_execution:
                        self.outbox.close(CLOSE_NOT_FOUND, NOT_FOUND, drain=False)
                    else:
                        self.outbox.send_text(messages.encode(
                            {"type": "unsubscribed", "execution_id": execution_id, "reason": NOT_FOUND}))
        return messages.encode({"type": "auth_ok", "sub": principal.sub, "expires_at": principal.expires_at})

    # -- client frames -----------------------------------------------------------------------

    async def answer(self, msg) -> None:
        """Act on one client frame; a bad one gets an `error` and the socket stays open."""
        self.outbox.heard()
        if msg.type == WSMsgType.PING:
            self.outbox.send_pong(msg.data)
            return
        if msg.type == WSMsgType.PONG:
            return
        if self.rate is None:
            self.rate = MessageRate(self.config.ws_messages_per_second, self.config.ws_message_burst)
        if not self.rate.allow():
            if self.rate.should_report_refusal():
                self.outbox.send_text(messages.error(
                    f"rate limit: at most {self.config.ws_messages_per_second:g} messages a second; "
                    "messages over it are dropped"))
            return
        try:
            reply = await self._answer(msg)
        except BadMessage as exc:
            reply = messages.error(str(exc))
        if reply is not None:
            self.outbox.send_text(reply)

    async def _answer(self, msg) -> str | None:
        if msg.type == WSMsgType.BINARY:
            raise BadMessage("binary frames are not supported; send JSON text")
        if msg.type != WSMsgType.TEXT:
            return None
        try:
            data = json.loads(msg.data, parse_constant=lambda name: None)
        except (ValueError, RecursionError):
            raise BadMessage("message is not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise BadMessage('expected a JSON object with a string "type"')
        kind = data["type"]
        if kind == "ping":
            return messages.pong()
        if kind == "auth":
            return await self.refresh(data.get("token"))
        if not self.single_execution:
            if kind == "subscribe":
                return await self._subscribe_message(data)
            if kind == "unsubscribe":
                return self._unsubscribe_message(data)
        raise BadMessage(f"unknown message type {kind[:40]!r}")

    async def _subscribe_message(self, data: dict) -> str:
        if "feed" in data:
            return self._subscribe_feed(data)
        execution_id = parse_execution_id(data.get("execution_id"))
        since = parse_since(data.get("since"))
        try:
            status = await self.subscribe(execution_id, since)
        except BadMessage as exc:
            return messages.error(str(exc), execution_id)
        except (psycopg2.Error, OSError, TimeoutError):
            # The read failed, not the request: this subscription fails, the others stay.
            log.exception("ws.subscribe_failed", execution_id=execution_id)
            return messages.error("could not read this execution; subscribe again", execution_id)
        if status is None:
            return messages.error(NOT_FOUND, execution_id)
        return None

    def _subscribe_feed(self, data: dict) -> str:
        if data["feed"] != "executions":
            raise BadMessage('the only feed is "executions"')
        workflow_id = data.get("workflow_id")
        if workflow_id is not None:
            workflow_id = parse_execution_id(workflow_id)
        status = data.get("status")
        if status is not None and status not in STATUSES:
            raise BadMessage(f"status must be one of {', '.join(STATUSES)}")
        self.hub.subscribe_feed(self.outbox, FeedFilter(
            self._feed_viewer(self.principal), workflow_id=workflow_id, status=status))
        return messages.FEED_SUBSCRIBED

    def _unsubscribe_message(self, data: dict) -> str:
        if data.get("feed") == "executions":
            self.hub.unsubscribe_feed(self.outbox)
            return messages.encode({"type": "unsubscribed", "feed": "executions"})
        execution_id = parse_execution_id(data.get("execution_id"))
        self.unsubscribe(execution_id)
        return messages.encode({"type": "unsubscribed", "execution_id": execution_id})

    # -- the socket's life -------------------------------------------------------------------

    async def finish(self) -> None:
        """The read loop has ended: complete the closing handshake, then leave the hub."""
        if self._expiry is not None:
            self.expiries.cancel(self._expiry)
        try:
            await self.outbox.finish()
        finally:
            self.hub.drop(self.outbox, self.outbox.watching)


async def serve_socket(request: web.Request, *, single_execution: bool) -> web.StreamResponse:
    """A socket's whole life, in one coroutine: every open socket keeps its handler's frames
    for as long as it lives, so each frame saved is saved 10,000 times (and so the read loop
    is here, not in a method of the session, and uses receive(), not `async for`)."""
    ws, principal = await socket_handshake.accept(request)
    if principal is None:
        return ws
    frames = await FrameTransport.of(ws, request)
    if frames is None:
        return ws  # gone during the handshake
    app = request.app
    sockets, connections, metrics = app[socket_counts_key], app[open_connections_key], app[metrics_key]
    if not sockets.admit(principal.sub):
        await ws.close(code=CLOSE_TOO_MANY_SOCKETS, message=b"too many sockets for this token")
        return ws
    session = SocketSession(ws, frames, principal, app[token_verifier_key], app[config_key], app[hub_key],
                            app[token_expiries_key], single_execution=single_execution)
    connections.add(session.outbox)
    metrics.open_sockets.inc()
    try:
        try:
            if not single_execution or await watch_path_execution(request, session):
                session.use_token(principal)
                # Sending needs no task of its own: the hub writes through the outbox, whose writer
                # task exists only while something is queued for a slow peer. The peer's close
                # frame (its own, or its answer to ours) or the connection's end ends this loop.
                while (msg := await ws.receive()).type not in READ_ENDS:
                    await session.answer(msg)
        except Exception as exc:
            # Ours, not the client's (the path execution's first read failed): a close code, so
            # it reconnects and resumes, rather than a connection dropped without a word.
            if is_database_outage(exc):
                log.warning("ws.database_unavailable", error=type(exc).__name__)
                session.outbox.close(CLOSE_TRY_AGAIN_LATER, "database unavailable", drain=False)
            else:
                log.exception("ws.failed")
                session.outbox.close(CLOSE_INTERNAL_ERROR, "internal error", drain=False)
        finally:
            await session.finish()
    finally:
        metrics.open_sockets.dec()
        # Only now: a shutdown waits for every open connection, so each closing handshake completes.
        connections.discard(session.outbox)
        sockets.release(principal.sub)
    code = session.outbox.close_code or ws.close_code  # ours, else the peer's (or 1006: lost)
    log.info("ws.closed", code=None if code is None else int(code))
    return ws


# Partials, not wrapper coroutines: one frame fewer per open socket. (routes.py names their
# routes, so that the HTTP middlewares leave them be.)
# /api/v1/ws/executions/{id}: the current status, then every change, then 1000 when it ends.
execution_socket = functools.partial(serve_socket, single_execution=True)
# /api/v1/ws: subscribe and unsubscribe to executions and to the executions feed.
multiplexed_socket = functools.partial(serve_socket, single_execution=False)


async def watch_path_execution(request: web.Request, session: SocketSession) -> bool:
    """Subscribe a single-execution socket to the execution in its path; False after a 4404."""
    try:
        execution_id = parse_execution_id(request.match_info["id"])
    except BadMessage:
        await session.ws.close(code=CLOSE_NOT_FOUND, message=NOT_FOUND.encode())
        return False
    structlog.contextvars.bind_contextvars(execution_id=execution_id)
    try:
        since = parse_since(socket_handshake.query_param(request, "since"))
    except BadMessage as exc:
        session.outbox.send_text(messages.error(str(exc)))
        since = None
    status = await session.subscribe(execution_id, since)
    if status is None:
        await session.ws.close(code=CLOSE_NOT_FOUND, message=NOT_FOUND.encode())
        return False
    if status["status"] in messages.TERMINAL_STATUSES:
        # Finished: what the client lacks (perhaps nothing), then the close.
        session.outbox.close(CLOSE_FINISHED, "finished", drain=True)
    return True
