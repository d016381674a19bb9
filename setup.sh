#!/usr/bin/env bash
# One command on a fresh machine: install the testbed into .venv, fetch the pinned assets, run the main job.
#   bash setup.sh                    install + assets + `testbed demo` on the built-in defaults
#   bash setup.sh --no-demo          install + assets only
#   bash setup.sh --cpu              torch/torchvision as CPU-only wheels (no CUDA libraries: ~3 GB smaller);
#                                    TESTBED_TORCH_INDEX_URL=URL picks another index serving the pinned torch
#   bash setup.sh --with-tcmalloc    also install the system package libtcmalloc-minimal4 (apt-get, as root or
#                                    with password-less sudo): faster attacks. Without it nothing is installed
#                                    outside .venv; the script says how to add it
#   bash setup.sh --dry-run          print what would be done, do nothing
# Idempotent: re-running skips what is already there. pip's own settings (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, a
# pip.conf) are honoured as usual.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

DEMO=1
TCMALLOC=0
DRY=0
TORCH_INDEX=${TESTBED_TORCH_INDEX_URL:-}
for arg in "$@"; do
    case "$arg" in
        --no-demo) DEMO=0 ;;
        --with-tcmalloc) TCMALLOC=1 ;;
        --cpu) TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu} ;;
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option '$arg' (see: bash setup.sh --help)" >&2; exit 2 ;;
    esac
done

# run CMD...: print it (always) and run it (unless --dry-run)
run() {
    echo "+ $*"
    if [ "$DRY" = 0 ]; then "$@"; fi
}

if [ ! -x .venv/bin/python ]; then
    run "$PYTHON" -m venv .venv
fi
run .venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "$TORCH_INDEX" ]; then
    # the pinned torch / torchvision from that index first; the package install below then finds them satisfied
    # (a local version such as 2.14.1+cpu satisfies the pin torch==2.14.1)
    pins=$(grep -oE '"(torch|torchvision)==[^"]+"' pyproject.toml | tr -d '"' | tr '\n' ' ')
    # shellcheck disable=SC2086
    run .venv/bin/python -m pip install --quiet --index-url "$TORCH_INDEX" $pins
fi
run .venv/bin/python -m pip install --quiet -e ".[dev,bench,ray]"

# tcmalloc (Debian/Ubuntu libtcmalloc-minimal4): glibc malloc spends most of a batched EOT step in system time
# (docs/performance.md). `testbed patch`/`testbed sticker` and bench.run_all preload it when present; without it
# everything still runs, only slower. It is a system package, so it is installed only when asked for.
tcmalloc_found() {
    ldconfig -p 2>/dev/null | grep -q 'libtcmalloc_minimal\.so' \
        || ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 >/dev/null 2>&1
}
if tcmalloc_found; then
    echo "setup.sh: tcmalloc: present (used by testbed patch / sticker)"
elif [ "$TCMALLOC" = 0 ]; then
    echo "setup.sh: tcmalloc: not installed (the default: nothing is installed outside .venv without asking;" \
         "attacks run with glibc malloc, slower). To add it: bash setup.sh --with-tcmalloc, or" \
         "sudo apt-get install libtcmalloc-minimal4 (gperftools-libs on Fedora)"
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
    elif [ "$DRY" = 1 ]; then
        echo "+ $SUDO apt-get install -y -qq libtcmalloc-minimal4"
    elif $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }; then
        echo "setup.sh: tcmalloc: installed libtcmalloc-minimal4 (--with-tcmalloc)"
    else
        echo "setup.sh: NOTE apt-get could not install libtcmalloc-minimal4 (no network or package source?);" \
             "continuing with glibc malloc" >&2
    fi
fi

run .venv/bin/testbed assets fetch
run .venv/bin/testbed assets verify

if [ "$DEMO" = 1 ]; then
    run .venv/bin/testbed demo
fi
