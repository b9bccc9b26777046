"""Typed application state: every key the app stores, in one place."""

import asyncio
from typing import TYPE_CHECKING

import aiopg
from aiohttp import web

from .api.origin_policy import OriginPolicy
from .auth import TokenVerifier
from .config import Config
from .push.expiry_timer import ExpiryTimer
from .push.heartbeat import Heartbeat
from .push.kept_connection import KeptConnection
from .push.open_connections import OpenConnections
from .push.socket_limits import SocketsPerSubject
from .push.subscription_hub import SubscriptionHub
from .shutdown import Shutdown

if TYPE_CHECKING:  # metrics.py imports this module
    from .metrics import Metrics

config_key = web.AppKey("config", Config)
db_pool_key = web.AppKey("db_pool", aiopg.Pool)
# Checks every bearer token: HS256 with jwt_secret, and the identity provider's with its JWKS.
token_verifier_key = web.AppKey("token_verifier", TokenVerifier)
hub_key = web.AppKey("hub", SubscriptionHub)
# Which browser origins may call the API and open sockets (the configured ones; in development
# mode, loopback ones too).
origin_policy_key = web.AppKey("origin_policy", OriginPolicy)
listener_key = web.AppKey("listener", KeptConnection)
# The listener's run() task: done means it crashed, and the systemd watchdog stops pinging.
listener_task_key = web.AppKey("listener_task", asyncio.Task)
metrics_key: web.AppKey["Metrics"] = web.AppKey("metrics")
socket_counts_key = web.AppKey("socket_counts", SocketsPerSubject)
# Every open socket and event stream: pinged by the heartbeat, told to go away at shutdown.
open_connections_key = web.AppKey("open_connections", OpenConnections)
heartbeat_key = web.AppKey("heartbeat", Heartbeat)
# When each socket's token expires, on one timer for all of them.
token_expiries_key = web.AppKey("token_expiries", ExpiryTimer)
# The shutdown's one deadline, shared by every step, and the HTTP requests in flight.
shutdown_key = web.AppKey("shutdown", Shutdown)
