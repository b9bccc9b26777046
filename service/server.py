"""Running the app until SIGTERM or SIGINT, then shutting down in an order clients can rely on."""

import asyncio
import signal
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.http_websocket import WSCloseCode

from .config import Config
from .typedefs import hub_key

log = structlog.get_logger(__name__)


async def serve_until_signalled(app: web.Application, config: Config, on_ready: Callable[[], None]) -> None:
    """Serve; on SIGTERM/SIGINT stop accepting, close every socket with 1001, finish in-flight
    requests, then close the listener and the pool, all within config.shutdown_timeout_seconds."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=config.shutdown_timeout_seconds)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    on_ready()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("server.stopping")
    deadline = loop.time() + config.shutdown_timeout_seconds
    await site.stop()
    # Sockets are closed while the server still reads, so each closing handshake completes
    # (aiohttp ignores what arrives once its own shutdown has begun).
    hub = app[hub_key]
    hub.close_all(WSCloseCode.GOING_AWAY, "server going away")
    await hub.wait_until_empty(timeout=max(0.0, deadline - loop.time()) / 2)
    await runner.cleanup()
    log.info("server.stopped")
