"""A WebSocket's handshake, with the edge work the HTTP middlewares do for every other request.

Socket routes skip the middlewares (http_middlewares.not_for_routes): a middleware keeps a
suspended frame for as long as the handler runs, and a socket's handler runs as long as the
socket is open. So it is done here, once: the request id on the socket's log lines, the Origin
check, the access log line and the count by route and status, a refused handshake's answer in
the one JSON error shape.
"""

import urllib.parse

import structlog
from aiohttp import web

from ..api.cors import origin_refused
from ..api.http_middlewares import bind_request_id, http_error_body
from ..auth import InvalidToken, Principal, token_from_request
from ..metrics import count_request
from ..typedefs import config_key, token_verifier_key
from .frame_transport import websocket_response

log = structlog.get_logger(__name__)

CLOSE_UNAUTHORIZED = 4401


async def accept(request: web.Request) -> tuple[web.StreamResponse, Principal | None]:
    """The open socket and its token's principal; without a principal, the response already
    given: an HTTP error for a refused handshake, or the socket closed with 4401.

    The token is checked after the upgrade: browsers cannot read an HTTP status from a refused
    handshake, so a bad token is a close code."""
    bind_request_id(request)
    config = request.app[config_key]
    # Another site's page would use a visitor's ?access_token= or cookies: refuse the handshake.
    refused = origin_refused(request)
    if refused is not None:
        return answered(request, refused), None
    ws = websocket_response(max_msg_size=config.ws_max_message_bytes)
    try:
        await ws.prepare(request)
    except web.HTTPException as exc:  # not a WebSocket handshake (no Upgrade header, a bad key, ...)
        return answered(request, http_error_body(exc)), None
    answered(request, ws)
    try:
        # Browsers cannot set headers on a WebSocket: the token may come as ?access_token=.
        token = token_from_request(request) or query_param(request, "access_token")
        principal = await request.app[token_verifier_key].verify(token)
    except InvalidToken as exc:
        await ws.close(code=CLOSE_UNAUTHORIZED, message=str(exc).encode())
        return ws, None
    structlog.contextvars.bind_contextvars(sub=principal.sub)
    return ws, principal


def query_param(request: web.Request, name: str) -> str | None:
    """A socket's query parameter (its first value), parsed here and not kept: aiohttp keeps
    request.query, the whole query (a token among it) parsed into a MultiDict, for as long as
    the request lives, and a socket's request lives as long as the socket (0.7 KiB each)."""
    for key, value in urllib.parse.parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True):
        if key == name:
            return value
    return None


def answered(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Counted, logged and marked with its request id like every HTTP request (the path only in
    the log: a query string can carry an access_token)."""
    if not response.prepared:
        response.headers["X-Request-ID"] = structlog.contextvars.get_contextvars()["request_id"]
    count_request(request, response.status)
    log.info("http.request", method=request.method, path=request.path, status=response.status)
    return response
