"""Browser origins: CORS on the REST API and /static/, WebSocket handshakes from other sites
refused (socket_handshake.py asks `origin_refused` itself: socket routes skip the middlewares),
and GET /api/v1/origin-check, which tells any page whether its origin may use the service.

Which origins are allowed, and the log line of a refused one: origin_policy.py. Requests without
an Origin header come from non-browser clients and are not affected.
"""

from aiohttp import hdrs, web

from ..typedefs import origin_policy_key
from .http_middlewares import error_body

ALLOWED_METHODS = "GET, POST, PATCH, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-ID"
EXPOSED_HEADERS = "X-Request-ID, WWW-Authenticate"
PREFLIGHT_MAX_AGE = "600"


def origin_refused(request: web.Request) -> web.Response | None:
    """A 403 for a browser request from an origin not allowed; None for the others."""
    origin = request.headers.get(hdrs.ORIGIN)
    policy = request.app[origin_policy_key]
    if origin is None or policy.allows(origin, request.host):
        return None
    policy.refused(origin, request.path)
    return refusal(origin)


def let_origin_read(response: web.StreamResponse, origin: str) -> None:
    """The CORS headers that let a page on an allowed `origin` read the response (an event stream
    adds them itself before it starts: the middleware cannot, once it has)."""
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS
    response.headers.add(hdrs.VARY, "Origin")


def origin_allowed(request: web.Request, origin: str) -> bool:
    return request.app[origin_policy_key].allows(origin, request.host)


def refusal(origin: str) -> web.Response:
    return error_body(403, "forbidden", "origin not allowed", {"origin": origin[:200]})


@web.middleware
async def cors(request: web.Request, handler):
    """Preflights answered here (no token needed); allowed origins get CORS headers on every
    response, errors included, so a browser can read why a call failed."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return await handler(request)
    policy = request.app[origin_policy_key]
    allowed = policy.allows(origin, request.host)
    if request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
        if not allowed:
            policy.refused(origin, request.path)
            return refusal(origin)
        return web.Response(status=204, headers={
            hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOWED_METHODS,
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: PREFLIGHT_MAX_AGE,
            hdrs.VARY: "Origin",
        })
    response = await handler(request)
    if response.prepared:
        return response
    if allowed:
        let_origin_read(response, origin)
    elif hdrs.ACCESS_CONTROL_ALLOW_ORIGIN not in response.headers:
        # The browser will not let the page read this answer (only what is open to every origin,
        # live-client.js and the origin check, says so itself).
        policy.refused(origin, request.path)
    return response


async def origin_check(request: web.Request) -> web.Response:
    """Whether the asking page's origin may use this service, and if not, the setting that allows
    it. A browser does not let a page read why a WebSocket handshake failed (a 403 is just a
    failed socket); live-client.js asks here, so it can say why and stop retrying. Open to every
    origin, no token: it says nothing but the verdict on the asker's own origin, which a preflight
    would tell as well."""
    policy = request.app[origin_policy_key]
    answer = policy.explain(request.headers.get(hdrs.ORIGIN), request.host)
    return web.json_response(answer, headers={
        hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
        hdrs.CACHE_CONTROL: "no-store",  # the verdict changes with the configuration
    })
