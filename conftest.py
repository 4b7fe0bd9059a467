"""Root conftest: only registers `--soak-minutes` (used by integration-tests/test_soak.py).

It lives here rather than in integration-tests/conftest.py so that the option is known
however pytest is started (`python -m pytest --soak-minutes 5`, with or without paths);
an option registered in a sub-directory's conftest is only known when pytest is pointed
at that directory.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-minutes",
        type=float,
        default=0.0,
        metavar="N",
        help="integration-tests: run the soak test for N minutes (default 0: skipped)",
    )
