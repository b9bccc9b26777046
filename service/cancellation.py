"""Stopping tasks whose awaits may drop a cancellation."""

import asyncio
from collections.abc import Iterable


async def cancel_and_wait(tasks: Iterable[asyncio.Task], *,
                          timeout: float | None = None) -> set[asyncio.Task]:
    """Cancel the tasks and wait for them to end; returns those still running after `timeout` s.

    Every task is cancelled at least once, and again every half second until it ends: aiopg awaits
    each statement through asyncio.wait_for, which before Python 3.12 drops a cancellation that
    arrives just as the statement completes (CPython gh-86296); the task then goes on to its next
    step as if nothing had happened."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        left = 0.5 if deadline is None else min(0.5, deadline - loop.time())
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=left)
    return pending
