"""Stopping tasks that swallow a cancellation, as a statement awaited through aiopg can (CPython gh-86296):
the demo worker's runs and the service's background tasks must still end."""

import asyncio
import contextlib

from service.cancellation import cancel_and_wait


async def swallows_one_cancellation(swallowed: list):
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        swallowed.append(True)  # as aiopg does when the statement completed in the same loop turn
    await asyncio.sleep(30)  # the next step


async def test_a_task_that_swallowed_a_cancellation_is_cancelled_again_until_it_ends():
    swallowed = []
    task = asyncio.create_task(swallows_one_cancellation(swallowed))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(cancel_and_wait([task]), 5) == set()
    assert swallowed == [True] and task.cancelled()


async def test_a_task_that_does_not_end_is_returned_once_the_timeout_has_passed():
    let_go = asyncio.Event()

    async def deaf():
        while not let_go.is_set():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    assert await asyncio.wait_for(cancel_and_wait([task], timeout=0.3), 5) == {task}
    assert not task.done()
    let_go.set()
    task.cancel()
    await task


async def test_a_timeout_of_zero_still_cancels_every_task_once():
    task = asyncio.create_task(asyncio.sleep(30))
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout=0) == {task}  # not waited for
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert task.cancelled()
