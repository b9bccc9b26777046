"""How often a change source reads while what it reads comes thick: about once a millisecond.

Each read that finds something costs the service a wake-up of its event loop, and the hand-over of
a batch: about 70 us of CPU however little it carries. Read at once, commits at the writers'
ceiling (3,000-4,000 a second here) took the listener a quarter of a core, on the cores the
writers needed (bench/PROFILE.md, session 10); so did the walsender's keepalives for other
tables' commits (session 9).

So once reads have kept finding something less than PAUSE_SECONDS apart for SUSTAINED_SECONDS,
the source waits PAUSE_SECONDS before each next read instead of waiting for its socket, until a
read after such a pause finds nothing: about a thousand reads a second at most, and a change that
comes meanwhile waits up to about a millisecond more. Changes that come slower (S1's 500 a
second, 2 ms apart, each followed by a keepalive with wal) are each read at once, and so is a
short run of them back to back, such as a writer catching up after the machine stalled it: those
are late already.

Gathering for listener_coalesce_seconds once the consumer is behind (push/backlog.py) is the
other rule, for a hub that cannot keep up; this one is for a listener that can.
"""

import time
from collections.abc import Callable

PAUSE_SECONDS = 0.001
SUSTAINED_SECONDS = 0.01


class ReadPace:
    """One listener connection's: told of each read, asked before each wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._found_at = float("-inf")  # when a read last found something
        self._run_since = float("-inf")  # when reads began to find something less than a pause apart
        self._after_pause = False  # the read being told of came after a pause
        self._thick = False

    def read(self, found: bool) -> None:
        """After each read: whether it found anything (changes, or a keepalive)."""
        now = self._clock()
        if found:
            if not self._after_pause and now - self._found_at >= PAUSE_SECONDS:
                self._run_since = now
            self._found_at = now
            self._thick = now - self._run_since >= SUSTAINED_SECONDS
        elif self._after_pause:
            self._thick = False  # a pause gathered nothing: it has thinned out
        self._after_pause = False

    def pause(self) -> bool:
        """Before waiting for the socket: True when the source should sleep PAUSE_SECONDS and read
        instead."""
        self._after_pause = self._thick
        return self._thick
