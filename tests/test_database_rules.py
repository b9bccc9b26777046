"""The database owns its invariants: a worker writing plain SQL cannot corrupt an execution."""

import psycopg2
import pytest


@pytest.fixture
async def execution(user):
    return await user.create_execution()


async def row(sql, execution_id):
    await sql.execute("SELECT status, progress, seq, started_at, finished_at FROM executions WHERE id=%s",
                      (execution_id,))
    return await sql.fetchone()


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
    with pytest.raises(psycopg2.Error):
        await sql.execute("UPDATE executions SET status=%s WHERE id=%s", (illegal, execution["id"]))
    assert await row(sql, execution["id"]) == before


@pytest.mark.parametrize("assignment", [
    "progress=101", "progress=-1", "owner='someone-else'", "workflow_id=gen_random_uuid()",
    "created_at=now() - interval '1 day'", "status=NULL",
])
async def test_out_of_range_and_immutable_columns_are_refused(sql, execution, assignment):
    before = await row(sql, execution["id"])
    with pytest.raises(psycopg2.Error):
        await sql.execute(f"UPDATE executions SET {assignment} WHERE id=%s", (execution["id"],))
    assert await row(sql, execution["id"]) == before


async def test_a_finished_execution_never_changes_again(sql, execution):
    await sql.execute("UPDATE executions SET status='running' WHERE id=%s", (execution["id"],))
    await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution["id"],))
    for change in ("progress=5", "message='late'", "result='1'"):
        with pytest.raises(psycopg2.Error):
            await sql.execute(f"UPDATE executions SET {change} WHERE id=%s", (execution["id"],))


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
    with pytest.raises(psycopg2.Error):
        await sql.execute("INSERT INTO executions (workflow_id, owner, status) VALUES (%s, 'x', 'running')",
                          (execution["workflow_id"],))
