"""The HTTP API: REST handlers, schemas at the edge, middlewares, CORS, OpenAPI, health, dashboard."""
