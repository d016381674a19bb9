#!/usr/bin/env bash
# One command on a fresh machine: install the testbed into .venv, fetch the pinned assets, run the main job.
#   bash setup.sh             install + assets + `testbed demo` on the built-in defaults
#   bash setup.sh --no-demo   install + assets only
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

.venv/bin/testbed assets fetch
.venv/bin/testbed assets verify

if [ "${1:-}" != "--no-demo" ]; then
    .venv/bin/testbed demo
fi
