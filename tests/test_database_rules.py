"""The database owns its invariants: a worker writing plain SQL cannot corrupt an execution, even
one that knows the flags the database's own functions use to get past its rules."""

import psycopg2
import pytest
from psycopg2.errorcodes import CHECK_VIOLATION, INSUFFICIENT_PRIVILEGE, NOT_NULL_VIOLATION, SYNTAX_ERROR

from service.db.state_machine import ILLEGAL_CHANGE

from .databases import fetch_all


@pytest.fixture
async def execution(user):
    return await user.create_execution()  # its workflow has the nodes plan and act


async def row(sql, execution_id):
    await sql.execute("SELECT status, progress, seq, started_at, finished_at FROM executions WHERE id=%s",
                      (execution_id,))
    return await sql.fetchone()


async def refused(sql, statement: str, params=()) -> str:
    """The SQLSTATE the database refuses the statement with."""
    with pytest.raises(psycopg2.Error) as error:
        await sql.execute(statement, params)
    return error.value.pgcode


@pytest.mark.parametrize("steps, illegal", [
    ([], "completed"),
    (["running"], "pending"),
    (["running", "completed"], "running"),
    (["running", "completed"], "failed"),
    (["failed"], "running"),
    (["failed"], "pending"),
    ([], "cancelled-nonsense"),
])
async def test_illegal_transitions_raise_and_leave_the_row(sql, execution, steps, illegal):
    for status in steps:
        await sql.execute("UPDATE executions SET status=%s WHERE id=%s", (status, execution["id"]))
    before = await row(sql, execution["id"])
    assert await refused(sql, "UPDATE executions SET status=%s WHERE id=%s", (illegal, execution["id"])) \
        == ILLEGAL_CHANGE
    assert await row(sql, execution["id"]) == before


@pytest.mark.parametrize("assignment, sqlstate", [
    ("progress=101", CHECK_VIOLATION), ("progress=-1", CHECK_VIOLATION),
    ("owner='someone-else'", ILLEGAL_CHANGE), ("workflow_id=gen_random_uuid()", ILLEGAL_CHANGE),
    ("created_at=now() - interval '1 day'", ILLEGAL_CHANGE), ("status=NULL", NOT_NULL_VIOLATION),
])
async def test_out_of_range_and_immutable_columns_are_refused(sql, execution, assignment, sqlstate):
    before = await row(sql, execution["id"])
    statement = f"UPDATE executions SET {assignment} WHERE id=%s"
    assert await refused(sql, statement, (execution["id"],)) == sqlstate
    assert await row(sql, execution["id"]) == before


async def test_a_finished_execution_never_changes_again(sql, execution):
    await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (execution["id"],))
    await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution["id"],))
    for change in ("progress=5", "message='late'", "result='1'"):
        assert await refused(sql, f"UPDATE executions SET {change} WHERE id=%s", (execution["id"],)) \
            == ILLEGAL_CHANGE


async def test_database_sets_timestamps_seq_and_progress(sql, execution):
    await sql.execute("UPDATE executions SET status='running', seq=500, started_at='2000-01-01' WHERE id=%s",
                      (execution["id"],))
    status, progress, seq, started_at, finished_at = await row(sql, execution["id"])
    assert (status, seq, finished_at) == ("running", 2, None)
    assert started_at.year > 2000
    await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution["id"],))
    status, progress, seq, started_at, finished_at = await row(sql, execution["id"])
    assert (status, progress, seq) == ("completed", 100, 3)
    assert finished_at >= started_at


async def test_a_write_that_changes_nothing_is_not_a_change(sql, execution):
    await sql.execute("UPDATE executions SET status='pending', progress=0 WHERE id=%s", (execution["id"],))
    assert (await row(sql, execution["id"]))[2] == 1


async def test_new_executions_start_pending(sql, execution):
    statement = "INSERT INTO executions (workflow_id, owner, status) VALUES (%s, 'x', 'running')"
    assert await refused(sql, statement, (execution["workflow_id"],)) == ILLEGAL_CHANGE


# -- the exemptions of the database's own writes ----------------------------------------------

async def own_columns(sql, execution_id) -> tuple:
    """The columns only the database writes, and progress."""
    [columns] = await fetch_all(sql, "SELECT seq, status_seq, progress, progress_explicit, pruned_through_seq"
                                     " FROM executions WHERE id = %s", (execution_id,))
    return columns


# Each flag, the status of an execution its exemption would let a worker corrupt, and how: history
# marked pruned, a seq with no event, a progress that the nodes would overwrite.
EXEMPTED_WRITES = {
    "aiagent.pruning": ("completed", "UPDATE executions SET pruned_through_seq = seq + 5 WHERE id = %s"),
    "aiagent.claiming_seq": ("running", "UPDATE executions SET seq = seq + 1 WHERE id = %s"),
    "aiagent.computing_progress": ("running", "UPDATE executions SET progress = 37 WHERE id = %s"),
}


async def drive(sql, execution_id, status: str) -> None:
    for step in {"running": ["running"], "completed": ["running", "completed"]}[status]:
        await sql.execute("UPDATE executions SET status = %s WHERE id = %s", (step, execution_id))


@pytest.mark.parametrize("scope", ["session", "transaction"])
@pytest.mark.parametrize("flag", EXEMPTED_WRITES)
async def test_a_session_that_sets_an_exemption_flag_is_refused(sql, execution, flag, scope):
    status, statement = EXEMPTED_WRITES[flag]
    await drive(sql, execution["id"], status)
    before = await own_columns(sql, execution["id"])
    if scope == "session":
        await sql.execute("SELECT set_config(%s, 'on', false)", (flag,))
        assert await refused(sql, statement, (execution["id"],)) == INSUFFICIENT_PRIVILEGE
    else:
        await sql.execute("BEGIN")
        await sql.execute("SELECT set_config(%s, 'on', true)", (flag,))
        assert await refused(sql, statement, (execution["id"],)) == INSUFFICIENT_PRIVILEGE
        await sql.execute("ROLLBACK")
    assert await own_columns(sql, execution["id"]) == before


async def test_calling_claim_execution_seq_directly_is_refused(sql, execution):
    await drive(sql, execution["id"], "running")
    before = await own_columns(sql, execution["id"])
    assert await refused(sql, "SELECT claim_execution_seq(%s)", (execution["id"],)) == INSUFFICIENT_PRIVILEGE
    assert await own_columns(sql, execution["id"]) == before


# The owners' statements run elsewhere: from a DO block, and from a temporary function that has
# the owner's name (a frame shows it qualified, pg_temp_N.claim_execution_seq).
IMPOSTORS = {
    "claim in a DO block": """
        DO $$ DECLARE target uuid := '{id}'; BEGIN
            PERFORM set_config('aiagent.claiming_seq', 'on', true);
            UPDATE executions SET seq = seq + 1 WHERE id = target;
        END $$""",
    "prune in a DO block": """
        DO $$ BEGIN
            CREATE TEMP TABLE pruned AS SELECT '{id}'::uuid AS id;
            PERFORM set_config('aiagent.pruning', 'on', true);
            UPDATE executions SET pruned_through_seq = seq WHERE id IN (SELECT id FROM pruned);
        END $$""",
    "claim in a temporary function": """
        CREATE FUNCTION pg_temp.claim_execution_seq(target uuid) RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN
            PERFORM set_config('aiagent.claiming_seq', 'on', true);
            UPDATE executions SET seq = seq + 1 WHERE id = target;
            RETURN 0;
        END $$;
        SELECT pg_temp.claim_execution_seq('{id}')""",
}


@pytest.mark.parametrize("impostor", IMPOSTORS)
async def test_the_owners_statement_run_by_another_function_is_refused(sql, execution, impostor):
    await drive(sql, execution["id"], "running")
    before = await own_columns(sql, execution["id"])
    assert await refused(sql, IMPOSTORS[impostor].format(id=execution["id"])) == INSUFFICIENT_PRIVILEGE
    assert await own_columns(sql, execution["id"]) == before


async def test_a_statement_that_spells_out_the_owners_frames_cannot_be_written(sql, execution):
    """The call stack shows a statement's text as written: one that went on, after the owner's, with
    the lines the guard looks for (in a quoted alias) would pass, but SQL takes no alias there."""
    await drive(sql, execution["id"], "running")
    before = await own_columns(sql, execution["id"])
    forged = """
        DO $$ DECLARE target uuid := '{id}'; BEGIN
            PERFORM set_config('aiagent.claiming_seq', 'on', true);
            UPDATE executions SET seq = seq + 1 WHERE id = target"
PL/pgSQL function claim_execution_seq(uuid) line 7 at SQL statement
PL/pgSQL function execution_logs_append() line 3 at assignment
x";
        END $$"""
    assert await refused(sql, forged.format(id=execution["id"])) == SYNTAX_ERROR
    assert await own_columns(sql, execution["id"]) == before


async def set_node(sql, execution_id, node_id: str, status: str) -> None:
    await sql.execute("UPDATE execution_nodes SET status = %s WHERE execution_id = %s AND node_id = %s",
                      (status, execution_id, node_id))


async def test_the_databases_own_writes_still_pass(sql, execution):
    """Node changes and log lines claim seqs, node changes compute progress, cancelling and
    pruning work: each through its exemption."""
    eid = execution["id"]
    await drive(sql, eid, "running")
    await set_node(sql, eid, "plan", "running")
    await sql.execute("INSERT INTO execution_logs (execution_id, message) VALUES (%s, 'thinking')", (eid,))
    await set_node(sql, eid, "plan", "completed")
    # running (2), plan running (3), the line (4), plan completed (5) and the progress it computed (6)
    assert await own_columns(sql, eid) == (6, 6, 50, False, 0)
    assert await fetch_all(sql, "SELECT seq FROM node_events WHERE execution_id = %s ORDER BY seq",
                           (eid,)) == [(3,), (5,)]

    await set_node(sql, eid, "act", "running")
    await sql.execute("SELECT cancel_execution(%s)", (eid,))
    assert await fetch_all(sql, "SELECT status FROM execution_nodes WHERE execution_id = %s"
                                " ORDER BY position", (eid,)) == [("completed",), ("cancelled",)]
    await sql.execute("SELECT * FROM prune_history(now())")
    seq, status_seq, _, _, pruned_through_seq = await own_columns(sql, eid)
    assert (seq, status_seq, pruned_through_seq) == (9, 9, 9)  # act running (7), cancelled (8, 9)
    assert await fetch_all(sql, "SELECT count(*) FROM execution_logs WHERE execution_id = %s",
                           (eid,)) == [(0,)]


async def test_the_exemptions_end_with_the_statement_they_were_for(sql, execution):
    """A worker's write in the same transaction, after the database's own, gets no exemption."""
    eid = execution["id"]
    await drive(sql, eid, "running")
    await sql.execute("BEGIN")
    await sql.execute("INSERT INTO execution_logs (execution_id, message) VALUES (%s, 'thinking')", (eid,))
    await set_node(sql, eid, "plan", "running")
    await set_node(sql, eid, "plan", "completed")
    await sql.execute("UPDATE executions SET progress = 70 WHERE id = %s", (eid,))
    await sql.execute("COMMIT")
    # the line (3), plan running (4), plan completed (5), its progress (6), the worker's (7)
    assert await own_columns(sql, eid) == (7, 7, 70, True, 0)
