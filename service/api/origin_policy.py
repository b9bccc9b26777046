"""Which browser origins may call the API and open sockets, and what a refused one is told.

An origin is allowed when it is listed in allowed_origins ("*" allows any), when it is the
service's own (the Origin's host is the request's Host), or, in development mode only (`make run`,
the embedded database), when it is a loopback origin: a front end's dev server on this machine
(http://localhost:5173, http://127.0.0.1:3000, http://[::1]:8080).
"""

import ipaddress
from urllib.parse import urlsplit

import structlog

log = structlog.get_logger(__name__)

SETTING = "allowed_origins"
ENVIRONMENT_VARIABLE = "ALLOWED_ORIGINS"
# The Origin header is the client's to choose: what is logged or echoed of it is cut, and the
# origins whose refusal was logged are at most this many, so a flood of made-up origins cannot
# grow memory or the log.
ORIGIN_SHOWN_CHARS = 200
MOST_REFUSALS_LOGGED = 1000


def is_loopback_origin(origin: str) -> bool:
    """http(s) on localhost or a loopback address, any port."""
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def shown(origin: str) -> str:
    return origin[:ORIGIN_SHOWN_CHARS]


class OriginPolicy:
    def __init__(self, allowed_origins: tuple[str, ...], *, loopback_allowed: bool):
        self.any_origin = "*" in allowed_origins
        self.allowed_origins = frozenset(allowed_origins)
        self.loopback_allowed = loopback_allowed
        self._refusals_logged: set[str] = set()

    def allows(self, origin: str, host: str | None) -> bool:
        if self.any_origin or origin.rstrip("/") in self.allowed_origins:
            return True
        if self.loopback_allowed and is_loopback_origin(origin):
            return True
        return urlsplit(origin).netloc.lower() == (host or "").lower()

    def refused(self, origin: str, path: str) -> None:
        """Log a refusal the first time each origin is refused: a page retrying, or every visitor
        of a misconfigured front end, says the same thing, and once is enough to act on."""
        origin = shown(origin)
        if origin in self._refusals_logged or len(self._refusals_logged) >= MOST_REFUSALS_LOGGED:
            return
        self._refusals_logged.add(origin)
        log.warning("origin.refused", origin=origin, path=path, setting=SETTING,
                    environment_variable=ENVIRONMENT_VARIABLE,
                    hint=f"to allow it, add it to {SETTING} ({ENVIRONMENT_VARIABLE}={origin})")

    def explain(self, origin: str | None, host: str | None) -> dict:
        """What GET /api/v1/origin-check answers: whether the asking page's origin may use this
        service and, if not, the setting to change. Nothing about which origins are allowed."""
        if origin is None:
            return {"origin": None, "allowed": True,
                    "message": "no Origin header: not a browser's cross-origin request, origins do not apply"}
        if self.allows(origin, host):
            return {"origin": shown(origin), "allowed": True,
                    "message": f"pages on {shown(origin)} may call this service and open its sockets"}
        if origin == "null":
            # A file:// page or a sandboxed frame: no origin that a list could name.
            message = (f"this service refuses pages without an origin (Origin: null, e.g. a file:// page): "
                       f"serve the page over http(s) and add its origin to the {SETTING} setting")
        else:
            message = (f"this service refuses pages on {shown(origin)}: add that origin to its {SETTING} "
                       f"setting (e.g. start it with {ENVIRONMENT_VARIABLE}={shown(origin)})")
        return {"origin": shown(origin), "allowed": False, "setting": SETTING,
                "environment_variable": ENVIRONMENT_VARIABLE, "message": message}
