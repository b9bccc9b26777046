"""The URL table."""

from aiohttp import web

from . import metrics
from .api import cors, dashboard_handlers, health_handlers, openapi, rest_handlers
from .push import sse_handlers, ws_handlers

# The WebSocket routes, by name: the HTTP middlewares leave them be (http_middlewares.not_for_routes).
EXECUTION_SOCKET, MULTIPLEXED_SOCKET = "execution_socket", "multiplexed_socket"
SOCKET_ROUTES = frozenset({EXECUTION_SOCKET, MULTIPLEXED_SOCKET})


def setup_routes(app: web.Application) -> None:
    app.router.add_routes([
        web.get("/healthz", health_handlers.healthz),
        web.get("/readyz", health_handlers.readyz),
        web.get("/metrics", metrics.metrics_handler),
        web.get("/api/v1/openapi.json", openapi.openapi_handler),
        web.get("/api/v1/origin-check", cors.origin_check),
        web.post("/api/v1/workflows", rest_handlers.create_workflow),
        web.get("/api/v1/workflows", rest_handlers.list_workflows),
        web.get("/api/v1/workflows/{id}", rest_handlers.get_workflow),
        web.post("/api/v1/executions", rest_handlers.create_execution),
        web.get("/api/v1/executions", rest_handlers.list_executions),
        # Before /api/v1/executions/{id}, which would take "events" for an id. Event streams have no
        # HEAD: their body is written around aiohttp, which would not leave it out for a HEAD.
        web.get("/api/v1/executions/events", sse_handlers.feed_events, allow_head=False),
        web.get("/api/v1/executions/{id}", rest_handlers.get_execution),
        web.patch("/api/v1/executions/{id}", rest_handlers.patch_execution),
        web.post("/api/v1/executions/{id}/cancel", rest_handlers.cancel_execution),
        web.get("/api/v1/executions/{id}/nodes", rest_handlers.list_nodes),
        web.patch("/api/v1/executions/{id}/nodes/{node_id}", rest_handlers.patch_node),
        web.get("/api/v1/executions/{id}/logs", rest_handlers.list_logs),
        web.get("/api/v1/executions/{id}/events", sse_handlers.execution_events, allow_head=False),
        web.post("/api/v1/executions/{id}/logs", rest_handlers.append_logs),
        web.get("/api/v1/ws/executions/{id}", ws_handlers.execution_socket, name=EXECUTION_SOCKET),
        web.get("/api/v1/ws", ws_handlers.multiplexed_socket, name=MULTIPLEXED_SOCKET),
        # The dashboard and live-client.js: no token to fetch them (the API calls need one).
        web.get("/", dashboard_handlers.index),
        # Its own route (matched before the folder's): the file lives in the client package.
        web.get("/static/live-client.js", dashboard_handlers.live_client),
        web.static("/static", dashboard_handlers.STATIC_DIR),
    ])
