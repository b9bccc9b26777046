"""New subscribers that arrive together are read together: one statement for many sockets, and
each socket still gets exactly its own snapshot or its own events since, nobody else's."""

import asyncio
import uuid

import pytest
from aiohttp import WSMsgType

from service.push.read_batcher import ReadBatcher

from .helpers import scrape, value

pytestmark = pytest.mark.both_change_sources

# -- the batcher on its own ------------------------------------------------------------------

class Reads:
    """A read_many that records each batch and answers when told to."""

    def __init__(self, fail_first: Exception | None = None):
        self.batches: list[list] = []
        self.release = asyncio.Event()
        self.fail_first = fail_first  # raised by the first read only

    async def __call__(self, requests: list) -> list:
        self.batches.append(list(requests))
        await self.release.wait()
        if self.fail_first is not None and len(self.batches) == 1:
            raise self.fail_first
        return [f"result of {r}" for r in requests]


async def test_reads_made_together_go_in_one_batch_and_later_ones_in_the_next():
    reads = Reads()
    batcher = ReadBatcher(reads, max_batch=100)
    first = [asyncio.create_task(batcher.read(i)) for i in range(3)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert reads.batches == [[0, 1, 2]]
    later = [asyncio.create_task(batcher.read(i)) for i in range(3, 5)]
    await asyncio.sleep(0)
    reads.release.set()
    assert await asyncio.gather(*first, *later) == [f"result of {i}" for i in range(5)]
    assert reads.batches == [[0, 1, 2], [3, 4]]


async def test_batches_are_capped():
    reads = Reads()
    reads.release.set()
    batcher = ReadBatcher(reads, max_batch=2)
    assert await asyncio.gather(*(batcher.read(i) for i in range(5))) == [f"result of {i}" for i in range(5)]
    assert reads.batches == [[0, 1], [2, 3], [4]]


async def test_equal_requests_in_a_batch_are_read_once_and_share_the_result():
    reads = Reads()
    reads.release.set()
    batcher = ReadBatcher(reads, max_batch=100)
    results = await asyncio.gather(*(batcher.read(r) for r in ["a", "b", "a", "a"]))
    assert results == ["result of a", "result of b", "result of a", "result of a"]
    assert reads.batches == [["a", "b"]]


async def test_a_failed_read_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs():
    reads = Reads(fail_first=ConnectionError("database went away"))
    batcher = ReadBatcher(reads, max_batch=100)
    doomed = [asyncio.create_task(batcher.read(i)) for i in range(2)]
    while not reads.batches:  # the first read is under way
        await asyncio.sleep(0)
    fine = asyncio.create_task(batcher.read(9))
    reads.release.set()
    for task in doomed:
        with pytest.raises(ConnectionError):
            await task
    assert await fine == "result of 9"
    assert reads.batches == [[0, 1], [9]]


async def test_a_caller_that_gives_up_leaves_the_others_their_results():
    reads = Reads()
    batcher = ReadBatcher(reads, max_batch=100)
    gone, kept = asyncio.create_task(batcher.read("gone")), asyncio.create_task(batcher.read("kept"))
    await asyncio.sleep(0)
    gone.cancel()
    reads.release.set()
    assert await kept == "result of kept"
    assert gone.cancelled()


@pytest.mark.parametrize("reading", [False, True], ids=["before the first read", "during a read"])
async def test_close_cancels_whoever_still_waits(reading):
    reads = Reads()
    batcher = ReadBatcher(reads, max_batch=1)
    waiting = [asyncio.create_task(batcher.read(i)) for i in range(2)]
    await asyncio.sleep(0)
    if reading:
        await asyncio.sleep(0)
    assert reads.batches == ([[0]] if reading else [])
    await batcher.close()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(d, asyncio.CancelledError) for d in done)


# -- through the service ---------------------------------------------------------------------

async def messages_until_quiet(ws, quiet: float = 0.5) -> tuple[list[dict], int | None]:
    """Every message until none came for `quiet` seconds or the socket closed; and its close code."""
    received = []
    while True:
        try:
            msg = await ws.receive(timeout=quiet)
        except asyncio.TimeoutError:
            return received, None
        if msg.type != WSMsgType.TEXT:
            return received, ws.close_code
        received.append(msg.json())


async def test_sockets_connecting_together_each_get_exactly_their_own_view(client, user, worker, other_user):
    executions = []
    for i in range(8):
        execution = await user.create_execution()
        base = f"/api/v1/executions/{execution['id']}"
        await worker.request("PATCH", base, json={"status": "running", "message": f"run {i}"})  # seq 2
        await worker.request("POST", f"{base}/logs", json={"message": f"{i}: first"})         # 3
        await worker.request("PATCH", f"{base}/nodes/plan", json={"status": "running"})       # 4
        await worker.request("POST", f"{base}/logs", json={"message": f"{i}: second"})        # 5
        executions.append(execution["id"])
    missing = str(uuid.uuid4())
    before = await scrape(client)

    sockets = {}
    for i, execution_id in enumerate(executions):
        sockets[("snapshot", i)] = user.ws(execution_id)
        sockets[("since 3", i)] = user.ws(execution_id, since="3")
        sockets[("not theirs", i)] = other_user.ws(execution_id)
    sockets[("missing", 0)] = user.ws(missing)
    opened = dict(zip(sockets, await asyncio.gather(*(s.__aenter__() for s in sockets.values()))))
    try:
        results = dict(zip(opened, await asyncio.gather(*(messages_until_quiet(ws) for ws in opened.values()))))
    finally:
        await asyncio.gather(*(ws.close() for ws in opened.values()))

    for (kind, i), (received, close_code) in results.items():
        if kind in ("not theirs", "missing"):
            assert (received, close_code) == ([], 4404), (kind, i)
            continue
        assert close_code is None, (kind, i)
        assert {m["execution_id"] for m in received} == {executions[i]}, "nothing of another execution"
        if kind == "snapshot":
            assert [m["type"] for m in received] == ["status", "node", "node", "log", "log", "synced"]
            assert received[0]["message"] == f"run {i}" and received[0]["seq"] == 2
            assert [m["message"] for m in received[3:5]] == [f"{i}: first", f"{i}: second"]
            assert received[-1]["seq"] == 5
        else:
            assert [(m["type"], m["seq"]) for m in received] == [("node", 4), ("log", 5), ("synced", 5)]
            assert received[1]["message"] == f"{i}: second"

    after = await scrape(client)
    # Every socket above asks something different (execution, since or viewer), so none shares.
    distinct = value(after, "aiagent_catch_up_batch_size_sum") - value(before, "aiagent_catch_up_batch_size_sum")
    reads = value(after, "aiagent_catch_up_batch_size_count") - value(before, "aiagent_catch_up_batch_size_count")
    assert distinct == len(sockets)
    assert reads < distinct, "sockets that connected together were read together"


async def test_sockets_asking_the_same_share_one_read_and_each_gets_all_of_it(client, user, worker):
    execution = await user.create_execution()
    base = f"/api/v1/executions/{execution['id']}"
    await worker.request("PATCH", base, json={"status": "running"})                      # seq 2
    for i in range(20):
        await worker.request("POST", f"{base}/logs", json={"message": f"line {i}"})      # 3..22
    before = await scrape(client)
    sockets = [user.ws(execution["id"], since="2") for _ in range(30)]
    opened = await asyncio.gather(*(s.__aenter__() for s in sockets))
    try:
        results = await asyncio.gather(*(messages_until_quiet(ws) for ws in opened))
    finally:
        await asyncio.gather(*(ws.close() for ws in opened))
    for received, close_code in results:
        assert close_code is None
        expected = [("log", seq) for seq in range(3, 23)] + [("synced", 22)]
        assert [(m["type"], m["seq"]) for m in received] == expected
    after = await scrape(client)
    distinct = value(after, "aiagent_catch_up_batch_size_sum") - value(before, "aiagent_catch_up_batch_size_sum")
    assert distinct < len(sockets), "equal requests made together were read once"
