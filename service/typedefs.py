"""Typed application state: every key the app stores, in one place."""

import aiopg
from aiohttp import web

from .config import Config
from .pg_listener import PgListener
from .subscription_hub import SubscriptionHub

config_key = web.AppKey("config", Config)
db_pool_key = web.AppKey("db_pool", aiopg.Pool)
hub_key = web.AppKey("hub", SubscriptionHub)
listener_key = web.AppKey("listener", PgListener)
