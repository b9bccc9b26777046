"""The messages a WebSocket client receives, encoded once per change and shared by every socket."""

import dataclasses
import datetime
import json

TERMINAL_STATUSES = frozenset({"completed", "failed"})


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
        "seq": row["seq"],
        "workflow_id": row["workflow_id"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "updated_at": row["updated_at"],
    }


def status_event(row: dict) -> Event:
    return Event(
        execution_id=row["id"],
        seq=row["seq"],
        kind="status",
        text=encode(status_message(row)),
        terminal=row["status"] in TERMINAL_STATUSES,
        owner=row["owner"],
    )


def pong() -> str:
    return '{"type":"pong"}'


def error(text: str) -> str:
    return encode({"type": "error", "message": text})
