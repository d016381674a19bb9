"""Shared helpers of the benchmarks: the allocator, the reference model, timing and memory.

Nothing here is imported by the library; the benchmarks are scripts (``python -m bench.run_all``).
"""
from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from testbed.allocator import TCMALLOC_GLOBS, find_tcmalloc  # noqa: F401  (re-exported for the cases)
from testbed.machine import machine_info

#: where Debian / Ubuntu / Fedora put the tcmalloc shared library (``libtcmalloc-minimal4`` on Debian)



def allocator_env(allocator: str) -> dict[str, str]:
    """Environment for a subprocess using ``allocator`` ('tcmalloc' or 'glibc'); raises when tcmalloc is absent."""
    env = dict(os.environ)
    pre = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "tcmalloc" not in p]
    if allocator == "tcmalloc":
        lib = find_tcmalloc()
        if lib is None:
            raise RuntimeError("tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4; `bash "
                               "setup.sh` does it); run with --allocator glibc to benchmark without it")
        pre.insert(0, lib)
    elif allocator != "glibc":
        raise ValueError(f"allocator must be tcmalloc or glibc, got {allocator!r}")
    if pre:
        env["LD_PRELOAD"] = ":".join(pre)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def active_allocator() -> str:
    """'tcmalloc' when the library is preloaded into this process, else 'glibc'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"
    return "tcmalloc" if "tcmalloc" in maps else "glibc"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_times() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime}


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def time_calls(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


@dataclass(frozen=True)
class Workload:
    """The shared workload of the attack comparisons (issue 9: resnet18, 224x224, 16 images per step)."""

    size: int = 224
    batch: int = 16
    steps: int = 4  # timed steps per case (after warm-up)
    eot_samples: int = 8

    @staticmethod
    def quick() -> "Workload":
        return Workload(size=64, batch=4, steps=2, eot_samples=2)


def build_resnet18(channels_last: bool = False, frozen: bool = True):
    """torchvision resnet18 with random weights (speed does not depend on them), eval mode, seeded init."""
    import torch
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a script, not library code: the same weights in every subprocess
        m = torchvision.models.resnet18(weights=None).eval()
    if frozen:
        m.requires_grad_(False)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def scenes(size: int, n: int = 6):
    """``n`` shipped photographs at ``size`` x ``size`` (ImageNet crop), (n, 3, size, size)."""
    import torch

    from testbed.photos import imagenet_preprocess, load_photo

    names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "grace_hopper")
    return torch.cat([imagenet_preprocess(load_photo(names[i % len(names)]), size) for i in range(n)])


def machine() -> dict[str, Any]:
    """The machine (testbed.machine) plus the versions of the peers compared against."""
    info = machine_info()
    info["cuda"] = info["gpu"]  # the key older bench JSON files use
    from importlib.metadata import PackageNotFoundError, version

    for key, dist in (("torchvision", "torchvision"), ("kornia", "kornia"), ("art", "adversarial-robustness-toolbox"),
                      ("torchattacks", "torchattacks"), ("cv2", "opencv-python-headless"), ("numpy", "numpy")):
        with contextlib.suppress(PackageNotFoundError):
            info[key] = version(dist)  # metadata only: importing ART here would cost seconds
    return info


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    box: list[float] = []
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - t0)
