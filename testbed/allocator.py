"""tcmalloc: glibc's malloc spends most of a batched EOT step in system time (docs/performance.md). `bash setup.sh`
installs Debian's libtcmalloc-minimal4; `testbed patch/sticker --allocator` and `bench.run_all` preload it."""
from __future__ import annotations

import glob
import os

TCMALLOC_GLOBS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/*-linux-gnu/libtcmalloc_minimal.so*",
    "/usr/lib64/libtcmalloc_minimal.so*",
    "/usr/lib/libtcmalloc_minimal.so*",
    "/usr/lib/*-linux-gnu/libtcmalloc.so*",
)


def find_tcmalloc() -> str | None:
    """Path of the tcmalloc shared library (``$TESTBED_TCMALLOC`` first), or None when it is not installed."""
    env = os.environ.get("TESTBED_TCMALLOC")
    if env:
        return env if os.path.isfile(env) else None
    for pattern in TCMALLOC_GLOBS:
        hits = sorted(p for p in glob.glob(pattern) if "debug" not in p)
        if hits:
            return hits[0]
    return None


def tcmalloc_loaded() -> bool:
    """Whether tcmalloc is mapped into this process."""
    try:
        with open("/proc/self/maps") as fh:
            return "tcmalloc" in fh.read()
    except OSError:
        return "tcmalloc" in os.environ.get("LD_PRELOAD", "")
