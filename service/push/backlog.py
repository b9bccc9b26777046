"""When a change source gathers its batches: once it has been behind for a while, not after a burst.

Both listeners hand a batch to the hub, then look whether the next is already waiting. Gathering
(waiting `listener_coalesce_seconds` so that one read serves many commits) pays off while the
changes keep coming faster than batches are handled: the database's CPU then goes to the writers.
After a burst it only makes late changes later. On a busy machine the service is descheduled for
5-20 ms now and then; the few changes that pile up meanwhile are a burst, and gathering after it
puts S1's p99 at about 12 ms instead of about 7 (bench/PROFILE.md, session 7).

So the measure is time, not batches: the share of roughly the last MEMORY_SECONDS the listener
spent behind, going from one batch straight to the next because it was already waiting. A gap in
which it waited for changes counts as not behind for its whole length, and a burst counts only for
the milliseconds it takes to clear.
"""

import math
import time
from collections.abc import Callable

# Long enough that a stall of 10-20 ms and the batches that clear it stay well under the mark,
# short enough that a listener behind at S3's rates starts gathering within about 80 ms.
MEMORY_SECONDS = 0.05
GATHER_ABOVE = 0.8


class Backlog:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._since = clock()
        self._behind = False  # the last batch ended with the next one already waiting
        self.share = 0.0  # of about the last MEMORY_SECONDS spent behind

    def batch_handled(self, next_waiting: bool) -> None:
        """After each batch: was the next one already waiting?"""
        now = self._clock()
        weight = 1.0 - math.exp(-(now - self._since) / MEMORY_SECONDS)
        self.share += weight * (float(self._behind) - self.share)
        self._since, self._behind = now, next_waiting

    @property
    def sustained(self) -> bool:
        """Behind now, and for most of the last MEMORY_SECONDS."""
        return self._behind and self.share > GATHER_ABOVE
