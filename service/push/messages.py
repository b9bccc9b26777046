"""The messages a subscriber receives (on a WebSocket or a Server-Sent Events stream), encoded once
per change and shared by every subscriber."""

import dataclasses
import datetime
import json

from ..db.state_machine import TERMINAL_EXECUTION_STATUSES as TERMINAL_STATUSES
from .frame_transport import ping_frame, text_frame


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One encoded message about one execution, as it will leave on every subscribed socket:
    `frame` is the whole WebSocket text frame, built once and written as is to each of them;
    `sse_chunk` the same message as Server-Sent Events (event_stream.py builds it on first use,
    as most events have no such subscriber)."""

    execution_id: str
    seq: int
    kind: str
    text: str
    terminal: bool = False
    # When the change committed (the row's updated_at or ts), for the commit-to-send metric.
    committed_at: str | datetime.datetime | None = None
    # Whether `seq` is a resume cursor where this event is sent: every event of the execution up
    # to it has been sent before it (live and catch-up events, `synced`). Not in a snapshot, which
    # is a view in workflow order, nor on the feed. Server-Sent Events give only these an `id:`.
    in_order: bool = False
    frame: bytes = dataclasses.field(init=False, repr=False, compare=False)
    sse_chunk: bytes | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "frame", text_frame(self.text))


def control_event(frame: bytes) -> Event:
    """A ping or a pong, queued like any message so that it keeps its place among them."""
    event = Event("", 0, "control", "")
    object.__setattr__(event, "frame", frame)
    return event


PING = control_event(ping_frame())  # the same frame for every socket


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


# A feed subscription's start, and again whenever it may have missed a change: the feed does not
# replay, so this is when a client (re)loads its list.
FEED_SUBSCRIBED = encode({"type": "subscribed", "feed": "executions"})


def status_message(row: dict) -> dict:
    """The `status` message of the original design, plus seq, workflow_id and timestamps."""
    return {
        "type": "status",
        "execution_id": row["id"],
        "status": row["status"],
        "progress": row["progress"],
        "message": row["message"],
        "result": row["result"],
        "error": row["error"],
        "execution_time": row["execution_time"],
        "seq": row["status_seq"],
        "workflow_id": row["workflow_id"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "updated_at": row["updated_at"],
    }


def status_event(row: dict, *, extra: dict | None = None, terminal: bool = True,
                 in_order: bool = True) -> Event:
    """`terminal` marks a final status as the last event a single-execution socket sends."""
    message = status_message(row)
    if extra:
        message.update(extra)
    return Event(
        execution_id=row["id"],
        seq=row["status_seq"],
        kind="status",
        text=encode(message),
        terminal=terminal and row["status"] in TERMINAL_STATUSES,
        committed_at=row["updated_at"],
        in_order=in_order,
    )


def node_message(data: dict, preview_limit: int) -> dict:
    """A node's state; `output` is the whole output, or a cut of its JSON text when larger than
    preview_limit characters (then `output_truncated` is true; REST has the whole output)."""
    output_text, size = data.get("output_preview"), data.get("output_size")
    truncated = size is not None and size > preview_limit
    if output_text is None:
        output = None
    elif truncated:
        output = output_text[:preview_limit]
    else:
        output = json.loads(output_text)
    return {
        "type": "node",
        "execution_id": data["execution_id"],
        "seq": data["seq"],
        "node_id": data["node_id"],
        "title": data["title"],
        "status": data["status"],
        "attempt": data["attempt"],
        "started_at": data["started_at"],
        "finished_at": data["finished_at"],
        "error": data["error"],
        "output": output,
        "output_truncated": truncated,
    }


def log_message(data: dict) -> dict:
    return {
        "type": "log",
        "execution_id": data["execution_id"],
        "seq": data["seq"],
        "ts": data["ts"],
        "level": data["level"],
        "node_id": data["node_id"],
        "message": data["message"],
    }


def event_from_parts(kind: str, execution_id: str, seq: int, data: dict, preview_limit: int, *,
                     extra: dict | None = None, terminal: bool = True, in_order: bool = True) -> Event:
    """An Event from the columns of a row of the hub's reads (kind, execution_id, seq, data)."""
    if kind == "status":
        return status_event(data, extra=extra, terminal=terminal, in_order=in_order)
    if kind == "node":
        message, committed_at = node_message(data, preview_limit), None  # node events carry no commit time
    else:
        message, committed_at = log_message(data), data["ts"]
    if extra:
        message.update(extra)
    return Event(execution_id=execution_id, seq=seq, kind=kind, text=encode(message),
                 committed_at=committed_at, in_order=in_order)


def synced_event(execution_id: str, seq: int) -> Event:
    """The end of a snapshot or catch-up: the subscriber now holds everything up to `seq`, and
    what follows is live. (A snapshot's own seqs cannot say so: it is in workflow order, and
    nodes untouched since creation share the creation's seq.)"""
    message = {"type": "synced", "execution_id": execution_id, "seq": seq}
    return Event(execution_id, seq, "synced", encode(message), in_order=True)


def pong() -> str:
    return '{"type":"pong"}'


def error(text: str, execution_id: str | None = None) -> str:
    """An `error`; about one subscription when it names the execution."""
    message = {"type": "error", "message": text}
    if execution_id is not None:
        message["execution_id"] = execution_id
    return encode(message)
