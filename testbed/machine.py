"""The one description of the machine a result was measured on: read from the real hardware, never hard-coded.

``machine_info()`` is a JSON-ready dict (CPU model and cores, GPU name when CUDA is present, torch/Python versions,
the load average at the time of the call: a shared machine's figures need it); ``machine_line()`` is the one-line
form every report prints. Run directories, reports and ``bench/`` all use these two.
"""
from __future__ import annotations

import contextlib
import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, bool]:
    """(CPU model name, whether it has AMX-BF16) from /proc/cpuinfo, with the platform's words as a fallback."""
    model = platform.processor() or platform.machine() or "unknown CPU"
    amx = False
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        amx = "amx_bf16" in text
    return model, amx


def cpu_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one, else the machine's count)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_name() -> str | None:
    """The first CUDA device's name, or None without CUDA (torch imported lazily)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_info() -> dict[str, Any]:
    """CPU, cores, GPU, versions and load average of this machine now."""
    import torch

    cpu, amx = _cpuinfo()
    load: list[float] | None = None
    with contextlib.suppress(OSError, AttributeError):
        load = [round(v, 2) for v in os.getloadavg()]
    return {
        "cpu": cpu,
        "cores": cpu_cores(),
        "arch": platform.machine(),
        "amx_bf16": amx,
        "gpu": gpu_name(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load,
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line: ``"Intel(R) Xeon(R) ... (2 cores, x86_64), no GPU; torch 2.14.1; load 1.2"``."""
    d = machine_info() if info is None else info
    gpu = f"GPU {d['gpu']}" if d.get("gpu") else "no GPU"
    load = f"; load {d['load_average'][0]:.1f}" if d.get("load_average") else ""
    return f"{d['cpu']} ({d['cores']} cores, {d['arch']}), {gpu}; torch {d['torch']}{load}"
