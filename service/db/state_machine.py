"""What the database enforces and announces, as Python code needs it: statuses, legal moves, the
SQLSTATEs the triggers raise, the NOTIFY channel.

The database is the authority: migrations/functions/state_machine.sql and the CHECK constraints of
the versioned migrations. tests/test_state_machine_source.py fails when these tables disagree with
what it actually enforces.
"""

EXECUTION_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
# Every legal move; a status with none is terminal: the execution never changes again.
EXECUTION_TRANSITIONS = {
    "pending": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"completed", "failed", "cancelled"}),
}
TERMINAL_EXECUTION_STATUSES = frozenset(set(EXECUTION_STATUSES) - set(EXECUTION_TRANSITIONS))

NODE_STATUSES = ("pending", "running", "completed", "failed", "skipped", "cancelled")
NODE_TRANSITIONS = {
    "pending": frozenset({"running", "skipped", "cancelled"}),
    "running": frozenset({"completed", "failed", "skipped", "cancelled"}),
    "failed": frozenset({"running"}),  # a retry
}
TERMINAL_NODE_STATUSES = frozenset(set(NODE_STATUSES) - set(NODE_TRANSITIONS))

LOG_LEVELS = ("debug", "info", "warning", "error")

ILLEGAL_CHANGE = "AL409"  # SQLSTATE of a change the triggers refuse; the row stays as it was
NO_SUCH_EXECUTION = "AL404"  # SQLSTATE of a write naming an execution that does not exist

NOTIFY_CHANNEL = "aiagent_live"  # each event's hint, "<execution id>:<seq>"
