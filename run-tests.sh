#!/usr/bin/env bash
# Install everything the tests need into ./.venv and run the whole suite:
# lint (ruff), types (mypy), unit tests, end-to-end tests against a real Kafka-protocol
# broker and real EPICS servers, deployment-file checks and the system tests.
# Extra arguments go to pytest, e.g. `./run-tests.sh -k periodic`.
# Set FORWARDER_TEST_KAFKA=host:port to use your own broker instead of the embedded one.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "== ruff"; .venv/bin/python -m ruff check .
echo "== mypy"; .venv/bin/python -m mypy forwarder
echo "== pytest"; exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
