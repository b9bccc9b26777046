"""The REST API as OpenAPI 3, generated from the marshmallow schemas in schemas.py: /api/v1/openapi.json.

OPERATIONS is the documentation's route table; tests/test_openapi.py fails when a route in
routes.py has no entry here, so the document cannot fall behind the API.
"""

import dataclasses
import functools

import marshmallow
from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import fields

from . import schemas

OPENAPI_VERSION = "3.0.3"
SECURITY_SCHEME = "bearerAuth"
# Event streams also take the token as ?access_token=: EventSource cannot set a header.
QUERY_TOKEN_SCHEME = "accessTokenQuery"


class ErrorDetail(marshmallow.Schema):
    code = fields.String(required=True, metadata={"example": "validation_failed"})
    message = fields.String(required=True)
    details = fields.Dict(required=True, metadata={
        "description": "validation_failed: `fields` maps each field to its messages"})


class Error(marshmallow.Schema):
    """The one shape of every error answer."""

    error = fields.Nested(ErrorDetail, required=True)


class WorkflowPage(marshmallow.Schema):
    items = fields.List(fields.Nested(schemas.WorkflowOut), required=True)
    next_cursor = fields.String(required=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next page; null on the last page"})


class ExecutionPage(marshmallow.Schema):
    items = fields.List(fields.Nested(schemas.ExecutionOut), required=True)
    next_cursor = fields.String(required=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next page; null on the last page"})


class NodeList(marshmallow.Schema):
    items = fields.List(fields.Nested(schemas.NodeOut), required=True)


class LogList(marshmallow.Schema):
    items = fields.List(fields.Nested(schemas.LogOut), required=True)


class LogPage(LogList):
    next_after_seq = fields.Integer(required=True, allow_none=True, metadata={
        "description": "pass as `after_seq` for the next page; null on the last page"})


class Health(marshmallow.Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.Boolean())


class OriginCheck(marshmallow.Schema):
    origin = fields.String(required=True, allow_none=True, metadata={
        "description": "the request's Origin header; null without one (not a browser's cross-origin call)"})
    allowed = fields.Boolean(required=True)
    message = fields.String(required=True, metadata={
        "description": "for people: when refused, what to change"})
    setting = fields.String(metadata={
        "description": "when refused: the configuration key that allows it", "example": "allowed_origins"})
    environment_variable = fields.String(metadata={
        "description": "when refused: the same, as an environment variable", "example": "ALLOWED_ORIGINS"})


ERROR_MEANINGS = {
    400: "the body is not valid JSON",
    401: "missing, invalid or expired bearer token",
    403: "not allowed for this role",
    404: "no such resource, or not yours (the two look the same)",
    409: "an illegal change, e.g. a status transition or a write to a finished execution (nothing changed)",
    406: "the Accept header does not take text/event-stream (send Accept: text/event-stream)",
    413: "the body is larger than max_body_bytes",
    422: "validation failed; details.fields has the messages per field",
    429: "too many sockets and event streams open for this token (ws_max_sockets_per_subject per process)",
    505: "an event stream needs HTTP/1.1 (its body is chunked)",
}

# What an event stream's 200 is, in words: OpenAPI 3.0 has no schema for a stream of events.
EVENT_STREAM_BODY = (
    "Server-Sent Events, one JSON message per `data:` line: the WebSocket's messages (`status`, `node`, "
    "`log`, `synced`, `error`; on the feed `subscribed` then `status`). `id:` is the event's `seq` where "
    "it is a resume cursor (live and caught-up events, `synced`; not a snapshot's, which is a view in "
    "workflow order); a `retry:` hint first; a `: ping` comment every ws_heartbeat_seconds. See the README.")
LAST_EVENT_ID = {
    "in": "header", "name": "Last-Event-ID", "required": False,
    "description": "the id of the last event received (EventSource sends it when it reconnects); wins over "
                   "`since`",
    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    ok: int = 200
    response: type[marshmallow.Schema] | None = None
    # A tuple: the body may be any one of these (oneOf).
    body: type[marshmallow.Schema] | tuple[type[marshmallow.Schema], ...] | None = None
    query: type[marshmallow.Schema] | None = None
    errors: tuple[int, ...] = (401,)
    authenticated: bool = True
    content_type: str = "application/json"
    tag: str = "executions"
    ok_description: str | None = None
    # Other answers that are not errors, by status: what each means.
    also: tuple[tuple[int, str], ...] = ()
    headers: tuple[dict, ...] = ()  # header parameters
    query_token: bool = False  # the token may come as ?access_token= instead


OPERATIONS = (
    Operation("post", "/api/v1/workflows", "createWorkflow", "Create a workflow (its nodes are fixed)",
              201, schemas.WorkflowOut, body=schemas.WorkflowCreate, errors=(400, 401, 413, 422),
              tag="workflows"),
    Operation("get", "/api/v1/workflows", "listWorkflows", "List workflows you can see, newest first",
              response=WorkflowPage, query=schemas.ListQuery, errors=(401, 422), tag="workflows"),
    Operation("get", "/api/v1/workflows/{id}", "getWorkflow", "Read one workflow",
              response=schemas.WorkflowOut, errors=(401, 404), tag="workflows"),
    Operation("post", "/api/v1/executions", "createExecution", "Start an execution of a workflow (pending)",
              201, schemas.ExecutionOut, body=schemas.ExecutionCreate, errors=(400, 401, 413, 422)),
    Operation("get", "/api/v1/executions", "listExecutions", "List executions you can see, newest first",
              response=ExecutionPage, query=schemas.ExecutionListQuery, errors=(401, 422)),
    Operation("get", "/api/v1/executions/{id}", "getExecution", "Read one execution",
              response=schemas.ExecutionOut, errors=(401, 404)),
    Operation("patch", "/api/v1/executions/{id}", "patchExecution",
              "Report progress (workers and admins): status, progress, message, result, error",
              response=schemas.ExecutionOut, body=schemas.ExecutionPatch,
              errors=(400, 401, 403, 404, 409, 413, 422)),
    Operation("post", "/api/v1/executions/{id}/cancel", "cancelExecution",
              "Cancel a pending or running execution (its owner, a worker or an admin)",
              response=schemas.ExecutionOut, errors=(401, 404, 409)),
    Operation("get", "/api/v1/executions/{id}/nodes", "listNodes", "The execution's nodes, in workflow order",
              response=NodeList, errors=(401, 404), tag="nodes"),
    Operation("patch", "/api/v1/executions/{id}/nodes/{node_id}", "patchNode",
              "Report a node's status, output or error (workers and admins)",
              response=schemas.NodeOut, body=schemas.NodePatch, errors=(400, 401, 403, 404, 409, 413, 422),
              tag="nodes"),
    Operation("get", "/api/v1/executions/{id}/logs", "listLogs", "The execution's log, oldest first, by seq",
              response=LogPage, query=schemas.LogQuery, errors=(401, 404, 422), tag="logs"),
    Operation("post", "/api/v1/executions/{id}/logs", "appendLogs",
              "Append one log line, or a batch as {\"lines\": [...]}, all or none (workers and admins)",
              201, LogList, body=(schemas.LogLine, schemas.LogBatch),
              errors=(400, 401, 403, 404, 409, 413, 422),
              tag="logs"),
    Operation("get", "/api/v1/executions/{id}/events", "streamExecutionEvents",
              "Follow one execution as Server-Sent Events: its snapshot (or the events after Last-Event-ID "
              "or `since`), `synced`, then every change; the stream ends after the final status",
              query=schemas.ExecutionEventsQuery, errors=(400, 401, 404, 406, 422, 429, 505),
              content_type="text/event-stream", ok_description=EVENT_STREAM_BODY, headers=(LAST_EVENT_ID,),
              query_token=True,
              also=((204, "the client has every event of this finished execution: nothing more will come "
                          "(EventSource does not reconnect)"),), tag="live"),
    Operation("get", "/api/v1/executions/events", "streamExecutionFeed",
              "Follow the executions feed as Server-Sent Events: `subscribed`, then the status of every "
              "change to an execution you may see that matches the filters",
              query=schemas.FeedEventsQuery, errors=(401, 406, 422, 429, 505),
              content_type="text/event-stream", ok_description=EVENT_STREAM_BODY, query_token=True,
              tag="live"),
    Operation("get", "/healthz", "healthz", "Liveness: the process answers", response=Health,
              errors=(), authenticated=False, tag="operations"),
    Operation("get", "/readyz", "readyz", "Readiness: database reachable and listener connected (else 503)",
              response=Health, errors=(503,), authenticated=False, tag="operations"),
    Operation("get", "/metrics", "metrics", "Prometheus metrics (text exposition format)",
              errors=(), authenticated=False, content_type="text/plain", tag="operations"),
    Operation("get", "/api/v1/openapi.json", "openapi", "This document",
              errors=(), authenticated=False, tag="operations"),
    Operation("get", "/api/v1/origin-check", "originCheck",
              "Whether the asking page's origin may call this API and open sockets (CORS open to every "
              "origin): a browser cannot read why a WebSocket handshake was refused",
              response=OriginCheck, errors=(), authenticated=False, tag="operations"),
)


def _operation(op: Operation) -> dict:
    ok: dict = {"description": op.ok_description or ("OK" if op.ok == 200 else "Created")}
    if op.response is not None:
        ok["content"] = {op.content_type: {"schema": op.response}}
    elif op.content_type != "application/json":
        ok["content"] = {op.content_type: {"schema": {"type": "string"}}}
    else:
        ok["content"] = {op.content_type: {"schema": {"type": "object"}}}
    responses = {str(op.ok): ok}
    for status, meaning in op.also:
        responses[str(status)] = {"description": meaning}
    for status in op.errors:
        if status == 503:
            responses["503"] = {"description": "not ready", "content": {"application/json": {"schema": Health}}}
        else:
            responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    operation: dict = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                       "responses": responses}
    operation["security"] = [{SECURITY_SCHEME: []}] if op.authenticated else []
    if op.query_token:
        operation["security"].append({QUERY_TOKEN_SCHEME: []})
    parameters = []
    if "{id}" in op.path:
        parameters.append({"in": "path", "name": "id", "required": True,
                           "schema": {"type": "string", "format": "uuid"}})
    if "{node_id}" in op.path:
        parameters.append({"in": "path", "name": "node_id", "required": True,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 100}})
    if op.query is not None:
        parameters.append({"in": "query", "schema": op.query})
    parameters.extend(op.headers)
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        body = {"oneOf": list(op.body)} if isinstance(op.body, tuple) else op.body
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


@functools.cache
def openapi_document() -> dict:
    """Built once, on first request."""
    spec = APISpec(
        title="aiagent-live",
        version="1",
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": (
            "Workflow executions, live. REST under /api/v1 with bearer JWTs (HS256, or an identity "
            "provider's checked with its JWKS; claims sub, a role, exp). "
            "Live updates come over the WebSocket GET /api/v1/ws/executions/{id}, described in the README, "
            "since OpenAPI 3 cannot describe a WebSocket, or as Server-Sent Events (the `live` "
            "operations).")},
    )
    spec.components.security_scheme(SECURITY_SCHEME, {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    spec.components.security_scheme(QUERY_TOKEN_SCHEME,
                                    {"type": "apiKey", "in": "query", "name": "access_token"})
    spec.components.schema("Error", schema=Error)
    for status, meaning in ERROR_MEANINGS.items():
        spec.components.response(f"Error{status}", {
            "description": meaning, "content": {"application/json": {"schema": "Error"}}})
    paths: dict[str, dict] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    # A query string cannot carry null: "absent" is how a client leaves out a filter.
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                if parameter["in"] == "query" and schema.pop("nullable", False):
                    schema.pop("default", None)
                    if "enum" in schema:
                        schema["enum"] = [value for value in schema["enum"] if value is not None]
    components = document["components"]["schemas"]
    # Responses always carry every field (dump writes them all), so the document says so.
    for name in ("WorkflowOut", "ExecutionOut", "NodeOut", "LogOut"):
        components[name]["required"] = sorted(components[name]["properties"])
    # What a validates_schema hook enforces, said in JSON Schema: a PATCH changes something.
    for name in ("ExecutionPatch", "NodePatch"):
        components[name]["minProperties"] = 1
    return document


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
