"""The messages a WebSocket client receives, encoded once per change and shared by every socket."""

import dataclasses
import datetime
import json

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One encoded message about one execution, as it will leave on every subscribed socket."""

    execution_id: str
    seq: int
    kind: str
    text: str
    terminal: bool = False
    owner: str = ""


def encode(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


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


def status_event(row: dict, *, extra: dict | None = None, terminal: bool = True) -> Event:
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
        owner=row["owner"],
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


def event_from_row(row: dict, preview_limit: int, *, extra: dict | None = None, terminal: bool = True) -> Event:
    """An Event from a row of repository.events_after or repository.snapshot."""
    kind, data = row["kind"], row["data"]
    if kind == "status":
        return status_event(data, extra=extra, terminal=terminal)
    message = node_message(data, preview_limit) if kind == "node" else log_message(data)
    if extra:
        message.update(extra)
    return Event(execution_id=row["execution_id"], seq=row["seq"], kind=kind, text=encode(message))


def pong() -> str:
    return '{"type":"pong"}'


def error(text: str) -> str:
    return encode({"type": "error", "message": text})
