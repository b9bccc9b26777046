"""psycopg2's own asynchronous interface on the event loop, for the push path's connections.

The listener and the hub's two readers each keep one connection and use it one statement at a
time. aiopg (the pool behind REST) wraps the same interface with a future, a timer and a cursor
object per statement, and reads every notification the moment it arrives, a wake-up each, into
a queue whose every get() is a task; on the push path that was a quarter of a core at 2,000
commits/s and a tenth of a millisecond on every change's way out. Here a connection's socket is
watched only while a statement waits for its answer, or while the listener waits for news.
"""

import asyncio

import psycopg2
import psycopg2.extensions

# A peer gone without a word (a black-holed network) is noticed by the kernel within a minute.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


async def connect(dsn: str, *, timeout: float, **params) -> psycopg2.extensions.connection:
    """A new asynchronous connection, ready for statements, with TCP keepalives."""
    conn = psycopg2.connect(dsn, async_=True, **KEEPALIVES, **params)
    try:
        await until_ready(conn, timeout)
    except BaseException:
        conn.close()
        raise
    return conn


async def execute(conn: psycopg2.extensions.connection, sql: str, params=None, *,
                  timeout: float) -> list[tuple]:
    """Run one statement; its rows (none for a statement that returns none)."""
    cursor = conn.cursor()  # kept until the answer is in: psycopg2 needs it alive until then
    try:
        cursor.execute(sql, params)
        await until_ready(conn, timeout)
        return cursor.fetchall() if cursor.description is not None else []
    finally:
        cursor.close()


async def until_ready(conn: psycopg2.extensions.connection, timeout: float) -> None:
    """Drive the connection until what it was asked is done (TimeoutError past `timeout`)."""
    async with asyncio.timeout(timeout):
        while (state := conn.poll()) != psycopg2.extensions.POLL_OK:
            await ready_to(conn.fileno(), write=state == psycopg2.extensions.POLL_WRITE)


async def ready_to(fd: int, *, write: bool) -> None:
    """Until the socket can be read (or written) without blocking."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    watch, unwatch = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    watch(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        unwatch(fd)
