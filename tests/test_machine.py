"""The one machine description: read from the real machine, used everywhere, never hard-coded."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from testbed.machine import cpu_cores, machine_info, machine_line

ROOT = Path(__file__).resolve().parents[1]


def test_machine_info_reads_this_machine():
    info = machine_info()
    json.dumps(info)  # JSON-ready
    assert info["cores"] == cpu_cores() >= 1
    assert info["cores"] <= (os.cpu_count() or info["cores"])
    assert info["torch"] == torch.__version__
    assert (info["gpu"] is None) == (not torch.cuda.is_available())
    line = machine_line(info)
    assert f"{info['cores']} cores" in line and info["cpu"] in line
    assert ("no GPU" in line) == (info["gpu"] is None)


def test_a_gpu_is_named_when_present():
    info = dict(machine_info(), gpu="NVIDIA H100 80GB HBM3", load_average=None)
    assert "GPU NVIDIA H100 80GB HBM3" in machine_line(info) and "load" not in machine_line(info)


def test_no_hard_coded_machine_text_and_one_definition():
    """No source file describes the machine in words of its own; only testbed/machine.py reads it."""
    pattern = re.compile(r"\d+-core CPU[^\"']*no GPU|os\.cpu_count\(\)\}[- ]")
    offenders, readers = [], []
    for part in ("physical", "pipelines", "camera", "printouts", "testbed", "bench"):
        for path in (ROOT / part).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if pattern.search(text):
                offenders.append(str(path.relative_to(ROOT)))
            if "/proc/cpuinfo" in text or "get_device_name(" in text:
                readers.append(str(path.relative_to(ROOT)))
    assert offenders == []
    assert readers == ["testbed/machine.py"]
