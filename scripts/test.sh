#!/usr/bin/env bash
# Install zonemesh with its test extras into .venv (a plain install, as users do) and run every
# check: ruff, mypy, pytest (which imports that install, not the checkout). This is the README's
# test command and what CI (.ci/run) runs. To work on the code, `pip install -e '.[dev]'` in a
# venv of your own: this script turns .venv into a plain install each run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
# As users install it (README: `pip install .`), not editable: an editable install maps the package
# onto this checkout, which hides every break that only a real install shows (a file missing from
# the wheel, a child process importing the checkout's zonemesh/ folder instead of the install).
# setuptools reuses build/lib between builds: a module deleted here would still be installed.
rm -rf build/lib
.venv/bin/pip install --quiet '.[dev]'

# The GUI's browser tests (tests/e2e/test_gui_browser.py) drive the system's Chromium through
# Playwright, never a browser Playwright downloads: install Debian's chromium when it is missing
# and apt-get may run (as root, or with sudo that needs no password). Otherwise those tests are
# skipped, and say why.
have_chromium() {
  [ -n "${ZONEMESH_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}
if ! have_chromium; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "== no Chromium and no apt-get: the GUI's browser tests will be skipped (install Chromium, or set ZONEMESH_CHROMIUM)"
  else
    if [ "$(id -u)" = 0 ]; then
      as_root=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      as_root=(sudo -n)
    else
      as_root=(none)
    fi
    if [ "${as_root[*]}" = none ]; then
      echo "== no Chromium, and apt-get needs root: the GUI's browser tests will be skipped (apt-get install chromium)"
    else
      echo "== installing Debian's chromium for the GUI's browser tests"
      if ! { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
        echo "== chromium could not be installed: the GUI's browser tests will be skipped"
      fi
    fi
  fi
fi

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/python scripts/typecheck.py
echo "== pytest"
.venv/bin/pytest "$@"
