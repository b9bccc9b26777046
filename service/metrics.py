"""Prometheus metrics: one registry per app (several apps in one process never clash), /metrics."""

import asyncio
import collections

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from .push.wal_listener import WalListener
from .typedefs import hub_key, listener_key, metrics_key

# The messages about executions, exported (replies, pings and pongs are counted too, not exported).
MESSAGE_TYPES = ("status", "node", "log", "synced")
# Commit-to-send latency buckets: push is meant to take milliseconds; the tail shows reconciles.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A reconnect storm shows as large batches; a quiet service reads one subscriber at a time.
CATCH_UP_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500)


class Metrics:
    """Every metric the service exports, registered in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "aiagent_http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=self.registry)
        self.open_sockets = Gauge(
            "aiagent_open_sockets", "WebSocket connections currently open.", registry=self.registry)
        self.open_event_streams = Gauge(
            "aiagent_open_event_streams", "Server-Sent Events streams currently open.",
            registry=self.registry)
        # The push path (subscription_hub.py, socket_outbox.py) records these five. Every socket's
        # outbox adds to `written` (kind -> messages) as it writes: a plain increment per message
        # on the fan-out's path; exported as aiagent_messages_sent_total.
        self.written: collections.Counter[str] = collections.Counter()
        self.registry.register(WrittenCollector(self.written))
        self.commit_to_send_seconds = Histogram(
            "aiagent_commit_to_send_seconds",
            "Seconds from a change's commit in PostgreSQL to its message leaving on a socket or stream.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.reconcile_corrections = Counter(
            "aiagent_reconcile_corrections",
            "Changes a periodic reconcile found that no notification had announced.", registry=self.registry)
        self.catch_up_batch_size = Histogram(
            "aiagent_catch_up_batch_size", "Distinct first reads of new subscribers (snapshot or events "
            "since) made together, in one statement; subscribers asking the same share one.",
            buckets=CATCH_UP_BUCKETS, registry=self.registry)
        self.slow_client_closes = Counter(
            "aiagent_slow_client_closes", "Sockets closed with 1013 (event streams: dropped) because the "
            "client could not keep up, by reason (queue_full, send_timeout).", ["reason"],
            registry=self.registry)

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition format the scraper asked for (Prometheus text 0.0.4 by default, or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class WrittenCollector:
    """aiagent_messages_sent_total{type}, from the counts the outboxes keep."""

    def __init__(self, written: collections.Counter):
        self._written = written

    def describe(self):
        return [self._family()]

    def collect(self):
        yield self._family()

    def _family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "aiagent_messages_sent", "Messages written to WebSockets and event streams, by message type "
            "(and the few fanned out to a connection already closing).",
            labels=["type"])
        for kind in MESSAGE_TYPES:
            family.add_metric([kind], self._written[kind])
        return family


class AppStateCollector:
    """Read at scrape time from the app's listener and hub, so those need no metrics code."""

    def __init__(self, app: web.Application):
        self._app = app

    def describe(self):
        return []  # nothing to describe before the app has started

    def collect(self):
        listener = self._app.get(listener_key)
        if isinstance(listener, WalListener):
            yield CounterMetricFamily(
                "aiagent_wal_messages_decoded",
                "The triggers' WAL messages the replication connection decoded.",
                value=listener.messages_decoded)
            yield GaugeMetricFamily(
                "aiagent_wal_decoding_lag_bytes",
                "WAL the server has written that the listener has not handed over yet (as of the last "
                "message or keepalive the server sent).", value=listener.lag_bytes)
            yield GaugeMetricFamily(
                "aiagent_wal_decoding_lag_seconds",
                "From the newest handed-over transaction's commit to its handing over to the hub.",
                value=listener.lag_seconds)
        elif listener is not None:
            yield CounterMetricFamily(
                "aiagent_listener_notifications", "Notifications the LISTEN connection received.",
                value=listener.notifications)
        if listener is not None:
            yield CounterMetricFamily(
                "aiagent_listener_gathered_batches", "Batches the listener gathered for "
                "listener_coalesce_seconds: changes came faster than reads.",
                value=listener.gathered_batches)
            yield CounterMetricFamily(
                "aiagent_listener_read_pauses", "Times the listener let what it reads gather for a "
                "millisecond before reading: it came thick (announcements, or for wal keepalives).",
                value=listener.read_pauses)
            yield CounterMetricFamily(
                "aiagent_listener_reconnects", "Times the listener's connection (LISTEN or replication, with "
                "its slot) was lost and reopened.", value=listener.reconnects)
            yield GaugeMetricFamily(
                "aiagent_listener_connected",
                "1 while the listener's connection is up (and decoding, for wal).",
                value=1 if listener.connected else 0)
        hub = self._app.get(hub_key)
        if hub is not None:
            yield GaugeMetricFamily(
                "aiagent_subscriptions", "Execution subscriptions held by open sockets.",
                value=hub.subscription_count)


def setup_metrics(app: web.Application) -> Metrics:
    metrics = Metrics()
    metrics.registry.register(AppStateCollector(app))
    app[metrics_key] = metrics
    return metrics


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics, Prometheus text format; open like /healthz (bind it to an internal interface)."""
    body, content_type = request.app[metrics_key].render(request.headers.get(hdrs.ACCEPT, ""))
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


def route_label(request: web.Request) -> str:
    """The route template, never the raw path (ids would make one series per execution)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def count_request(request: web.Request, status: int) -> None:
    request.app[metrics_key].http_requests.labels(route_label(request), request.method, str(status)).inc()


@web.middleware
async def http_metrics(request: web.Request, handler):
    """Count every request by route and final status (sockets count at their handshake)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # client gone, or the server shutting down
        raise
    finally:
        count_request(request, status)
