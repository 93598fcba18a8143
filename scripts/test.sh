#!/usr/bin/env bash
# Install zonemesh with its test extras into .venv and run every check: ruff, mypy, pytest.
# This is the README's test command and what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/python scripts/typecheck.py
echo "== pytest"
.venv/bin/pytest "$@"
