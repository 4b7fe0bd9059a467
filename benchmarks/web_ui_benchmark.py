"""How fast the operator web page is with a large configuration.

Starts the broker (or uses `FORWARDER_TEST_KAFKA`), one forwarder with `--http-port` and
N fake streams (default 100,000, ticking every `--fake-period-ms`, so the forwarder is
busy forwarding while the page is used), then measures over real HTTP:

* `/api/summary` and `/api/streams` (first page, filters, sorts, problem rows, a deep
  page), each `--repeat` times: the first request of each (it filters and sorts all
  streams), the median of the repeats (a polling page) and the maximum, in ms;
* with `--browser` (the default when /usr/bin/chromium exists): the page in headless
  chromium, from navigation until the first 100 rows are on screen, and a filter typed
  into the page until the table shows its matches (this includes the page's 150 ms typing
  debounce).

    python -m benchmarks.web_ui_benchmark --streams 100000

Not a test: nothing is asserted; the README quotes its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from forwarder.core.config_messages import UpdateKind
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.browser import CHROMIUM, browser_context
from tests.support.forwarder_process import ForwarderProcess, send_config
from tests.support.kafka import EXTERNAL_BROKER_ENV, broker_bootstrap, free_port

#: (label, query string) of the API requests measured.
API_QUERIES = [
    ("summary", "/api/summary"),
    ("streams, first page", "/api/streams"),
    ("filter BENCH:IOC42:*", "/api/streams?filter=BENCH:IOC42:*"),
    ("filter BENCH:IOC2?:PV00012*", "/api/streams?filter=BENCH:IOC2?:PV00012*"),
    ("filter *PV09999?", "/api/streams?filter=*PV09999?"),
    ("filter NOPE* (no match)", "/api/streams?filter=NOPE*"),
    ("filter BENCH:* and topic bench_7", "/api/streams?filter=BENCH:*&topic=bench_7"),
    ("sort by rate, desc", "/api/streams?sort=rate&order=desc"),
    ("sort by last update", "/api/streams?sort=age"),
    ("sort by state", "/api/streams?sort=state"),
    ("problem rows only", "/api/streams?state=PROBLEM"),
    ("page 500", "/api/streams?page=500"),
]


def stream_specs(n: int) -> list[StreamSpec]:
    return [
        StreamSpec(f"BENCH:IOC{i % 100:02d}:PV{i:06d}", "f144", f"bench_{i % 10}", Protocol.FAKE)
        for i in range(n)
    ]


def get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as reply:
        body = reply.read()
    return (time.perf_counter() - started) * 1000, body


def wait_configured(base: str, n: int, timeout: float) -> float:
    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            doc = json.loads(get(base + "/api/summary")[1])
            if doc["streams"]["configured"] == n and doc["streams"]["connected"] == n:
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"forwarder did not configure {n} streams within {timeout} s")
        time.sleep(1.0)


def measure_api(base: str, repeat: int) -> list[dict[str, Any]]:
    results = []
    for label, query in API_QUERIES:
        times = []
        matched = None
        for _ in range(repeat):
            ms, body = get(base + query)
            times.append(ms)
            doc = json.loads(body)
            matched = doc.get("matched", doc.get("streams", {}).get("configured"))
        # The first request of a view filters and sorts everything; the repeats (a page
        # polling every second) reuse that order until the next counter sample.
        results.append(
            {
                "request": label,
                "query": query,
                "matched": matched,
                "first_ms": round(times[0], 1),
                "repeat_median_ms": round(statistics.median(times[1:] or times), 1),
                "max_ms": round(max(times), 1),
                "bytes": len(body),
            }
        )
    return results


def measure_browser(base: str, n: int, repeat: int) -> dict[str, Any]:
    loads: list[float] = []
    filters: list[float] = []
    with browser_context() as context:
        for _ in range(repeat):
            page = context.new_page()
            started = time.perf_counter()
            page.goto(base + "/")
            page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 100")
            loads.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            page.fill("#filter", "BENCH:IOC42:PV0000*")
            page.wait_for_function(
                "(want) => document.getElementById('page-info').textContent.startsWith(want)",
                arg=f"page 1 of 1 · 1 of {n} ",
            )
            filters.append((time.perf_counter() - started) * 1000)
            page.close()
    return {
        "page_load_ms": {
            "median": round(statistics.median(loads), 1),
            "max": round(max(loads), 1),
        },
        "filter_typed_to_table_ms": {
            "median": round(statistics.median(filters), 1),
            "max": round(max(filters), 1),
            "includes_debounce_ms": 150,
        },
    }


@contextmanager
def forwarder(bootstrap: str, n: int, fake_period_ms: int) -> Iterator[str]:
    port = free_port()
    fp = ForwarderProcess(
        bootstrap,
        args=["--http-port", str(port), "--fake-pv-period", str(fake_period_ms)],
        verbosity="Warning",
        status_interval_ms=4000,
    )
    try:
        fp.start(timeout=60)
        specs = stream_specs(n)
        for i in range(0, n, 10_000):  # messages below the broker's 1 MB default
            send_config(bootstrap, fp.config_topic, UpdateKind.ADD, specs[i : i + 10_000])
        yield f"http://127.0.0.1:{port}"
    finally:
        fp.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--fake-period-ms", type=int, default=10_000)
    parser.add_argument(
        "--browser",
        action=argparse.BooleanOptionalAction,
        default=os.path.exists(CHROMIUM),
        help="also time the page in headless chromium",
    )
    args = parser.parse_args(argv)
    external = os.environ.get(EXTERNAL_BROKER_ENV, "").strip()
    with broker_bootstrap(external) as bootstrap:
        with forwarder(bootstrap, args.streams, args.fake_period_ms) as base:
            configured_s = wait_configured(base, args.streams, timeout=300)
            time.sleep(args.fake_period_ms / 1000 + 1.0)  # every PV has a value and a rate
            result: dict[str, Any] = {
                "streams": args.streams,
                "fake_updates_per_s": round(args.streams / (args.fake_period_ms / 1000)),
                "configure_s": round(configured_s, 1),
                "api": measure_api(base, args.repeat),
            }
            if args.browser:
                result["browser"] = measure_browser(base, args.streams, min(5, args.repeat))
    json.dump(result, sys.stdout, indent=2)
    print()
    print("\n| request | matched | first ms | repeats, median ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in result["api"]:
        print(
            f"| {row['request']} | {row['matched']} | {row['first_ms']} "
            f"| {row['repeat_median_ms']} | {row['max_ms']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
