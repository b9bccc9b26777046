"""Request id and access log for every request, which is also kept among the requests in flight
(a shutdown lets them finish first), and the one JSON shape for every error.

WebSocket routes skip the middlewares (`not_for_routes`); socket_handshake.py does their edge
work once, at the handshake.
"""

import asyncio
import time
import uuid

import psycopg2
import structlog
from aiohttp import hdrs, web

from ..db.outages import is_database_outage
from ..typedefs import shutdown_key
from .errors import ApiError, DatabaseUnavailable

log = structlog.get_logger(__name__)


def error_body(status: int, code: str, message: str, details: dict | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details or {}}}, status=status
    )


# aiohttp's own HTTP errors (404 route, 405, 413 body too large, ...) in our shape.
HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
}


def http_error_body(exc: web.HTTPException) -> web.Response:
    response = error_body(exc.status, HTTP_CODES.get(exc.status, "http_error"), exc.reason)
    if hdrs.ALLOW in exc.headers:  # a 405 must say which methods are allowed (RFC 9110)
        response.headers[hdrs.ALLOW] = exc.headers[hdrs.ALLOW]
    return response


def bind_request_id(request: web.Request) -> str:
    """The client's X-Request-ID, or a new one, on every log line of this request from now on."""
    request_id = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return request_id


def not_for_routes(names: frozenset[str], middleware):
    """`middleware` for every route but those named: the WebSocket routes (routes.SOCKET_ROUTES).

    A middleware awaiting a handler keeps its frame for as long as the handler runs, and a
    socket's handler runs for as long as the socket is open: about 300 bytes a middleware, for
    each of 10,000 idle sockets. Socket handlers do the same edge work once, at the handshake.
    """
    @web.middleware
    def for_http(request: web.Request, handler):
        # Not a coroutine function: for a named route, the handler's own coroutine is handed back
        # for aiohttp to await, so nothing of this stays suspended beside it. (An unknown path
        # or method has a route too, nameless: it gets the middlewares, and its 404 or 405 the
        # one error shape.)
        if request.match_info.route.name in names:
            return handler(request)
        return middleware(request, handler)
    return for_http


@web.middleware
async def request_context(request: web.Request, handler):
    """Bind a request id to every log line of this request, and log it once when done."""
    request_id = bind_request_id(request)
    started = time.perf_counter()
    status = 500
    # A shutdown lets the requests in flight finish first (within its deadline).
    in_flight = request.app[shutdown_key].requests
    in_flight[id(request)] = request
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the handler was cancelled (client gone, or server shutting down)
        raise
    finally:
        del in_flight[id(request)]
        # The path only: a query string can carry an access_token.
        log.info("http.request", method=request.method, path=request.path, status=status,
                 ms=round((time.perf_counter() - started) * 1000, 2))


@web.middleware
async def json_errors(request: web.Request, handler):
    """Handlers raise; this turns every failure into {"error": {"code", "message", "details"}}."""
    try:
        return await handler(request)
    except ApiError as exc:
        return api_error_body(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error_body(exc)
    except psycopg2.DataError as exc:
        # A value PostgreSQL refuses (e.g. out of range) that validation let through.
        log.warning("http.data_error", pgcode=exc.pgcode)
        return error_body(422, "validation_failed", "a value was refused by the database")
    except Exception as exc:
        if is_database_outage(exc):
            # Expected while the database restarts or fails over (/readyz says so too): a
            # warning with the reason, no traceback.
            log.warning("http.database_unavailable", error=type(exc).__name__,
                        pgcode=getattr(exc, "pgcode", None), detail=str(exc).strip().split("\n")[0][:200])
            return api_error_body(DatabaseUnavailable())
        log.exception("http.unhandled")
        return error_body(500, "internal_error", "internal error")


def api_error_body(exc: ApiError) -> web.Response:
    response = error_body(exc.status, exc.code, exc.message, exc.details)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, DatabaseUnavailable):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
