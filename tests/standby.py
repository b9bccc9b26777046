"""A test's streaming hot standby (service/dev/streaming_standby.py), for the length of a block."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from service.dev.streaming_standby import StreamingStandby

from .servers import free_port


@contextlib.contextmanager
def streaming_standby(primary_url: str, data_dir: Path) -> Iterator[StreamingStandby]:
    """Built from the primary as it is now (prepare what the copy needs first), and started."""
    standby = StreamingStandby(primary_url, data_dir, free_port())
    try:
        standby.build()
        standby.start()
        yield standby
    finally:
        standby.cleanup()
