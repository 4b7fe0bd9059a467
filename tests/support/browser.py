"""Headless Debian chromium driven by Playwright, for the web page's end-to-end tests.

Only the system browser (`/usr/bin/chromium`, installed by `scripts/install-chromium.sh`)
is used, never a Playwright browser download; every launch gets a fresh profile folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    """Skip on a developer machine without chromium; in CI (CI set) a missing one fails."""
    if os.path.exists(CHROMIUM):
        return
    message = f"{CHROMIUM} not installed (run scripts/install-chromium.sh as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def browser_context(width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A Playwright BrowserContext of a headless chromium with a throw-away profile."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height},
            )
            try:
                yield context
            finally:
                context.close()
