"""Which sockets watch which executions, and the one read per batch of changes that feeds them."""

import asyncio
import collections
import dataclasses
import datetime
import time
import typing

import aiopg
import psycopg2
import structlog

from ..auth import Principal
from ..db import repository
from .change_reader import PreparedReader
from .messages import FEED_SUBSCRIBED, Event, event_from_parts, synced_event
from .read_batcher import ReadBatcher
from .socket_outbox import SocketOutbox

log = structlog.get_logger(__name__)

# An execution's watchers are a tuple up to this many (48 bytes for one, against 216 for a set:
# most executions are watched by one or two tabs, and an idle socket's every byte counts 10,000
# times), a set beyond (a popular execution's sockets come and go in O(1)).
FEW_WATCHERS = 8
FEED_MEMORY = 10_000  # executions whose last fed status is remembered, to not feed it twice
CATCH_UP_BATCH = 100  # distinct first reads in one statement at most: bounds what one slow read holds up
# With the wal source, a change can be announced a moment before other sessions see it: the
# walsender decodes a commit once its record is flushed, and the committing backend makes it
# visible just after (NOTIFY is delivered after that). A read that finds less than was announced is
# made again after each of these pauses; what is still not visible after them is the reconcile's.
VISIBILITY_PAUSES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5)
# How long a new subscriber's read waits for a standby to replay what the primary already has.
STANDBY_WAIT = 5.0
# How long the periodic check of whether the push database is still a standby may take.
RECOVERY_CHECK_TIMEOUT = 5.0
LIVE_READER = "aiagent-live hub"
CATCH_UP_READER = "aiagent-live catch-up"


class CatchUp(typing.NamedTuple):
    """What a new subscriber lacks, read and encoded once for all who asked the same: the head
    (owner, status, status_seq, resume), the `since` asked for, the messages in sending order,
    and the `synced` that ends them (its seq the execution's, as of the read)."""

    head: dict
    since: int | None
    events: list[Event]
    synced: Event

    @property
    def upto(self) -> int:
        return self.synced.seq

    def offer_to(self, outbox: SocketOutbox) -> None:
        """Hand it to a subscriber registered, its live events held, before the read."""
        if self.head["resume"]:
            outbox.offer_catch_up(self.synced.execution_id, self.events, after=self.since, synced=self.synced)
        else:
            outbox.offer_snapshot(self.synced.execution_id, self.events, synced=self.synced)


@dataclasses.dataclass(frozen=True)
class FeedFilter:
    """Which status changes a feed subscriber gets: those of executions `viewer` owns (None: a
    worker or admin, who sees every execution) that match the optional filters."""

    viewer: str | None
    workflow_id: str | None = None
    status: str | None = None

    def wants(self, row: dict) -> bool:
        return ((self.workflow_id is None or row["workflow_id"] == self.workflow_id)
                and (self.status is None or row["status"] == self.status))


class SubscriptionHub:
    """Turns "these executions changed" into one read, one encoding, and an offer to each socket.

    It never writes to a socket: offers go into each socket's bounded outbox, and that socket's
    own writer sends them.
    """

    def __init__(self, pool: aiopg.Pool, dsn: str, *, preview_limit: int, log_tail: int, metrics=None,
                 standby: bool = False):
        self._pool = pool
        # Reads on a hot standby (push_database_url), writes on the primary behind `pool`.
        self._standby = standby
        # Whether the standby was in recovery at the last reconcile (None: not asked yet), so that
        # its promotion is said once in the log: nothing else in the process notices it, as
        # decoding carries on across it.
        self._standby_recovering: bool | None = None
        # Live changes and new subscribers read on connections of their own, so a reconnect storm
        # never holds up a change on its way out.
        self._reader = PreparedReader(dsn, application_name=LIVE_READER)
        self._catch_up_reader = PreparedReader(dsn, application_name=CATCH_UP_READER)
        self._catch_ups = ReadBatcher(self._read_catch_ups, max_batch=CATCH_UP_BATCH)
        self.metrics = metrics
        self._preview_limit = preview_limit
        self._log_tail = log_tail
        self._watchers: dict[str, tuple[SocketOutbox, ...] | set[SocketOutbox]] = {}
        # Highest seq already offered to the watchers of each execution by a live read (before
        # the first, _behind asks the watchers), and announced for it by the listener (a
        # reconcile that finds a change announced but still being read did not correct anything).
        self._published: dict[str, int] = {}
        self._announced: dict[str, int] = {}
        self._feeds: dict[SocketOutbox, FeedFilter] = {}
        # Whether feed subscribers may have missed a status change (the listener reconnected, or
        # a batch's read failed or found its change still invisible): the next reconcile (at
        # once after a reconnect, else the periodic one) tells them to reload.
        self._feeds_behind = False
        # The same subscribers by viewer, so a change is checked against the sockets that may
        # see it, not against every feed socket (a list view is what most users have open).
        self._feeds_by_viewer: dict[str | None, dict[SocketOutbox, FeedFilter]] = {}
        self._fed: collections.OrderedDict[str, int] = collections.OrderedDict()
        # The highest seq announced or reconciled while every watcher of its execution was being
        # caught up (until a live read publishes to them); those due a read once one has its
        # snapshot, and the task reading them (offer_catch_up).
        self._held_back: dict[str, int] = {}
        self._held_back_due: dict[str, int] = {}
        self._held_back_reader: asyncio.Task | None = None

    @property
    def subscription_count(self) -> int:
        return sum(len(outboxes) for outboxes in self._watchers.values()) + len(self._feeds)

    # -- subscribing -------------------------------------------------------------------------

    def subscribe(self, execution_id: str, outbox: SocketOutbox) -> None:
        """Watch an execution. Register before reading the snapshot, so no change falls between."""
        watchers = self._watchers.get(execution_id, ())
        if isinstance(watchers, set):
            watchers.add(outbox)
        elif outbox not in watchers:
            watchers += (outbox,)
            self._watchers[execution_id] = set(watchers) if len(watchers) > FEW_WATCHERS else watchers

    def unsubscribe(self, execution_id: str, outbox: SocketOutbox) -> None:
        watchers = self._watchers.get(execution_id)
        if watchers is not None:
            if isinstance(watchers, set):
                watchers.discard(outbox)
            else:
                watchers = self._watchers[execution_id] = tuple(w for w in watchers if w is not outbox)
            if not watchers:
                del self._watchers[execution_id]
                self._published.pop(execution_id, None)
                self._announced.pop(execution_id, None)
                self._held_back.pop(execution_id, None)

    def subscribe_feed(self, outbox: SocketOutbox, feed: FeedFilter) -> None:
        """Subscribe, or replace the socket's feed (new filters, or a token for another viewer)."""
        self.unsubscribe_feed(outbox)
        self._feeds[outbox] = feed
        self._feeds_by_viewer.setdefault(feed.viewer, {})[outbox] = feed

    def unsubscribe_feed(self, outbox: SocketOutbox) -> None:
        feed = self._feeds.pop(outbox, None)
        if feed is not None:
            same_viewer = self._feeds_by_viewer[feed.viewer]
            del same_viewer[outbox]
            if not same_viewer:
                del self._feeds_by_viewer[feed.viewer]

    def feed_of(self, outbox: SocketOutbox) -> FeedFilter | None:
        return self._feeds.get(outbox)

    def drop(self, outbox: SocketOutbox, execution_ids) -> None:
        """Everything a closing socket subscribed to."""
        for execution_id in list(execution_ids):
            self.unsubscribe(execution_id, outbox)
        self.unsubscribe_feed(outbox)

    # -- a new subscriber's first read -------------------------------------------------------

    async def owners(self, execution_ids: list[str]) -> dict[str, str]:
        return await repository.get_owners(self._pool, execution_ids)

    async def catch_up(self, execution_id: str, outbox: SocketOutbox, since: int | None,
                       principal: Principal) -> dict | None:
        """Offer a new subscriber (registered already, its live events held) what it lacks:
        read_catch_up, then offered at once. Returns the execution's head (owner, status,
        status_seq), or None, having offered nothing, when it does not exist or the principal
        may not see it."""
        found = await self.read_catch_up(execution_id, since, principal)
        if found is None:
            return None
        self.offer_catch_up(found, outbox)
        return found.head

    def offer_catch_up(self, found: "CatchUp", outbox: SocketOutbox) -> None:
        """Hand a new subscriber what it lacked. A change announced (or found by a reconcile)
        while every watcher of the execution was being caught up was left for now (_behind): it
        is read from here, after what the snapshots brought."""
        found.offer_to(outbox)
        execution_id = found.synced.execution_id
        held_back = self._held_back.get(execution_id, 0)
        if held_back > found.upto:
            self._held_back_due[execution_id] = held_back
            if self._held_back_reader is None:
                self._held_back_reader = asyncio.create_task(self._read_held_back())

    async def _read_held_back(self) -> None:
        """What offer_catch_up found due, in one batch per round, as the listener's (the catch-ups
        of one read are offered one after another, with no await between: they share a round)."""
        try:
            while self._held_back_due:
                due, self._held_back_due = self._held_back_due, {}
                try:
                    await self.on_notified(due)
                except Exception as exc:  # the database is away: the reconcile reads them again
                    log.warning("hub.held_back_read_failed", executions=len(due), error=type(exc).__name__)
        finally:
            self._held_back_reader = None

    async def read_catch_up(self, execution_id: str, since: int | None,
                            principal: Principal) -> CatchUp | None:
        """What a new subscriber lacks: with `since`, every event after it; without it, or when
        `since` is older than what is kept, a snapshot: the status, every node, the last log
        lines, marked "resync" when it replaces a resume; then `synced`. None when it does not
        exist or the principal may not see it. A subscriber registers (and holds) before this,
        so no change falls between the read and the live events.

        Concurrent subscribers are read together, in one statement per batch."""
        viewer = None if principal.sees_everything else principal.sub
        found = await self._catch_ups.read((execution_id, since, viewer))
        if self._standby and (found is None or (since is not None and found.upto < since)):
            # Created or changed on the primary a moment ago (a client that just POSTed it, or
            # resumes from a seq REST gave it): read once the standby has replayed that far.
            if await self._standby_replayed_primary(execution_id):
                found = await self._catch_ups.read((execution_id, since, viewer))
        if found is None or not principal.may_see(found.head["owner"]):
            return None
        return found

    async def _standby_replayed_primary(self, execution_id: str) -> bool:
        """When the primary has the execution: wait (STANDBY_WAIT at most) until the standby has
        replayed what the primary had written by now. False when the primary has no such execution."""
        position = await repository.execution_wal_position(self._pool, execution_id)
        if position is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STANDBY_WAIT
        while not await self._catch_up_reader.replayed(position):
            if loop.time() > deadline:
                log.warning("hub.standby_behind", waited_seconds=STANDBY_WAIT)
                return False
            await asyncio.sleep(0.005)
        return True

    async def _read_catch_ups(self, requests: list[tuple]) -> list["CatchUp | None"]:
        """One statement for a batch of distinct (execution_id, since, viewer); each result's
        messages are encoded here, once, for every socket that asked the same."""
        if self.metrics is not None:
            self.metrics.catch_up_batch_size.observe(len(requests))
        found = await self._catch_up_reader.catch_up(requests, self._log_tail)
        return [self._catch_up(since, rows) for (_, since, _), rows in zip(requests, found)]

    def _catch_up(self, since: int | None, rows: list[tuple]) -> "CatchUp | None":
        if not rows:
            return None
        (_, execution_id, upto, head), rows = rows[0], rows[1:]
        # Not `terminal` (no close on it): a finished execution's final status comes before
        # `synced` (first, in a snapshot), and its socket is closed once both are out.
        if head["resume"]:
            events = [event_from_parts(*row, self._preview_limit, terminal=False) for row in rows]
        else:
            extra = {"resync": True} if since is not None else None
            events = [event_from_parts(*row, self._preview_limit, extra=extra, terminal=False, in_order=False)
                      for row in rows]
        return CatchUp(head, since, events, synced_event(execution_id, upto))

    # -- changes -----------------------------------------------------------------------------

    async def on_notified(self, announced: dict[str, int]) -> None:
        """The listener's batch: execution id -> highest seq announced. Reads only what is news,
        and again, after short pauses, what was announced but is not visible yet."""
        for execution_id, seq in announced.items():
            if execution_id in self._watchers:
                self._announced[execution_id] = max(seq, self._announced.get(execution_id, 0))
        try:
            unseen = await self._deliver(announced)
            for pause in VISIBILITY_PAUSES:
                if not unseen:
                    return
                await asyncio.sleep(pause)
                unseen = await self._deliver(unseen)
        except Exception:
            self._feeds_behind = bool(self._feeds)  # watched executions are the reconcile's anyway
            raise
        if unseen:
            # Left to the reconcile (a row deleted meanwhile also ends here).
            log.warning("hub.announced_change_not_visible", executions=len(unseen))
            self._feeds_behind = bool(self._feeds)

    async def _deliver(self, announced: dict[str, int]) -> dict[str, int]:
        """Offer what is news in `announced`; returns the announcements not visible to a read yet."""
        stale = self._behind(announced)
        if stale:
            await self._read_and_publish(stale)
        published = self._published
        unseen = {eid: announced[eid] for eid in stale
                  if eid in self._watchers and announced[eid] > published.get(eid, 0)}
        if self._feeds:
            unseen.update(await self._feed(announced))
        return unseen

    async def listener_connected(self) -> int:
        """The listener has (re)connected: what was committed while it was not listening was never
        announced. Watched executions are read again, and feed subscribers told to reload."""
        self._feeds_behind = True
        return await self.reconcile()

    async def reconcile(self) -> int:
        """Re-read every watched execution that moved; returns how many had moved without being
        announced. Then, when feed subscribers may have missed a change, sends each of them
        `subscribed` again: the feed does not replay, and that is a client's cue to reload its list."""
        unannounced = 0
        watched = list(self._watchers)
        if watched:
            seqs = await self._reader.execution_seqs(watched)
            moved = self._behind(seqs)
            # Read again even when announced: the listener's read may have failed.
            unannounced = sum(1 for eid in moved if seqs[eid] > self._announced.get(eid, 0))
            if moved:
                await self._read_and_publish(moved)
                log.info("hub.reconciled", moved=len(moved), unannounced=unannounced)
            if self.metrics is not None:
                self.metrics.reconcile_corrections.inc(unannounced)
        if self._feeds_behind:
            self._feeds_behind = False
            resync = Event("", 0, "reply", FEED_SUBSCRIBED)  # encoded once for every feed socket
            for outbox in self._feeds:
                outbox.send_reply(resync)
            if self._feeds:
                log.info("hub.feeds_resynced", feeds=len(self._feeds))
        return unannounced

    def _behind(self, seqs: dict[str, int]) -> dict[str, int]:
        """Of `seqs` (execution id -> a seq it has reached), the watched executions whose watchers
        lack some of it, each with the seq up to which they all have its events: what live reads
        published to them, or, before the first since it was watched, what their catch-ups
        brought. So a new subscriber's first live read starts after its snapshot, not at the
        execution's first event; while every watcher's snapshot is still being read, not at all
        (each, once offered its snapshot, has what was announced meanwhile read: offer_catch_up)."""
        behind = {}
        for execution_id, seq in seqs.items():
            watchers = self._watchers.get(execution_id)
            if watchers:
                published = self._published.get(execution_id)
                if published is None:
                    positions = [outbox.position(execution_id) for outbox in watchers]
                    if None not in positions:
                        published = min(positions)
                    elif any(position is not None for position in positions):
                        published = 0  # some have theirs, another may lack anything: all of it
                    else:  # every watcher is being caught up: see offer_catch_up
                        self._held_back[execution_id] = max(seq, self._held_back.get(execution_id, 0))
                        continue
                if seq > published:
                    behind[execution_id] = published
        return behind

    async def push_database_synchronous_standby_names(self) -> tuple[bool, str]:
        """Whether the push database is a standby, and its synchronous_standby_names: what the wal
        listener's audit asks, of the server its walsender runs on. Through the catch-up reader,
        off the live reads' way."""
        return await self._catch_up_reader.synchronous_standby_names()

    async def note_standby_recovery(self) -> None:
        """With push_database_url, says what it is (at the first check) and when it stops being a
        standby: promoted, it serves every read and its decoding carries on (sockets keep their
        state), but it no longer follows the server of database_url, so what is written there from
        now on never reaches it. Only a change seen is a promotion: a push database that was never
        a standby (a primary on PostgreSQL 14 or 15, or one left in place after a failover) is not."""
        if not self._standby:
            return
        try:
            async with asyncio.timeout(RECOVERY_CHECK_TIMEOUT):
                recovering = await self._reader.in_recovery()
        except (psycopg2.Error, OSError, TimeoutError):
            return  # the server is down or slow: the listener says so; asked again next period
        if self._standby_recovering is None:
            log.info("hub.push_database", standby=recovering)
        elif self._standby_recovering and not recovering:
            log.warning("hub.push_database_promoted",
                        hint="push_database_url is no longer a standby: writers and database_url "
                             "belong on it now (changes made on the old primary do not reach it)")
        elif recovering and not self._standby_recovering:
            log.info("hub.push_database_in_recovery")
        self._standby_recovering = recovering

    async def _read_and_publish(self, after: dict[str, int]) -> None:
        rows = await self._reader.events_after(after)
        for execution_id, seq in after.items():
            # Every watcher had each event up to `seq` (those who came during the read too: their
            # catch-up began after it was committed); the rows are everything after it.
            if execution_id in self._watchers and seq > self._published.get(execution_id, 0):
                self._published[execution_id] = seq
            self._held_back.pop(execution_id, None)  # those still held get these rows too
        preview_limit = self._preview_limit
        # Every message of the batch is built before the first is written, and its latency is
        # observed after the last, so the writes leave back to back: a client process woken by the
        # first finds the others already in, one wake-up for all its sockets rather than one each.
        # That matters where clients share the cores with PostgreSQL (the bench: bench/PROFILE.md,
        # session 4); the price is that a batch's first write waits for the batch to be encoded
        # (microseconds per message).
        # Not built at all when nobody watches any more or it was published already (by a
        # concurrent read: this check and the writes below run with no await between them, and
        # rows come in seq order, so each one is news when its turn comes).
        events = [event_from_parts(kind, execution_id, seq, data, preview_limit)
                  for kind, execution_id, seq, data in rows
                  if self._watchers.get(execution_id) and seq > self._published.get(execution_id, 0)]
        sent = [(event, self._publish(event), time.time()) for event in events]
        if self.metrics is not None:
            self._observe_latency(sent)

    def _publish(self, event: Event) -> int:
        """Offer an event to every socket watching its execution; how many took it."""
        self._published[event.execution_id] = event.seq
        return sum(outbox.offer(event) for outbox in self._watchers.get(event.execution_id, ()))

    def _observe_latency(self, sent: list[tuple[Event, int, float]]) -> None:
        """Per (event, sockets that took it, when it was written): one commit-to-send sample, not
        one per socket."""
        for event, sockets, at in sent:
            if sockets and event.committed_at is not None:
                self.metrics.commit_to_send_seconds.observe(max(0.0, at - _epoch(event.committed_at)))

    async def _feed(self, announced: dict[str, int]) -> dict[str, int]:
        """Status changes for the feed subscribers allowed to see them: one read, whose rows carry
        data only for executions whose owner has a feed open (any, while a worker or admin has
        one). Returns the announcements not visible to it yet."""
        by_viewer = self._feeds_by_viewer
        owners = None if None in by_viewer else list(by_viewer)
        unseen = dict(announced)
        for execution_id, seq, status_seq, data in await self._reader.feed_statuses(list(announced), owners):
            if seq >= announced[execution_id]:
                del unseen[execution_id]
            if data is None or self._fed.get(execution_id, 0) >= status_seq:
                continue
            self._fed[execution_id] = status_seq
            self._fed.move_to_end(execution_id)
            if len(self._fed) > FEED_MEMORY:
                self._fed.popitem(last=False)
            event = None
            for feeds in (by_viewer.get(data["owner"]), by_viewer.get(None)):
                for outbox, feed in (feeds or {}).items():
                    if feed.wants(data):
                        event = event or event_from_parts("status", execution_id, status_seq, data,
                                                          self._preview_limit, terminal=False, in_order=False)
                        outbox.offer_feed(event)
        return unseen

    async def close(self) -> None:
        if self._held_back_reader is not None:
            self._held_back_reader.cancel()
            await asyncio.gather(self._held_back_reader, return_exceptions=True)
        await self._catch_ups.close()
        self._reader.close()
        self._catch_up_reader.close()


def _epoch(value: str | datetime.datetime) -> float:
    """A commit time as the hub's reads give it (ISO text from to_jsonb, or a datetime)."""
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    return value.timestamp()
