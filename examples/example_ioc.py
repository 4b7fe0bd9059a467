"""Example EPICS IOC for trying out the forwarder: a few PVs served over CA and PVA.

    python examples/example_ioc.py --prefix SIMPLE:

PVs (with the default prefix):

* ``SIMPLE:DOUBLE``              ai, ``AMPLITUDE * sin(t)``, changes every period
* ``SIMPLE:LONG``                longin, counts periods
* ``SIMPLE:ENUM``                mbbi, cycles through four states
* ``SIMPLE:WAVEFORM``            waveform of 16 doubles, a travelling sine
* ``SIMPLE:CHOPPER_TIMESTAMPS``  waveform of int32 nanoseconds relative to the record's
  timestamp (14 "chopper" pulses per second with some jitter): forward it with ``tdct``
* ``SIMPLE:AMPLITUDE``           ao, writable (``caput`` / ``pvput``), scales the sines

softioc serves Channel Access (the IOC's RSRV server) and PV Access (pvxs's IOC
integration, loaded by ``softioc.iocInit`` unless ``enable_pva=False``) for every record.
The EPICS libraries read their ports and interfaces from the environment as usual:
``EPICS_CA_SERVER_PORT`` (default 5064), ``EPICS_PVA_SERVER_PORT`` (default 5075),
``EPICS_PVA_BROADCAST_PORT`` (5076), ``EPICS_CAS_INTF_ADDR_LIST`` and so on.

The IOC has no interactive shell: it runs until SIGTERM or SIGINT and then exits with
status 0.  Once it serves, it prints one ``PV <name> <type> <schema>`` line per PV and
then a line ``READY``.

``PV_SCHEMAS`` is imported by ``configure.py`` so the two stay in step; softioc is imported
only when the IOC runs, so that import needs numpy alone.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from typing import Any

import numpy as np

#: PV name suffix -> (record kind shown to the user, forwarder schema to forward it with)
PV_SCHEMAS: dict[str, tuple[str, str]] = {
    "DOUBLE": ("ai", "f144"),
    "LONG": ("longin", "f144"),
    "ENUM": ("mbbi", "f144"),
    "WAVEFORM": ("waveform DOUBLE[16]", "f144"),
    "CHOPPER_TIMESTAMPS": ("waveform LONG[14]", "tdct"),
    "AMPLITUDE": ("ao (writable)", "f144"),
}

ENUM_STATES = ("Idle", "Ramping", "Running", "Fault")
WAVEFORM_LENGTH = 16
PULSES_PER_SECOND = 14
READY_LINE = "READY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default="SIMPLE:", help="PV name prefix (default SIMPLE:)")
    parser.add_argument(
        "--period",
        type=float,
        default=1.0,
        help="seconds between updates of the changing PVs (default 1)",
    )
    args = parser.parse_args(argv)
    if not args.period > 0:
        parser.error("--period must be positive")
    return args


def chopper_offsets(rng: np.random.Generator) -> np.ndarray:
    """Pulse times in ns after the record timestamp: 14 Hz with up to 1 µs of jitter."""
    nominal = np.arange(PULSES_PER_SECOND, dtype=np.int64) * (1_000_000_000 // PULSES_PER_SECOND)
    jitter = rng.integers(-1000, 1000, PULSES_PER_SECOND)
    return np.clip(nominal + jitter, 0, None).astype(np.int32)


def build_records(prefix: str) -> dict[str, Any]:
    """Create the softioc records (before `LoadDatabase`)."""
    from softioc import builder

    rng = np.random.default_rng()
    return {
        "DOUBLE": builder.aIn(f"{prefix}DOUBLE", initial_value=0.0, PREC=3, EGU="mm"),
        "LONG": builder.longIn(f"{prefix}LONG", initial_value=0),
        "ENUM": builder.mbbIn(f"{prefix}ENUM", *ENUM_STATES, initial_value=0),
        "WAVEFORM": builder.WaveformIn(
            f"{prefix}WAVEFORM", initial_value=np.zeros(WAVEFORM_LENGTH, np.float64)
        ),
        # softioc waveforms have no 64-bit integer element type; int32 ns covers ~2 s.
        "CHOPPER_TIMESTAMPS": builder.WaveformIn(
            f"{prefix}CHOPPER_TIMESTAMPS", initial_value=chopper_offsets(rng)
        ),
        "AMPLITUDE": builder.aOut(
            f"{prefix}AMPLITUDE", initial_value=1.0, always_update=True, PREC=3, EGU="mm"
        ),
    }


async def update_forever(records: dict[str, Any], period: float) -> None:
    """Change the read-only PVs once per `period` seconds."""
    rng = np.random.default_rng()
    phases = np.linspace(0.0, 2 * math.pi, WAVEFORM_LENGTH, endpoint=False)
    tick = 0
    while True:
        await asyncio.sleep(period)
        tick += 1
        now = time.time()
        amplitude = float(records["AMPLITUDE"].get())
        records["DOUBLE"].set(amplitude * math.sin(now))
        records["LONG"].set(tick)
        records["ENUM"].set(tick % len(ENUM_STATES))
        records["WAVEFORM"].set(amplitude * np.sin(phases + now))
        records["CHOPPER_TIMESTAMPS"].set(chopper_offsets(rng))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from softioc import asyncio_dispatcher, builder, softioc

    dispatcher = asyncio_dispatcher.AsyncioDispatcher()
    records = build_records(args.prefix)
    builder.LoadDatabase()
    softioc.iocInit(dispatcher, enable_pva=True)
    asyncio.run_coroutine_threadsafe(update_forever(records, args.period), dispatcher.loop)

    ca_port = os.environ.get("EPICS_CA_SERVER_PORT", "5064")
    pva_port = os.environ.get("EPICS_PVA_SERVER_PORT", "5075")
    print(f"Serving CA on port {ca_port} and PVA on port {pva_port}:", flush=True)
    for suffix, (kind, schema) in PV_SCHEMAS.items():
        print(f"PV {args.prefix}{suffix} {kind.split()[0]} {schema}", flush=True)
    print(READY_LINE, flush=True)
    sys.stdout.flush()
    # Blocks until SIGTERM/SIGINT, then exits the process through epicsExit(0).
    softioc.non_interactive_ioc()


if __name__ == "__main__":
    main()
