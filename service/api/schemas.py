"""Marshmallow schemas for what comes in and goes out of the REST API."""

import re

import marshmallow
from marshmallow import fields, validate

from ..db.state_machine import EXECUTION_STATUSES as STATUSES
from ..db.state_machine import LOG_LEVELS, NODE_STATUSES

# Cancelling has its own endpoint (it also cancels running nodes), so PATCH cannot set it.
PATCH_STATUSES = tuple(status for status in STATUSES if status != "cancelled")
MAX_TEXT = 100_000
MAX_NODE_ID = 100
# What PostgreSQL's text and jsonb cannot hold: U+0000, and a lone UTF-16 surrogate (JSON can
# escape one, "\ud800"; it has no UTF-8 form).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _refuse_unstorable(value) -> None:
    """Refuse here, field by field, what the database would refuse."""
    if isinstance(value, str):
        found = UNSTORABLE.search(value)
        if found is not None:
            raise marshmallow.ValidationError("must not contain the NUL character" if found.group() == "\x00"
                                              else "must not contain a lone UTF-16 surrogate")
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_unstorable(key)
            _refuse_unstorable(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_unstorable(item)


class Text(fields.String):
    def __init__(self, *, min_length: int = 0, max_length: int = MAX_TEXT, **kwargs):
        super().__init__(validate=[validate.Length(min=min_length, max=max_length), _refuse_unstorable],
                         **kwargs)


class Json(fields.Raw):
    """Any JSON value, as long as PostgreSQL's jsonb can store it."""

    def __init__(self, **kwargs):
        super().__init__(validate=_refuse_unstorable, **kwargs)


class StrictInteger(fields.Integer):
    """An integer that refuses booleans and floats (JSON true is not 1)."""

    def _validated(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._validated(value)


class NodeSpec(marshmallow.Schema):
    id = Text(required=True, min_length=1, max_length=MAX_NODE_ID)
    title = Text(required=True, min_length=1, max_length=200)


class WorkflowCreate(marshmallow.Schema):
    name = Text(required=True, max_length=200)
    nodes = fields.List(fields.Nested(NodeSpec), load_default=list, validate=validate.Length(max=200))

    @marshmallow.validates("name")
    def _name_not_blank(self, value, **_):
        if not value.strip():
            raise marshmallow.ValidationError("must not be blank")

    @marshmallow.validates_schema(skip_on_field_errors=True)
    def _unique_node_ids(self, data, **_):
        ids = [node["id"] for node in data.get("nodes", [])]
        if len(ids) != len(set(ids)):
            raise marshmallow.ValidationError("node ids must be unique", "nodes")


class ExecutionCreate(marshmallow.Schema):
    workflow_id = fields.UUID(required=True)
    input_data = Json(load_default=None, allow_none=True)


class ExecutionPatch(marshmallow.Schema):
    status = fields.String(validate=validate.OneOf(PATCH_STATUSES))
    progress = StrictInteger(validate=validate.Range(0, 100))
    message = Text(allow_none=True)
    result = Json(allow_none=True)
    error = Text(allow_none=True)

    @marshmallow.validates_schema
    def _not_empty(self, data, **_):
        if not data:
            raise marshmallow.ValidationError("give at least one of status, progress, message, result, error")


class NodePatch(marshmallow.Schema):
    status = fields.String(validate=validate.OneOf(NODE_STATUSES))
    output = Json(allow_none=True)
    error = Text(allow_none=True)

    @marshmallow.validates_schema
    def _not_empty(self, data, **_):
        if not data:
            raise marshmallow.ValidationError("give at least one of status, output, error")


class LogLine(marshmallow.Schema):
    level = fields.String(load_default="info", validate=validate.OneOf(LOG_LEVELS))
    node_id = Text(load_default=None, allow_none=True, min_length=1, max_length=MAX_NODE_ID)
    message = Text(required=True, max_length=100_000)


class LogBatch(marshmallow.Schema):
    """Either one line ({"message", ...}) or a batch ({"lines": [...]})."""

    lines = fields.List(fields.Nested(LogLine), required=True, validate=validate.Length(min=1))


class LogQuery(marshmallow.Schema):
    class Meta:
        unknown = marshmallow.EXCLUDE

    after_seq = fields.Integer(load_default=0, validate=validate.Range(0, 10**18))
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class ListQuery(marshmallow.Schema):
    class Meta:
        unknown = marshmallow.EXCLUDE  # a cache-buster or tracking parameter is not an error

    limit = fields.Integer(load_default=50, validate=validate.Range(1, 200))
    cursor = fields.String(load_default=None, validate=validate.Length(max=500))


class ExecutionListQuery(ListQuery):
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    workflow_id = fields.UUID(load_default=None)


class ExecutionEventsQuery(marshmallow.Schema):
    class Meta:
        unknown = marshmallow.EXCLUDE

    since = fields.Integer(load_default=None, validate=validate.Range(0, 10**18), metadata={
        "description": "the last seq you saw: every event after it, then live (a Last-Event-ID header wins)"})


class FeedEventsQuery(marshmallow.Schema):
    class Meta:
        unknown = marshmallow.EXCLUDE

    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))
    workflow_id = fields.UUID(load_default=None)


class WorkflowOut(marshmallow.Schema):
    id = fields.String()
    owner = fields.String()
    name = fields.String()
    nodes = fields.Raw()
    created_at = fields.DateTime()


class ExecutionOut(marshmallow.Schema):
    id = fields.String()
    workflow_id = fields.String()
    owner = fields.String()
    status = fields.String()
    progress = fields.Integer()
    message = fields.String(allow_none=True)
    input_data = fields.Raw(allow_none=True)
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    execution_time = fields.Float(allow_none=True)
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    updated_at = fields.DateTime()
    seq = fields.Integer()


class NodeOut(marshmallow.Schema):
    execution_id = fields.String()
    node_id = fields.String()
    title = fields.String()
    position = fields.Integer()
    status = fields.String()
    attempt = fields.Integer()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    output = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    seq = fields.Integer()


class LogOut(marshmallow.Schema):
    execution_id = fields.String()
    seq = fields.Integer()
    ts = fields.DateTime()
    level = fields.String()
    node_id = fields.String(allow_none=True)
    message = fields.String()
