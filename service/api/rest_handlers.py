"""REST handlers under /api/v1: parse and authorise at the edge, then call the repository."""

import json
import uuid

import marshmallow
from aiohttp import web

from ..auth import InvalidToken, Principal, token_from_request
from ..db import repository
from ..typedefs import config_key, db_pool_key, token_verifier_key
from .errors import ApiError, BadRequest, Forbidden, NotFound, Unauthorized, ValidationFailed
from .schemas import (
    ExecutionCreate,
    ExecutionListQuery,
    ExecutionOut,
    ExecutionPatch,
    ListQuery,
    LogBatch,
    LogOut,
    LogQuery,
    NodeOut,
    NodePatch,
    NodeSpec,
    WorkflowCreate,
    WorkflowOut,
)

EXECUTION_OUT = ExecutionOut()
WORKFLOW_OUT = WorkflowOut()
NODE_OUT = NodeOut()
NODE_ID = NodeSpec().fields["id"]
LOG_OUT = LogOut()


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


async def authenticate(request: web.Request) -> Principal:
    try:
        return await request.app[token_verifier_key].verify(token_from_request(request))
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None


async def read_json(request: web.Request):
    """The body as JSON; 400 for anything that is not (413 for too large comes from aiohttp)."""
    body = await request.read()
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("request body is not valid JSON", {"reason": str(exc)[:200]}) from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def load(schema: marshmallow.Schema, data):
    """Validate with marshmallow; 422 with per-field messages on failure."""
    if schema.many is False and not isinstance(data, dict):
        raise ValidationFailed({"_schema": ["expected a JSON object"]})
    try:
        return schema.load(data)
    except marshmallow.ValidationError as exc:
        raise ValidationFailed(exc.normalized_messages()) from None


def path_uuid(request: web.Request, kind: str) -> str:
    """A path id that is not a UUID cannot name anything: 404, as for a missing one."""
    text = request.match_info["id"]
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise NotFound(kind, text) from None


def path_node_id(request: web.Request) -> str:
    """A path node id no node can have (by the rule its workflow's nodes were made under: too long,
    or with NUL, which the database cannot hold): 404, as for a missing one."""
    node_id = request.match_info["node_id"]
    try:
        return NODE_ID.deserialize(node_id)
    except marshmallow.ValidationError:
        raise NotFound("node", node_id) from None


def page(rows: list[dict], limit: int, out: marshmallow.Schema) -> web.Response:
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = repository.Cursor.after_row(rows[-1]).encode() if more else None
    return web.json_response({"items": out.dump(rows, many=True), "next_cursor": next_cursor})


def decode_cursor(text: str | None) -> repository.Cursor | None:
    if text is None:
        return None
    try:
        return repository.Cursor.decode(text)
    except ValueError:
        raise ValidationFailed({"cursor": ["not a cursor returned by this API"]}) from None


# -- workflows -------------------------------------------------------------------------------

async def create_workflow(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    data = load(WorkflowCreate(), await read_json(request))
    row = await repository.create_workflow(request.app[db_pool_key], principal.sub, data["name"], data["nodes"])
    return web.json_response(WORKFLOW_OUT.dump(row), status=201)


async def list_workflows(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    query = load(ListQuery(), dict(request.query))
    rows = await repository.list_workflows(
        request.app[db_pool_key],
        owner=None if principal.sees_everything else principal.sub,
        limit=query["limit"] + 1,
        after=decode_cursor(query["cursor"]),
    )
    return page(rows, query["limit"], WORKFLOW_OUT)


async def get_workflow(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    workflow_id = path_uuid(request, "workflow")
    row = await repository.get_workflow(request.app[db_pool_key], workflow_id)
    if row is None or not principal.may_see(row["owner"]):
        raise NotFound("workflow", workflow_id)
    return web.json_response(WORKFLOW_OUT.dump(row))


# -- executions ------------------------------------------------------------------------------

async def create_execution(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    data = load(ExecutionCreate(), await read_json(request))
    pool = request.app[db_pool_key]
    workflow_id = str(data["workflow_id"])
    workflow = await repository.get_workflow(pool, workflow_id)
    if workflow is None or not principal.may_see(workflow["owner"]):
        raise ValidationFailed({"workflow_id": ["no such workflow"]})
    row = await repository.create_execution(pool, workflow_id, principal.sub, data["input_data"])
    return web.json_response(EXECUTION_OUT.dump(row), status=201)


async def get_execution(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    execution_id = path_uuid(request, "execution")
    row = await repository.get_execution(request.app[db_pool_key], execution_id)
    if row is None or not principal.may_see(row["owner"]):
        raise NotFound("execution", execution_id)
    return web.json_response(EXECUTION_OUT.dump(row))


async def list_executions(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    query = load(ExecutionListQuery(), dict(request.query))
    rows = await repository.list_executions(
        request.app[db_pool_key],
        owner=None if principal.sees_everything else principal.sub,
        status=query["status"],
        workflow_id=str(query["workflow_id"]) if query["workflow_id"] else None,
        limit=query["limit"] + 1,
        after=decode_cursor(query["cursor"]),
    )
    return page(rows, query["limit"], EXECUTION_OUT)


async def visible_execution(request: web.Request, principal: Principal) -> dict:
    """The execution named in the path, if this caller may see it; 404 otherwise."""
    execution_id = path_uuid(request, "execution")
    row = await repository.get_execution(request.app[db_pool_key], execution_id)
    if row is None or not principal.may_see(row["owner"]):
        raise NotFound("execution", execution_id)
    return row


async def reporting_worker(request: web.Request) -> tuple[Principal, dict]:
    """A worker or admin, and the execution it reports on. A user learns no more than a missing
    execution would tell it, then 403."""
    principal = await authenticate(request)
    execution = await visible_execution(request, principal)
    if not principal.sees_everything:
        raise Forbidden("only workers and admins report progress")
    return principal, execution


async def patch_execution(request: web.Request) -> web.Response:
    _, execution = await reporting_worker(request)
    execution_id = execution["id"]
    pool = request.app[db_pool_key]
    changes = load(ExecutionPatch(), await read_json(request))
    row = await repository.update_execution(pool, execution_id, changes)
    if row is None:
        raise NotFound("execution", execution_id)
    return web.json_response(EXECUTION_OUT.dump(row))


async def cancel_execution(request: web.Request) -> web.Response:
    """The owner, a worker or an admin cancels a pending or running execution (409 if finished)."""
    principal = await authenticate(request)
    execution = await visible_execution(request, principal)
    row = await repository.cancel_execution(request.app[db_pool_key], execution["id"])
    return web.json_response(EXECUTION_OUT.dump(row))


# -- nodes -----------------------------------------------------------------------------------

async def list_nodes(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    execution = await visible_execution(request, principal)
    rows = await repository.list_nodes(request.app[db_pool_key], execution["id"])
    return web.json_response({"items": NODE_OUT.dump(rows, many=True)})


async def patch_node(request: web.Request) -> web.Response:
    _, execution = await reporting_worker(request)
    node_id = path_node_id(request)
    changes = load(NodePatch(), await read_json(request))
    row = await repository.update_node(request.app[db_pool_key], execution["id"], node_id, changes)
    if row is None:
        raise NotFound("node", node_id)
    return web.json_response(NODE_OUT.dump(row))


# -- logs ------------------------------------------------------------------------------------

async def append_logs(request: web.Request) -> web.Response:
    """One line ({"message", "level"?, "node_id"?}) or a batch ({"lines": [...]}), all or none."""
    _, execution = await reporting_worker(request)
    body = await read_json(request)
    if isinstance(body, dict) and "lines" not in body:
        body = {"lines": [body]}
    limit = request.app[config_key].max_log_batch
    if isinstance(body, dict) and isinstance(body.get("lines"), list) and len(body["lines"]) > limit:
        raise PayloadTooLarge(f"at most {limit} log lines per request", {"limit": limit})
    lines = load(LogBatch(), body)["lines"]
    try:
        rows = await repository.append_logs(request.app[db_pool_key], execution["id"], lines)
    except repository.MissingReference:
        raise NotFound("node", ", ".join(sorted({line["node_id"] or "" for line in lines}))) from None
    return web.json_response({"items": LOG_OUT.dump(rows, many=True)}, status=201)


async def list_logs(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    execution = await visible_execution(request, principal)
    query = load(LogQuery(), dict(request.query))
    rows = await repository.list_logs(
        request.app[db_pool_key], execution["id"], query["after_seq"], query["limit"] + 1)
    more = len(rows) > query["limit"]
    rows = rows[:query["limit"]]
    return web.json_response({
        "items": LOG_OUT.dump(rows, many=True),
        "next_after_seq": rows[-1]["seq"] if more else None,
    })
