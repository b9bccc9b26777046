"""Server-Sent Events endpoints: the socket's messages over plain HTTP, through the same hub.

GET /api/v1/executions/{id}/events   one execution: its snapshot, or the events after Last-Event-ID
                                     (or ?since=), then `synced`, then live; ends after the final status
GET /api/v1/executions/events        the executions feed (?workflow_id=, ?status=)

Unlike the socket routes, these go through the HTTP middlewares (request id, the access log
without the query string, metrics, CORS on refusals, the one error shape): a stream is refused
with an HTTP status before it starts, which EventSource reports as an error and does not retry.
That keeps the middlewares' frames suspended while a stream is open (a few hundred bytes each),
which the sockets avoid: streams are expected to be far fewer, and their refusals need the shape.
"""

from collections.abc import Callable

import structlog
from aiohttp import hdrs, web

from ..api.cors import let_origin_read, origin_allowed, origin_refused
from ..api.errors import ApiError, BadRequest, NotFound, Unauthorized
from ..api.rest_handlers import load, path_uuid
from ..api.schemas import ExecutionEventsQuery, FeedEventsQuery
from ..auth import InvalidToken, Principal, token_from_request
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
from . import messages
from .event_stream import EventStream, EventStreamOutbox, retry_ms
from .socket_handshake import CLOSE_UNAUTHORIZED
from .socket_outbox import CLOSE_FINISHED
from .subscription_hub import FeedFilter

log = structlog.get_logger(__name__)

EVENT_STREAM = "text/event-stream"
# Media ranges of an Accept header that take text/event-stream.
ACCEPTING = frozenset({EVENT_STREAM, "text/*", "*/*"})
STREAM_HEADERS = {
    hdrs.CONTENT_TYPE: EVENT_STREAM,
    hdrs.CACHE_CONTROL: "no-cache",
    "X-Accel-Buffering": "no",  # nginx passes each event on as it comes, not when its buffer fills
}
LAST_EVENT_ID = "Last-Event-ID"


class NotAcceptable(ApiError):
    status, code = 406, "not_acceptable"


class TooManyConnections(ApiError):
    status, code = 429, "too_many_connections"


class HttpVersionNotSupported(ApiError):
    status, code = 505, "http_version_not_supported"


async def authenticate(request: web.Request) -> Principal:
    """As on the socket: the Authorization header, or ?access_token= (EventSource cannot set headers)."""
    token = token_from_request(request) or request.query.get("access_token")
    try:
        return await request.app[token_verifier_key].verify(token)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None


def check_stream_request(request: web.Request) -> None:
    """What a stream needs of any request: HTTP/1.1, as its body is chunked, and an Accept
    header (if any) that takes text/event-stream."""
    if request.version < (1, 1):
        raise HttpVersionNotSupported(
            "Server-Sent Events need HTTP/1.1 (behind nginx: proxy_http_version 1.1)")
    if not accepts_event_stream(request.headers.get(hdrs.ACCEPT)):
        raise NotAcceptable("this endpoint answers text/event-stream only",
                            {"accept": request.headers[hdrs.ACCEPT][:200]})


def accepts_event_stream(accept: str | None) -> bool:
    if accept is None or not accept.strip():
        return True
    for media_range in accept.split(","):
        media_type, *parameters = media_range.split(";")
        if media_type.strip().lower() in ACCEPTING and not any(_is_q_zero(p) for p in parameters):
            return True
    return False


def _is_q_zero(parameter: str) -> bool:
    """`q=0`: "not acceptable" (RFC 9110 12.4.2)."""
    name, _, value = parameter.partition("=")
    if name.strip().lower() != "q":
        return False
    try:
        return float(value) == 0
    except ValueError:
        return False


def resume_cursor(request: web.Request, since: int | None) -> int | None:
    """Last-Event-ID, else `since`. EventSource reconnects to the URL it was first given (its
    ?since= included) with Last-Event-ID, the id of the last event it got: the header is newer."""
    header = request.headers.get(LAST_EVENT_ID, "").strip()
    if not header:
        return since
    if not (header.isascii() and header.isdigit() and len(header) <= 18):
        raise BadRequest("Last-Event-ID must be a non-negative integer: the id of the last event received",
                         {"last_event_id": header[:40]})
    return int(header)


class StreamSession:
    """One event stream: its response, connection and outbox, and what it holds in the app while
    open (a connection of its subject's, a place among the open connections, a token-expiry timer)."""

    def __init__(self, request: web.Request, principal: Principal, *, single_execution: bool):
        app = request.app
        config = app[config_key]
        self.request = request
        self.principal = principal
        self.hub = app[hub_key]
        self.response = web.StreamResponse(headers=STREAM_HEADERS)
        self.stream = EventStream(request, self.response)
        self.outbox = EventStreamOutbox(self.stream, capacity=config.ws_outbox_capacity,
                                        send_timeout=config.ws_send_timeout_seconds,
                                        close_on_terminal=single_execution, metrics=self.hub.metrics)
        self._expiry: list | None = None

    @classmethod
    def open(cls, request: web.Request, principal: Principal, *, single_execution: bool) -> "StreamSession":
        """Counted among its subject's connections (sockets and streams); 429 past the limit."""
        sockets = request.app[socket_counts_key]
        if not sockets.admit(principal.sub):
            raise TooManyConnections(f"too many connections for this token (limit {sockets.limit} per process)")
        return cls(request, principal, single_execution=single_execution)

    async def run(self, begin: Callable[[], None]) -> None:
        """Start the stream, `begin` it (its subscriptions and first messages), and wait until it
        ends: the outbox ends it (final status, too slow, token expired, server going away), or
        a write finds the client gone (at the latest, the next heartbeat's). The response has
        started: a failure from here on can only end it, never be answered."""
        await self._start()
        try:
            begin()
            await self.stream.wait_ended()
        except Exception:
            log.exception("sse.failed")

    async def _start(self) -> None:
        """The headers and the `retry:` hint; from now on the stream is live: heartbeat comments,
        and its end when the token expires."""
        origin = self.request.headers.get(hdrs.ORIGIN)
        if origin is not None and origin_allowed(self.request, origin):
            let_origin_read(self.response, origin)
        self.response.headers["X-Request-ID"] = structlog.contextvars.get_contextvars()["request_id"]
        await self.stream.start(retry_ms())
        app = self.request.app
        app[open_connections_key].add(self.outbox)
        app[metrics_key].open_event_streams.inc()
        self._expiry = app[token_expiries_key].call_at(self.principal.expires_at, self._expired)

    def _expired(self) -> None:
        log.info("sse.token_expired")
        self.outbox.send_text(messages.error("token expired"))
        self.outbox.close(CLOSE_UNAUTHORIZED, "token expired", drain=True)

    async def finish(self) -> None:
        app = self.request.app
        if self._expiry is not None:
            app[token_expiries_key].cancel(self._expiry)
        started = self.stream.started
        try:
            await self.outbox.finish()
        finally:
            self.hub.drop(self.outbox, self.outbox.watching)
            app[socket_counts_key].release(self.principal.sub)
            if started:
                # Only now that its last chunk is out: a shutdown waits for every open connection.
                app[open_connections_key].discard(self.outbox)
                app[metrics_key].open_event_streams.dec()
        if started:
            # The reason as the socket's close code would say it; None: the client left first.
            log.info("sse.ended", code=self.outbox.close_code)


async def execution_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/executions/{id}/events: as the socket of the same path under /ws."""
    refused = origin_refused(request)
    if refused is not None:
        return refused
    principal = await authenticate(request)
    check_stream_request(request)
    execution_id = path_uuid(request, "execution")
    since = resume_cursor(request, load(ExecutionEventsQuery(), dict(request.query))["since"])
    structlog.contextvars.bind_contextvars(execution_id=execution_id, sub=principal.sub, transport="sse")
    session = StreamSession.open(request, principal, single_execution=True)
    hub, outbox = session.hub, session.outbox
    try:
        # Registered first, its live events held, then read: no change falls between.
        outbox.hold(execution_id)
        hub.subscribe(execution_id, outbox)
        try:
            found = await hub.read_catch_up(execution_id, since, principal)
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            # Like the socket's 1013: a stream that ends at once, so EventSource comes back
            # after `retry` (an error status would stop it for good).
            log.warning("sse.database_unavailable", error=type(exc).__name__)

            def say_why():
                outbox.send_text(messages.error("the database is unavailable; reconnect"))
                outbox.close(CLOSE_FINISHED, "database unavailable", drain=True)

            await session.run(say_why)
            return session.response
        if found is None:
            raise NotFound("execution", execution_id)
        finished = found.head["status"] in messages.TERMINAL_STATUSES
        if finished and found.head["resume"] and not found.events:
            # The client has it all, and nothing more will come: 204 stops an EventSource for
            # good, where the end of a stream would have it reconnect after `retry`.
            return web.Response(status=204)

        def catch_up():
            hub.offer_catch_up(found, outbox)
            if finished:
                # What the client lacks (its final status among it), `synced`, then the end.
                outbox.close(CLOSE_FINISHED, "finished", drain=True)
            log.info("sse.subscribed", since=since, seq=found.upto)

        await session.run(catch_up)
    finally:
        await session.finish()
    return session.response


async def feed_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/executions/events: the executions feed, as a socket's feed subscription."""
    refused = origin_refused(request)
    if refused is not None:
        return refused
    principal = await authenticate(request)
    check_stream_request(request)
    query = load(FeedEventsQuery(), dict(request.query))
    workflow_id = None if query["workflow_id"] is None else str(query["workflow_id"])
    structlog.contextvars.bind_contextvars(sub=principal.sub, transport="sse")
    session = StreamSession.open(request, principal, single_execution=False)
    viewer = None if principal.sees_everything else principal.sub
    feed = FeedFilter(viewer, workflow_id=workflow_id, status=query["status"])

    def subscribe():
        session.hub.subscribe_feed(session.outbox, feed)
        session.outbox.send_text(messages.FEED_SUBSCRIBED)
        log.info("sse.feed_subscribed", workflow_id=workflow_id, status=query["status"])

    try:
        await session.run(subscribe)
    finally:
        await session.finish()
    return session.response
