"""Limits that keep one client from hurting the others: sockets per token subject, and the rate
of messages one socket may send."""

import collections
import time

CLOSE_TOO_MANY_SOCKETS = 4429


class SocketsPerSubject:
    """How many sockets each token subject holds open on this process."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: collections.Counter[str] = collections.Counter()

    def admit(self, subject: str) -> bool:
        """Count one more socket for the subject; False (nothing counted) at its limit.
        Every True is paired with a release()."""
        if self._open[subject] >= self.limit:
            return False
        self._open[subject] += 1
        return True

    def release(self, subject: str) -> None:
        self._open[subject] -= 1
        if not self._open[subject]:
            del self._open[subject]


class MessageRate:
    """A token bucket: `per_second` messages on average, bursts of up to `burst`."""

    def __init__(self, per_second: float, burst: int, clock=time.monotonic):
        self._per_second, self._burst, self._clock = per_second, burst, clock
        self._tokens = float(burst)
        self._last = clock()
        self._last_refusal_reported = float("-inf")

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._per_second)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def should_report_refusal(self) -> bool:
        """At most one error a second for refused messages, so a flood is not answered by one."""
        now = self._clock()
        if now - self._last_refusal_reported >= 1:
            self._last_refusal_reported = now
            return True
        return False
