"""Run directories: resolved config, lossless perturbations, metrics, atomic checkpoints, exact resume.

Layout of a run directory::

    config.json        the resolved configuration (also config.yaml, for reading)
    checkpoints/       step_00000100.pt ... (optimiser state, parameters, generator state, history)
    <name>.png         the perturbation, 16-bit PNG (lossless for float data at 1/65535) and <name>_8bit.png
    <name>.pt/.npy     the perturbation as float32 tensor / array (exact)
    metrics.json       final metrics

Every file is written to a temporary name and moved into place with ``os.replace`` (never half-written).
A run directory written with a different configuration is refused (``ConfigError`` naming the differing keys).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from testbed.errors import ConfigError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"


# ------------------------------------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


# ------------------------------------------------------------------------------------------------ config diff
def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": value}`` (lists compared as values)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Keys (dotted) whose values differ between two configs (after a JSON round trip)."""
    fa, fb = flatten(json.loads(json.dumps(_jsonable(a)))), flatten(json.loads(json.dumps(_jsonable(b))))
    skip = set(ignore)
    return sorted(k for k in set(fa) | set(fb) if k not in skip and fa.get(k, "<absent>") != fb.get(k, "<absent>"))


# ------------------------------------------------------------------------------------------------ run dir
class RunDir:
    """A run directory bound to one resolved configuration.

    ``RunDir(path, config)`` creates it (writing ``config.json``/``config.yaml``) or reopens it; reopening with a
    configuration that differs in any key other than ``ignore`` raises ConfigError naming the keys.
    """

    def __init__(self, path: str | Path, config: dict[str, Any], *, ignore: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.config = json.loads(json.dumps(_jsonable(config)))
        cfg_file = self.path / CONFIG_FILE
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory {self.path} exists and is not a folder")
        if cfg_file.is_file():
            try:
                old = json.loads(cfg_file.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{cfg_file} is not valid JSON ({exc}); use a fresh run directory") from None
            diff = config_diff(old, self.config, ignore)
            if diff:
                shown = ", ".join(f"{k} ({flatten(old).get(k, '<absent>')!r} -> {flatten(self.config).get(k, '<absent>')!r})" for k in diff[:10])
                raise ConfigError(
                    f"run directory {self.path} was written by a different config; differing keys: {shown}. "
                    "Use a fresh --out directory, or the same configuration to resume"
                )
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cfg_file, self.config)
            try:
                import yaml

                atomic_write_text(self.path / "config.yaml", yaml.safe_dump(self.config, sort_keys=True))
            except ImportError:  # pragma: no cover - pyyaml is a dependency
                pass

    # -- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoints(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(self.checkpoint_dir.glob("step_*.pt"))

    def save_checkpoint(self, state: dict[str, Any], step: int, *, keep: int = 2) -> Path:
        """Write ``state`` as checkpoint ``step`` atomically; keep the newest ``keep`` checkpoints."""
        path = atomic_torch_save({"step": int(step), **state}, self.checkpoint_dir / f"step_{int(step):08d}.pt")
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest readable checkpoint, or None."""
        for path in reversed(self.checkpoints()):
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception:  # noqa: BLE001 - a corrupt checkpoint: fall back to the previous one
                continue
        return None

    # -- outputs
    def save_image(self, name: str, image: torch.Tensor) -> dict[str, Path]:
        """Save a 1x3xHxW (or 1x1xHxW) tensor in [0, 1] losslessly: 16-bit and 8-bit PNG, .pt and .npy."""
        from testbed.imageio import save_image

        x = image.detach().float().cpu()
        if x.ndim == 3:
            x = x[None]
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        out = {
            "png16": save_image(rgb, self.path / f"{name}.png", bits=16),
            "png8": save_image(rgb, self.path / f"{name}_8bit.png", bits=8),
            "pt": atomic_torch_save(x.clone(), self.path / f"{name}.pt"),
        }
        buf = io.BytesIO()
        np.save(buf, x.numpy())
        out["npy"] = atomic_write_bytes(self.path / f"{name}.npy", buf.getvalue())
        return out

    def save_tensors(self, name: str, data: Any) -> Path:
        return atomic_torch_save(data, self.path / f"{name}.pt")

    def save_metrics(self, metrics: dict[str, Any]) -> Path:
        return atomic_write_json(self.path / METRICS_FILE, metrics)

    def load_metrics(self) -> dict[str, Any] | None:
        p = self.path / METRICS_FILE
        return json.loads(p.read_text()) if p.is_file() else None


def generator_state(generator: torch.Generator) -> torch.Tensor:
    return generator.get_state().clone()


def restore_generator(generator: torch.Generator, state: torch.Tensor) -> torch.Generator:
    generator.set_state(state)
    return generator
