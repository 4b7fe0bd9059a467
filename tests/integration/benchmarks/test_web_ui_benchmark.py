"""Smoke test of the web page benchmark: it must keep running and reporting every request
the README quotes.  A tiny configuration; the timings are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(300)
def test_web_ui_benchmark_reports_every_request() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.web_ui_benchmark", "--streams", "300",
         "--repeat", "2", "--fake-period-ms", "300", "--no-browser"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report, table = done.stdout.split("\n\n|", 1)
    result = json.loads(report)
    assert result["streams"] == 300
    matched = {row["query"]: row["matched"] for row in result["api"]}
    assert matched["/api/summary"] == 300
    assert matched["/api/streams"] == 300
    assert matched["/api/streams?filter=BENCH:IOC42:*"] == 3
    assert matched["/api/streams?filter=NOPE*"] == 0
    assert matched["/api/streams?filter=BENCH:*&topic=bench_7"] == 30
    for row in result["api"]:
        assert row["first_ms"] > 0 and row["max_ms"] >= row["repeat_median_ms"], row
    assert "browser" not in result
    assert table.count("\n") >= len(result["api"])
