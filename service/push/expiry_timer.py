"""Many deadlines on one event-loop timer: when each socket's token expires."""

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

# As asyncio does with its own cancelled timers: rebuild the heap without cancelled entries once
# they are over half of it (and it is not tiny), so a flood of short-lived sockets holding long
# tokens does not grow it.
MIN_ENTRIES_TO_COMPACT = 100


class ExpiryTimer:
    """`call_at(when, callback)` for wall-clock times, all on one timer set for the earliest.

    An event-loop timer costs about 0.5 KiB under uvloop, kept for as long as a token is in force,
    for every open socket; an entry here costs a third of that.
    """

    def __init__(self) -> None:
        self._heap: list[list] = []  # [when, order, callback]; a cancelled entry's callback is None
        self._order = itertools.count()  # equal times run in the order they were asked for
        self._cancelled = 0
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def call_at(self, when: float, callback: Callable[[], object]) -> list:
        """Call `callback()` at `when` (seconds since the epoch); returns what cancel() takes."""
        entry = [when, next(self._order), callback]
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._schedule()
        return entry

    def cancel(self, entry: list) -> None:
        if entry[2] is None:
            return
        entry[2] = None
        self._cancelled += 1
        if len(self._heap) > MIN_ENTRIES_TO_COMPACT and self._cancelled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, self._heap[0][0] - time.time()), self._run_due)

    def _run_due(self) -> None:
        self._timer = None
        now = time.time()
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            callback, entry[2] = entry[2], None  # a cancel() from now on is a no-op
            if callback is None:
                self._cancelled -= 1
                continue
            try:
                callback()
            except Exception:  # one failing callback must not stop the others
                log.exception("expiry_timer.callback_failed")
        self._schedule()
