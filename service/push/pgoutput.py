"""The pgoutput messages the WAL listener reads: a logical-decoding message, and a commit.

Formats from PostgreSQL's logical replication protocol ("Logical Replication Message Formats"),
the same in protocol versions 1 to 4 while streaming is off: only then does a message carry no
transaction id, and the listener never asks for streaming.
"""

import struct
from typing import NamedTuple

BEGIN = ord("B")
COMMIT = ord("C")
MESSAGE = ord("M")

TRANSACTIONAL = 1  # the one flag a message carries: it was emitted with transactional = true
POSTGRES_EPOCH = 946_684_800  # 2000-01-01 in Unix seconds: protocol timestamps count from it

# 'M', flags (uint8), the message's LSN (int64), then the prefix as a C string.
_MESSAGE_HEAD = struct.Struct("!xBq")
# 'C', flags (uint8), the commit's LSN, the end of the commit record, the commit time (int64 us).
_COMMIT = struct.Struct("!xBqqq")


class Message(NamedTuple):
    transactional: bool
    prefix: bytes
    content: bytes


class Commit(NamedTuple):
    end_lsn: int  # where the next transaction starts: the position to confirm once handled
    commit_time: float  # Unix seconds, by the primary's clock


def read_message(payload: bytes) -> Message:
    flags, _lsn = _MESSAGE_HEAD.unpack_from(payload)
    prefix_end = payload.index(0, _MESSAGE_HEAD.size)
    prefix = payload[_MESSAGE_HEAD.size:prefix_end]
    # After the prefix and its terminating zero: the content's int32 length, then the content (the rest).
    return Message(bool(flags & TRANSACTIONAL), prefix, payload[prefix_end + 1 + 4:])


def read_commit(payload: bytes) -> Commit:
    _flags, _commit_lsn, end_lsn, commit_time = _COMMIT.unpack_from(payload)
    return Commit(end_lsn, POSTGRES_EPOCH + commit_time / 1e6)
