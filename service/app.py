"""The application factory: one process serving REST and WebSocket routes over one database."""

import asyncio
import contextlib

import aiopg
import structlog
from aiohttp import WSCloseCode, web

from .api.cors import cors
from .api.http_middlewares import json_errors, not_for_routes, request_context
from .cancellation import cancel_and_wait
from .config import Config
from .metrics import http_metrics, setup_metrics
from .push.expiry_timer import ExpiryTimer
from .push.heartbeat import Heartbeat
from .push.pg_listener import PgListener
from .push.socket_limits import SocketsPerSubject
from .push.subscription_hub import SubscriptionHub
from .routes import SOCKET_ROUTES, setup_routes
from .typedefs import (
    config_key,
    db_pool_key,
    heartbeat_key,
    hub_key,
    listener_key,
    listener_task_key,
    metrics_key,
    socket_counts_key,
    token_expiries_key,
)

log = structlog.get_logger(__name__)


def create_app(config: Config) -> web.Application:
    """Needs config.database_url and config.jwt_secret set (see __main__ for development mode)."""
    if not config.database_url or not config.jwt_secret:
        raise ValueError("create_app needs database_url and jwt_secret")
    # http_metrics outermost, to count the status the client finally got; cors outside
    # json_errors, so error answers carry CORS headers too.
    http_edge = (http_metrics, request_context, cors, json_errors)
    app = web.Application(middlewares=[not_for_routes(SOCKET_ROUTES, m) for m in http_edge],
                          client_max_size=config.max_body_bytes)
    app[config_key] = config
    setup_metrics(app)
    app[socket_counts_key] = SocketsPerSubject(config.ws_max_sockets_per_subject)
    app[heartbeat_key] = Heartbeat(config.ws_heartbeat_seconds)
    app[token_expiries_key] = ExpiryTimer()
    setup_routes(app)
    # In dependency order: the pool, then the hub that reads through it, then the listener and
    # the reconcile that feed the hub; the sockets' heartbeat needs none of them.
    app.cleanup_ctx.extend([db_pool_ctx, hub_ctx, listener_ctx, reconcile_ctx, heartbeat_ctx])
    app.on_shutdown.append(close_sockets)
    return app


async def db_pool_ctx(app: web.Application):
    config = app[config_key]
    pool = await aiopg.create_pool(
        config.database_url, minsize=config.db_pool_min, maxsize=config.db_pool_max, enable_hstore=False)
    app[db_pool_key] = pool
    yield
    # Bounded: a connection still held by a cancelled request must not hold up the exit.
    pool.close()
    try:
        await asyncio.wait_for(pool.wait_closed(), timeout=5)
    except asyncio.TimeoutError:
        log.warning("db_pool.close_timed_out", in_use=pool.size - pool.freesize)
        pool.terminate()


async def hub_ctx(app: web.Application):
    config = app[config_key]
    hub = SubscriptionHub(
        app[db_pool_key], config.database_url, preview_limit=config.ws_output_preview_chars,
        log_tail=config.ws_log_tail, metrics=app[metrics_key])
    app[hub_key] = hub
    yield
    await hub.close()


async def close_sockets(app: web.Application) -> None:
    """On shutdown, before handlers are awaited: 1001 tells every client to reconnect elsewhere."""
    log.info("server.shutting_down", subscriptions=app[hub_key].subscription_count)
    app[hub_key].close_all(WSCloseCode.GOING_AWAY, "server going away")


async def listener_ctx(app: web.Application):
    config, hub = app[config_key], app[hub_key]
    listener = PgListener(
        config.database_url,
        on_batch=hub.on_notified,
        on_connect=hub.reconcile,
        ping_seconds=config.listener_ping_seconds,
        backoff_min=config.listener_backoff_min_seconds,
        backoff_max=config.listener_backoff_max_seconds,
        coalesce_seconds=config.listener_coalesce_seconds,
    )
    app[listener_key] = listener
    async with background(listener.run()) as task:
        app[listener_task_key] = task
        # Start serving with push already live when the database is there; if it is not,
        # start anyway: /readyz says 503 until the listener connects.
        if not await listener.wait_connected(timeout=5):
            log.warning("listener.not_connected_at_startup")
        yield


async def reconcile_ctx(app: web.Application):
    async with background(reconcile_forever(app[hub_key], app[config_key].reconcile_interval_seconds)):
        yield


async def heartbeat_ctx(app: web.Application):
    async with background(app[heartbeat_key].run()):
        yield


async def reconcile_forever(hub: SubscriptionHub, interval: float) -> None:
    """Catches what a silently dead listener missed; cheap: one query over watched executions.
    (The hub counts what each reconcile corrects, this one's and the listener's after a reconnect.)"""
    while True:
        await asyncio.sleep(interval)
        try:
            await hub.reconcile()
        except Exception:  # the database may be down; try again next period
            log.warning("reconcile.failed", exc_info=True)


@contextlib.asynccontextmanager
async def background(coro):
    """Run a task for the life of the block; cancel it afterwards and wait (boundedly) for it."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        # Bounded: a database call that does not return on cancellation must not hold up the exit.
        if await cancel_and_wait([task], timeout=5):
            log.warning("background.stop_timed_out", task=task.get_coro().__qualname__)
