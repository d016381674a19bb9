#!/usr/bin/env bash
# One command on a fresh machine: install the testbed into .venv, fetch the pinned assets, run the main job.
#   bash setup.sh             install + assets + `testbed demo` on the built-in defaults
#   bash setup.sh --no-demo   install + assets only
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev,bench]"

# tcmalloc (Debian/Ubuntu libtcmalloc-minimal4): glibc malloc spends most of a batched EOT step in system time
# (docs/performance.md). `testbed patch`/`testbed sticker` and bench.run_all preload it when present; without it
# everything still runs, only slower.
tcmalloc_found() {
    ldconfig -p 2>/dev/null | grep -q 'libtcmalloc_minimal\.so' \
        || ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 >/dev/null 2>&1
}
if tcmalloc_found; then
    echo "setup.sh: tcmalloc present"
elif ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: NOTE no apt-get here: install tcmalloc with your package manager (gperftools-libs," \
         "libtcmalloc-minimal4) for faster attacks; continuing with glibc malloc" >&2
else
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
    fi
    if [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; then
        echo "setup.sh: NOTE not root and no password-less sudo: run 'sudo apt-get install -y" \
             "libtcmalloc-minimal4' yourself for faster attacks; continuing with glibc malloc" >&2
    elif $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }; then
        echo "setup.sh: installed libtcmalloc-minimal4"
    else
        echo "setup.sh: NOTE apt-get could not install libtcmalloc-minimal4 (no network or package source?);" \
             "continuing with glibc malloc" >&2
    fi
fi

.venv/bin/testbed assets fetch
.venv/bin/testbed assets verify

if [ "${1:-}" != "--no-demo" ]; then
    .venv/bin/testbed demo
fi
