"""Applies migrations/*.sql in order, each once, recorded in schema_migrations.

Safe to run twice and from several processes at once: an advisory lock serialises runners,
and each file is applied in the same transaction that records it.
"""

from pathlib import Path

import aiopg
import structlog

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
LOCK_ID = 0x61696167  # "aiag": any constant shared by every runner


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("[0-9]*.sql"))


async def apply_migrations(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is pending; returns the names applied by this call."""
    applied_now = []
    async with aiopg.connect(dsn, enable_hstore=False) as conn:
        async with conn.cursor() as cur:
            await cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
            try:
                await cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                await cur.execute("SELECT name FROM schema_migrations")
                done = {row[0] for row in await cur.fetchall()}
                for path in migration_files(directory):
                    if path.name in done:
                        continue
                    await cur.execute("BEGIN")
                    try:
                        await cur.execute(path.read_text())
                        await cur.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
                        await cur.execute("COMMIT")
                    except BaseException:
                        await cur.execute("ROLLBACK")
                        raise
                    log.info("migration.applied", name=path.name)
                    applied_now.append(path.name)
            finally:
                await cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return applied_now
