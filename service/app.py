"""The application factory: one process serving REST and WebSocket routes over one database."""

import asyncio
import contextlib

import aiopg
import psycopg2
import structlog
from aiohttp import WSCloseCode, web

from .api.cors import cors
from .api.http_middlewares import json_errors, not_for_routes, request_context
from .api.origin_policy import OriginPolicy
from .auth import TokenVerifier
from .cancellation import cancel_and_wait
from .config import Config
from .db import repository
from .metrics import http_metrics, setup_metrics
from .push.change_source import listener_for
from .push.expiry_timer import ExpiryTimer
from .push.heartbeat import Heartbeat
from .push.kept_connection import KeptConnection
from .push.open_connections import OpenConnections
from .push.socket_limits import SocketsPerSubject
from .push.subscription_hub import SubscriptionHub
from .routes import SOCKET_ROUTES, setup_routes
from .shutdown import Shutdown
from .typedefs import (
    config_key,
    db_pool_key,
    heartbeat_key,
    hub_key,
    listener_key,
    listener_task_key,
    metrics_key,
    open_connections_key,
    origin_policy_key,
    shutdown_key,
    socket_counts_key,
    token_expiries_key,
    token_verifier_key,
)

log = structlog.get_logger(__name__)


def create_app(config: Config, *, development: bool = False) -> web.Application:
    """Needs config.database_url, and jwt_secret or jwks_url, set (see __main__ for development mode).

    `development`: the process runs on the embedded database it started itself (`make run`), so
    front ends on any loopback origin are allowed; never set from configuration."""
    if not config.database_url or not (config.jwt_secret or config.jwks_url):
        raise ValueError("create_app needs database_url, and jwt_secret or jwks_url")
    # http_metrics outermost, to count the status the client finally got; cors outside
    # json_errors, so error answers carry CORS headers too.
    http_edge = (http_metrics, request_context, cors, json_errors)
    app = web.Application(middlewares=[not_for_routes(SOCKET_ROUTES, m) for m in http_edge],
                          client_max_size=config.max_body_bytes)
    app[config_key] = config
    app[origin_policy_key] = OriginPolicy(config.allowed_origins, loopback_allowed=development)
    app[shutdown_key] = Shutdown(config.shutdown_timeout_seconds)
    setup_metrics(app)
    app[socket_counts_key] = SocketsPerSubject(config.ws_max_sockets_per_subject)
    app[open_connections_key] = OpenConnections()
    app[heartbeat_key] = Heartbeat(config.ws_heartbeat_seconds, app[open_connections_key])
    app[token_expiries_key] = ExpiryTimer()
    setup_routes(app)
    # In dependency order: the pool, then the hub that reads through it, then the listener and
    # the reconcile that feed the hub; the token verifier and the sockets' heartbeat need none.
    app.cleanup_ctx.extend(
        [token_verifier_ctx, db_pool_ctx, hub_ctx, listener_ctx, reconcile_ctx, heartbeat_ctx])
    app.on_shutdown.append(close_sockets)
    return app


async def token_verifier_ctx(app: web.Application):
    verifier = TokenVerifier.from_config(app[config_key])
    app[token_verifier_key] = verifier
    verifier.prefetch()
    yield
    await app[shutdown_key].bound("token_verifier", verifier.close())


async def db_pool_ctx(app: web.Application):
    config = app[config_key]
    pool = await aiopg.create_pool(
        config.database_url, minsize=config.db_pool_min, maxsize=config.db_pool_max, enable_hstore=False)
    app[db_pool_key] = pool
    yield
    # Bounded: a connection still held by a cancelled request must not hold up the exit.
    pool.close()
    if not await app[shutdown_key].bound("db_pool", pool.wait_closed(),
                                         stuck=lambda: {"in_use": pool.size - pool.freesize}):
        pool.terminate()


async def hub_ctx(app: web.Application):
    config = app[config_key]
    hub = SubscriptionHub(
        app[db_pool_key], config.push_dsn, preview_limit=config.ws_output_preview_chars,
        log_tail=config.ws_log_tail, metrics=app[metrics_key], standby=bool(config.push_database_url))
    app[hub_key] = hub
    yield
    await app[shutdown_key].bound("hub", hub.close())


async def close_sockets(app: web.Application) -> None:
    """On shutdown, before handlers are awaited: 1001 tells every client to reconnect elsewhere."""
    log.info("server.shutting_down", connections=len(app[open_connections_key]),
             subscriptions=app[hub_key].subscription_count)
    app[open_connections_key].close_all(WSCloseCode.GOING_AWAY, "server going away")


async def listener_ctx(app: web.Application):
    config, hub, pool = app[config_key], app[hub_key], app[db_pool_key]

    async def include_change_source() -> None:
        # The triggers must announce through this process's source: a deployment switching
        # sources announces through both until `aiagent-live announce` drops the old one.
        try:
            await repository.include_change_source(pool, config.change_source)
        except psycopg2.Error as exc:  # the database is down: the next (re)connect tries again
            log.warning("change_source.not_included", source=config.change_source, error=str(exc)[:200])

    async def on_connect() -> None:
        await include_change_source()
        await hub.listener_connected()

    # Before the listener starts, so that every change committed once the app serves is announced
    # through this source.
    await include_change_source()
    listener = listener_for(config, pool, on_batch=hub.on_notified, on_connect=on_connect,
                            server_setup=hub.push_database_synchronous_standby_names)
    app[listener_key] = listener
    async with background(listener.run(), app[shutdown_key]) as task:
        app[listener_task_key] = task
        # Start serving with push already live when the database is there; if it is not,
        # start anyway: /readyz says 503 until the listener connects.
        if not await listener.wait_connected(timeout=5):
            log.warning("listener.not_connected_at_startup")
        yield


async def reconcile_ctx(app: web.Application):
    async with background(reconcile_forever(app[hub_key], app[listener_key],
                                            app[config_key].reconcile_interval_seconds),
                          app[shutdown_key]):
        yield


async def heartbeat_ctx(app: web.Application):
    async with background(app[heartbeat_key].run(), app[shutdown_key]):
        yield


async def reconcile_forever(hub: SubscriptionHub, listener: KeptConnection, interval: float) -> None:
    """Catches what a silently dead listener missed; cheap: one query over watched executions.
    (The hub counts what each reconcile corrects, this one's and the listener's after a reconnect.)
    With a standby as the push database, also says when it was promoted; and the listener audits
    its connection (one small query each)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await listener.audit()
        except Exception:  # must not hold up the reconcile
            log.warning("listener.audit_failed", exc_info=True)
        try:
            await hub.note_standby_recovery()
            await hub.reconcile()
        except Exception:  # the database may be down; try again next period
            log.warning("reconcile.failed", exc_info=True)


@contextlib.asynccontextmanager
async def background(coro, shutdown: Shutdown):
    """Run a task for the life of the block; cancel it afterwards and wait for it, within what is
    left of the shutdown's deadline."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        # Bounded: a database call that does not return on cancellation must not hold up the exit.
        name = task.get_coro().__qualname__
        outer, shutdown.step = shutdown.step, name
        try:
            if await cancel_and_wait([task], timeout=shutdown.remaining()):
                log.warning("shutdown.stuck", step=name)
        finally:
            shutdown.step = outer
