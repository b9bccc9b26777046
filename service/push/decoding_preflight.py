"""Whether a server can feed the wal change source, asked before serving: every problem found
names the setting to change, so a misconfigured server stops the start with a message an operator
can act on instead of a listener that reconnects forever."""

import psycopg2
import psycopg2.extras

from ..db import pg_async
from . import synchronous_standby_names
from .wal_listener import APPLICATION_NAME, PUBLICATION

# What a failed replication connection says (PostgreSQL 13 to 18), and what to change.
CONNECTION_PROBLEMS = {
    "permission denied to start WAL sender":
        "the role needs the REPLICATION attribute (ALTER ROLE ... REPLICATION)",
    "must be superuser or replication role":
        "the role needs the REPLICATION attribute (ALTER ROLE ... REPLICATION)",
    "number of requested standby connections exceeds":
        "max_wal_senders: every wal sender is in use (raise it; one per service process is needed)",
}


class DecodingUnavailable(Exception):
    """The server cannot feed the wal change source; the message names what to change."""


async def check_decoding(dsn: str, *, timeout: float) -> None:
    """Raises DecodingUnavailable naming every setting in the way; connection failures that are
    not about settings (the server is down) are raised as they are."""
    try:
        conn = await pg_async.connect(dsn, timeout=timeout,
                                      connection_factory=psycopg2.extras.LogicalReplicationConnection)
    except psycopg2.OperationalError as exc:
        for said, problem in CONNECTION_PROBLEMS.items():
            if said in str(exc):
                raise DecodingUnavailable(problem) from exc
        raise
    try:
        # A replication connection to a database runs SQL too.
        rows = await pg_async.execute(conn, """
            SELECT current_setting('wal_level'), pg_is_in_recovery(),
                   current_setting('server_version_num')::int,
                   current_setting('hot_standby_feedback')::bool,
                   current_setting('max_replication_slots')::int,
                   (SELECT count(*) FROM pg_replication_slots),
                   EXISTS (SELECT FROM pg_publication WHERE pubname = %s),
                   current_setting('synchronous_standby_names')""", (PUBLICATION,), timeout=timeout)
    finally:
        conn.close()
    (wal_level, standby, version, feedback, max_slots, slots, published, synchronous), = rows
    problems = []
    if version < 140000:
        problems.append("PostgreSQL 14 or later (pgoutput passes logical decoding messages from 14 on)")
    elif standby and version < 160000:
        problems.append("PostgreSQL 16 or later to decode on a standby "
                        "(or point push_database_url at the primary)")
    if wal_level != "logical":
        problems.append(f"wal_level = logical (it is {wal_level}; changing it needs a restart)")
    if standby and not feedback:
        problems.append("hot_standby_feedback = on on the standby (without it the primary removes "
                        "catalog rows the standby's slot still needs, and the slot is invalidated)")
    if slots >= max_slots:
        problems.append(f"max_replication_slots: all {max_slots} are in use "
                        "(one per service process is needed)")
    if synchronous_refusal := synchronous_standby_names.refusal(standby, synchronous, APPLICATION_NAME):
        problems.append(synchronous_refusal)
    if not published:
        problems.append(f"the publication {PUBLICATION} is missing (`aiagent-live migrate` creates it)")
    if problems:
        raise DecodingUnavailable("; ".join(problems))
