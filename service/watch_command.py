"""`python -m service watch ID`: one execution's messages as they arrive, one JSON line each on
stdout; what happens to the connection, one line each on stderr.

Ends with status 0 once the execution has finished (close 1000); 1 with a one-line reason when
the server cannot be reached, or refuses the token (4401) or the execution (4404). On 1001
(server going away), 1013 (try again later) or a lost connection it reconnects with
`since` = the last seq it printed, until the server is back: a restarted server misses nothing
and repeats nothing. Ctrl-C ends it quietly (status 130, in __main__)."""

import asyncio
import json
import os
import sys
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType

RECONNECT_AFTER = {1001: "server going away", 1013: "try again later", 1006: "connection lost"}
FIRST_DELAY_SECONDS, LONGEST_DELAY_SECONDS = 0.5, 5.0


class WatchFailed(Exception):
    """Why watching stopped: one line for the person who started it."""


async def watch(base_url: str, execution_id: str, since: int | None, make_token: Callable[[], str]) -> None:
    """Print the execution's messages until it finishes; WatchFailed when that cannot happen."""
    url = f"{base_url}/api/v1/ws/executions/{execution_id}"
    cursor = since
    delay = FIRST_DELAY_SECONDS
    reconnecting = False
    async with aiohttp.ClientSession() as session:
        while True:
            params = {} if cursor is None else {"since": str(cursor)}
            # A token of its own for each connection, so a long watch never runs on an expired one.
            headers = {"Authorization": f"Bearer {make_token()}"}
            try:
                ws = await session.ws_connect(url, params=params, headers=headers, heartbeat=None)
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 404:
                    raise WatchFailed(f"no execution {execution_id} on {base_url}") from None
                raise WatchFailed(f"{base_url} refused the socket: HTTP {exc.status} {exc.message}") \
                    from None
            except aiohttp.ClientConnectionError as exc:
                if not reconnecting:
                    raise WatchFailed(f"cannot connect to {base_url} ({connection_problem(exc)}): "
                                      f"is the server running?") from None
                # The server is restarting: wait for it, as the browser client does.
                await asyncio.sleep(delay)
                delay = min(delay * 2, LONGEST_DELAY_SECONDS)
                continue
            delay = FIRST_DELAY_SECONDS
            async with ws:
                cursor, code, reason = await print_messages(ws, cursor)
            if code == 1000:
                print("finished (1000)", file=sys.stderr, flush=True)
                return
            if code == 4401:
                why = reason or "no reason given"
                raise WatchFailed(f"closed 4401: the server refused the token ({why}): watch signs its "
                                  f"own with JWT_SECRET (in development var/jwt_secret), which must be the "
                                  f"server's")
            if code == 4404:
                raise WatchFailed(f"closed 4404: no execution {execution_id} on {base_url}")
            if code not in RECONNECT_AFTER:
                raise WatchFailed(f"closed {code}: {reason or 'no reason given'}")
            resume = "from the start" if cursor is None else f"since={cursor}"
            print(f"closed {code} ({RECONNECT_AFTER[code]}): reconnecting, {resume}",
                  file=sys.stderr, flush=True)
            reconnecting = True


async def print_messages(ws: aiohttp.ClientWebSocketResponse,
                         cursor: int | None) -> tuple[int | None, int, str]:
    """Print every message until the socket closes; the cursor to resume from, the close code and reason.

    A snapshot is a view (nodes untouched since creation carry an older seq than the status), so
    the cursor moves only once the server says the snapshot or catch-up is complete (`synced`,
    which carries the seq it brings the client to): a reconnect before it resumes from where this
    connection started.
    """
    synced = False
    highest = cursor
    while True:
        msg = await ws.receive()
        if msg.type != WSMsgType.TEXT:
            reason = msg.extra if msg.type == WSMsgType.CLOSE and isinstance(msg.extra, str) else ""
            return (highest if synced else cursor), ws.close_code or 1006, reason
        message = json.loads(msg.data)
        print(msg.data, flush=True)
        if message.get("type") == "synced":
            synced = True
        seq = message.get("seq")
        if isinstance(seq, int) and (highest is None or seq > highest):
            highest = seq


def connection_problem(exc: aiohttp.ClientConnectionError) -> str:
    """"connection refused", not asyncio's "Connect call failed ('127.0.0.1', 8037)"."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    return str(exc) or type(exc).__name__
