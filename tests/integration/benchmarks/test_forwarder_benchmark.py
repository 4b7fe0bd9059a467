"""Smoke test of the benchmark program: it must keep running and reporting what
benchmarks/README.md says.  Tiny loads only; the figures themselves are not asserted (tests
check behaviour, not timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def run_benchmark(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "benchmarks/forwarder_benchmark.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(300)
@pytest.mark.parametrize("protocol", ["ca", "pva"])
def test_throughput_mode_reports_every_figure(protocol: str) -> None:
    result = run_benchmark(
        "--protocol", protocol, "--pvs", "5", "--rate", "20", "--seconds", "3",
        "--warmup", "1", "--floor-seconds", "3", "--forwarder-args", "-X linger.ms=10",
    )  # fmt: skip
    assert result["loss_fraction"] == 0.0 and result["errors"] == 0
    assert result["forwarded_per_s"] == pytest.approx(100, rel=0.2)
    for key in ("broker_floor_ms", "broker_floor_with_epics_load_ms", "latency_ms"):
        figures = result[key]
        assert isinstance(figures, dict) and figures["p99"] is not None, key
    floor = result["broker_floor_ms"]
    assert isinstance(floor, dict) and len(floor["p99_each"]) == 2  # before and after
    for key in ("forwarder_cpu_s_per_1000", "baseline_cpu_s_per_1000", "p99_above_floor_ms",
                "p99_above_loaded_floor_ms", "peak_rss_mb", "threads"):  # fmt: skip
        assert isinstance(result[key], int | float), key


@pytest.mark.timeout(300)
def test_f142_schema_is_measured_like_f144() -> None:
    """`--schema f142`: the counters arrive as f142 and are checked for loss like f144's."""
    result = run_benchmark(
        "--protocol", "ca", "--schema", "f142", "--pvs", "5", "--rate", "20", "--seconds", "3",
        "--warmup", "1", "--no-floor", "--no-baseline",
    )  # fmt: skip
    assert result["schema"] == "f142"
    assert result["loss_fraction"] == 0.0 and result["errors"] == 0
    assert result["forwarded_per_s"] == pytest.approx(100, rel=0.2)
    assert isinstance(result["forwarder_cpu_s_per_1000"], int | float)


@pytest.mark.timeout(300)
def test_large_waveform_mode_reports_mb_per_s() -> None:
    result = run_benchmark("--large-waveform", "1", "--updates", "2")
    assert result["mode"] == "large_waveform" and result["elements"] == 131072
    for key in ("stock_caproto_mb_per_s", "forwarder_mb_per_s"):
        value = result[key]
        assert isinstance(value, int | float) and value > 0, key
