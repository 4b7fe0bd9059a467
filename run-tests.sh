#!/usr/bin/env bash
# Install everything the tests need into ./.venv and run the whole suite:
# lint (ruff), types (mypy), layering (import-linter), unit tests, end-to-end tests against
# a real Kafka-protocol broker and real EPICS servers, deployment-file checks and the system
# tests.
# Extra arguments go to pytest, e.g. `./run-tests.sh -k periodic`.
# Set FORWARDER_TEST_KAFKA=host:port to use your own broker instead of the embedded one.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install-venv.sh
echo "== ruff"; .venv/bin/python -m ruff check .
echo "== mypy"; .venv/bin/python -m mypy forwarder benchmarks tests
echo "== import-linter"; .venv/bin/lint-imports --no-cache
echo "== pytest"; exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
