"""How the process hears that executions changed (config `change_source`): the LISTEN connection
(pg_listener) or the logical replication connection (wal_listener), on `push_dsn`.

Both keep one connection per process, hand the hub batches of {execution id: highest seq}, call
`on_connect` after every (re)connect so the hub re-reads what moved meanwhile, reconnect with
backoff and jitter, and gather batches while changes come faster than they are read.
"""

from collections.abc import Awaitable, Callable

import aiopg
import psycopg2
import structlog

from ..config import Config
from ..db import repository
from . import pg_listener, wal_listener
from .decoding_preflight import DecodingUnavailable, check_decoding
from .kept_connection import KeptConnection
from .pg_listener import PgListener
from .wal_listener import WalListener

log = structlog.get_logger(__name__)

# How each source's connection names itself, in pg_stat_activity.
LISTENER_NAMES = {"notify": pg_listener.APPLICATION_NAME, "wal": wal_listener.APPLICATION_NAME}
INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE


def listener_for(config: Config, pool: aiopg.Pool, on_batch: Callable[[dict[str, int]], Awaitable[None]],
                 on_connect: Callable[[], Awaitable[object]],
                 server_setup: Callable[[], Awaitable[tuple[bool, str]]] | None = None) -> KeptConnection:
    """The listener of `config.change_source`; `pool` is the primary's (a standby's new slot asks it
    for the record that lets decoding start); `server_setup` is what the wal listener's audit asks
    of the push database."""
    settings = dict(
        on_batch=on_batch,
        on_connect=on_connect,
        ping_seconds=config.listener_ping_seconds,
        backoff_min=config.listener_backoff_min_seconds,
        backoff_max=config.listener_backoff_max_seconds,
        coalesce_seconds=config.listener_coalesce_seconds,
    )
    if config.change_source == "notify":
        return PgListener(config.push_dsn, **settings)
    if config.push_database_url:
        settings["while_waiting"] = StandbySnapshotRequests(pool).request
    return WalListener(config.push_dsn, server_setup=server_setup, **settings)


class StandbySnapshotRequests:
    """A slot on a standby can decode once the primary has logged its running transactions, which
    it does every 15 s while it writes: asking the primary for that record (pg_log_standby_snapshot,
    superusers only unless granted) makes the wait short."""

    def __init__(self, pool: aiopg.Pool):
        self._pool = pool
        self._refused = False

    async def request(self) -> None:
        if self._refused:
            return
        try:
            await repository.log_standby_snapshot(self._pool)
        except psycopg2.Error as exc:
            self._refused = exc.pgcode == INSUFFICIENT_PRIVILEGE
            log.warning("change_source.standby_snapshot_not_requested", error=str(exc).strip()[:200],
                        hint="GRANT EXECUTE ON FUNCTION pg_log_standby_snapshot() to the service's role "
                             "shortens a new slot's wait on a standby" if self._refused else None)


class ChangeSourceRefused(Exception):
    """The database cannot serve or switch to the change source asked for; says what to change."""



async def prepare(config: Config) -> None:
    """Before serving with the wal source: the triggers announce through the WAL too, and the push
    database can decode them; ChangeSourceRefused naming the setting to change otherwise. A
    database that cannot be reached is left to the listener, which retries."""
    if config.change_source != "wal":
        return
    try:
        async with aiopg.create_pool(config.database_url, minsize=1, maxsize=1, enable_hstore=False) as pool:
            await repository.include_change_source(pool, "wal")
    except psycopg2.Error as exc:
        if exc.pgcode is None:  # no answer from the server
            log.warning("change_source.database_unreachable", error=str(exc).strip()[:200])
            return
        # Refused by the server: wal_level below logical, no right to create the publication.
        raise ChangeSourceRefused(f"change_source = wal: {refusal(exc)}") from None
    where = "push_database_url" if config.push_database_url else "database_url"
    try:
        await check_decoding(config.push_dsn, timeout=config.listener_ping_seconds * 2)
    except DecodingUnavailable as exc:
        raise ChangeSourceRefused(f"change_source = wal needs, on the server of {where}: {exc}") from None
    except psycopg2.OperationalError as exc:
        log.warning("change_source.database_unreachable", database=where, error=str(exc).strip()[:200])


async def switch(config: Config, sources: list[str], *, force: bool) -> list[str]:
    """`aiagent-live announce`: make the triggers announce through exactly `sources`. Refused while
    a process this database can see still listens through a source being dropped (unless
    `force`): its sockets would hear of changes only at each reconcile."""
    async with aiopg.create_pool(config.database_url, minsize=1, maxsize=1, enable_hstore=False) as pool:
        dropped = {LISTENER_NAMES[source]: source for source in {"notify", "wal"} - set(sources)}
        listening = await repository.change_listeners(pool, list(dropped))
        if listening and not force:
            names = ", ".join(f"{count} through {dropped[name]}" for name, count in sorted(listening.items()))
            raise ChangeSourceRefused(
                f"service processes still listen ({names}): restart them with the new CHANGE_SOURCE "
                "first, or pass --force")
        try:
            return await repository.set_change_sources(pool, sources)
        except psycopg2.Error as exc:
            if exc.pgcode is None:
                raise
            raise ChangeSourceRefused(refusal(exc)) from None


def refusal(exc: psycopg2.Error) -> str:
    """What the server said, and its hint when it gave one."""
    hint = exc.diag.message_hint
    return f"{exc.diag.message_primary} ({hint})" if hint else exc.diag.message_primary
