"""Liveness and readiness, open to load balancers and systemd without a token."""

import asyncio

from aiohttp import web

from ..db import repository
from ..typedefs import db_pool_key, listener_key


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers and the listener is connected: only then is push live."""
    checks = {"database": False, "listener": request.app[listener_key].connected}
    try:
        async with asyncio.timeout(2):
            await repository.ping(request.app[db_pool_key])
        checks["database"] = True
    except Exception:  # any failure to answer means not ready; the reason is in the server log
        pass
    ready = all(checks.values())
    return web.json_response({"status": "ready" if ready else "unavailable", "checks": checks},
                             status=200 if ready else 503)
