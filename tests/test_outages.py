"""What the service tells apart as "the database cannot be reached": on the event loop it runs on
in production (uvloop), and asyncio's own that the other tests use."""

import asyncio
import gc

import aiopg
import pytest
import uvloop

from service.db import repository
from service.db.outages import is_database_outage

from .servers import free_port

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


# aiopg leaves a failed attempt's half-made connection to the garbage collector, which warns that
# it was never closed (under uvloop, as the attempt failed inside aiopg's constructor).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("loop", LOOPS)
def test_every_read_while_the_server_refuses_connections_is_an_outage(loop):
    """A server that refuses the connection at once (nothing on its port), asked again and again
    as requests keep coming: each read fails as an outage (a 503), none as anything else."""
    async def reads() -> list[tuple[bool, str]]:
        url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none"
        async with aiopg.create_pool(url, minsize=0, maxsize=2, timeout=2) as pool:
            failures = []
            for _ in range(6):
                try:
                    await repository.ping(pool)
                except Exception as exc:  # what it is, is the test
                    failures.append((is_database_outage(exc), repr(exc)))
            return failures

    failures = LOOPS[loop](reads())
    gc.collect()  # those connections: here, under this test's filter, not in a later test
    assert len(failures) == 6
    assert all(outage for outage, _ in failures), failures
