"""Device selection: CUDA when present, CPU otherwise."""
from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """The device to run on: ``$TESTBED_DEVICE`` if set, else CUDA when available, else CPU."""
    requested = os.environ.get("TESTBED_DEVICE")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
