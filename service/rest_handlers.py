"""REST handlers under /api/v1: parse and authorise at the edge, then call the repository."""

import json
import uuid

import marshmallow
from aiohttp import web

from . import repository
from .auth import InvalidToken, Principal, token_from_request, verify_token
from .errors import BadRequest, Forbidden, NotFound, Unauthorized, ValidationFailed
from .schemas import (
    ExecutionCreate, ExecutionListQuery, ExecutionOut, ExecutionPatch, ListQuery, WorkflowCreate, WorkflowOut,
)
from .typedefs import config_key, db_pool_key

EXECUTION_OUT = ExecutionOut()
WORKFLOW_OUT = WorkflowOut()


def authenticate(request: web.Request) -> Principal:
    try:
        return verify_token(request.app[config_key].jwt_secret, token_from_request(request))
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
    principal = authenticate(request)
    data = load(WorkflowCreate(), await read_json(request))
    row = await repository.create_workflow(request.app[db_pool_key], principal.sub, data["name"], data["nodes"])
    return web.json_response(WORKFLOW_OUT.dump(row), status=201)


async def list_workflows(request: web.Request) -> web.Response:
    principal = authenticate(request)
    query = load(ListQuery(), dict(request.query))
    rows = await repository.list_workflows(
        request.app[db_pool_key],
        owner=None if principal.sees_everything else principal.sub,
        limit=query["limit"] + 1,
        after=decode_cursor(query["cursor"]),
    )
    return page(rows, query["limit"], WORKFLOW_OUT)


async def get_workflow(request: web.Request) -> web.Response:
    principal = authenticate(request)
    workflow_id = path_uuid(request, "workflow")
    row = await repository.get_workflow(request.app[db_pool_key], workflow_id)
    if row is None or not principal.may_see(row["owner"]):
        raise NotFound("workflow", workflow_id)
    return web.json_response(WORKFLOW_OUT.dump(row))


# -- executions ------------------------------------------------------------------------------

async def create_execution(request: web.Request) -> web.Response:
    principal = authenticate(request)
    data = load(ExecutionCreate(), await read_json(request))
    pool = request.app[db_pool_key]
    workflow_id = str(data["workflow_id"])
    workflow = await repository.get_workflow(pool, workflow_id)
    if workflow is None or not principal.may_see(workflow["owner"]):
        raise ValidationFailed({"workflow_id": ["no such workflow"]})
    row = await repository.create_execution(pool, workflow_id, principal.sub, data["input_data"])
    return web.json_response(EXECUTION_OUT.dump(row), status=201)


async def get_execution(request: web.Request) -> web.Response:
    principal = authenticate(request)
    execution_id = path_uuid(request, "execution")
    row = await repository.get_execution(request.app[db_pool_key], execution_id)
    if row is None or not principal.may_see(row["owner"]):
        raise NotFound("execution", execution_id)
    return web.json_response(EXECUTION_OUT.dump(row))


async def list_executions(request: web.Request) -> web.Response:
    principal = authenticate(request)
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


async def patch_execution(request: web.Request) -> web.Response:
    principal = authenticate(request)
    execution_id = path_uuid(request, "execution")
    pool = request.app[db_pool_key]
    if not principal.sees_everything:
        # A user learns no more than a missing execution would tell it.
        row = await repository.get_execution(pool, execution_id)
        if row is None or not principal.may_see(row["owner"]):
            raise NotFound("execution", execution_id)
        raise Forbidden("only workers and admins report progress")
    changes = load(ExecutionPatch(), await read_json(request))
    row = await repository.update_execution(pool, execution_id, changes)
    if row is None:
        raise NotFound("execution", execution_id)
    return web.json_response(EXECUTION_OUT.dump(row))
