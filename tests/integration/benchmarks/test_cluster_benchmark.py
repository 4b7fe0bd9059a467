"""Smoke test of the cluster benchmark: it runs and reports what benchmarks/README.md says.
A tiny load only; the figures themselves are not asserted beyond what cannot be timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.kafka import EXTERNAL_BROKER_ENV

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(300)
def test_rate_mode_reports_loss_per_member_count() -> None:
    external = os.environ.get(EXTERNAL_BROKER_ENV, "").strip()
    done = subprocess.run(
        [sys.executable, "benchmarks/cluster_benchmark.py", "rate", "--members", "2",
         "--pvs", "6", "--rates", "5", "--seconds", "2", "--warmup", "1",
         *(["--bootstrap", external] if external else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    [run] = result["runs"]
    assert run["members"] == 2 and run["updates"] > 0
    assert run["missed"] == 0 and run["duplicated"] == 0
    assert result["lossless_per_s_by_members"] == {"2": 30.0}
