"""Applies the schema: versioned migrations once each, repeatable function files whenever they change.

migrations/NNN_*.sql (versioned) hold tables, columns, constraints, indexes and one-off data changes:
each is applied once, in name order, and recorded in schema_migrations. migrations/functions/*.sql
(repeatable) hold every function and trigger, written to run again and again: each is applied when
its checksum differs from the one recorded in schema_repeatable_migrations, and all of them after
any versioned migration ran (one may have dropped or altered what they define).

One run is one transaction under an advisory lock: runners in several processes take turns, and a
failed upgrade changes nothing.
"""

import contextlib
import dataclasses
import hashlib
import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

import aiopg
import psycopg2
import structlog

log = structlog.get_logger(__name__)

LOCK_ID = 0x61696167  # "aiag": any constant shared by every runner, of this release or an earlier one
REPEATABLE_DIRECTORY = "functions"


class MigrationsNotFound(RuntimeError):
    """The migrations directory is missing or holds no versioned migration."""


@dataclasses.dataclass(frozen=True)
class Migration:
    name: str  # as recorded: the file's name, "functions/<file>" for a repeatable one
    sql: str
    repeatable: bool

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_directory() -> Traversable:
    """The package's own copy (service/migrations, in a built wheel), else the checkout's migrations/."""
    packaged = importlib.resources.files("service") / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Every migration in the order a run applies them: versioned by name, then repeatable by name."""
    directory = directory if directory is not None else migrations_directory()
    versioned = [file for file in _sql_files(directory) if file.name[:1].isdigit()]
    if not versioned:
        raise MigrationsNotFound(f"no migrations found in {directory}")
    repeatable = _sql_files(directory / REPEATABLE_DIRECTORY)
    return ([Migration(file.name, file.read_text(encoding="utf-8"), False) for file in versioned]
            + [Migration(f"{REPEATABLE_DIRECTORY}/{file.name}", file.read_text(encoding="utf-8"), True)
               for file in repeatable])


def migration_files(directory: Traversable | None = None) -> list[str]:
    """The names of every migration, in the order a run on an empty database applies them."""
    return [migration.name for migration in load_migrations(directory)]


def _sql_files(directory: Traversable) -> list[Traversable]:
    if not directory.is_dir():
        return []
    return sorted((file for file in directory.iterdir() if file.is_file() and file.name.endswith(".sql")),
                  key=lambda file: file.name)


async def apply_migrations(dsn: str, directory: Traversable | None = None) -> list[str]:
    """Apply what is pending or changed; returns the names applied by this call (none: up to date)."""
    migrations = load_migrations(directory)  # before connecting: a missing directory is an error, always
    async with aiopg.connect(dsn, enable_hstore=False) as conn:
        async with conn.cursor() as cur:
            await cur.execute("BEGIN")
            try:
                await cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
                applied = await _apply(cur, migrations)
                await cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(psycopg2.Error):  # a broken connection rolls back as it closes
                    await cur.execute("ROLLBACK")
                raise
    for name in applied:
        log.info("migration.applied", name=name)
    return applied


async def _apply(cur, migrations: list[Migration]) -> list[str]:
    await cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                      " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    await cur.execute("CREATE TABLE IF NOT EXISTS schema_repeatable_migrations ("
                      " name text PRIMARY KEY, checksum text NOT NULL,"
                      " applied_at timestamptz NOT NULL DEFAULT now())")
    await cur.execute("SELECT name FROM schema_migrations")
    done = {name for (name,) in await cur.fetchall()}
    await cur.execute("SELECT name, checksum FROM schema_repeatable_migrations")
    checksums = dict(await cur.fetchall())

    applied = []
    for migration in migrations:
        if not migration.repeatable and migration.name not in done:
            await cur.execute(migration.sql)
            await cur.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (migration.name,))
            applied.append(migration.name)
    schema_changed = bool(applied)
    for migration in migrations:
        if migration.repeatable and (schema_changed or checksums.get(migration.name) != migration.checksum):
            await cur.execute(migration.sql)
            await cur.execute(
                "INSERT INTO schema_repeatable_migrations (name, checksum) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()",
                (migration.name, migration.checksum))
            applied.append(migration.name)
    return applied
