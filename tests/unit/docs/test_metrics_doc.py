"""docs/reference/metrics.md names every metric the forwarder exports.

The names are taken from the metric families `forwarder/adapters/http_metrics.py` builds
(every family is constructed with its name as a string literal), so a metric added there
fails this test until it is documented.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "forwarder" / "adapters" / "http_metrics.py"
PAGE = REPO / "docs" / "reference" / "metrics.md"


def exported_names() -> set[str]:
    return set(re.findall(r'"(forwarder_[a-z0-9_]+)"', SOURCE.read_text(encoding="utf-8")))


def test_the_source_is_read() -> None:
    names = exported_names()
    assert {
        "forwarder_updates_forwarded",
        "forwarder_dropped",
        "forwarder_latency_seconds",
    } <= names


def test_every_exported_metric_is_documented() -> None:
    documented = set(re.findall(r"`(forwarder_[a-z0-9_]+)`", PAGE.read_text(encoding="utf-8")))
    assert sorted(exported_names() - documented) == []
