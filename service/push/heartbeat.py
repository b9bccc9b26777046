"""Protocol pings for every open socket on one timer, and the close of peers that stop answering.

aiohttp's own heartbeat keeps a timer per socket, rescheduled on every frame received, and starts
a task per ping: at 10,000 idle sockets that is 10,000 timers held and 10,000 tasks every period.
Here one loop does a round each period: a socket that has sent nothing since the previous round's
ping (not even the pong) is dropped; every other one is pinged with the same prebuilt frame.
A dead peer is thus found within two periods.
"""

import asyncio

import structlog

from .open_connections import OpenConnections

log = structlog.get_logger(__name__)


class Heartbeat:
    def __init__(self, period: float, connections: OpenConnections):
        self.period = period
        self._connections = connections

    def beat(self) -> None:
        """One round."""
        dropped = 0
        for outbox in self._connections:
            if outbox.unanswered_ping:
                outbox.drop_silent_peer()
                dropped += 1
            else:
                outbox.ping()
        if dropped:
            log.info("ws.silent_peers_dropped", count=dropped)

    async def run(self) -> None:
        if self.period <= 0:
            return  # turned off in the configuration
        while True:
            await asyncio.sleep(self.period)
            self.beat()
