"""The dashboard: a static page and ES modules; the API calls it makes carry the token. And
live-client.js, which the dashboard and any other front end import from /static/."""

import functools
import html
import importlib.resources
import ipaddress
from pathlib import Path

from aiohttp import hdrs, web

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
TOKEN_MARK = "<!-- development token -->"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}

# Set by `python -m service serve` only in development mode (embedded database, where the process
# itself made the secret); never from configuration, so production cannot be talked into it.
# Declared here rather than in typedefs because only this page and __main__ know it.
dev_token_key = web.AppKey("dev_token", str)


# Set by a proxy on this machine (config/nginx.conf sets X-Forwarded-For): the connection then
# comes from 127.0.0.1 whoever the visitor is, and the Host is whatever the visitor sent.
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def _loopback(request: web.Request) -> bool:
    """A browser on this machine, addressing it by a loopback name: not a visitor from the network,
    not one through a proxy, and not another site that rebinds its DNS name to 127.0.0.1 (its Host
    would be its own name)."""
    if any(header in request.headers for header in PROXY_HEADERS):
        return False
    try:
        remote_is_loopback = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        remote_is_loopback = False
    host = (request.host or "").lower()
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return remote_is_loopback and hostname in LOOPBACK_NAMES


async def index(request: web.Request) -> web.Response:
    """The dashboard. In development mode, to a browser on this machine, with the printed token."""
    page = (STATIC_DIR / "index.html").read_text()
    token = request.app.get(dev_token_key)
    if token and _loopback(request):
        page = page.replace(TOKEN_MARK, f'<meta name="aiagent-dev-token" content="{html.escape(token)}">')
    return web.Response(text=page, content_type="text/html", headers={
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": (
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
            "style-src 'self'; script-src 'self'; frame-ancestors 'none'"),
    })


@functools.cache
def client_directory() -> Path:
    """The client package's files: the wheel's copy (service/client), else the checkout's client/,
    the package folder itself: one source, served here and installed by front ends."""
    packaged = importlib.resources.files("service") / "client"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "client"


async def live_client(request: web.Request) -> web.FileResponse:
    """/static/live-client.js, importable from a page on any origin (a module script is a CORS
    request): it is public code that needs no credentials, and a page whose origin the service
    refuses can then load it and be told why (see cors.origin_check) rather than fail silently."""
    return web.FileResponse(client_directory() / "live-client.js", headers={
        hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
        hdrs.CACHE_CONTROL: "no-cache",  # revalidated (ETag) each load: a new release is picked up at once
    })
