"""The WAL listener against a real PostgreSQL: committed announcements in commit order, nothing
else; a lost walsender replaced; large transactions; feedback the server acts on."""

import asyncio
import contextlib
import os
import signal
import time
import uuid

import aiopg
import psycopg2
import pytest
from structlog.testing import capture_logs

from service.push.change_reader import PreparedReader
from service.push.read_pace import SUSTAINED_SECONDS
from service.push.wal_listener import APPLICATION_NAME

from .helpers import readiness
from .wal_decoding import Recorder, emit, listening, prepare_for_decoding, primary_with, reload_with


@pytest.fixture(scope="module")
def decoding_url(database_url):
    prepare_for_decoding(database_url)
    return database_url


@pytest.fixture
async def writers(decoding_url):
    """Two plain connections, for transactions that interleave."""
    async with aiopg.connect(decoding_url) as first, aiopg.connect(decoding_url) as second:
        async with first.cursor() as a, second.cursor() as b:
            yield a, b


def new_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


async def slot_walsender_pid(sql, slot_name: str) -> int | None:
    await sql.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot_name,))
    row = await sql.fetchone()
    return row[0] if row else None


async def test_committed_announcements_arrive_in_commit_order_not_begin_order(decoding_url, writers):
    a, b = writers
    first, second, third = new_ids(3)
    async with listening(decoding_url) as (listener, recorder):
        # `first` begins first and commits last; `second` announces two seqs and one of `third`.
        await a.execute("BEGIN")
        await emit(a, f"{first}:1")
        await b.execute("BEGIN")
        await emit(b, f"{second}:1", f"{second}:2", f"{third}:7")
        await b.execute("COMMIT")
        await recorder.until_announced(second, 2)
        await a.execute("COMMIT")
        await recorder.until_announced(first, 1)
        # One execution over many commits: every seq in order, none twice, the last one last.
        for seq in range(1, 51):
            await emit(a, f"{first}:{seq + 1}")
        await recorder.until_announced(first, 51)
    assert recorder.batches[0] == {second: 2, third: 7}
    assert recorder.batches[1] == {first: 1}
    seen = [batch[first] for batch in recorder.batches if first in batch]
    assert seen == sorted(set(seen)) and seen[-1] == 51
    assert listener.messages_decoded == 1 + 3 + 50


async def test_rolled_back_work_announces_nothing(decoding_url, writers):
    a, _ = writers
    rolled_back, in_savepoint, committed = new_ids(3)
    async with listening(decoding_url) as (listener, recorder):
        await a.execute("BEGIN")
        await emit(a, f"{rolled_back}:1")
        await a.execute("ROLLBACK")
        await a.execute("BEGIN")
        await a.execute("SAVEPOINT before")
        await emit(a, f"{in_savepoint}:1")
        await a.execute("ROLLBACK TO SAVEPOINT before")
        await emit(a, f"{committed}:1")
        await a.execute("COMMIT")
        await recorder.until_announced(committed, 1)
    assert recorder.announced() == {committed: 1}
    assert listener.messages_decoded == 1


async def test_other_prefixes_untransactional_messages_and_other_databases_are_ignored(decoding_url, writers):
    a, _ = writers
    other_database = f"wal_other_{uuid.uuid4().hex[:8]}"
    await a.execute(f"CREATE DATABASE {other_database}")
    try:
        elsewhere, untransactional, other_prefix, ours = new_ids(4)
        other_url = decoding_url.replace("/postgres?", f"/{other_database}?")
        assert other_url != decoding_url
        async with listening(decoding_url) as (listener, recorder):
            async with aiopg.connect(other_url) as conn, conn.cursor() as other:
                await emit(other, f"{elsewhere}:1")
            await emit(a, f"{untransactional}:1", transactional=False)
            await emit(a, f"{other_prefix}:1", prefix=b"aiagent_live_other")
            await emit(a, f"{other_prefix}:2", prefix=b"aiagent")
            await a.execute("BEGIN")
            await emit(a, "not an announcement", f"{ours}:1", prefix=b"somebody_else")
            await emit(a, f"{ours}:2")
            await a.execute("COMMIT")
            await recorder.until_announced(ours, 2)
        assert recorder.batches == [{ours: 2}]
        assert listener.messages_decoded == 1
    finally:
        await a.execute(f"DROP DATABASE {other_database} WITH (FORCE)")


async def test_a_terminated_walsender_is_replaced_and_on_connect_called_again(decoding_url, writers):
    a, _ = writers
    before, after = new_ids(2)
    async with listening(decoding_url) as (listener, recorder):
        await emit(a, f"{before}:1")
        await recorder.until_announced(before, 1)
        first_slot = listener.slot_name
        walsender = await slot_walsender_pid(a, first_slot)
        await a.execute("SELECT pg_terminate_backend(%s)", (walsender,))
        await recorder.until(lambda: recorder.connects == 2)
        assert listener.connected and listener.reconnects == 1
        # The temporary slot went with its connection: nothing left behind to retain WAL.
        assert await slot_walsender_pid(a, first_slot) is None
        assert await slot_walsender_pid(a, listener.slot_name) is not None
        await emit(a, f"{after}:1")
        await recorder.until_announced(after, 1)


async def test_a_primary_that_would_count_the_listener_as_a_synchronous_standby_is_not_decoded_from(
        decoding_url, writers):
    # Were it decoded from, every commit would wait for the listener's feedback. Nothing commits
    # while the setting is on: with no standby of that name connected, every commit would wait.
    a, _ = writers
    execution_id = new_ids(1)[0]
    with capture_logs() as logs:
        async with primary_with(decoding_url, 'FIRST 1 ("aiagent-live wal listener")'):
            async with listening(decoding_url, connect_timeout=None) as (listener, recorder):
                await recorder.until(lambda: listener.reconnects >= 2)
                assert not listener.connected
                assert await streaming_walsenders(a) == 0
                await reload_with(decoding_url, "")
                assert await listener.wait_connected(10)
                await emit(a, f"{execution_id}:1")
                await recorder.until_announced(execution_id, 1)
    refused = [event for event in logs if event["event"] == "wal_listener.refused"]
    assert refused[0]["log_level"] == "error"  # then the retries at debug
    assert "synchronous_standby_names = 'FIRST 1 (\"aiagent-live wal listener\")'" in refused[0]["detail"]


async def test_a_listener_the_primary_comes_to_count_as_a_synchronous_standby_leaves_at_its_audit(
        decoding_url, writers, replication_role_url):
    a, _ = writers
    execution_id = new_ids(1)[0]
    # The service's role is no superuser: the audit must see what such a role may see.
    reader = PreparedReader(replication_role_url, application_name="audit test")
    try:
        with capture_logs() as logs:
            async with listening(replication_role_url,
                                 server_setup=reader.synchronous_standby_names) as (listener, recorder):
                await listener.audit()
                await asyncio.sleep(1.5)  # longer than the pump's longest wait: it acted on the audit
                assert listener.connected and listener.reconnects == 0
                async with primary_with(decoding_url, "*"):
                    await recorder.until(lambda: walsender_is_synchronous(decoding_url), timeout=10)
                    await listener.audit()
                    await recorder.until(lambda: listener.reconnects >= 2 and not listener.connected)
                    assert await streaming_walsenders(a) == 0
                assert await listener.wait_connected(10)
                await emit(a, f"{execution_id}:1")
                await recorder.until_announced(execution_id, 1)
    finally:
        reader.close()
    refused = [event for event in logs if event["event"] == "wal_listener.refused"]
    assert refused[0]["log_level"] == "error"
    assert "synchronous_standby_names = '*' counts the wal listener" in refused[0]["detail"]


async def test_a_process_whose_primary_comes_to_count_its_listener_as_synchronous_is_unready_until_fixed(
        decoding_url, client_with):
    client = await client_with(change_source="wal", reconcile_interval_seconds=0.2)
    assert await readiness(client) == 200
    async with primary_with(decoding_url, "ANY 1 (standby1, *)"):
        await until_ready_is(client, 503)  # left at an audit, refused at every connect since
    await until_ready_is(client, 200)


@pytest.fixture
def replication_role_url(decoding_url):
    """A role as the README asks for the service: LOGIN REPLICATION, no superuser."""
    role = f"aiagent_wal_{uuid.uuid4().hex[:8]}"
    with contextlib.closing(psycopg2.connect(decoding_url)) as conn, conn.cursor() as cursor:
        conn.autocommit = True
        cursor.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
        try:
            yield decoding_url.replace("postgres:@", f"{role}:@")
        finally:
            cursor.execute(f"DROP ROLE {role}")


async def until_ready_is(client, status: int) -> None:
    async with asyncio.timeout(15):
        while await readiness(client) != status:
            await asyncio.sleep(0.05)


async def streaming_walsenders(sql) -> int:
    """The listener's walsenders past the connect-time check (one in it shows as `startup`)."""
    await sql.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = %s "
                      "AND state = 'streaming'", (APPLICATION_NAME,))
    return (await sql.fetchone())[0]


def walsender_is_synchronous(url: str) -> bool:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = %s "
                       "AND sync_state <> 'async'", (APPLICATION_NAME,))
        return cursor.fetchone()[0] == 1


async def test_a_walsender_that_stops_answering_is_replaced(decoding_url, writers):
    a, _ = writers
    after = new_ids(1)[0]
    async with listening(decoding_url, ping_seconds=1.0) as (listener, recorder):
        walsender = await slot_walsender_pid(a, listener.slot_name)
        os.kill(walsender, signal.SIGSTOP)  # alive to the kernel, silent to the listener
        try:
            await recorder.until(lambda: recorder.connects == 2, timeout=15)
        finally:
            os.kill(walsender, signal.SIGCONT)
        assert listener.reconnects == 1
        await emit(a, f"{after}:1")
        await recorder.until_announced(after, 1)


@pytest.fixture
async def blob_table(writers):
    a, _ = writers
    await a.execute("CREATE TABLE wal_test_blobs (id uuid PRIMARY KEY, body text)")
    # Uncompressed: a 10 MB value is 10 MB of WAL to decode.
    await a.execute("ALTER TABLE wal_test_blobs ALTER COLUMN body SET STORAGE EXTERNAL")
    yield "wal_test_blobs"
    await a.execute("DROP TABLE wal_test_blobs")


async def test_a_transaction_of_10000_messages_and_one_with_a_10_mb_row_flow_and_the_listener_stays_live(
        decoding_url, writers, blob_table):
    a, _ = writers
    executions = new_ids(100)
    big_row, afterwards = new_ids(2)
    async with listening(decoding_url) as (listener, recorder):
        # 10,000 messages in one transaction: seqs 1..100 of each of 100 executions.
        await a.execute("""
            SELECT count(pg_logical_emit_message(true, 'aiagent_live', e || ':' || seq))
            FROM unnest(%s::text[]) e, generate_series(1, 100) seq""", (executions,))
        await recorder.until(lambda: all(recorder.announced().get(e) == 100 for e in executions))
        await a.execute("SELECT pg_current_wal_insert_lsn()")
        before = (await a.fetchone())[0]
        await a.execute("BEGIN")
        await a.execute(f"INSERT INTO {blob_table} VALUES (%s, repeat('x', 10 * 1024 * 1024))", (big_row,))
        await emit(a, f"{big_row}:1")
        await a.execute("COMMIT")
        await a.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (before,))
        assert (await a.fetchone())[0] > 10 * 1024 * 1024
        await recorder.until_announced(big_row, 1)
        await emit(a, f"{afterwards}:1")
        await recorder.until_announced(afterwards, 1, timeout=2)
        assert listener.connected and listener.reconnects == 0
    assert listener.messages_decoded == 10_000 + 2


async def test_feedback_advances_the_slots_confirmed_flush_position(decoding_url, writers):
    a, _ = writers
    execution = new_ids(1)[0]
    async with listening(decoding_url, feedback_seconds=1.0) as (listener, recorder):
        await emit(a, f"{execution}:1")
        await a.execute("SELECT pg_current_wal_lsn()")
        committed_at = (await a.fetchone())[0]
        await recorder.until_announced(execution, 1)

        async def confirmed_past_commit() -> bool:
            await a.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                (committed_at, listener.slot_name))
            return (await a.fetchone())[0]

        async with asyncio.timeout(5):
            while not await confirmed_past_commit():
                await asyncio.sleep(0.1)
        assert listener.lag_bytes == 0 and 0 <= listener.lag_seconds < 5


async def test_other_tables_written_flat_out_neither_hold_up_announcements_nor_the_slot(
        decoding_url, writers):
    # The walsender sends a keepalive after each commit it decodes, ours or not; the listener lets
    # them gather while they come thick, but what is announced among them still goes out, in
    # order, and the slot's confirmed position keeps up with the other tables' WAL.
    a, b = writers
    execution = new_ids(1)[0]
    await b.execute("CREATE TABLE IF NOT EXISTS unrelated_writes (id int PRIMARY KEY, n int)")
    await b.execute("INSERT INTO unrelated_writes VALUES (1, 0) ON CONFLICT DO NOTHING")
    stop = asyncio.Event()

    async def write_elsewhere():
        while not stop.is_set():
            await b.execute("UPDATE unrelated_writes SET n = n + 1 WHERE id = 1")

    async with listening(decoding_url) as (listener, recorder):
        writer = asyncio.create_task(write_elsewhere())
        try:
            await asyncio.sleep(0.3)
            for seq in range(1, 21):
                await emit(a, f"{execution}:{seq}")
                await recorder.until_announced(execution, seq, timeout=5)
            await a.execute("SELECT pg_current_wal_lsn()")
            written_at = (await a.fetchone())[0]
            async with asyncio.timeout(5):
                while True:
                    await a.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                                    "WHERE slot_name = %s", (written_at, listener.slot_name))
                    if (await a.fetchone())[0]:
                        break
                    await asyncio.sleep(0.1)
        finally:
            stop.set()
            await writer
            await b.execute("DROP TABLE unrelated_writes")
    seen = [batch[execution] for batch in recorder.batches if execution in batch]
    assert seen == sorted(set(seen)) and seen[-1] == 20
    assert listener.read_pauses > 0  # the keepalives did come thick, and were gathered


class SlowRecorder(Recorder):
    """A consumer whose every read takes longer than the commits take to come."""

    async def on_batch(self, batch: dict[str, int]) -> None:
        await super().on_batch(batch)
        await asyncio.sleep(0.005)


async def commit_each_from_the_database(sql, execution_id: str, count: int, pause: float) -> None:
    await sql.execute(f"""
        DO $$ BEGIN
            FOR seq IN 1..{count} LOOP
                PERFORM pg_logical_emit_message(true, 'aiagent_live', %s || ':' || seq);
                COMMIT;
                PERFORM pg_sleep({pause});
            END LOOP;
        END $$""", (execution_id,))


async def test_a_consumer_slower_than_the_commits_gets_them_gathered_and_none_lost(decoding_url, sql):
    execution_id = new_ids(1)[0]
    async with listening(decoding_url, SlowRecorder(), coalesce_seconds=0.02) as (listener, recorder):
        await commit_each_from_the_database(sql, execution_id, 1000, 0.0005)
        await recorder.until_announced(execution_id, 1000)
        assert listener.gathered_batches > 0
    announced = [batch[execution_id] for batch in recorder.batches if execution_id in batch]
    assert announced == sorted(set(announced)) and announced[-1] == 1000


async def test_commits_slower_than_the_reads_are_each_handed_over_at_once(decoding_url, sql):
    execution_id = new_ids(1)[0]
    async with listening(decoding_url, coalesce_seconds=0.02) as (listener, recorder):
        await commit_each_from_the_database(sql, execution_id, 30, 0.05)
        await recorder.until_announced(execution_id, 30)
        assert listener.gathered_batches == 0
        assert listener.read_pauses == 0  # each commit's data and its keepalive read as they came
    # One batch per commit, unless this busy machine stalled a process past a commit's pace.
    announced = [batch[execution_id] for batch in recorder.batches if execution_id in batch]
    assert announced == sorted(set(announced)) and announced[-1] == 30 and len(announced) >= 25


async def test_commits_less_than_a_millisecond_apart_are_read_about_once_a_millisecond(decoding_url, writers):
    # A consumer that keeps up, and commits one after another (a fraction of a millisecond each
    # here): read as they come, each would be a batch of its own.
    a, _ = writers
    execution_id = new_ids(1)[0]
    async with listening(decoding_url, coalesce_seconds=0.02) as (listener, recorder):
        started = time.monotonic()
        for seq in range(1, 1001):
            await emit(a, f"{execution_id}:{seq}")
        took = time.monotonic() - started
        await recorder.until_announced(execution_id, 1000)
    assert took < 1, f"1,000 commits took {took:.1f} s: too slow for them to come thick"
    announced = [batch[execution_id] for batch in recorder.batches if execution_id in batch]
    assert announced == sorted(set(announced)) and announced[-1] == 1000
    # Each read as it came for the first SUSTAINED_SECONDS, then about one read a millisecond.
    read_at_once = 1000 * SUSTAINED_SECONDS / took
    assert len(recorder.batches) < read_at_once + 1000 * took + 50, (len(recorder.batches), took)
