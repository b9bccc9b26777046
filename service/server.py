"""Running the app until SIGTERM or SIGINT, then shutting down in an order clients can rely on,
within one deadline (config.shutdown_timeout_seconds) whatever is stuck."""

import asyncio
import gc
import signal
from collections.abc import Callable

import structlog
from aiohttp import WSCloseCode, web

from .app import background
from .config import Config
from .listen_address import cannot_listen
from .systemd_notify import SystemdNotifier
from .typedefs import listener_key, listener_task_key, open_connections_key, shutdown_key

log = structlog.get_logger(__name__)


async def serve_until_signalled(app: web.Application, config: Config, on_ready: Callable[[], None]) -> None:
    """Serve; on SIGTERM/SIGINT stop accepting, close every socket with 1001, finish in-flight
    requests, then close the listener and the pool, all within config.shutdown_timeout_seconds."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=config.listen_backlog)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    notifier = SystemdNotifier()
    try:
        await site.start()
    except OSError as exc:
        # Taken since ensure_can_listen looked: close what the startup opened (pool, listener),
        # so the one line below is all that is said.
        app[shutdown_key].start()
        await shut_down(app, runner, site)
        raise cannot_listen(config, exc) from None

    # What startup built (modules, schemas, the app) lives as long as the process. Frozen, it is
    # left out of every full collection, which then walks only what sockets and requests hold:
    # collections pause the event loop, and a reconnect storm sets off several of them. Startup's
    # garbage goes first, or it would be kept for good.
    gc.collect()
    gc.freeze()

    # Ready means push is live, not merely that the port accepts: until the listener connects,
    # /readyz answers 503 and systemd hears nothing but a STATUS.
    if await until_listener_connected(app, stop, notifier):
        on_ready()
        notifier.ready(f"serving on {config.host}:{config.port}")
        async with background(watchdog_forever(app, notifier), app[shutdown_key]):
            await stop.wait()

    notifier.stopping()
    log.info("server.stopping")
    shutdown = app[shutdown_key]
    shutdown.start()
    shutdown.exit_at_the_latest()
    await shut_down(app, runner, site)
    notifier.close()
    # What is left is cancelled once more by asyncio.run, which waits for it: named here, in
    # case it ignores that too and the exit has to be forced.
    shutdown.step = "exit"
    shutdown.tasks_left = sorted(task.get_coro().__qualname__ for task in asyncio.all_tasks()
                                 if task is not asyncio.current_task())
    log.info("server.stopped")


async def shut_down(app: web.Application, runner: web.AppRunner, site: web.TCPSite) -> None:
    """aiohttp's AppRunner.cleanup, step by step, each step within what is left of one deadline
    (there, aiohttp's per-connection waits and each cleanup step's own bounds add up)."""
    shutdown, connections, server = app[shutdown_key], app[open_connections_key], runner.server
    await site.stop()
    # Sockets and streams are closed while the server still reads, so each closing handshake
    # completes (aiohttp ignores what arrives once its own shutdown has begun). Half the time at most.
    connections.close_all(WSCloseCode.GOING_AWAY, "server going away")
    await shutdown.bound("sockets", connections.wait_until_empty(), share=0.5,
                         stuck=lambda: {"connections": len(connections)})
    await shutdown.bound("on_shutdown", app.shutdown())
    # Requests in flight may finish in half of what is left; those that do not are cancelled
    # (aiohttp would cancel them only after waiting twice more, and leave them running when cut).
    if not await shutdown.bound("http_requests", shutdown.requests_finished(), share=0.5,
                                stuck=shutdown.requests_in_flight):
        for request in shutdown.requests.values():
            request.task.cancel()
    # Then every connection is closed: idle ones at once; a socket's handler still running is
    # waited for twice (to finish, then once cancelled), each a fifth of what is left.
    # (aiohttp reads a timeout of 0 as none at all.)
    each_wait = max(shutdown.remaining() / 5, 0.001)
    if not await shutdown.bound("connections", server.shutdown(each_wait), share=0.5,
                                stuck=lambda: {"connections": len(server.connections)}):
        for connection in server.connections:
            connection.force_close()
    # The cleanup contexts, in reverse order; each of their steps is bounded by the deadline too.
    await shutdown.bound("cleanup", app.cleanup())


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
