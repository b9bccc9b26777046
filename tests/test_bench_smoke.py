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
