"""Version guards for the compat modules (`_caproto_compat`, `_p4p_compat`).

Their fast paths rely on a library's private parts; each is used only on a release it was
tested with (a half-open range of (major, minor) releases), and never when the operator
sets `STOCK_ENV`: then the adapters run the libraries' public API only.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata

#: Set to 1 to run stock caproto and p4p even on a tested release.
STOCK_ENV = "FORWARDER_STOCK_EPICS_CLIENTS"

Releases = tuple[tuple[int, int], tuple[int, int]]


def release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a version string ("1.3.0" -> (1, 3)); None if unreadable."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def version_problem(library: str, installed: str, tested: Releases) -> str | None:
    """Why `installed` is not a release the fast paths were tested with (None if it is)."""
    found = release(installed)
    first, end = tested
    if found is not None and first <= found < end:
        return None
    return (
        f"{library} {installed} is not a release the forwarder's fast paths were tested "
        f"with ({first[0]}.{first[1]} up to, not including, {end[0]}.{end[1]})"
    )


def stock_forced() -> bool:
    """Whether the operator asked for the libraries' public API only."""
    return os.environ.get(STOCK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class FastPathGuard:
    """Decides once per process whether a compat module may use its library's private
    parts, and logs the reason once when it may not.

    Callable, so a compat module exposes it as its `fast_paths()`; `reset()` forgets the
    decision (tests change the environment or the reported version between calls).
    """

    def __init__(
        self,
        library: str,
        tested: Releases,
        import_problem: str | None,
        fallback: str,
        log: logging.Logger,
    ) -> None:
        self.library = library
        self.tested = tested
        self.import_problem = import_problem
        #: Warning logged on the stock path, with one %s for the reason.
        self.fallback = fallback
        self.log = log
        self._fast: bool | None = None

    def __call__(self) -> bool:
        """Whether the fast paths are to be used."""
        if self._fast is None:
            problem = f"{STOCK_ENV} is set" if stock_forced() else self.import_problem
            if problem is None:
                problem = version_problem(self.library, metadata.version(self.library), self.tested)
            self._fast = problem is None
            if problem is not None:
                self.log.warning(self.fallback, problem)
        return self._fast

    def reset(self) -> None:
        """Forget the decision: the next call decides again."""
        self._fast = None
