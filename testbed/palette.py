"""Printer palettes: the one palette file format, its loader and the shipped default (no OpenCV, no camera).

A palette is the set of colours a printer can reproduce, Nx3 sRGB in [0, 1]; the NPS loss (``physical.regularizers``)
pulls a perturbation towards it. Files: JSON ``{"format": "testbed-palette/1", "colors": [[r, g, b], ...],
"intended": [...], "meta": {...}}`` (only ``colors`` is required; a bare list of triples is accepted too) or CSV
with an ``r,g,b`` header. Every read goes through ``testbed.inputs`` (size, UTF-8, nesting and each colour checked).

The default (``DEFAULT_PALETTE_PATH``, ``testbed/data/default_palette.json``) is the default ``SimulatedPrinter``
applied to the default 130-patch colour chart: ink black ~0.2, paper white 1.0, primaries desaturated. It is the
same data a chart measurement (``camera.palette.measure_palette``) writes, so attacks optimised with the default
and with a measured palette use one format and one loader. Measure your own printer for real prints.
"""
from __future__ import annotations

import copy
import csv
import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testbed.errors import ConfigError
from testbed.runs import write_atomic

DEFAULT_PALETTE_PATH = Path(__file__).with_name("data") / "default_palette.json"
PALETTE_FORMAT = "testbed-palette/1"


@dataclass
class Palette:
    """Printable colours (Nx3 sRGB in [0, 1]) and, when measured from a chart, the intended colours."""

    colors: np.ndarray
    intended: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.as_tensor(self.colors, dtype=torch.float32, device=device)

    def save(self, path: str | Path) -> Path:
        """Write JSON (``.json``) or CSV (``.csv``) atomically."""
        p = Path(path)
        if p.suffix.lower() == ".json":
            doc = {"format": PALETTE_FORMAT, "space": "sRGB, relative to paper white", "n": len(self.colors),
                   "colors": np.round(self.colors, 6).tolist(), "meta": self.meta}
            if self.intended is not None:
                doc["intended"] = np.round(self.intended, 6).tolist()
            data = json.dumps(doc, indent=1).encode()
        elif p.suffix.lower() == ".csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["r", "g", "b"] + (["intended_r", "intended_g", "intended_b"] if self.intended is not None
                                          else []))
            for i, c in enumerate(self.colors):
                row = [f"{v:.6f}" for v in c]
                if self.intended is not None:
                    row += [f"{v:.6f}" for v in self.intended[i]]
                w.writerow(row)
            data = buf.getvalue().encode()
        else:
            raise ConfigError(f"palette file {p} must end in .json or .csv")
        return write_atomic(p, data)


def _colors(value: Any, where: str, key: str = "colors") -> np.ndarray:
    """A checked Nx3 float32 array (the one colour check: ``testbed.inputs.color_triples``)."""
    from testbed.inputs import color_triples

    return color_triples(value, where=where, key=key).astype(np.float32)


def read_palette(path: str | Path) -> Palette:
    """Read a palette file: CSV when it ends in ``.csv``, JSON otherwise (a folder, FIFO, empty or malformed file
    is refused by ``testbed.inputs`` naming it)."""
    from testbed.inputs import load_json, read_text

    p = Path(path)
    where = f"palette file {p}"
    if p.suffix.lower() == ".csv":
        text = read_text(p, what="palette file")
        try:
            rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), 1) if r]
        except csv.Error as exc:
            raise ConfigError(f"{where} is not valid CSV: {exc}") from None
        if rows and [v.strip().lower() for v in rows[0][1][:3]] == ["r", "g", "b"]:
            rows = rows[1:]
        values = []
        for n, r in rows:
            if len(r) < 3:
                raise ConfigError(f"{where} line {n}: {len(r)} value(s); each row needs r,g,b")
            row = []
            for v in r[:3]:
                try:
                    row.append(float(v))
                except ValueError:
                    raise ConfigError(f"{where} line {n}: {v.strip()[:30]!r} is not a number") from None
            values.append(row)
        return Palette(_colors(values, where))
    doc = load_json(p, what="palette file")
    if isinstance(doc, dict):
        if "colors" not in doc:
            raise ConfigError(f"{where} has no 'colors' list")
        cols, intended, meta = doc["colors"], doc.get("intended"), doc.get("meta", {})
    elif isinstance(doc, list):
        cols, intended, meta = doc, None, {}
    else:
        raise ConfigError(f"{where} must hold a JSON object with a 'colors' list (or a list of [r, g, b]), "
                          f"got {type(doc).__name__}")
    colors = _colors(cols, where)
    if intended is not None:
        intended = _colors(intended, where, key="intended")
        if len(intended) != len(colors):
            raise ConfigError(f"{where}: 'intended' has {len(intended)} colours but 'colors' has {len(colors)}")
    if not isinstance(meta, dict):
        raise ConfigError(f"{where}: 'meta' must be an object, got {type(meta).__name__}")
    return Palette(colors, intended, meta)


@functools.lru_cache(maxsize=1)
def _shipped_default() -> Palette:
    return read_palette(DEFAULT_PALETTE_PATH)


def default_palette() -> Palette:
    """The shipped default palette (module docstring; ``docs/eot-engine.md`` says why it is the default).

    The file is read once per process; each call returns a fresh copy.
    """
    d = _shipped_default()
    return Palette(d.colors.copy(), None if d.intended is None else d.intended.copy(), copy.deepcopy(d.meta))


def load_palette(path: str | Path | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """An Nx3 float32 tensor of printable colours for the NPS loss; ``None``: the default palette."""
    pal = read_palette(path) if path is not None else _shipped_default()
    return torch.tensor(pal.colors, dtype=torch.float32, device=device)


def resolve_palette(palette: torch.Tensor | str | Path | None) -> torch.Tensor:
    """A palette tensor from a tensor (checked like a file's colours), a file path, or None (the default)."""
    if palette is None:
        return load_palette()
    if isinstance(palette, torch.Tensor):
        if palette.ndim != 2:
            raise ConfigError(f"palette: a palette must be a (K, 3) tensor of RGB colours, got {tuple(palette.shape)}")
        _colors(palette.detach().cpu().tolist(), "palette")
        return palette.float()
    return load_palette(palette)
