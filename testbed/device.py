"""Device selection: CUDA when present, CPU otherwise; a requested device is validated before any work."""
from __future__ import annotations

import os

import torch

from testbed.errors import ConfigError

#: environment variable that overrides the default device (``cpu``, ``cuda``, ``cuda:N``)
DEVICE_ENV = "TESTBED_DEVICE"


def parse_device(text: str, *, what: str = "--device") -> torch.device:
    """``text`` as a usable ``torch.device``, or a ConfigError naming ``what`` (an option or variable).

    Accepted: ``cpu``, ``cuda``, ``cuda:N`` (when CUDA is available and N < the number of GPUs) and ``mps`` (when
    the MPS backend is available). Anything else, or a device this machine does not have, is refused by name.
    """
    spec = text.strip() if isinstance(text, str) else text
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{what} is empty; use cpu, cuda or cuda:N")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{what} {text!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {text!r}: CUDA is not available on this machine (no GPU or no CUDA driver "
                              "seen by torch); use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{what} {text!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"{what} {text!r}: the MPS backend is not available on this machine; use cpu")
        return dev
    raise ConfigError(f"{what} {text!r}: device type {dev.type!r} is not supported; use cpu, cuda or cuda:N")


def default_device() -> torch.device:
    """The device to run on: ``$TESTBED_DEVICE`` if set (validated, the error names the variable), else CUDA when
    available, else CPU."""
    requested = os.environ.get(DEVICE_ENV)
    if requested is not None and requested.strip():
        return parse_device(requested, what=f"${DEVICE_ENV}")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(requested: str | None) -> torch.device:
    """A ``--device`` option's value (validated), or the default device when it is not given."""
    return parse_device(requested) if requested else default_device()
