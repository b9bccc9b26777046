"""The benchmark harness end to end at its smallest: the service only, no timing assertions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_bench_smoke_run_loses_nothing_and_writes_the_issue_shape(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--designs", "service", "--no-plot", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=80,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert (tmp_path / "smoke.md").read_text().startswith("# aiagent-live bench")

    shape = {
        "S1": {"p50_ms", "p99_ms", "lost", "baseline_p50_ms", "baseline_p99_ms",
               "broadcaster_p50_ms", "broadcaster_p99_ms"},
        "S2": {"sockets", "p50_ms", "max_ms"},
        "S3": {"ceiling_per_s", "delivered_per_s", "p99_ms", "lost", "reordered"},
        "S4": {"sockets", "queries_per_s", "baseline_queries_per_s", "kib_per_socket"},
        "S5": {"sockets", "caught_up_s", "missed", "repeated"},
        "S6": {"feed_sockets", "p50_ms", "p99_ms", "max_ms", "target_p99_ms", "lost", "reordered",
               "violations"},
    }
    assert {"cores", "mode"} <= set(report["machine"])
    for scenario, keys in shape.items():
        assert keys <= set(report[scenario]), scenario
        assert "error" not in report[scenario]["designs"]["service"], report[scenario]
    assert report["S1"]["lost"] == 0
    assert report["S1"]["designs"]["service"]["delivered"] > 0
    assert report["S2"]["designs"]["service"]["lost"] == 0
    assert report["S3"]["lost"] == 0 and report["S3"]["reordered"] == 0
    service_s3 = report["S3"]["designs"]["service"]
    assert len(service_s3["ceiling_nobody_listening_before_after"]) == 2  # before the server, after
    assert service_s3["ceiling_nobody_listening_per_s"] > 0
    for waits in (service_s3["writer_waits_at_ceiling"], service_s3["writer_waits_at_top"]):
        assert waits and abs(sum(waits.values()) - 100) < 2, waits  # % of the writers' samples
    waiting = service_s3["waiting_for_core_at_top"]  # threads per group waiting for a core, on average
    assert {"postgres", "server", "clients", "writers"} <= set(waiting), waiting
    assert all(w >= 0 for w in waiting.values()) and sum(waiting.values()) > 0, waiting
    assert report["S5"]["missed"] == 0 and report["S5"]["repeated"] == 0
    # S6: every feed socket got its own user's changes, all of them, in order, and nobody else's.
    assert len(report["S6"]["feed_sockets"]) == 2
    assert report["S6"]["violations"] == 0
    assert report["S6"]["lost"] == 0 and report["S6"]["reordered"] == 0
    for step in report["S6"]["designs"]["service"]["steps"]:
        assert step["subscribed"] == step["feed_sockets"], step
        assert step["delivered"] > 0 and step["statements_per_change"] > 0, step
    assert "S6, the list views" in (tmp_path / "smoke.md").read_text()


@pytest.mark.timeout(90)
def test_bench_smoke_runs_the_wal_source_beside_notify_and_reports_issue_13s_targets(tmp_path):
    designs = "service,service_wal,service_standby"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--designs", designs, "--scenarios", "S1,S3,S7", "--no-plot",
         "--out", str(tmp_path), "--name", "wal"],
        cwd=REPO, capture_output=True, text=True, timeout=80,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "wal.json").read_text())
    markdown = (tmp_path / "wal.md").read_text()

    for design in designs.split(","):
        s1 = report["S1"]["designs"][design]
        assert "error" not in s1, s1
        assert s1["lost"] == 0 and s1["reordered"] == 0 and s1["delivered"] > 0, (design, s1)
    assert {"wal_p50_ms", "wal_p99_ms", "standby_p50_ms", "standby_p99_ms"} <= set(report["S1"])
    # The standby design runs S1 only; S7 is the wal source's alone.
    assert "not_applicable" in report["S3"]["designs"]["service_standby"]
    assert "not_applicable" in report["S7"]["designs"]["service"]

    for design in ("service", "service_wal"):
        s3 = report["S3"]["designs"][design]
        assert s3["lost"] == 0 and s3["reordered"] == 0, (design, s3)
        # Each pair has its ceiling with the announcement removed, on the same database.
        assert len(s3["pair_ceiling_over_unannounced"]) == 1 and s3["ceiling_over_unannounced"] > 0, s3
        assert len(s3["ceiling_unannounced_no_server_before_after"]) == 2, s3
    wal_s3 = report["S3"]["designs"]["service_wal"]
    assert wal_s3["cpu_at_ceiling"]["walsender"] > 0  # the walsender decoding for the server, a group of its own
    assert "walsender" in wal_s3["waiting_for_core_at_top"]
    assert "ceiling_median_per_s" in report["S3"]["wal_vs_notify"]

    s7 = report["S7"]["designs"]["service_wal"]
    assert [step["instances"] for step in s7["steps"]] == [1, 2]
    for step in s7["steps"]:
        for phase in ("paced", "flat_out"):
            assert step[phase]["committed_per_s"] > 0 and step[phase]["walsender_cpu_percent"] > 0, step

    targets = {row["target"]: row for row in report["wal_targets"]}
    assert any(name.startswith("S1 through a standby") for name in targets)
    assert any(name.startswith("S3 wal ceiling / notify ceiling") for name in targets)
    assert all(row["measured"] is not None for row in targets.values()), targets
    assert "Issue 13's targets for the wal source" in markdown and "S7, decoding cost" in markdown


def test_feed_analysis_counts_another_users_change_a_loss_and_a_reordering():
    from bench.stats import analyze_feed

    owner_of = {"a1": "alice", "a2": "alice", "b1": "bob"}
    commits = [["a1", 2, "t0", 10.0, 0.001], ["a2", 5, "t1", 10.1, 0.001], ["a1", 3, "t2", 10.2, 0.001],
               ["b1", 7, "t3", 10.3, 0.001]]
    # [arrival, seq, message, status, epoch, execution_id], as loadgen_clients dumps them
    alice = {"owner": "alice", "events": [
        [10.01, 2, "t0", "running", 0, "a1"], [10.31, 7, "t3", "running", 0, "b1"],
        [10.21, 3, "t2", "running", 0, "a1"], [10.22, 2, "t0", "running", 0, "a1"]]}
    bob = {"owner": "bob", "events": [[10.32, 7, "t3", "running", 0, "b1"]]}
    a = analyze_feed(commits, [alice, bob], owner_of)
    assert a["violations"] == 1  # bob's b1 on alice's socket
    assert a["lost"] == 1  # a2 never reached alice
    assert a["reordered"] == 1  # a1's seq 2 again after 3
    assert a["expected"] == 4 and a["delivered"] == 4  # 3 of alice's on her socket (one twice), 1 of bob's
    assert sorted(round(x, 3) for x in a["latency"]) == [0.01, 0.01, 0.02, 0.22]
