#!/usr/bin/env bash
# Install the forwarder and the demo's needs into ./.venv, then run the whole data path on
# this machine: embedded Kafka broker, example IOC (CA + PVA), forwarder, an rf5k config
# message, and the decoded output messages printed as they arrive (Ctrl-C to stop).
# Extra arguments go to examples/demo.py, e.g. `./run-demo.sh --duration 30`.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install-venv.sh
exec .venv/bin/python examples/demo.py "$@"
