"""ExpiryTimer: many deadlines (one per socket's token) on one event-loop timer."""

import asyncio
import time

from service.push.expiry_timer import ExpiryTimer


async def test_callbacks_run_at_their_time_in_order_and_cancelled_ones_never():
    timer, ran = ExpiryTimer(), []
    now = time.time()
    timer.call_at(now + 0.6, lambda: ran.append("late"))
    cancelled = timer.call_at(now + 0.1, lambda: ran.append("cancelled"))
    timer.call_at(now + 0.3, lambda: ran.append("middle"))
    timer.call_at(now - 5, lambda: ran.append("past"))  # already due: runs on the next turn
    timer.call_at(now + 0.3, lambda: ran.append("middle, asked second"))
    timer.cancel(cancelled)
    timer.cancel(cancelled)  # twice is harmless
    assert len(timer) == 4
    await asyncio.sleep(0.01)
    assert ran == ["past"]
    await asyncio.sleep(0.8)
    assert ran == ["past", "middle", "middle, asked second", "late"]
    assert len(timer) == 0


async def test_a_failing_callback_does_not_stop_the_others_and_cancel_after_running_is_a_no_op():
    timer, ran = ExpiryTimer(), []
    now = time.time()
    first = timer.call_at(now, lambda: 1 / 0)
    timer.call_at(now, lambda: ran.append("second"))
    await asyncio.sleep(0.05)
    assert ran == ["second"]
    timer.cancel(first)
    assert len(timer) == 0
    timer.call_at(time.time(), lambda: ran.append("third"))
    await asyncio.sleep(0.05)
    assert ran == ["second", "third"]


async def test_cancelled_entries_do_not_pile_up():
    """Sockets that come and go with hour-long tokens: the heap keeps only what is live."""
    timer, ran = ExpiryTimer(), []
    far = time.time() + 3600
    for _ in range(100):
        for entry in [timer.call_at(far, lambda: None) for _ in range(100)]:
            timer.cancel(entry)
    for n in range(3):
        timer.call_at(time.time() + 0.05, lambda n=n: ran.append(n))
    assert len(timer) == 3 and len(timer._heap) < 300
    await asyncio.sleep(0.2)
    assert ran == [0, 1, 2]
