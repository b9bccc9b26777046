"""Decoding on a real streaming hot standby: the primary commits, a listener on the standby hands
the announcements over, and the standby's own reads already see what they announce."""

import asyncio
import uuid

import aiopg
import pytest

from service.push.decoding_preflight import DecodingUnavailable, check_decoding

from .standby import streaming_standby
from .wal_decoding import Recorder, emit, listening, prepare_for_decoding


@pytest.fixture(scope="module")
def standby(database_url, tmp_path_factory):
    prepare_for_decoding(database_url)  # before the copy: the standby gets the publication too
    with streaming_standby(database_url, tmp_path_factory.mktemp("standby")) as standby:
        yield standby


@pytest.fixture
async def primary(database_url):
    async with aiopg.connect(database_url) as conn, conn.cursor() as cursor:
        await cursor.execute("CREATE TABLE IF NOT EXISTS wal_test_rows (id uuid PRIMARY KEY, seq int)")
        yield cursor


async def until_decoding(listener, primary, timeout: float = 30) -> None:
    """A slot on a standby is ready once the primary logs its running transactions, which it does
    every 15 s while it writes: asking for that record makes the wait short."""
    async with asyncio.timeout(timeout):
        while not await listener.wait_connected(0.2):
            await primary.execute("SELECT pg_log_standby_snapshot()")


async def write_and_announce(primary, execution: str, seq: int) -> None:
    await primary.execute("BEGIN")
    await primary.execute("INSERT INTO wal_test_rows VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET seq = %s",
                          (execution, seq, seq))
    await emit(primary, f"{execution}:{seq}")
    await primary.execute("COMMIT")


async def test_a_standby_decodes_what_the_primary_commits_and_its_own_reads_see_it(standby, primary):
    execution = str(uuid.uuid4())
    read_on_standby: list[tuple[int, int]] = []  # (seq announced, seq the standby's read saw)
    async with aiopg.connect(standby.url) as conn, conn.cursor() as standby_reads:
        await standby_reads.execute("SHOW hot_standby_feedback")
        assert (await standby_reads.fetchone())[0] == "on"
        recorder = Recorder()
        record = recorder.on_batch

        async def on_batch(batch):  # reads as the hub would: on the standby it decoded on, at once
            await record(batch)
            if execution in batch:
                await standby_reads.execute("SELECT seq FROM wal_test_rows WHERE id = %s", (execution,))
                read_on_standby.append((batch[execution], (await standby_reads.fetchone())[0]))

        recorder.on_batch = on_batch
        async with listening(standby.url, recorder, connect_timeout=None) as (listener, _):
            await until_decoding(listener, primary)
            for seq in range(1, 21):
                await write_and_announce(primary, execution, seq)
            await recorder.until_announced(execution, 20)
            assert listener.reconnects == 0
    assert read_on_standby[-1] == (20, 20)
    assert all(seen >= announced for announced, seen in read_on_standby)


async def test_a_restarted_standby_is_decoded_from_again_after_on_connect(standby, primary):
    before, after = str(uuid.uuid4()), str(uuid.uuid4())
    async with listening(standby.url, connect_timeout=None) as (listener, recorder):
        await until_decoding(listener, primary)
        await write_and_announce(primary, before, 1)
        await recorder.until_announced(before, 1)
        await asyncio.to_thread(standby.stop)  # the walsender is told to finish: the listener must answer
        await asyncio.to_thread(standby.start)
        await until_decoding(listener, primary)
        assert recorder.connects == 2
        await write_and_announce(primary, after, 1)
        await recorder.until_announced(after, 1)


async def test_a_standby_without_hot_standby_feedback_is_refused_naming_it(standby):
    await check_decoding(standby.url, timeout=5)
    await asyncio.to_thread(standby.stop)
    await asyncio.to_thread(standby.start, hot_standby_feedback=False)
    try:
        with pytest.raises(DecodingUnavailable, match="hot_standby_feedback = on"):
            await check_decoding(standby.url, timeout=5)
    finally:
        await asyncio.to_thread(standby.stop)
        await asyncio.to_thread(standby.start)
