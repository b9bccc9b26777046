"""Running the app until SIGTERM or SIGINT, then shutting down in an order clients can rely on."""

import asyncio
import signal
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.http_websocket import WSCloseCode

from .app import background
from .config import Config
from .systemd_notify import SystemdNotifier
from .typedefs import hub_key, listener_key, listener_task_key

log = structlog.get_logger(__name__)


async def serve_until_signalled(app: web.Application, config: Config, on_ready: Callable[[], None]) -> None:
    """Serve; on SIGTERM/SIGINT stop accepting, close every socket with 1001, finish in-flight
    requests, then close the listener and the pool, all within config.shutdown_timeout_seconds."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=config.shutdown_timeout_seconds)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=config.listen_backlog)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    notifier = SystemdNotifier()
    await site.start()

    # Ready means push is live, not merely that the port accepts: until the listener connects,
    # /readyz answers 503 and systemd hears nothing but a STATUS.
    if await until_listener_connected(app, stop, notifier):
        on_ready()
        notifier.ready(f"serving on {config.host}:{config.port}")
        async with background(watchdog_forever(app, notifier)):
            await stop.wait()

    notifier.stopping()
    log.info("server.stopping")
    deadline = loop.time() + config.shutdown_timeout_seconds
    await site.stop()
    # Sockets are closed while the server still reads, so each closing handshake completes
    # (aiohttp ignores what arrives once its own shutdown has begun).
    hub = app[hub_key]
    hub.close_all(WSCloseCode.GOING_AWAY, "server going away")
    await hub.wait_until_empty(timeout=max(0.0, deadline - loop.time()) / 2)
    await runner.cleanup()
    notifier.close()
    log.info("server.stopped")


async def until_listener_connected(app: web.Application, stop: asyncio.Event, notifier: SystemdNotifier) -> bool:
    """Wait for the LISTEN connection; False if told to stop first."""
    listener = app[listener_key]
    while not stop.is_set():
        if await listener.wait_connected(timeout=1):
            return True
        notifier.status("waiting for the database (LISTEN connection)")
    return False


async def watchdog_forever(app: web.Application, notifier: SystemdNotifier) -> None:
    """WATCHDOG=1 at half of WATCHDOG_USEC while the loop turns and the listener task lives.

    A database outage is not a reason to ping less: the listener is then reconnecting, and a
    restart would not help. A crashed listener task or a blocked event loop is, and systemd
    restarts the process once the pings stop."""
    if notifier.watchdog_interval is None:
        return
    listener_task = app[listener_task_key]
    while not listener_task.done():
        notifier.watchdog()
        await asyncio.sleep(notifier.watchdog_interval)
    log.error("watchdog.listener_task_ended", cancelled=listener_task.cancelled())
