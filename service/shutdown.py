"""One deadline for the whole shutdown (config.shutdown_timeout_seconds): every step takes its
time from what is left of it, and a step still running when its time is up is named in a warning
(`shutdown.stuck`), cancelled and left behind, so the process exits on time whatever hangs: a
database that does not answer, a socket that never closes, a handler that ignores cancellation.
"""

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

# Past the deadline, the interpreter's own exit (cancelling the tasks left, closing the loop) gets
# this long; then the process ends whatever still runs.
EXIT_GRACE_SECONDS = 1.0


class Shutdown:
    """The deadline, and the HTTP requests in flight that a shutdown lets finish first."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._deadline: float | None = None
        self.step = "serving"
        self.tasks_left: list[str] = []  # named by the last step, for a line if they hold up the exit
        self._exit_timer: threading.Timer | None = None
        # By id(): a request is a mapping, so unhashable. Kept by http_middlewares.request_context.
        self.requests: dict[int, web.Request] = {}

    def start(self) -> None:
        """The clock starts at SIGTERM; in an app stopped otherwise, with its first cleanup step."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.seconds

    def remaining(self) -> float:
        self.start()
        return max(0.0, self._deadline - time.monotonic())

    async def bound(self, step: str, awaitable: Awaitable, *, share: float = 1.0,
                    stuck: Callable[[], dict] = dict) -> bool:
        """Await `awaitable` for at most `share` of the time left. False when it was cut (logged
        with what `stuck` tells about it) or failed (logged): the shutdown goes on either way."""
        outer, self.step = self.step, step
        try:
            task = asyncio.ensure_future(awaitable)
            seconds = self.remaining() * share
            try:
                done, _ = await asyncio.wait([task], timeout=seconds)
            except asyncio.CancelledError:  # the step this one is within was cut
                task.cancel()
                raise
            if not done:
                # A step within this one may be what hangs: it is named too.
                within = {"within": self.step} if self.step != step else {}
                task.cancel()  # not awaited: it may ignore cancellation
                log.warning("shutdown.stuck", step=step, waited=round(seconds, 2), **within, **stuck())
                return False
        finally:
            self.step = outer
        if not task.cancelled() and task.exception() is not None:
            log.error("shutdown.step_failed", step=step, exc_info=task.exception())
            return False
        return True

    async def requests_finished(self) -> None:
        while self.requests:
            await asyncio.sleep(0.02)

    def requests_in_flight(self) -> dict:
        """What a shutdown.stuck line says about the requests still running (routes, never ids)."""
        return {"requests": sorted(f"{r.method} {route(r)}" for r in self.requests.values())}

    def exit_at_the_latest(self) -> None:
        """Whatever holds the process after the deadline and its grace (a task that ignores
        cancellation, a blocked event loop), it ends then, with status 1."""
        def end() -> None:
            log.error("shutdown.stuck", step=self.step, waited=round(self.seconds + EXIT_GRACE_SECONDS, 2),
                      tasks=self.tasks_left, action="exiting now")
            os._exit(1)

        self._exit_timer = threading.Timer(self.remaining() + EXIT_GRACE_SECONDS, end)
        self._exit_timer.daemon = True
        self._exit_timer.start()

    def exited_in_time(self) -> None:
        """The event loop is closed: what runs at interpreter exit (the embedded database's stop,
        in development) is not cut."""
        if self._exit_timer is not None:
            self._exit_timer.cancel()


def route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
