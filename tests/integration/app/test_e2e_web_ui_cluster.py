"""End to end: the web page of clustered forwarders (`--group`) in a real browser.

Each member's page shows the group, the member and the shards it owns, and lists the
streams this member forwards with their shard; together the members' pages list every
configured stream exactly once.  WEB_UI_CLUSTER_SCREENSHOT=path.png saves each page.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

import pytest

from forwarder.core.config_messages import UpdateKind
from forwarder.core.sharding import shard_of
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.browser import browser_context
from tests.support.forwarder_process import ForwarderProcess, send_config
from tests.support.kafka import free_port, unique_topic

pytestmark = pytest.mark.integration

SHARDS = 6
PVS = [f"FAKE:CLUSTER:{i}" for i in range(12)]


def summary(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/summary", timeout=5) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc
    except OSError:
        return None


def settled(ports: dict[str, int]) -> dict[str, dict[str, Any]] | None:
    """Both members' summaries once their shards split all shards and all streams run."""
    docs = {name: summary(port) for name, port in ports.items()}
    if any(d is None or "cluster" not in d for d in docs.values()):
        return None
    ready = {n: d for n, d in docs.items() if d is not None}
    shards = sorted(s for d in ready.values() for s in d["cluster"]["shards"])
    forwarded = sum(d["streams"]["connected"] for d in ready.values())
    if shards != list(range(SHARDS)) or forwarded != len(PVS):
        return None
    return ready


def test_each_member_shows_its_share_of_the_cluster(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    group = unique_topic("webgroup")
    config_topic = unique_topic("webgroup_config")
    status_topic = unique_topic("webgroup_status")
    data = unique_topic("webgroup_data")
    ports = {"member-a": free_port(), "member-b": free_port()}
    for name, port in ports.items():
        fp = ForwarderProcess(
            kafka_bootstrap,
            config_topic=config_topic,
            status_topic=status_topic,
            args=[
                "--group", group, "--group-shards", str(SHARDS),
                "--group-session-timeout-ms", "6000", "--service-id", name,
                "--http-port", str(port), "--fake-pv-period", "200",
            ],
            verbosity="Info",
        )  # fmt: skip
        forwarders.append(fp)
        fp.start(wait_ready=False)
    send_config(
        kafka_bootstrap,
        config_topic,
        UpdateKind.ADD,
        [StreamSpec(pv, "f144", data, Protocol.FAKE) for pv in PVS],
    )
    deadline = time.monotonic() + 60
    docs = settled(ports)
    while docs is None:
        assert time.monotonic() < deadline, {n: summary(p) for n, p in ports.items()}
        time.sleep(0.5)
        docs = settled(ports)

    seen: dict[str, str] = {}
    with browser_context() as browser:
        for name, port in ports.items():
            own = docs[name]["cluster"]["shards"]
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err, errors=errors: errors.append(str(err)))
            page.goto(f"http://127.0.0.1:{port}/")
            card = page.locator("#cluster-card")
            try:
                card.filter(has_text=name).wait_for(timeout=15_000)
            finally:
                assert errors == [], errors
                assert page.locator("#error-banner").is_hidden(), page.inner_text("#error-banner")
            text = card.inner_text()
            assert group in text
            assert f"{len(own)} of {SHARDS}" in text
            assert f"of {len(PVS)} in the cluster" in text
            # Every member, read from the status topic, with the shards it owns.
            wanted = {
                f"Member {other}": "shards " + ", ".join(str(x) for x in doc["cluster"]["shards"])
                for other, doc in docs.items()
            }
            deadline = time.monotonic() + 20
            while True:
                terms = page.evaluate(
                    """() => Object.fromEntries(Array.from(
                        document.querySelectorAll('#sum-cluster dt')).map(dt =>
                        [dt.textContent, dt.nextElementSibling.textContent]))"""
                )
                shown = {k: v.split(" · ")[0] for k, v in terms.items() if k.startswith("Member ")}
                if shown == wanted:
                    break
                assert time.monotonic() < deadline, (shown, terms.get("Members"), wanted)
                page.wait_for_timeout(200)
            page.locator("th[data-col=shard]").wait_for(timeout=10_000)
            rows = page.evaluate(
                """() => Array.from(document.querySelectorAll('#rows tr')).map(tr =>
                    [tr.cells[0].textContent, tr.cells[4].textContent,
                     tr.cells[11].textContent])"""
            )
            assert rows, f"{name} lists nothing"
            shot = os.environ.get("WEB_UI_CLUSTER_SCREENSHOT")
            if shot:
                page.screenshot(path=shot.replace(".png", f"-{name}.png"), full_page=True)
            for channel, state, shard in rows:
                assert int(shard) == shard_of(channel, SHARDS)
                assert int(shard) in own, (name, channel, shard, own)
                assert state == "CONNECTED"
                assert channel not in seen, f"{channel} on {seen.get(channel)} and {name}"
                seen[channel] = name
            page.close()
    assert sorted(seen) == sorted(PVS)
