"""For the wal change source's tests: a database ready for decoding, and a running WalListener
that records what it hands over."""

import asyncio
import contextlib
import dataclasses

import aiopg
import psycopg2

from service.push.wal_listener import PREFIX, PUBLICATION, WalListener


def prepare_for_decoding(url: str) -> None:
    """What the migrations will provide for the wal source: here only the (empty) publication."""
    with contextlib.closing(psycopg2.connect(url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT current_setting('wal_level')")
            wal_level = cursor.fetchone()[0]
            assert wal_level == "logical", f"the wal tests need wal_level = logical, not {wal_level}"
            cursor.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE PUBLICATION {PUBLICATION}")


async def emit(cursor, *announcements: str, prefix: bytes = PREFIX, transactional: bool = True) -> None:
    """One pg_logical_emit_message per announcement, in the cursor's current transaction."""
    for announcement in announcements:
        await cursor.execute("SELECT pg_logical_emit_message(%s, %s, %s)",
                             (transactional, prefix.decode(), announcement))


@dataclasses.dataclass
class Recorder:
    """What a listener handed over: every batch, and how often it (re)connected."""
    batches: list[dict[str, int]] = dataclasses.field(default_factory=list)
    connects: int = 0

    async def on_batch(self, batch: dict[str, int]) -> None:
        self.batches.append(dict(batch))

    async def on_connect(self) -> None:
        self.connects += 1

    def announced(self) -> dict[str, int]:
        """The highest seq handed over for each execution."""
        merged: dict[str, int] = {}
        for batch in self.batches:
            for execution_id, seq in batch.items():
                merged[execution_id] = max(seq, merged.get(execution_id, 0))
        return merged

    async def until(self, condition, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)

    async def until_announced(self, execution_id: str, seq: int, timeout: float = 10) -> None:
        await self.until(lambda: self.announced().get(execution_id, 0) >= seq, timeout)


@contextlib.asynccontextmanager
async def listening(url: str, recorder: Recorder | None = None, *, connect_timeout: float | None = 10,
                    **options):
    """A WalListener on `url` for the block, connected before the block starts (unless
    connect_timeout is None: then the block waits itself)."""
    recorder = recorder or Recorder()
    settings = {"ping_seconds": 2.0, "backoff_min": 0.05, "backoff_max": 0.5, **options}
    listener = WalListener(url, on_batch=recorder.on_batch, on_connect=recorder.on_connect, **settings)
    task = asyncio.create_task(listener.run())
    try:
        if connect_timeout is not None:
            assert await listener.wait_connected(connect_timeout), "the listener did not connect"
        yield listener, recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def primary_with(url: str, synchronous_standby_names: str):
    """The primary with this synchronous_standby_names for the block, reset after it whatever
    happens: left set, every later commit of the test run would wait for a synchronous standby."""
    try:
        await reload_with(url, synchronous_standby_names)
        yield
    finally:
        await reload_with(url, "")


async def reload_with(url: str, setting: str) -> None:
    """Set, and seen by new sessions (a reload reaches them a moment later)."""
    async with aiopg.connect(url) as conn, conn.cursor() as cursor:
        if setting:
            await cursor.execute("ALTER SYSTEM SET synchronous_standby_names = %s", (setting,))
        else:
            await cursor.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await cursor.execute("SELECT pg_reload_conf()")
    async with asyncio.timeout(5):
        while True:
            async with aiopg.connect(url) as conn, conn.cursor() as cursor:
                await cursor.execute("SHOW synchronous_standby_names")
                if (await cursor.fetchone())[0] == setting:
                    return
            await asyncio.sleep(0.02)
