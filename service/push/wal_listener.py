"""The process's one logical replication connection: the triggers' WAL messages in, batches of
changed executions out, with the same contract toward the hub as pg_listener."""

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable

import psycopg2
import psycopg2.extras
import structlog

from ..db import pg_async
from . import pgoutput, synchronous_standby_names
from .backlog import Backlog
from .kept_connection import KeptConnection, ServerSetupRefused
from .pg_listener import CHANNEL, parse_payload
from .read_pace import ReadPace

log = structlog.get_logger(__name__)

# The triggers announce with pg_logical_emit_message(true, 'aiagent_live', '<execution id>:<seq>'):
# the prefix is the NOTIFY channel's name.
PREFIX = CHANNEL.encode()
# pgoutput refuses to start without a publication (PostgreSQL 18 only warns, at every reload);
# the migrations create this one with no tables in it, as only the messages are wanted.
PUBLICATION = "aiagent_live"
APPLICATION_NAME = "aiagent-live wal listener"  # how operators (and tests) find it in pg_stat_replication
# Every version from 14 on (the first whose pgoutput passes messages) accepts 1, and with
# streaming off the messages read here are the same in every version.
PROTO_VERSION = "1"
# While a new slot waits for its consistent point, `while_waiting` is called this often.
NUDGE_SECONDS = 0.5
# A transaction of many messages is read in slices, so the event loop runs between them.
MAX_MESSAGES_PER_READ = 5000


class WalListener(KeptConnection):
    """Decodes the triggers' transactional messages from a temporary slot of its own and hands
    each drained batch of committed announcements to `on_batch`, in commit order.

    The slot is temporary: it goes with the connection, so a crashed process leaves nothing behind
    and retains no WAL; after every (re)connect `on_connect` re-reads what changed meanwhile, as
    for pg_listener. Feedback confirms what was handed over, so the server can recycle WAL. A
    connection quiet for `ping_seconds` is asked for a reply, and replaced when none comes.

    Batches are gathered as pg_listener gathers them: at once while the consumer keeps up, for
    `coalesce_seconds` once it has been behind for a while (push/backlog.py), and about once a
    millisecond while what it reads, announcements or keepalives, keeps coming thick
    (push/read_pace.py).

    It never serves as a synchronous standby (synchronous_standby_names.py): refused at every
    connect while the primary's setting names it, and left when an audit finds it counted.
    """

    log_prefix = "wal_listener"
    log = log

    def __init__(self, *args, feedback_seconds: float = 1.0,
                 while_waiting: Callable[[], Awaitable[object]] | None = None,
                 server_setup: Callable[[], Awaitable[tuple[bool, str]]] | None = None, **kwargs):
        """`server_setup`: whether the server decoded from is a standby, and its
        synchronous_standby_names, asked by audit()."""
        super().__init__(*args, **kwargs)
        self._feedback_seconds = max(feedback_seconds, 1.0)  # psycopg2's floor for status_interval
        self._while_waiting = while_waiting
        self._server_setup = server_setup
        self.slot_name = ""
        self._leaving = ""  # why the connection is to be left, once the audit found a reason
        # Announcements of the transaction being read, and those committed but not handed over.
        self._in_transaction: dict[str, int] = {}
        self._committed: dict[str, int] = {}
        self._committed_end_lsn = 0
        self._newest_commit_time = 0.0
        # Read at scrape time: what the metrics export.
        self.messages_decoded = 0
        self.decoded_lsn = 0  # every announcement before this WAL position has been handed over
        self.server_lsn = 0  # the furthest WAL position the server has sent or reported
        self.lag_seconds = 0.0  # from the newest handed-over commit to its handing over

    @property
    def lag_bytes(self) -> int:
        """WAL the server has decoded and sent that is not handed over yet."""
        return max(0, self.server_lsn - self.decoded_lsn)

    async def _connect(self):
        return await pg_async.connect(
            self._dsn, timeout=self._ping_seconds, application_name=APPLICATION_NAME,
            connection_factory=psycopg2.extras.LogicalReplicationConnection)

    async def _start(self, conn):
        await self._refuse_to_be_synchronous(conn)
        await self._create_slot(conn)
        cursor = await self._start_replication(conn)
        self._leaving = ""
        return cursor

    def _described(self) -> dict:
        return {"slot": self.slot_name}

    def _forget_partial(self) -> None:
        self._in_transaction.clear()
        self._committed.clear()

    async def _refuse_to_be_synchronous(self, conn) -> None:
        """Asked at every connect, as the setting may have changed since serve's check (and a
        promoted standby is a primary now); see also audit()."""
        [(standby, setting)] = await pg_async.execute(conn, synchronous_standby_names.QUERY,
                                                      timeout=self._ping_seconds)
        if refusal := synchronous_standby_names.refusal(standby, setting, APPLICATION_NAME):
            raise ServerSetupRefused(refusal)

    async def _create_slot(self, conn) -> None:
        """A temporary slot, ready once the server has found a consistent point to decode from.

        That waits for the transactions running at the moment to end, and on a standby for the
        primary to log its running transactions (every 15 s while it writes): `while_waiting` is
        called every NUDGE_SECONDS meanwhile (the app asks the primary for that record), and a long
        wait is said in the log.
        """
        self.slot_name = f"aiagent_live_{os.getpid()}_{secrets.token_hex(4)}"
        statement = asyncio.ensure_future(pg_async.execute(
            conn, f"CREATE_REPLICATION_SLOT {self.slot_name} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            timeout=None))
        waited, said = 0.0, False
        try:
            while True:
                try:
                    async with asyncio.timeout(NUDGE_SECONDS):
                        await asyncio.shield(statement)
                    return
                except TimeoutError:
                    waited += NUDGE_SECONDS
                if self._while_waiting is not None:
                    await self._while_waiting()
                if waited >= self._ping_seconds and not said:
                    log.warning("wal_listener.waiting_for_consistent_point", slot=self.slot_name,
                                waited_seconds=waited)
                    said = True
        finally:
            statement.cancel()

    async def _start_replication(self, conn):
        cursor = conn.cursor()
        cursor.start_replication(
            slot_name=self.slot_name, decode=False, status_interval=self._feedback_seconds,
            options={"proto_version": PROTO_VERSION, "publication_names": PUBLICATION, "messages": "true"})
        await pg_async.until_ready(conn, self._ping_seconds)
        return cursor

    async def audit(self) -> None:
        """The setting may change while decoding (a reload), and a standby decoded from may be
        promoted: once the server is a primary whose setting names the listener, the connection is
        left, and the next connect refused while it does."""
        if self._server_setup is None or not self.connected:
            return
        try:
            standby, setting = await self._server_setup()
        except (psycopg2.Error, OSError, TimeoutError):
            return  # the server is down or slow: the connection says so itself; asked again next period
        if refusal := synchronous_standby_names.refusal(standby, setting, APPLICATION_NAME):
            self._leaving = refusal

    async def _pump(self, cursor) -> None:
        """Reads what has arrived, hands over what is committed, confirms it; waits for more."""
        backlog = Backlog()
        fd = cursor.fileno()
        pace = ReadPace()
        last_heard = time.monotonic()
        while True:
            if self._leaving:
                raise ServerSetupRefused(self._leaving)
            server_lsn = self.server_lsn
            arrived = self._read_arrived(cursor)
            # Keepalives move the server's position too: the walsender sends one each time it has
            # caught up past what was confirmed, after any commit in the cluster, ours or not.
            heard = bool(arrived) or self.server_lsn != server_lsn
            pace.read(found=heard)
            if heard:
                last_heard = time.monotonic()
            if self._committed:
                if await self._gathered(backlog):
                    self._read_arrived(cursor)
                await self._hand_over(cursor)
                self._read_arrived(cursor)  # what came in while the batch was handled
                backlog.batch_handled(next_waiting=bool(self._committed))
            elif arrived == MAX_MESSAGES_PER_READ:
                await asyncio.sleep(0)  # a long transaction is still coming in
            elif not arrived:
                if not self._in_transaction and self.server_lsn > self.decoded_lsn:
                    # Caught up: confirmed with the next status update. psycopg2 would move the
                    # flush position on a keepalive by itself only when no data came since the last
                    # confirmation, and PostgreSQL 14 sends every transaction, empty ones included.
                    self.decoded_lsn = self.server_lsn
                    cursor.send_feedback(write_lsn=self.decoded_lsn, flush_lsn=self.decoded_lsn)
                if await self._paused(pace):
                    continue  # to read what gathered meanwhile
                # Woken at least every feedback_seconds: read_message() above sends the feedback
                # that falls due. Quiet for long: make sure the server still answers (it replies to
                # this at once, with a keepalive that read_message() eats).
                if await _readable(fd, self._feedback_seconds):
                    last_heard = time.monotonic()
                elif time.monotonic() - last_heard >= self._ping_seconds:
                    cursor.send_feedback(reply=True)
                    if not await _readable(fd, self._ping_seconds):
                        raise TimeoutError("the replication connection did not answer a ping")
                    last_heard = time.monotonic()

    def _read_arrived(self, cursor) -> int:
        """Decodes the messages already arrived (a slice of them at most); how many there were."""
        count = 0
        while count < MAX_MESSAGES_PER_READ:
            message = cursor.read_message()  # also sends feedback when due, and eats keepalives
            if message is None:
                break
            count += 1
            payload = message.payload
            kind = payload[0]
            if kind == pgoutput.MESSAGE:
                decoded = pgoutput.read_message(payload)
                # Non-transactional messages are decoded even when their transaction rolls back.
                if decoded.transactional and decoded.prefix == PREFIX:
                    self.messages_decoded += 1
                    parsed = parse_payload(decoded.content.decode(errors="replace"))
                    if parsed is not None:
                        execution_id, seq = parsed
                        if seq > self._in_transaction.get(execution_id, 0):
                            self._in_transaction[execution_id] = seq
            elif kind == pgoutput.COMMIT:
                commit = pgoutput.read_commit(payload)
                for execution_id, seq in self._in_transaction.items():
                    if seq > self._committed.get(execution_id, 0):
                        self._committed[execution_id] = seq
                self._in_transaction.clear()
                self._committed_end_lsn = commit.end_lsn
                self._newest_commit_time = commit.commit_time
            elif kind == pgoutput.BEGIN:
                self._in_transaction.clear()
            # Anything else (a table's change, were one published) is not for us.
        self.server_lsn = max(self.server_lsn, cursor.wal_end)
        return count

    async def _hand_over(self, cursor) -> None:
        batch, self._committed = self._committed, {}
        await self._hand_over_batch(batch)
        self.lag_seconds = max(0.0, time.time() - self._newest_commit_time)
        self.decoded_lsn = max(self.decoded_lsn, self._committed_end_lsn)
        # Sent with the next status update (every feedback_seconds); the slot then lets the server
        # recycle the WAL before it. Nothing is decoded again from it: the slot dies with us.
        cursor.send_feedback(write_lsn=self.decoded_lsn, flush_lsn=self.decoded_lsn)


async def _readable(fd: int, timeout: float) -> bool:
    """Whether the socket became readable within `timeout`. Waited for once per wake-up, often once
    per commit: one future and one timer (pg_async.ready_to under asyncio.timeout costs more)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, _settle, ready, True)
    timer = loop.call_later(timeout, _settle, ready, False)
    try:
        return await ready
    finally:
        timer.cancel()
        loop.remove_reader(fd)


def _settle(future: asyncio.Future, value: bool) -> None:
    if not future.done():
        future.set_result(value)
