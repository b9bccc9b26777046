"""pgbench, 8 clients updating single rows of a small table: with no trigger; with the trigger but
its announcement removed; with a trigger announcing with NOTIFY, pg_listener consuming; with one
announcing with a transactional WAL message, wal_listener consuming (and, to tell the decoding's own
cost, nobody consuming). Commits/s and push latency, paced at 500/s and at saturation.

    .venv/bin/python -m bench.wal_vs_notify [--seconds 15] [--rounds 3] [--out FILE.md]

Push latency runs from the announcing trigger's clock_timestamp() (inside the writer's transaction,
so it includes the commit) to the batch reaching the listener's on_batch, on one machine's clock.
Both listeners run as the service runs them (uvloop, 10 ms gathering under sustained backlog),
with a consumer that only records, so the figures are the change source's own.
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import psycopg2
import uvloop

from service.dev.embedded_db import psql_binary, start_embedded_postgres
from service.push.pg_listener import PgListener
from service.push.wal_listener import APPLICATION_NAME, WalListener

DATABASE = "wal_bench"
CLIENTS = 8
PACED_RATE = 500
SCENARIOS = ("none", "trigger", "notify", "wal", "wal-unconsumed")
# Paced, only what has a latency (and the writers' own for reference); at saturation, every scenario.
PHASES = [(PACED_RATE, "none"), (PACED_RATE, "notify"), (PACED_RATE, "wal")] + [(None, s) for s in SCENARIOS]
PGBENCH_SCRIPT = "\\set id random(1, 1000)\nUPDATE bench_items SET seq = seq + 1 WHERE id = :id;\n"
LISTENER_SETTINGS = {"ping_seconds": 5.0, "backoff_min": 0.1, "backoff_max": 1.0, "coalesce_seconds": 0.010}


class Consumer:
    """Records each announcement's latency; counts what arrived. For the wal source also the
    decoding lag: from the newest commit of the previous batch to its handing over, by the commit
    time the WAL carries (so a writer slow between its trigger and its commit does not count)."""

    def __init__(self):
        self.latencies: list[float] = []
        self.decoding_lags: list[float] = []
        self.listener = None
        self.connected_at = 0.0

    async def on_batch(self, batch: dict[str, int]) -> None:
        now = time.time()
        self.latencies.extend(now - stamp / 1e6 for stamp in batch.values())
        if isinstance(self.listener, WalListener) and self.listener.decoded_lsn:
            self.decoding_lags.append(self.listener.lag_seconds)

    async def on_connect(self) -> None:
        self.connected_at = time.time()


def admin(url: str):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def prepare(server_url: str) -> str:
    with contextlib.closing(admin(server_url)) as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        cursor.execute(f"CREATE DATABASE {DATABASE}")
    url = server_url.replace("/postgres?", f"/{DATABASE}?")
    with contextlib.closing(admin(url)) as conn, conn.cursor() as cursor:
        cursor.execute((Path(__file__).parent / "wal_announce.sql").read_text())
    return url


def set_scenario(url: str, scenario: str) -> None:
    with contextlib.closing(admin(url)) as conn, conn.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS bench_items_announce ON bench_items")
        if scenario != "none":
            function = "bench_items_touch" if scenario == "trigger" else "bench_items_announce"
            cursor.execute("CREATE TRIGGER bench_items_announce AFTER UPDATE ON bench_items "
                           f"FOR EACH ROW EXECUTE FUNCTION {function}()")
            source = "wal" if scenario.startswith("wal") else "notify"
            cursor.execute(f"ALTER DATABASE {DATABASE} SET aiagent.change_source = %s", (source,))
        cursor.execute("VACUUM bench_items")
        cursor.execute("CHECKPOINT")


def walsender_pid(url: str) -> int | None:
    with contextlib.closing(admin(url)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_replication WHERE application_name = %s", (APPLICATION_NAME,))
        row = cursor.fetchone()
        return row[0] if row else None


async def pgbench(url: str, seconds: int, rate: int | None, script: Path) -> dict:
    query = parse_qs(urlsplit(url).query)
    args = [str(psql_binary().parent / "pgbench"), "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(seconds),
            "-f", str(script), "-h", query["host"][0], "-p", query.get("port", ["5432"])[0], "-U", "postgres",
            DATABASE]
    if rate:
        args[1:1] = ["-R", str(rate)]
    process = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = (await process.communicate())[0].decode()
    if process.returncode:
        raise RuntimeError(output)
    processed = int(re.search(r"number of transactions actually processed: (\d+)", output).group(1))
    tps = float(re.search(r"tps = ([\d.]+)", output).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", output).group(1))
    return {"processed": processed, "commits_per_second": tps, "writer_latency_ms": latency}


async def run_phase(url: str, scenario: str, rate: int | None, seconds: int, script: Path) -> dict:
    set_scenario(url, scenario)
    consumer = Consumer()
    listener = None
    task = None
    if scenario in ("notify", "wal"):
        kind = WalListener if scenario == "wal" else PgListener
        listener = consumer.listener = kind(url, consumer.on_batch, consumer.on_connect, **LISTENER_SETTINGS)
        task = asyncio.create_task(listener.run())
        assert await listener.wait_connected(30)
    walsender = psutil.Process(walsender_pid(url)) if scenario == "wal" else None
    try:
        cpu_before = time.process_time()
        walsender_before = sum(walsender.cpu_times()[:2]) if walsender else 0.0
        started = time.monotonic()
        result = await pgbench(url, seconds, rate, script)
        elapsed = time.monotonic() - started
        result["consumer_cpu"] = (time.process_time() - cpu_before) / elapsed
        if walsender:
            result["walsender_cpu"] = (sum(walsender.cpu_times()[:2]) - walsender_before) / elapsed
        if listener is not None:
            counter = "messages_decoded" if scenario == "wal" else "notifications"

            def delivered() -> int:
                return getattr(listener, counter)

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    while delivered() < result["processed"]:
                        await asyncio.sleep(0.05)
            result["delivered"] = delivered()
            result["reconnects"] = listener.reconnects
            latencies = sorted(consumer.latencies)
            result["push_p50_ms"] = 1000 * latencies[len(latencies) // 2]
            result["push_p99_ms"] = 1000 * latencies[int(len(latencies) * 0.99)]
            result["push_max_ms"] = 1000 * latencies[-1]
            if consumer.decoding_lags:
                lags = sorted(consumer.decoding_lags)
                result["commit_to_listener_p50_ms"] = 1000 * lags[len(lags) // 2]
                result["commit_to_listener_p99_ms"] = 1000 * lags[int(len(lags) * 0.99)]
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # Other work on the machine shows here: the cores are shared.
    return {"scenario": scenario, "rate": rate or "max", "load_average": os.getloadavg()[0], **result}


def report(phases: list[dict]) -> str:
    lines = ["| load | announcement | commits/s, median | commits/s, each round | writer latency ms | "
             "push p50 / p99 ms | WAL commit to listener p50 / p99 ms | delivered / committed | "
             "consumer CPU | walsender CPU | load average |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rate in (PACED_RATE, "max"):
        for scenario in SCENARIOS:
            runs = [p for p in phases if p["scenario"] == scenario and p["rate"] == rate]
            if not runs:
                continue

            def median(key: str, runs=runs) -> float:
                return statistics.median(r[key] for r in runs)

            cells = [
                "paced 500/s" if rate == PACED_RATE else "saturation", scenario,
                f"{median('commits_per_second'):,.0f}",
                ", ".join(f"{r['commits_per_second']:,.0f}" for r in runs),
                f"{median('writer_latency_ms'):.2f}"]
            if scenario not in ("notify", "wal"):
                cells += ["-", "-", "-", "-", "-"]
            else:
                decoding = (f"{median('commit_to_listener_p50_ms'):.2f} / "
                            f"{median('commit_to_listener_p99_ms'):.1f}" if scenario == "wal" else "-")
                cells += [f"{median('push_p50_ms'):.2f} / {median('push_p99_ms'):.1f}", decoding,
                          f"{sum(r['delivered'] for r in runs):,} / {sum(r['processed'] for r in runs):,}",
                          f"{median('consumer_cpu'):.0%}",
                          f"{median('walsender_cpu'):.0%}" if scenario == "wal" else "-"]
            cells.append(", ".join(f"{r['load_average']:.1f}" for r in runs))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + ceiling_ratios(phases))


# Ceilings compared within a round, whose phases ran minutes apart at most: on shared cores the
# ratios hold better than the figures.
RATIOS = (("wal", "notify"), ("wal", "trigger"), ("notify", "trigger"), ("wal-unconsumed", "trigger"),
          ("trigger", "none"))


def ceiling_ratios(phases: list[dict]) -> list[str]:
    lines = ["| round | " + " | ".join(f"{a} / {b}" for a, b in RATIOS) + " |",
             "|---|" + "---|" * len(RATIOS)]
    per_round = []
    for round_number in sorted({p["round"] for p in phases}):
        ceiling = {p["scenario"]: p["commits_per_second"] for p in phases
                   if p["round"] == round_number and p["rate"] == "max"}
        per_round.append([ceiling[a] / ceiling[b] for a, b in RATIOS])
        lines.append(f"| {round_number} | " + " | ".join(f"{r:.2f}" for r in per_round[-1]) + " |")
    medians = [statistics.median(column) for column in zip(*per_round)]
    lines.append("| median | " + " | ".join(f"**{m:.2f}**" for m in medians) + " |")
    return lines


async def main(seconds: int, rounds: int, out: Path | None) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="wal-bench-"))
    server = start_embedded_postgres(workdir, throwaway=True)
    try:
        url = prepare(server.get_uri())
        script = workdir / "update.sql"
        script.write_text(PGBENCH_SCRIPT)
        phases = []
        for round_number in range(rounds):
            # Alternating order, so no scenario always runs on a warmer or a more bloated table.
            for rate, scenario in PHASES if round_number % 2 == 0 else PHASES[::-1]:
                phase = {"round": round_number + 1, **await run_phase(url, scenario, rate, seconds, script)}
                print(json.dumps(phase), file=sys.stderr, flush=True)
                phases.append(phase)
        table = report(phases)
        print(table)
        if out:
            out.write_text(f"{table}\n\n<!-- raw phases -->\n```json\n{json.dumps(phases, indent=1)}\n```\n")
    finally:
        server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    uvloop.run(main(arguments.seconds, arguments.rounds, arguments.out))
