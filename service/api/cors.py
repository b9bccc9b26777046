"""Browser origins: CORS on the REST API, and WebSocket handshakes from other sites refused
(socket_handshake.py asks `origin_refused` itself: socket routes skip the middlewares).

An origin is allowed when it is listed in config.allowed_origins ("*" allows any), or when it is
the service's own (the Origin's host is the request's Host). Requests without an Origin header
come from non-browser clients and are not affected.
"""

from urllib.parse import urlsplit

from aiohttp import hdrs, web

from ..typedefs import config_key
from .http_middlewares import error_body

ALLOWED_METHODS = "GET, POST, PATCH, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-ID"
EXPOSED_HEADERS = "X-Request-ID, WWW-Authenticate"
PREFLIGHT_MAX_AGE = "600"


def origin_allowed(request: web.Request, origin: str) -> bool:
    allowed = request.app[config_key].allowed_origins
    if "*" in allowed or origin.rstrip("/") in allowed:
        return True
    return urlsplit(origin).netloc.lower() == (request.host or "").lower()


def origin_refused(request: web.Request) -> web.Response | None:
    """A 403 for a browser request from an origin not allowed; None for the others."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or origin_allowed(request, origin):
        return None
    return refusal(origin)


def refusal(origin: str) -> web.Response:
    return error_body(403, "forbidden", "origin not allowed", {"origin": origin[:200]})


@web.middleware
async def cors(request: web.Request, handler):
    """Preflights answered here (no token needed); allowed origins get CORS headers on every
    response, errors included, so a browser can read why a call failed."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return await handler(request)
    allowed = origin_allowed(request, origin)
    if request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
        if not allowed:
            return refusal(origin)
        return web.Response(status=204, headers={
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: PREFLIGHT_MAX_AGE,
            hdrs.VARY: "Origin",
        })
    response = await handler(request)
    if allowed and not response.prepared:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS
        response.headers.add(hdrs.VARY, "Origin")
    return response
