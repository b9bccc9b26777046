"""A demo worker: claims pending executions and runs them through their nodes, writing status,
progress, node changes and log lines straight to the database in SQL (not through REST), as any
worker may. The service pushes each commit to the browsers watching. `python -m service demo-worker`.
"""

import asyncio
import contextlib
import dataclasses
import json
import random
import signal

import aiopg
import psycopg2
import structlog

from ..cancellation import cancel_and_wait
from ..db.state_machine import ILLEGAL_CHANGE, NOTIFY_CHANNEL

log = structlog.get_logger(__name__)

# How long a stop waits for the runs to end (a statement on a dead network may not return).
STOP_TIMEOUT = 10.0
SEED_OWNER = "developer"  # the development token's subject
SEED_WORKFLOWS = (
    ("research agent", (("plan", "Plan the research"), ("search", "Search the web"),
                        ("summarise", "Summarise the findings"), ("review", "Review the answer"))),
    ("support triage", (("classify", "Classify the ticket"), ("retrieve", "Retrieve similar cases"),
                        ("draft", "Draft a reply"), ("check", "Policy check"))),
    ("release notes", (("collect", "Collect merged changes"), ("group", "Group by area"),
                       ("write", "Write the notes"))),
)
# What each kind of node says while it works; unknown node ids get the generic lines.
NODE_LINES = {
    "plan": ["reading the question", "splitting it into {n} sub-questions", "plan ready: {n} steps"],
    "search": ["querying the index for \"{topic}\"", "fetched {n} documents", "ranking by relevance",
               "kept the top {k} sources"],
    "summarise": ["summarising {k} sources", "drafting the answer ({n} paragraphs)", "adding citations"],
    "review": ["checking claims against sources", "style pass", "review passed"],
    "classify": ["reading the ticket", "category: billing (confidence 0.{n}{k})"],
    "retrieve": ["searching past tickets", "found {n} similar cases"],
    "draft": ["drafting a reply", "tone check", "reply drafted ({n} sentences)"],
    "check": ["checking against the refund policy", "no policy issue found"],
}
GENERIC_LINES = ["starting", "working on step {k} of {n}", "almost done"]
FAILURES = ["upstream model timed out after 30 s", "rate limited by the search API (HTTP 429)",
            "tool call returned malformed JSON", "context window exceeded"]

CLAIM = """
UPDATE executions SET status = 'running', message = 'claimed by the demo worker'
WHERE id = (
    SELECT id FROM executions
    WHERE status = 'pending' AND (%(workflows)s::uuid[] IS NULL OR workflow_id = ANY(%(workflows)s::uuid[]))
    ORDER BY created_at, id
    FOR UPDATE SKIP LOCKED
    LIMIT 1
)
RETURNING id::text, workflow_id::text, input_data
"""


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    speed: float = 1.0                 # >1 runs faster (tests use a large value)
    concurrency: int = 3               # executions run at once
    fail_rate: float = 0.08            # chance that a node fails (half of those are retried once)
    submit_every: float | None = None  # also start an execution of a seed workflow this often
    poll_seconds: float = 2.0          # claim again this often even when no notification woke us
    only_workflows: tuple[str, ...] | None = None  # claim only these workflows' executions


class Cancelled(Exception):
    """The execution was cancelled (or otherwise finished) under us: stop working on it."""


# A workflow is one of the demo's by its name and its nodes together: a user's own workflow that
# shares a name (a README example's, a one-node copy) neither stops the seeding nor gets submitted.
DEMO_WORKFLOWS = json.dumps([{"name": name, "nodes": [{"id": i, "title": t} for i, t in nodes]}
                             for name, nodes in SEED_WORKFLOWS])
FIND_DEMO_WORKFLOWS = """
SELECT w.name, w.id::text
FROM workflows w JOIN jsonb_to_recordset(%s::jsonb) AS demo(name text, nodes jsonb)
  ON demo.name = w.name AND demo.nodes = w.nodes
WHERE w.owner = %s
"""


async def demo_workflows(cur, owner: str) -> list[tuple[str, str]]:
    """(name, id) of the demo's workflows that `owner` has."""
    await cur.execute(FIND_DEMO_WORKFLOWS, (DEMO_WORKFLOWS, owner))
    return await cur.fetchall()


async def seed_workflows(pool: aiopg.Pool, owner: str = SEED_OWNER) -> list[str]:
    """Create the demo workflows that do not exist yet (development mode's first run)."""
    created = []
    async with pool.acquire() as conn, conn.cursor() as cur:
        present = {name for name, _ in await demo_workflows(cur, owner)}
        for name, nodes in SEED_WORKFLOWS:
            if name in present:
                continue
            await cur.execute(
                "INSERT INTO workflows (owner, name, nodes) VALUES (%s, %s, %s)",
                (owner, name, json.dumps([{"id": i, "title": t} for i, t in nodes])))
            created.append(name)
    if created:
        log.info("demo.seeded", workflows=created)
    return created


async def submit_one(pool: aiopg.Pool, rng: random.Random, owner: str = SEED_OWNER) -> str | None:
    """Start an execution of a random demo workflow, in SQL."""
    questions = ["How do LISTEN and NOTIFY scale?", "Compare three vector databases",
                 "Why did checkout fail on Tuesday?", "Summarise this week's incidents"]
    async with pool.acquire() as conn, conn.cursor() as cur:
        rows = await demo_workflows(cur, owner)
        if not rows:
            return None
        await cur.execute(
            "INSERT INTO executions (workflow_id, owner, input_data) VALUES (%s, %s, %s) RETURNING id::text",
            (rng.choice(rows)[1], owner, json.dumps({"question": rng.choice(questions)})))
        return (await cur.fetchone())[0]


async def claim(pool: aiopg.Pool, only_workflows=None) -> dict | None:
    """One pending execution, now running and ours; None when there is none to take."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(CLAIM, {"workflows": list(only_workflows) if only_workflows else None})
        row = await cur.fetchone()
    return None if row is None else {"id": row[0], "workflow_id": row[1], "input_data": row[2]}


class ExecutionRun:
    """Runs one claimed execution: every write is its own commit, so watchers see each one."""

    def __init__(self, pool: aiopg.Pool, execution: dict, settings: DemoSettings, rng: random.Random):
        self.pool = pool
        self.id = execution["id"]
        self.input = execution.get("input_data") or {}
        self.settings = settings
        self.rng = rng

    async def sql(self, statement: str, *params):
        try:
            async with self.pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(statement, params)
                return await cur.fetchall() if cur.description else None
        except psycopg2.Error as exc:
            # The database refused the change; if that is because the execution was cancelled
            # meanwhile, it is not an error: stop quietly.
            if exc.pgcode == ILLEGAL_CHANGE and await self.finished():
                raise Cancelled() from None
            raise

    async def finished(self) -> bool:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("SELECT status FROM executions WHERE id = %s", (self.id,))
            row = await cur.fetchone()
        return row is None or row[0] != "running"

    async def check(self) -> None:
        """Honour cancellation: re-read the status before every step."""
        if await self.finished():
            raise Cancelled()

    async def pause(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high) / self.settings.speed)

    async def log(self, message: str, node_id: str | None = None, level: str = "info") -> None:
        await self.sql("INSERT INTO execution_logs (execution_id, node_id, level, message) VALUES (%s, %s, %s, %s)",
                       self.id, node_id, level, message)

    async def run(self) -> str:
        """'completed', 'failed' or 'cancelled'."""
        try:
            return await self._run()
        except Cancelled:
            log.info("demo.cancelled", execution_id=self.id)
            return "cancelled"

    async def _run(self) -> str:
        nodes = await self.sql("SELECT node_id, title FROM execution_nodes WHERE execution_id = %s ORDER BY position",
                               self.id)
        topic = str(self.input.get("question", "the question") if isinstance(self.input, dict) else self.input)[:60]
        await self.log(f"demo worker picked up the execution ({len(nodes)} nodes)")
        for index, (node_id, title) in enumerate(nodes):
            attempt = 1
            while True:
                await self.check()
                await self.sql("UPDATE execution_nodes SET status = 'running' WHERE execution_id = %s AND node_id = %s",
                               self.id, node_id)
                await self.sql("UPDATE executions SET message = %s WHERE id = %s", f"{title}…", self.id)
                error = await self._work(index, len(nodes), node_id, topic)
                if error is None:
                    break
                await self.sql("UPDATE execution_nodes SET status = 'failed', error = %s "
                               "WHERE execution_id = %s AND node_id = %s", error, self.id, node_id)
                await self.log(f"{title} failed: {error}", node_id, "error")
                if attempt == 1 and self.rng.random() < 0.5:
                    attempt += 1
                    await self.log(f"retrying {title}", node_id, "warning")
                    await self.pause(0.3, 0.8)
                    continue
                await self.check()
                await self.sql("UPDATE executions SET status = 'failed', error = %s, message = %s WHERE id = %s",
                               f"{title}: {error}", f"failed at {title}", self.id)
                log.info("demo.failed", execution_id=self.id, node=node_id)
                return "failed"
            output = {"node": node_id, "attempt": attempt, "tokens": self.rng.randint(200, 4000)}
            await self.sql("UPDATE execution_nodes SET status = 'completed', output = %s "
                           "WHERE execution_id = %s AND node_id = %s", json.dumps(output), self.id, node_id)
        await self.check()
        result = {"answer": f"A {self.rng.randint(3, 7)}-point summary about {topic}",
                  "sources": self.rng.randint(3, 12), "nodes": len(nodes)}
        await self.sql("UPDATE executions SET status = 'completed', result = %s, message = 'done' WHERE id = %s",
                       json.dumps(result), self.id)
        log.info("demo.completed", execution_id=self.id)
        return "completed"

    async def _work(self, index: int, count: int, node_id: str, topic: str) -> str | None:
        """A node's log lines, with progress between; the error text if this run of it fails."""
        lines = NODE_LINES.get(node_id, GENERIC_LINES)
        fails_at = self.rng.randrange(len(lines)) if self.rng.random() < self.settings.fail_rate else None
        for step, template in enumerate(lines):
            await self.pause(0.4, 1.4)
            await self.check()
            if step == fails_at:
                return self.rng.choice(FAILURES)
            n, k = self.rng.randint(3, 9), self.rng.randint(2, 5)
            await self.log(template.format(n=n, k=k, topic=topic), node_id)
            progress = int(100 * (index + (step + 1) / (len(lines) + 1)) / count)
            await self.sql("UPDATE executions SET progress = greatest(progress, %s) WHERE id = %s",
                           progress, self.id)
        await self.pause(0.2, 0.6)
        return None


async def abandon(pool: aiopg.Pool, execution_ids) -> None:
    """On stop: fail what we were running, so no execution is left spinning in 'running'."""
    for execution_id in execution_ids:
        with contextlib.suppress(psycopg2.Error):
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute("UPDATE executions SET status = 'failed', error = 'the demo worker stopped' "
                                  "WHERE id = %s AND status = 'running'", (execution_id,))


async def run_worker(database_url: str, settings: DemoSettings, *, seed: bool,
                     stop: asyncio.Event | None = None, rng: random.Random | None = None) -> None:
    """Claim and run executions until `stop` is set (or SIGINT/SIGTERM when none is given)."""
    rng = rng or random.Random()
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    wake = asyncio.Event()
    running: dict[asyncio.Task, str] = {}
    async with aiopg.create_pool(database_url, minsize=1, maxsize=settings.concurrency + 2,
                                 enable_hstore=False) as pool:
        if seed:
            await seed_workflows(pool)
        async with aiopg.connect(database_url, enable_hstore=False) as listen_conn:
            async with listen_conn.cursor() as cur:
                await cur.execute(f"LISTEN {NOTIFY_CHANNEL}")  # a new execution announces "<id>:1"
            waker = asyncio.create_task(_wake_on_new(listen_conn, wake))
            submitter = asyncio.create_task(_submit_forever(pool, settings, rng)) if settings.submit_every else None
            log.info("demo.worker_ready", concurrency=settings.concurrency, speed=settings.speed)
            try:
                while not stop.is_set():
                    while len(running) < settings.concurrency and not stop.is_set():
                        execution = await claim(pool, settings.only_workflows)
                        if execution is None:
                            break
                        log.info("demo.claimed", execution_id=execution["id"])
                        task = asyncio.create_task(ExecutionRun(pool, execution, settings, rng).run())
                        running[task] = execution["id"]
                        task.add_done_callback(lambda t: (running.pop(t, None), wake.set()))
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(settings.poll_seconds):
                            await _first(stop.wait(), wake.wait())
            finally:
                ids = list(running.values())
                tasks = [*running, *(t for t in (waker, submitter) if t is not None)]
                if stuck := await cancel_and_wait(tasks, timeout=STOP_TIMEOUT):
                    log.warning("demo.stop_timed_out", tasks=len(stuck))
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        log.warning("demo.task_failed", exc_info=task.exception())
                await abandon(pool, ids)
                log.info("demo.worker_stopped", abandoned=len(ids))


async def _first(*coroutines) -> None:
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _wake_on_new(conn, wake: asyncio.Event) -> None:
    while True:
        notification = await conn.notifies.get()
        if notification.payload.endswith(":1"):
            wake.set()


async def _submit_forever(pool: aiopg.Pool, settings: DemoSettings, rng: random.Random) -> None:
    while True:
        try:
            await submit_one(pool, rng)
        except psycopg2.Error:
            log.warning("demo.submit_failed", exc_info=True)
        await asyncio.sleep(settings.submit_every)
