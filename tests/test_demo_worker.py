"""The demo worker: claims with SKIP LOCKED, runs nodes in SQL, fails now and then, honours cancel."""

import asyncio
import dataclasses
import json
import random
import uuid

import aiopg
import pytest

from service.dev.demo_worker import (
    DemoSettings,
    ExecutionRun,
    claim,
    run_worker,
    seed_workflows,
    submit_one,
)

FAST = DemoSettings(speed=200.0, concurrency=2, fail_rate=0.0, poll_seconds=0.2)


@pytest.fixture
async def pool(database_url):
    async with aiopg.create_pool(database_url, minsize=1, maxsize=4, enable_hstore=False) as pool:
        yield pool


async def rows(sql, statement: str, *params):
    await sql.execute(statement, params)
    return await sql.fetchall()


async def test_seeding_creates_the_demo_workflows_once(pool, sql):
    await seed_workflows(pool)
    await seed_workflows(pool)
    names = await rows(sql, "SELECT name, jsonb_array_length(nodes) FROM workflows WHERE owner = 'developer' "
                            "ORDER BY name")
    assert ("research agent", 4) in names and len(names) == len(set(names))


async def test_the_demo_seeds_and_runs_its_own_workflows_beside_a_users_of_the_same_name(pool, sql):
    # The development token's subject may have made workflows of its own first: the README's
    # try-it, or a one-node "research agent" of its own.
    owner = f"developer-{uuid.uuid4().hex[:8]}"
    users = {}
    for name, nodes in (("my first workflow", ["plan", "answer"]), ("research agent", ["answer"])):
        await sql.execute("INSERT INTO workflows (owner, name, nodes) VALUES (%s, %s, %s) RETURNING id::text",
                          (owner, name, json.dumps([{"id": n, "title": n.title()} for n in nodes])))
        users[(await sql.fetchone())[0]] = name
    assert await seed_workflows(pool, owner) == ["research agent", "support triage", "release notes"]
    assert await seed_workflows(pool, owner) == []
    workflows = await rows(sql, "SELECT id::text, name, jsonb_array_length(nodes) FROM workflows "
                                "WHERE owner = %s", owner)
    assert sorted((name, nodes) for _, name, nodes in workflows) == [
        ("my first workflow", 2), ("release notes", 3), ("research agent", 1), ("research agent", 4),
        ("support triage", 4)]
    rng = random.Random(3)
    submitted = [await submit_one(pool, rng, owner) for _ in range(30)]
    used = await rows(sql, "SELECT DISTINCT w.name, jsonb_array_length(w.nodes) FROM executions e "
                           "JOIN workflows w ON w.id = e.workflow_id WHERE e.id = ANY(%s::uuid[])", submitted)
    assert sorted(used) == [("release notes", 3), ("research agent", 4), ("support triage", 4)]
    await sql.execute("DELETE FROM executions WHERE id = ANY(%s::uuid[])", (submitted,))


async def test_two_claims_at_once_never_take_the_same_execution(pool, user):
    workflow = await user.create_workflow()
    created = {(await user.create_execution(workflow["id"]))["id"] for _ in range(3)}
    claimed = await asyncio.gather(*[claim(pool, [workflow["id"]]) for _ in range(4)])
    ids = [c["id"] for c in claimed if c]
    assert sorted(ids) == sorted(created) and None in claimed


async def test_worker_runs_executions_to_completion_in_sql(database_url, user, sql):
    workflow = await user.create_workflow(nodes=[("plan", "Plan"), ("search", "Search"), ("review", "Review")])
    executions = [(await user.create_execution(workflow["id"]))["id"] for _ in range(2)]
    stop = asyncio.Event()
    settings = dataclasses.replace(FAST, only_workflows=(workflow["id"],))
    worker = asyncio.create_task(run_worker(database_url, settings, seed=False, stop=stop, rng=random.Random(1)))
    try:
        for _ in range(200):
            done = await rows(sql, "SELECT status, progress, result FROM executions WHERE id = ANY(%s::uuid[])",
                              executions)
            if all(status == "completed" for status, _, _ in done):
                break
            await asyncio.sleep(0.05)
        assert [(status, progress) for status, progress, _ in done] == [("completed", 100)] * 2
        assert all(result["nodes"] == 3 for _, _, result in done)
        nodes = await rows(sql, "SELECT status, attempt FROM execution_nodes WHERE execution_id = %s", executions[0])
        assert nodes == [("completed", 1)] * 3
        seqs = await rows(sql, "SELECT seq FROM execution_logs WHERE execution_id = %s ORDER BY seq", executions[0])
        assert len(seqs) > 5
    finally:
        stop.set()
        await worker


async def test_a_failing_node_fails_the_execution_or_is_retried(pool, user, sql):
    workflow = await user.create_workflow(nodes=[("plan", "Plan"), ("search", "Search")])
    outcomes = set()
    for seed in range(6):
        execution = await user.create_execution(workflow["id"])
        claimed = await claim(pool, [workflow["id"]])
        run = ExecutionRun(pool, claimed, dataclasses.replace(FAST, fail_rate=1.0), random.Random(seed))
        outcome = await run.run()
        assert outcome == "failed"
        (status, error), = await rows(sql, "SELECT status, error FROM executions WHERE id = %s", execution["id"])
        assert status == "failed" and error.startswith("Plan: ")
        attempts = await rows(sql, "SELECT attempt FROM execution_nodes WHERE execution_id = %s AND node_id = 'plan'",
                              execution["id"])
        outcomes.add(attempts[0][0])
    assert outcomes == {1, 2}, "sometimes retried once, then failed"


async def test_cancelling_stops_the_worker_on_that_execution(pool, user, sql):
    workflow = await user.create_workflow(nodes=[("plan", "Plan"), ("search", "Search"), ("review", "Review")])
    execution = await user.create_execution(workflow["id"])
    claimed = await claim(pool, [workflow["id"]])
    run = asyncio.create_task(ExecutionRun(pool, claimed, DemoSettings(speed=20, fail_rate=0), random.Random(2)).run())
    for _ in range(100):
        logged = await rows(sql, "SELECT count(*) FROM execution_logs WHERE execution_id = %s", execution["id"])
        if logged[0][0] >= 2:
            break
        await asyncio.sleep(0.02)
    await sql.execute("SELECT cancel_execution(%s)", (execution["id"],))
    assert await asyncio.wait_for(run, 5) == "cancelled"
    (status,), = await rows(sql, "SELECT status FROM executions WHERE id = %s", execution["id"])
    assert status == "cancelled"
    statuses = {s for (s,) in await rows(sql, "SELECT status FROM execution_nodes WHERE execution_id = %s",
                                         execution["id"])}
    assert statuses <= {"completed", "cancelled", "pending"} and "cancelled" in statuses, statuses


async def test_stopping_the_worker_fails_what_it_was_running(database_url, user, sql):
    workflow = await user.create_workflow(nodes=[("plan", "Plan"), ("search", "Search")])
    execution = await user.create_execution(workflow["id"])
    stop = asyncio.Event()
    settings = DemoSettings(speed=1.0, fail_rate=0, poll_seconds=0.1, only_workflows=(workflow["id"],))
    worker = asyncio.create_task(run_worker(database_url, settings, seed=False, stop=stop))
    for _ in range(100):
        (status,), = await rows(sql, "SELECT status FROM executions WHERE id = %s", execution["id"])
        if status == "running":
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(worker, 5)
    (status, error), = await rows(sql, "SELECT status, error FROM executions WHERE id = %s", execution["id"])
    assert (status, error) == ("failed", "the demo worker stopped"), "no execution left spinning"
