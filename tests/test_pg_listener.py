"""The LISTEN connection's batches: at once while reads keep up, gathered while they do not."""

import asyncio
import contextlib
import time
import uuid

from service.push.pg_listener import CHANNEL, PgListener
from service.push.read_pace import SUSTAINED_SECONDS


@contextlib.asynccontextmanager
async def listening(database_url, on_batch, coalesce_seconds):
    async def on_connect():
        return None

    listener = PgListener(database_url, on_batch=on_batch, on_connect=on_connect, ping_seconds=5,
                          backoff_min=0.1, backoff_max=1, coalesce_seconds=coalesce_seconds)
    task = asyncio.create_task(listener.run())
    try:
        assert await listener.wait_connected(5)
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def notify_each(sql, execution_id: str, seqs, pause: float = 0.0) -> None:
    """One commit per notification, as the trigger sends them."""
    for seq in seqs:
        await sql.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{execution_id}:{seq}"))
        if pause:
            await asyncio.sleep(pause)


def quick_consumer():
    """The batches a consumer that keeps up is handed, and the consumer."""
    batches: list[dict] = []

    async def quick_read(announced):
        batches.append(dict(announced))

    return batches, quick_read


async def until_seen(batches: list[dict], execution_id: str, seq: int) -> None:
    async with asyncio.timeout(10):
        while not any(batch.get(execution_id) == seq for batch in batches):
            await asyncio.sleep(0.01)


async def test_a_consumer_slower_than_the_changes_gets_them_gathered_and_none_lost(database_url, sql):
    batches: list[dict] = []

    async def slow_read(announced):  # a read that takes longer than the changes take to come
        batches.append(dict(announced))
        await asyncio.sleep(0.005)

    execution_id = str(uuid.uuid4())
    async with listening(database_url, slow_read, coalesce_seconds=0.02) as listener:
        # 1,000 commits, one every half millisecond or so, from the database itself.
        await sql.execute("""
            DO $$ BEGIN
                FOR seq IN 1..1000 LOOP
                    PERFORM pg_notify(%s, %s || ':' || seq);
                    COMMIT;
                    PERFORM pg_sleep(0.0005);
                END LOOP;
            END $$""", (CHANNEL, execution_id))
        await until_seen(batches, execution_id, 1000)
        assert listener.gathered_batches > 0
        assert listener.notifications == 1000
    # Every batch announces the highest seq it got; nothing is skipped over or repeated.
    announced = [batch[execution_id] for batch in batches]
    assert announced == sorted(set(announced)) and announced[-1] == 1000


async def test_changes_slower_than_the_reads_are_each_handed_over_at_once(database_url, sql):
    batches, quick_read = quick_consumer()
    execution_id = str(uuid.uuid4())
    async with listening(database_url, quick_read, coalesce_seconds=0.02) as listener:
        await notify_each(sql, execution_id, range(1, 31), pause=0.02)
        await until_seen(batches, execution_id, 30)
        assert listener.gathered_batches == 0
        assert listener.read_pauses == 0  # 20 ms apart: each read as it comes
    assert [batch[execution_id] for batch in batches] == list(range(1, 31))


async def test_changes_less_than_a_millisecond_apart_are_read_about_once_a_millisecond(database_url, sql):
    # A consumer that keeps up, and commits one after another (a fraction of a millisecond each
    # here): read as they come, each would be a batch of its own.
    batches, quick_read = quick_consumer()
    execution_id = str(uuid.uuid4())
    async with listening(database_url, quick_read, coalesce_seconds=0.02) as listener:
        started = time.monotonic()
        await notify_each(sql, execution_id, range(1, 1001))
        took = time.monotonic() - started
        await until_seen(batches, execution_id, 1000)
        assert listener.read_pauses > 0
    assert took < 1, f"1,000 commits took {took:.1f} s: too slow for them to come thick"
    announced = [batch[execution_id] for batch in batches]
    assert announced == sorted(set(announced)) and announced[-1] == 1000
    # Each read as it came for the first SUSTAINED_SECONDS, then about one read a millisecond.
    read_at_once = 1000 * SUSTAINED_SECONDS / took
    assert len(batches) < read_at_once + 1000 * took + 50, (len(batches), took)
