"""Subprocess: a caproto CA repeater that dies with its parent (see `CaRepeater`)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

from caproto.sync.repeater import run

PR_SET_PDEATHSIG = 1


def _exit_on_eof() -> None:
    sys.stdin.read()
    os._exit(0)


def main() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(sys.argv[1]):
        os._exit(0)
    threading.Thread(target=_exit_on_eof, daemon=True).start()
    run(host="127.0.0.1")


if __name__ == "__main__":
    main()
