"""Every use of p4p's private parts, behind a version guard.

The PVA adapter (`pva.py`) needs one thing p4p does not offer publicly: a monitor on the
raw pvxs client (`p4p._p4p.ClientMonitor` on the provider a `p4p.client.raw.Context` keeps
in `_ctxt`).  The public `Context.monitor` wraps the same monitor in a subclass whose
`pop()` logs at debug level and type-checks every update, which costs more than the
forwarding itself at tens of thousands of updates a second.

`monitor()` uses the private path only on a p4p release it was tested with
(`TESTED_P4P`) and when the operator did not ask for the stock path (`STOCK_ENV`); otherwise
it uses the public `Context.monitor`, which delivers the same events, and says so once
in the log.  The tests run both paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from p4p import Value
from p4p.client.raw import Context as RawContext

from forwarder.adapters._versions import FastPathGuard, Releases

try:  # a private module: a release that moved it gets the stock path, not a crash
    from p4p import _p4p

    _IMPORT_PROBLEM: str | None = None
except ImportError as err:  # pragma: no cover - only with an untested p4p
    _IMPORT_PROBLEM = f"p4p's private module changed ({err})"

_log = logging.getLogger(__name__)

#: p4p releases the private path was tested with: [first, end).
TESTED_P4P: Releases = ((4, 3), (4, 4))

#: Whether to use p4p's private monitor (decided once per process, logged once).
fast_paths = FastPathGuard(
    "p4p",
    TESTED_P4P,
    _IMPORT_PROBLEM,
    "PV Access: %s; using p4p's public monitor (slower)",
    _log,
)


def monitor(context: RawContext, name: str, handler: Callable[[], None], request: Value) -> Any:
    """A monitor of `name` whose `pop()` gives raw `Value`s or p4p's events (Disconnected,
    RemoteError, Cancelled, Finished); `handler()` runs when its queue becomes non-empty."""
    if fast_paths():
        return _p4p.ClientMonitor(context._ctxt, name, handler=handler, pvRequest=request)
    return context.monitor(name, handler, request=request)
