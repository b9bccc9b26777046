"""Concurrent reads joined into one statement: a thousand sockets reconnecting at once cost a few
queries, not a thousand round trips through the pool."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Request = TypeVar("Request")  # hashable: equal requests are read once
Result = TypeVar("Result")


class ReadBatcher(Generic[Request, Result]):
    """`read(request)` waits for the result of `read_many([..., request, ...])`.

    No timer: the first request starts a read on the next turn of the event loop, taking every
    request made meanwhile; requests made while a read runs go together in the next one. So a
    lone request waits for nothing, and a burst is read in as many statements as it takes the
    database to answer them (each for at most `max_batch` callers). Equal requests in one batch
    are read once and share the result: in a reconnect storm, the sockets of one execution that
    were all up to date ask for the same thing.
    """

    def __init__(self, read_many: Callable[[list[Request]], Awaitable[list[Result]]], *, max_batch: int):
        self._read_many = read_many
        self._max_batch = max_batch
        self._waiting: list[tuple[Request, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def read(self, request: Request) -> Result:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._task is None:
            self._task = asyncio.create_task(self._read_waiting())
        return await future

    async def _read_waiting(self) -> None:
        batch: list[tuple[Request, asyncio.Future]] = []
        try:
            while self._waiting:
                batch = [(r, f) for r, f in self._waiting[:self._max_batch] if not f.done()]  # not given up
                del self._waiting[:self._max_batch]
                if not batch:
                    continue
                distinct = list(dict.fromkeys(request for request, _ in batch))
                try:
                    results = dict(zip(distinct, await self._read_many(distinct), strict=True))
                except Exception as exc:  # every caller in the batch gets the failure
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for request, future in batch:
                        if not future.done():
                            future.set_result(results[request])
                batch = []
        finally:
            self._task = None
            # Cancelled (the service is stopping): nobody is left waiting for a read that will not come.
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()

    async def close(self) -> None:
        """Stop: the read under way and every request still waiting are cancelled; returns once
        that read has ended (its connection can then be closed: it is no longer waited on)."""
        task = self._task
        if task is not None:
            task.cancel()  # its own cleanup cancels the batch it was reading
        for _, future in self._waiting:
            future.cancel()  # a task cancelled before it first ran never gets to its cleanup
        self._waiting.clear()
        if task is not None:
            await asyncio.wait([task], timeout=5)
