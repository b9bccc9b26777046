"""service/db/state_machine.py, the Python side of the state machine (REST validation and the push
messages use it), agrees with what the database enforces: every status and every move is tried
against the real database."""

import asyncio
import re
from collections import deque

import psycopg2
import pytest

from service.api import schemas
from service.db.state_machine import (
    EXECUTION_STATUSES,
    EXECUTION_TRANSITIONS,
    ILLEGAL_CHANGE,
    LOG_LEVELS,
    NO_SUCH_EXECUTION,
    NODE_STATUSES,
    NODE_TRANSITIONS,
    NOTIFY_CHANNEL,
    TERMINAL_EXECUTION_STATUSES,
    TERMINAL_NODE_STATUSES,
)
from service.push import messages

from .databases import cursor, fetch_all

SET_EXECUTION_STATUS = "UPDATE executions SET status = %s WHERE id = %s"
SET_NODE_STATUS = "UPDATE execution_nodes SET status = %s WHERE execution_id = %s AND node_id = %s"


def path_to(status: str, transitions: dict) -> list[str]:
    """The moves that take a new (pending) execution or node to `status`, by the Python table."""
    paths = deque([["pending"]])
    while paths:
        path = paths.popleft()
        if path[-1] == status:
            return path[1:]
        paths.extend(path + [after] for after in sorted(transitions.get(path[-1], ())) if after not in path)
    raise AssertionError(f"{status} cannot be reached from pending")


async def attempt(sql, statement: str, params) -> bool:
    """True when the database takes the write; False when its rules refuse it (and only then)."""
    try:
        await sql.execute(statement, params)
    except psycopg2.Error as exc:
        assert exc.pgcode == ILLEGAL_CHANGE, exc
        return False
    return True


async def check_values(sql, table: str, column: str) -> set[str]:
    [(definition,)] = await fetch_all(
        sql, "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
             " WHERE conrelid = %s::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE %s",
        (table, f"%({column} = ANY%"))
    return set(re.findall(r"'([^']*)'::text", definition))


async def test_the_statuses_and_log_levels_are_the_check_constraints(sql):
    assert await check_values(sql, "executions", "status") == set(EXECUTION_STATUSES)
    assert await check_values(sql, "execution_nodes", "status") == set(NODE_STATUSES)
    assert await check_values(sql, "execution_logs", "level") == set(LOG_LEVELS)


def test_the_rest_of_the_service_uses_these_lists():
    assert schemas.STATUSES == EXECUTION_STATUSES
    assert set(schemas.PATCH_STATUSES) == set(EXECUTION_STATUSES) - {"cancelled"}
    assert (schemas.NODE_STATUSES, schemas.LOG_LEVELS) == (NODE_STATUSES, LOG_LEVELS)
    assert messages.TERMINAL_STATUSES == TERMINAL_EXECUTION_STATUSES


@pytest.fixture
async def workflow_id(sql):
    """A workflow with a node for every (status, status) pair, and one per status."""
    nodes = [f"{a}-{b}" for a in NODE_STATUSES for b in NODE_STATUSES] + list(NODE_STATUSES)
    [(workflow,)] = await fetch_all(
        sql, "INSERT INTO workflows (owner, name, nodes) SELECT 'state-machine', 'every move',"
             " jsonb_agg(jsonb_build_object('id', n)) FROM unnest(%s::text[]) n RETURNING id", (nodes,))
    return workflow


async def new_execution(sql, workflow_id, status: str = "pending") -> str:
    [(execution_id,)] = await fetch_all(
        sql, "INSERT INTO executions (workflow_id, owner) VALUES (%s, 'state-machine') RETURNING id",
        (workflow_id,))
    for step in path_to(status, EXECUTION_TRANSITIONS):
        assert await attempt(sql, SET_EXECUTION_STATUS, (step, execution_id)), \
            f"the database refused {step} on the way to {status}"
    return execution_id


async def test_every_execution_move_the_database_takes_is_in_the_python_table(sql, workflow_id):
    taken = set()
    for before in EXECUTION_STATUSES:
        for after in EXECUTION_STATUSES:
            if before != after:
                execution_id = await new_execution(sql, workflow_id, before)
                if await attempt(sql, SET_EXECUTION_STATUS, (after, execution_id)):
                    taken.add((before, after))
    assert taken == {(before, after) for before, afters in EXECUTION_TRANSITIONS.items() for after in afters}


async def test_only_the_terminal_execution_statuses_refuse_every_change(sql, workflow_id):
    refusing = set()
    for status in EXECUTION_STATUSES:
        execution_id = await new_execution(sql, workflow_id, status)
        if not await attempt(sql, "UPDATE executions SET message = 'late' WHERE id = %s", (execution_id,)):
            refusing.add(status)
    assert refusing == TERMINAL_EXECUTION_STATUSES


async def node_to(sql, execution_id: str, node_id: str, status: str) -> None:
    for step in path_to(status, NODE_TRANSITIONS):
        assert await attempt(sql, SET_NODE_STATUS, (step, execution_id, node_id)), \
            f"the database refused {step} on the way to {status}"


async def test_every_node_move_the_database_takes_is_in_the_python_table(sql, workflow_id):
    execution_id = await new_execution(sql, workflow_id, "running")
    taken = set()
    for before in NODE_STATUSES:
        for after in NODE_STATUSES:
            if before != after:
                node_id = f"{before}-{after}"
                await node_to(sql, execution_id, node_id, before)
                if await attempt(sql, SET_NODE_STATUS, (after, execution_id, node_id)):
                    taken.add((before, after))
    assert taken == {(before, after) for before, afters in NODE_TRANSITIONS.items() for after in afters}


async def test_only_the_terminal_node_statuses_refuse_every_change(sql, workflow_id):
    execution_id = await new_execution(sql, workflow_id, "running")
    refusing = set()
    for status in NODE_STATUSES:
        await node_to(sql, execution_id, status, status)
        if not await attempt(sql, "UPDATE execution_nodes SET error = 'late'"
                                  " WHERE execution_id = %s AND node_id = %s", (execution_id, status)):
            refusing.add(status)
    assert refusing == TERMINAL_NODE_STATUSES


async def test_a_missing_execution_raises_the_sqlstate_python_expects(sql):
    with pytest.raises(psycopg2.Error) as refused:
        await sql.execute("SELECT cancel_execution(gen_random_uuid())")
    assert refused.value.pgcode == NO_SUCH_EXECUTION


async def test_the_triggers_notify_on_the_channel_python_listens_to(database_url, sql, workflow_id):
    async with cursor(database_url) as listener:
        await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        execution_id = await new_execution(sql, workflow_id)
        payloads = []
        while f"{execution_id}:1" not in payloads:  # perhaps after another test's late ones
            payloads.append((await asyncio.wait_for(listener.connection.notifies.get(), 10)).payload)
