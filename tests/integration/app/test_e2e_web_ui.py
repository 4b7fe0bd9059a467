"""End to end: the operator web page in a real browser (headless Debian chromium driven by
Playwright) against a forwarder subprocess, a softioc IOC (CA and PVA) and the broker.

What a person would check: the configured PVs are listed with their values and follow
the IOC live, an IOC crash turns its rows DISCONNECTED and its return CONNECTED again,
filtering and sorting work, adds and removes made on the page reach the config topic (and
then the table) with the admin token and are refused without it, and hostile PV names
render as text.  Set WEB_UI_SCREENSHOT=path to save the page of the first test as a PNG
(the README's screenshot is made that way).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from forwarder.core.config_messages import ConfigCommand, UpdateKind, decode_config_message
from forwarder.core.streams import Protocol, StreamFilter, StreamSpec
from tests.support.browser import browser_context
from tests.support.epics_servers import Record, SoftIoc
from tests.support.forwarder_process import ForwarderProcess, send_config
from tests.support.kafka import TopicReader, free_port, unique_topic

pytestmark = pytest.mark.integration

TOKEN = "web-admin-token-4711"
P = "WEBUI:"
HOSTILE = "<img src=x onerror=alert(1)>"  # exactly the name
#: Added through the page's form: quotes, an ampersand and a script element as well.
HOSTILE_ADDED = '"><svg onload=alert(2)> & <script>alert(3)</script>'


@dataclass
class Setup:
    bootstrap: str
    ioc: SoftIoc
    forwarder: ForwarderProcess
    url: str
    browser: Any
    data_topic: str


@pytest.fixture(scope="module")
def web(kafka_bootstrap: str) -> Iterator[Setup]:
    records = [
        Record(f"{P}AI", "ai", 1.5),
        Record(f"{P}LONG", "longin", 7),
        Record(f"{P}WF", "waveform", [1.0, 2.0, 3.0, 4.0, 5.0], dtype="DOUBLE", length=5),
    ]
    data = unique_topic("webdata")
    with SoftIoc(records) as ioc:
        port = free_port()
        fp = ForwarderProcess(
            kafka_bootstrap,
            # The token comes from the environment, as the docs recommend.
            epics={**ioc.env, "FORWARDER_HTTP_ADMIN_TOKEN": TOKEN},
            args=["--http-port", str(port), "--fake-pv-period", "200"],
            verbosity="Info",
        )
        try:
            fp.start()
            streams = [
                StreamSpec(f"{P}AI", "f144", data, Protocol.CA),
                StreamSpec(f"{P}LONG", "f144", data, Protocol.CA),
                StreamSpec(f"{P}WF", "f144", data, Protocol.CA),
                StreamSpec(f"{P}AI", "f144", data + "-pva", Protocol.PVA),
                StreamSpec("FAKE:WEB:1", "f144", "webfake", Protocol.FAKE),
                # f142: its preview is read without streaming_data_types' f142 decoder.
                StreamSpec(HOSTILE, "f142", "webfake", Protocol.FAKE),
                StreamSpec(f"{P}MISSING", "f144", data, Protocol.CA),  # served by nobody
            ]
            send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, streams)
            with browser_context() as browser:
                yield Setup(kafka_bootstrap, ioc, fp, f"http://127.0.0.1:{port}/", browser, data)
            assert TOKEN not in fp.log(), "the admin token must never be logged"
        finally:
            fp.close()


class Page:
    """One browser tab on the page, with what the tests read from it."""

    def __init__(self, setup: Setup) -> None:
        self.page = setup.browser.new_page()
        self.dialogs: list[str] = []
        #: Every dialog's type: the page itself opens only confirm(); an alert would be
        #: script injected through a name or value.
        self.dialog_types: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._on_dialog)
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.page.goto(setup.url)

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        self.dialog_types.append(dialog.type)
        dialog.accept()  # the page's confirm() before a remove

    def rows(self) -> list[dict[str, str]]:
        """The table as the user sees it: one dict of column header -> cell text per row."""
        table: dict[str, Any] = self.page.evaluate(
            """() => ({
                head: Array.from(document.querySelectorAll('#header-row th'))
                    .map(th => th.textContent.trim()),
                rows: Array.from(document.querySelectorAll('#rows tr')).map(tr =>
                    Array.from(tr.cells).map(td => td.textContent)),
                classes: Array.from(document.querySelectorAll('#rows tr'))
                    .map(tr => tr.className),
            })"""
        )
        result = []
        for cells, cls in zip(table["rows"], table["classes"], strict=True):
            row = dict(zip(table["head"], cells, strict=False))
            row["class"] = cls
            result.append(row)
        return result

    def wait_rows(
        self, check: Callable[[list[dict[str, str]]], bool], timeout: float, what: str
    ) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows()
            if check(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not shown within {timeout} s; table: {rows}")
            self.page.wait_for_timeout(100)

    def close(self) -> None:
        assert self.errors == [], f"script errors on the page: {self.errors}"
        assert set(self.dialog_types) <= {"confirm"}, f"dialogs opened: {self.dialogs}"
        self.page.close()


@pytest.fixture
def page(web: Setup) -> Iterator[Page]:
    tab = Page(web)
    yield tab
    tab.close()


def by_channel(rows: list[dict[str, str]], channel: str) -> list[dict[str, str]]:
    return [r for r in rows if r["Channel"] == channel]


def config_commands(reader: TopicReader) -> list[ConfigCommand]:
    return [decode_config_message(m.value, rf5k_periodic=False) for m in reader.messages]


def test_lists_configured_pvs_with_live_values(web: Setup, page: Page) -> None:
    wf = f"{P}WF"

    def ready(rows: list[dict[str, str]]) -> bool:
        ai = by_channel(rows, f"{P}AI")
        return (
            len(ai) == 2
            and all(r["State"] == "CONNECTED" and r["Last value"] == "1.5" for r in ai)
            and any(r["Last value"] == "7" for r in by_channel(rows, f"{P}LONG"))
            and any(r["Last value"].startswith("[1, 2, 3, 4, 5]") for r in by_channel(rows, wf))
            and any(r["State"] == "CONNECTED" for r in by_channel(rows, "FAKE:WEB:1"))
        )

    rows = page.wait_rows(ready, 30, "the configured PVs with their values")
    assert {r["Protocol"] for r in by_channel(rows, f"{P}AI")} == {"CA", "PVA"}
    ai = by_channel(rows, f"{P}AI")[0]
    assert ai["Schema"] == "f144" and ai["Topic"].startswith(web.data_topic)
    assert ai["Alarm"].startswith("NO_ALARM")
    summary = page.page.locator("#summary").inner_text()
    assert "Configured\t7" in summary or "Configured\n7" in summary, summary
    (missing,) = by_channel(rows, f"{P}MISSING")
    assert (missing["State"], missing["Last update"]) == ("NEVER_CONNECTED", "never")
    assert missing["class"] == "problem-never_connected"  # stands out
    assert by_channel(rows, f"{P}LONG")[0]["class"] == ""

    # A new value reaches the page without a reload (the page polls every second).
    web.ioc.put(f"{P}AI", 2.25)
    page.wait_rows(
        lambda rows: all(r["Last value"] == "2.25" for r in by_channel(rows, f"{P}AI")),
        5,  # 2 s promised; the rest is headroom for a loaded machine
        "the new value",
    )
    # Fake PVs tick at 5 Hz: the page shows a rate.
    page.wait_rows(
        lambda rows: any(
            r["Rate"].endswith("/s") and r["Rate"] != "0.00/s"
            for r in by_channel(rows, "FAKE:WEB:1")
        ),
        10,
        "a rate for the fake PV",
    )
    shot = os.environ.get("WEB_UI_SCREENSHOT")
    if shot:
        page.page.screenshot(path=shot, full_page=True)


def test_filter_and_sort(web: Setup, page: Page) -> None:
    page.wait_rows(lambda rows: len(rows) >= 7, 30, "all streams")
    page.page.fill("#filter", f"{P}?I")
    rows = page.wait_rows(
        lambda rows: {r["Channel"] for r in rows} == {f"{P}AI"}, 10, "only the ?-matches"
    )
    assert len(rows) == 2
    assert "2 of 7 streams match" in page.page.locator("#page-info").inner_text()
    page.page.fill("#filter", f"{P}*")
    page.wait_rows(lambda rows: len(rows) == 5, 10, "the five WEBUI streams")
    page.page.select_option("#state-filter", "PROBLEM")
    page.wait_rows(
        lambda rows: [r["Channel"] for r in rows] == [f"{P}MISSING"], 10, "problems only"
    )
    page.page.select_option("#state-filter", "")
    page.page.fill("#filter", "")
    page.page.fill("#topic-filter", "webfake")
    page.wait_rows(
        lambda rows: {r["Channel"] for r in rows} == {"FAKE:WEB:1", HOSTILE}, 10, "topic filter"
    )
    page.page.fill("#topic-filter", "")
    page.wait_rows(lambda rows: len(rows) >= 7, 10, "everything again")

    # Channel ascending is the default; a click on the header turns it round.
    channels = [r["Channel"] for r in page.rows()]
    assert channels == sorted(channels)
    page.page.click("th[data-col=channel] button")
    page.wait_rows(
        lambda rows: [r["Channel"] for r in rows] == sorted(channels, reverse=True),
        10,
        "channel descending",
    )
    assert page.page.get_attribute("th[data-col=channel]", "aria-sort") == "descending"
    page.page.click("th[data-col=protocol] button")
    rows = page.wait_rows(
        lambda rows: (
            [r["Protocol"] for r in rows] == sorted(r["Protocol"] for r in rows)
            and page.page.get_attribute("th[data-col=protocol]", "aria-sort") == "ascending"
        ),
        10,
        "protocol ascending",
    )
    page.page.click("th[data-col=forwarded] button")
    page.page.click("th[data-col=forwarded] button")  # descending
    page.wait_rows(
        lambda rows: (
            [int(r["Forwarded"]) for r in rows]
            == sorted((int(r["Forwarded"]) for r in rows), reverse=True)
            and page.page.get_attribute("th[data-col=forwarded]", "aria-sort") == "descending"
        ),
        10,
        "forwarded descending",
    )


def test_hostile_names_render_as_text(web: Setup, page: Page) -> None:
    def shown(rows: list[dict[str, str]]) -> bool:
        hostile = by_channel(rows, HOSTILE)
        return (
            bool(hostile) and hostile[0]["State"] == "CONNECTED" and hostile[0]["Last value"] != ""
        )

    rows = page.wait_rows(shown, 30, "the hostile PV with a value")
    (hostile,) = by_channel(rows, HOSTILE)
    assert hostile["Schema"] == "f142"
    assert 0.0 <= float(hostile["Last value"]) < 1.0  # a fake PV's value, not "f142 (N bytes)"
    assert hostile["Alarm"].startswith("NO_ALARM")  # f142 carries it in the value message
    assert page.page.locator("img, svg, #rows script").count() == 0
    cell = page.page.locator("#rows td.channel", has_text="onerror").first
    assert cell.text_content() == HOSTILE
    assert "&lt;img src=x onerror=alert(1)&gt;" in cell.inner_html()

    # The filter takes the name (spaces and all) like any other.
    page.page.fill("#filter", "<img src=x *")
    page.wait_rows(lambda rows: [r["Channel"] for r in rows] == [HOSTILE], 10, "filtered")

    # Added through the page's form: it reaches the config topic unchanged, then the table
    # as text, and the row's remove button removes exactly it.
    with TopicReader(web.bootstrap, web.forwarder.config_topic) as reader:
        reader.wait_for(lambda ms: len(ms) >= 1, 10)
        before = len(reader.messages)
        page.page.click("#admin-details summary")
        page.page.fill("#token", TOKEN)
        page.page.fill("#add-channel", HOSTILE_ADDED)
        page.page.select_option("#add-protocol", "FAKE")
        page.page.select_option("#add-schema", "f144")
        page.page.fill("#add-topic", "webhostile")
        page.page.click("#add-button")
        message = page.page.locator("#admin-message")
        message.filter(has_text="Sent ADD").wait_for(timeout=10_000)
        reader.wait_for(lambda ms: len(ms) > before, 10)
        command = config_commands(reader)[-1]
        assert command.streams == [StreamSpec(HOSTILE_ADDED, "f144", "webhostile", Protocol.FAKE)]
        page.page.fill("#filter", "")
        page.page.fill("#topic-filter", "webhostile")
        rows = page.wait_rows(
            lambda rows: (
                [(r["Channel"], r["State"]) for r in rows] == [(HOSTILE_ADDED, "CONNECTED")]
            ),
            15,
            "the stream added with a hostile name",
        )
        assert page.page.locator("img, svg, #rows script").count() == 0
        page.page.click("#rows button.remove")
        message.filter(has_text="Sent REMOVE").wait_for(timeout=10_000)
        assert page.dialogs and HOSTILE_ADDED in page.dialogs[-1]  # confirm() shows it as text
        reader.wait_for(lambda ms: len(ms) > before + 1, 10)
        command = config_commands(reader)[-1]
        assert command.filters == [StreamFilter(HOSTILE_ADDED, "f144", "webhostile")]
        page.wait_rows(lambda rows: rows == [], 15, "the hostile stream gone")
    assert set(page.dialog_types) == {"confirm"}  # no alert() ran


def test_add_and_remove_with_the_token(web: Setup, page: Page) -> None:
    added = "FAKE:WEB:ADDED"
    with TopicReader(web.bootstrap, web.forwarder.config_topic) as reader:
        reader.wait_for(lambda ms: len(ms) >= 1, 10)  # the fixture's ADD
        before = len(reader.messages)
        page.page.click("#admin-details summary")

        # A wrong token is refused and nothing reaches the config topic.
        page.page.fill("#token", "not-the-token")
        page.page.fill("#add-channel", added)
        page.page.select_option("#add-protocol", "FAKE")
        page.page.select_option("#add-schema", "f144")
        page.page.fill("#add-topic", "webfake")
        page.page.click("#add-button")
        message = page.page.locator("#admin-message")
        message.filter(has_text="wrong admin token").wait_for(timeout=10_000)
        reader.poll_messages(1.0)
        assert len(reader.messages) == before

        page.page.fill("#token", TOKEN)
        page.page.click("#add-button")
        message.filter(has_text="Sent ADD").wait_for(timeout=10_000)
        reader.wait_for(lambda ms: len(ms) > before, 10)
        command = config_commands(reader)[-1]
        assert command.kind is UpdateKind.ADD
        assert command.streams == [StreamSpec(added, "f144", "webfake", Protocol.FAKE)]

        page.page.fill("#filter", added)
        page.wait_rows(
            lambda rows: [(r["Channel"], r["State"]) for r in rows] == [(added, "CONNECTED")],
            15,
            "the added stream",
        )
        page.page.click("#rows button.remove")
        message.filter(has_text="Sent REMOVE").wait_for(timeout=10_000)
        assert page.dialogs and added in page.dialogs[-1]
        reader.wait_for(lambda ms: len(ms) > before + 1, 10)
        command = config_commands(reader)[-1]
        assert command.kind is UpdateKind.REMOVE
        assert command.filters == [StreamFilter(added, "f144", "webfake")]
        page.wait_rows(lambda rows: rows == [], 15, "the stream gone")
        assert page.page.locator("#empty").is_visible()

        # "Remove all matching the filter" sends the filter itself, wildcards and all.
        for i in (1, 2):
            page.page.fill("#add-channel", f"FAKE:WEB:BULK:{i}")
            page.page.click("#add-button")
            message.filter(has_text="Sent ADD").wait_for(timeout=10_000)
        page.page.fill("#filter", "FAKE:WEB:BULK:*")
        page.wait_rows(lambda rows: len(rows) == 2, 15, "the two bulk streams")
        sent = len(reader.messages)
        page.page.click("#remove-matching")
        message.filter(has_text="Sent REMOVE").wait_for(timeout=10_000)
        reader.wait_for(lambda ms: len(ms) > sent, 10)
        command = config_commands(reader)[-1]
        assert command.kind is UpdateKind.REMOVE
        assert command.filters == [StreamFilter("FAKE:WEB:BULK:*", "", "")]
        page.wait_rows(lambda rows: rows == [], 15, "the bulk streams gone")


def test_read_only_without_token_and_errors_keep_the_data(web: Setup) -> None:
    port = free_port()
    fp = ForwarderProcess(
        web.bootstrap,
        epics=web.ioc.env,
        args=["--http-port", str(port)],
        verbosity="Info",
    )
    try:
        fp.start()
        send_config(
            web.bootstrap,
            fp.config_topic,
            UpdateKind.ADD,
            [StreamSpec(f"{P}AI", "f144", web.data_topic + "-ro", Protocol.CA)],
        )
        tab = web.browser.new_page()
        tab.goto(f"http://127.0.0.1:{port}/")
        tab.locator("#rows tr", has_text=f"{P}AI").wait_for(timeout=30_000)
        assert tab.locator("#admin").is_hidden()
        assert tab.locator("#rows button.remove").count() == 0
        status = tab.evaluate(
            """async (token) => (await fetch('/api/streams', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + token},
                body: JSON.stringify({streams: [{channel: 'X:Y', protocol: 'CA',
                                                 schema: 'f144', topic: 't'}]})})).status""",
            TOKEN,
        )
        assert status == 403
        with TopicReader(web.bootstrap, fp.config_topic) as reader:
            reader.wait_for(lambda ms: len(ms) >= 1, 10)
            reader.poll_messages(1.0)
            assert len(reader.messages) == 1  # only the test's own ADD

        # The forwarder goes away: the page says so and keeps showing the last data.
        fp.stop()
        tab.locator("#error-banner", has_text="Cannot refresh").wait_for(timeout=10_000)
        assert tab.locator("#rows tr", has_text=f"{P}AI").count() == 1
        tab.close()
    finally:
        fp.close()


def test_ioc_death_turns_rows_disconnected_and_back(web: Setup, page: Page) -> None:
    """Last in the module: it kills the module's IOC (and starts it again)."""
    ioc_channels = {f"{P}AI", f"{P}LONG", f"{P}WF"}

    def ioc_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [r for r in rows if r["Channel"] in ioc_channels]

    page.wait_rows(
        lambda rows: (
            len(ioc_rows(rows)) == 4 and all(r["State"] == "CONNECTED" for r in ioc_rows(rows))
        ),
        30,
        "the IOC's streams connected",
    )
    web.ioc.stop()
    rows = page.wait_rows(
        lambda rows: all(r["State"] == "DISCONNECTED" for r in ioc_rows(rows)),
        10,
        "DISCONNECTED after the IOC died",
    )
    assert all(r["class"] == "problem-disconnected" for r in ioc_rows(rows))
    assert all(r["State"] == "CONNECTED" for r in by_channel(rows, "FAKE:WEB:1"))
    web.ioc.start()
    page.wait_rows(
        lambda rows: all(r["State"] == "CONNECTED" for r in ioc_rows(rows)),
        30,
        "CONNECTED after the IOC came back",
    )


def test_a_change_the_broker_does_not_take_is_503(private_broker: Any) -> None:
    """Nothing is reported as sent that the config topic did not acknowledge."""
    import json
    import urllib.error
    import urllib.request

    port = free_port()
    fp = ForwarderProcess(
        private_broker.bootstrap,
        epics={"FORWARDER_HTTP_ADMIN_TOKEN": TOKEN},
        args=["--http-port", str(port)],
        verbosity="Info",
    )
    try:
        fp.start()
        private_broker.stop()
        body = json.dumps(
            {"streams": [{"channel": "X:Y", "protocol": "fake", "schema": "f144", "topic": "t"}]}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/streams",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == 503
        assert "config topic did not take the change" in json.loads(err.value.read())["error"]
        assert time.monotonic() - started < 15
    finally:
        fp.close()
