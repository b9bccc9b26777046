"""The shutdown's one deadline: steps cut on time and named, whatever they ignore."""

import asyncio
import json
import subprocess
import sys
import time

from structlog.testing import capture_logs

from service.shutdown import EXIT_GRACE_SECONDS, Shutdown


async def ignores_cancellation(seconds: float) -> None:
    """A step that swallows every cancellation (as an await that drops one would)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await asyncio.sleep(end - time.monotonic())
        except asyncio.CancelledError:
            pass


async def test_a_step_that_ignores_cancellation_is_cut_at_its_share_and_named():
    shutdown = Shutdown(1.0)
    started = time.monotonic()
    with capture_logs() as logs:
        assert not await shutdown.bound("stubborn", ignores_cancellation(1.5), share=0.5,
                                        stuck=lambda: {"what": "a test step"})
    assert 0.45 < time.monotonic() - started < 0.7
    assert logs == [{"event": "shutdown.stuck", "log_level": "warning", "step": "stubborn", "waited": 0.5,
                     "what": "a test step"}]
    # What is left is shared by the next steps, and once spent they are cut at once.
    assert await shutdown.bound("quick", asyncio.sleep(0))
    assert not await shutdown.bound("late", ignores_cancellation(1.5))
    assert time.monotonic() - started < 1.2
    assert not await shutdown.bound("after the deadline", ignores_cancellation(1.5))
    assert time.monotonic() - started < 1.2


async def test_a_step_cut_names_the_step_within_it_that_hangs():
    shutdown = Shutdown(0.3)

    async def cleanup():
        await shutdown.bound("inner", ignores_cancellation(1.5), share=2)  # would outlast its outer step

    with capture_logs() as logs:
        assert not await shutdown.bound("cleanup", cleanup())
    assert logs[0]["step"] == "cleanup" and logs[0]["within"] == "inner"


async def test_a_failing_step_is_logged_and_the_shutdown_goes_on():
    async def fails():
        raise RuntimeError("boom")

    with capture_logs() as logs:
        assert not await Shutdown(1).bound("failing", fails())
    assert logs[0]["event"] == "shutdown.step_failed" and logs[0]["step"] == "failing"


BLOCKED_LOOP = """
import asyncio, time
from service.logging_config import configure_logging
from service.shutdown import Shutdown

async def main():
    shutdown = Shutdown(0.5)
    shutdown.step = "a step that blocks the event loop"
    shutdown.exit_at_the_latest()
    time.sleep(30)  # nothing in the loop can cut this

configure_logging("info", "json")
asyncio.run(main())
"""


def test_the_process_ends_at_the_deadline_and_its_grace_even_with_its_event_loop_blocked():
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", BLOCKED_LOOP], capture_output=True, text=True, timeout=30)
    took = time.monotonic() - started
    assert result.returncode == 1, result
    assert 0.5 + EXIT_GRACE_SECONDS <= took < 0.5 + EXIT_GRACE_SECONDS + 1.5, took
    [line] = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert (line["event"], line["level"]) == ("shutdown.stuck", "error")
    assert line["step"] == "a step that blocks the event loop"
