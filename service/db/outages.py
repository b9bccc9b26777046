"""Which errors mean the database cannot be reached right now (try again later), as opposed to a
statement it refused (a bug, or a value the request should not have carried)."""

import psycopg2

# SQLSTATE classes of a server that is away or overloaded: 08 connection exception, 53
# insufficient resources (too many connections), 57 operator intervention (shutting down,
# starting up, statement cancelled), 58 system error.
UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


def is_database_outage(exc: BaseException) -> bool:
    if isinstance(exc, psycopg2.InterfaceError):  # a connection found closed
        return True
    if isinstance(exc, psycopg2.OperationalError):
        # No SQLSTATE: the connection failed or broke before the server could answer.
        return exc.pgcode is None or exc.pgcode[:2] in UNAVAILABLE_CLASSES
    # The database did not answer in time (aiopg's and the push reads' statement timeouts).
    return isinstance(exc, TimeoutError)
