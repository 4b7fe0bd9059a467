"""Fixtures and hooks of the system tests in `integration-tests/`.

This directory is not a package (its name is not an identifier), so pytest imports this file
as the top-level module `conftest`, which cannot clash with `tests.conftest`; the fixture
and option names are distinct from those of `tests/` as well.

* `system_kafka`: bootstrap of the broker under test — `$FORWARDER_TEST_KAFKA` when set
  (the variable `tests/` uses too; the former `$KAFKA_BOOTSTRAP` still works, with a
  deprecation warning), else a private embedded Tansu broker for the session.
* `--soak-minutes N` (registered in the repository's root conftest.py so that it is known
  however pytest is started): run the soak test for N minutes (0, the default, skips it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `pytest integration-tests` without `python -m`
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.kafka import broker_bootstrap, external_broker  # noqa: E402

SOAK_OPTION = "--soak-minutes"


def soak_minutes(config: pytest.Config) -> float:
    value = config.getoption(SOAK_OPTION, default=0.0)
    return float(value or 0.0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The soak test runs for N minutes: lift the suite-wide pytest-timeout for it only."""
    minutes = soak_minutes(config)
    if minutes <= 0:
        return
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(pytest.mark.timeout(int(minutes * 60) + 600))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long-running soak test (see --soak-minutes)")


@pytest.fixture(scope="session")
def system_kafka() -> Iterator[str]:
    """The broker the system tests run against (see the module docstring)."""
    with broker_bootstrap(external_broker(), wait_s=30.0) as bootstrap:
        yield bootstrap
