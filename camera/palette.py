"""Measure a printer's printable colours from a photo of the printed colour chart; palette files for NPS.

Procedure: rectify the chart (``camera.rectify``), then for each patch take a trimmed mean of its inner area in
linear light and divide by the local paper white, which is a smooth (quadratic) surface fitted to the white
gaps between the patches - this removes exposure, white balance and uneven lighting. Colours are therefore
relative to paper white = (1, 1, 1) unless ``paper_white`` is given.

Palette files: JSON ``{"format": "testbed-palette/1", "colors": [[r, g, b], ...], ...}`` or CSV with a
``r,g,b`` header; values are sRGB in [0, 1]. :func:`load_palette` returns an Nx3 float tensor for the NPS loss.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from camera.rectify import ObjectSpec, Rectified, load_object_spec, rectify
from camera.simulated import linear_to_srgb, srgb_to_linear
from testbed.errors import ConfigError, ImageError

DEFAULT_PALETTE_PATH = Path(__file__).with_name("data") / "default_palette.json"


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
            doc = {"format": "testbed-palette/1", "space": "sRGB, relative to paper white", "n": len(self.colors),
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
        p.parent.mkdir(parents=True, exist_ok=True)
        partial = p.with_name(p.name + ".partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, p)
        finally:
            partial.unlink(missing_ok=True)
        return p


def _check_colors(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0:
        raise ConfigError(f"{where}: palette must be a non-empty list of [r, g, b], got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise ConfigError(f"{where}: palette values must be in [0, 1] (sRGB), got [{arr.min():.4g}, {arr.max():.4g}]")
    return arr.astype(np.float32)


def read_palette(path: str | Path) -> Palette:
    """Read a palette JSON/CSV file (through ``testbed.inputs``: size, UTF-8, nesting and every colour checked)."""
    from testbed.inputs import color_triples, load_json, read_text

    p = Path(path)
    where = f"palette file {p}"
    suffix = p.suffix.lower()
    if suffix == ".json":
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
        colors = _check_colors(color_triples(cols, where=where), where)
        if intended is not None:
            intended = color_triples(intended, where=where, key="intended").astype(np.float32)
            if len(intended) != len(colors):
                raise ConfigError(f"{where}: 'intended' has {len(intended)} colours but 'colors' has {len(colors)}")
        if not isinstance(meta, dict):
            raise ConfigError(f"{where}: 'meta' must be an object, got {type(meta).__name__}")
        return Palette(colors, intended, meta)
    if suffix == ".csv":
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
        return Palette(_check_colors(color_triples(values, where=where), where))
    raise ConfigError(f"palette file {p} must end in .json or .csv")


def load_palette(path: str | Path | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """An Nx3 float tensor of printable colours (sRGB in [0, 1]); ``None``: the default palette."""
    return read_palette(path if path is not None else DEFAULT_PALETTE_PATH).tensor(device)


def default_palette() -> Palette:
    """The shipped default palette (see ``docs/printouts-and-camera.md`` for how it was made)."""
    return read_palette(DEFAULT_PALETTE_PATH)


def _fit_quadratic(xy: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least-squares quadratic surface coefficients (6 x C) for values (N x C) at points xy (N x 2)."""
    x, y = xy[:, 0], xy[:, 1]
    A = np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])
    coef, *_ = np.linalg.lstsq(A, values, rcond=None)
    return coef


def _eval_quadratic(coef: np.ndarray, xy: np.ndarray) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]
    return np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y]) @ coef


def _trimmed_mean(v: np.ndarray, trim: float = 0.1) -> np.ndarray:
    lo, hi = np.quantile(v, [trim, 1 - trim], axis=0)
    out = np.empty(v.shape[1], np.float64)
    for c in range(v.shape[1]):
        col = v[:, c]
        sel = col[(col >= lo[c]) & (col <= hi[c])]
        out[c] = sel.mean() if sel.size else col.mean()
    return out


def measure_chart(rectified: torch.Tensor, spec: ObjectSpec, *, inner: float = 0.6,
                  paper_white: Sequence[float] = (1.0, 1.0, 1.0)) -> Palette:
    """Patch colours from a rectified chart image (the chart's digital frame, any px/mm)."""
    rec = spec.record
    if "patches" not in rec:
        raise ConfigError(f"object '{spec.name}' is not a colour chart (its sidecar record has no 'patches')")
    if not 0 < inner <= 1:
        raise ConfigError(f"inner must be in (0, 1], got {inner}")
    img = rectified[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    lin = srgb_to_linear(img)
    H, W = lin.shape[:2]
    sx, sy = W / spec.width_mm, H / spec.height_mm
    gap = float(rec["gap_mm"])
    # paper samples: centre lines of the white gaps, away from patch edges (blur)
    white_pts, white_vals = [], []
    half = max(1, int(0.2 * gap * min(sx, sy)))
    xs_lines = sorted({round(p["x_mm"] - gap / 2, 6) for p in rec["patches"]} |
                      {round(p["x_mm"] + p["w_mm"] + gap / 2, 6) for p in rec["patches"]})
    ys_lines = sorted({round(p["y_mm"] - gap / 2, 6) for p in rec["patches"]} |
                      {round(p["y_mm"] + p["h_mm"] + gap / 2, 6) for p in rec["patches"]})
    step = max(1, int(2 * min(sx, sy)))
    for xm in xs_lines:
        c = int(xm * sx)
        for r in range(half, H - half, step):
            white_pts.append((xm, (r + 0.5) / sy))
            white_vals.append(np.median(lin[r - half:r + half + 1, max(0, c - half):c + half + 1].reshape(-1, 3), 0))
    for ym in ys_lines:
        r = int(ym * sy)
        for c in range(half, W - half, step):
            white_pts.append(((c + 0.5) / sx, ym))
            white_vals.append(np.median(lin[max(0, r - half):r + half + 1, c - half:c + half + 1].reshape(-1, 3), 0))
    wp, wv = np.asarray(white_pts), np.asarray(white_vals)
    # robust fit: drop samples far from a first fit (e.g. specular glints, dirt)
    coef = _fit_quadratic(wp, wv)
    resid = np.abs(wv - _eval_quadratic(coef, wp)).max(1)
    keep = resid <= max(3 * np.median(resid), 1e-4)
    coef = _fit_quadratic(wp[keep], wv[keep])
    if (_eval_quadratic(coef, wp[keep]) <= 0.02).any():
        raise ImageError(f"chart '{spec.name}': the paper between patches is almost black: under-exposed, or not "
                         "the chart's printed side")
    colors, intended = [], []
    pw = np.asarray(paper_white, np.float64)
    for p in rec["patches"]:
        cx, cy = p["x_mm"] + p["w_mm"] / 2, p["y_mm"] + p["h_mm"] / 2
        hw, hh = p["w_mm"] * inner / 2, p["h_mm"] * inner / 2
        c0, c1 = int((cx - hw) * sx), int(np.ceil((cx + hw) * sx))
        r0, r1 = int((cy - hh) * sy), int(np.ceil((cy + hh) * sy))
        region = lin[r0:r1, c0:c1].reshape(-1, 3)
        if region.size == 0:
            raise ImageError(f"chart '{spec.name}': patch {p['index']} covers no pixels at this resolution")
        white = _eval_quadratic(coef, np.array([[cx, cy]]))[0]
        colors.append(_trimmed_mean(region) / white * srgb_to_linear(pw))
        intended.append(np.asarray(p["rgb"], np.float64) / 255.0)
    measured = linear_to_srgb(np.clip(np.asarray(colors), 0, 1))
    clipped = int((np.asarray(colors) > 1.0).any(1).sum())
    return Palette(measured.astype(np.float32), np.asarray(intended, np.float32),
                   {"n_white_samples": int(keep.sum()), "patches_brighter_than_paper": clipped})


def measure_palette(image: torch.Tensor, sidecar: str | Path | dict[str, Any], *, name: str | None = None,
                    px_per_mm: float = 4.0, source: str = "image", **rectify_kw: Any) -> tuple[Palette, Rectified]:
    """Rectify a photo of the printed chart and measure its patches (see module docstring)."""
    spec = load_object_spec(sidecar, name)
    rect = rectify(image, spec, px_per_mm=px_per_mm, source=source, **rectify_kw)
    pal = measure_chart(rect.image, spec)
    pal.meta.update({"source": source, "tilt_deg": rect.tilt_deg, "reprojection_error_px": rect.reprojection_error_px,
                     "markers_used": rect.markers_used})
    return pal, rect


def delta_e2000(rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference between Nx3 sRGB arrays in [0, 1] (via scikit-image, D65)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    a = rgb2lab(np.asarray(rgb_a, np.float64).reshape(-1, 1, 3)).reshape(-1, 3)
    b = rgb2lab(np.asarray(rgb_b, np.float64).reshape(-1, 1, 3)).reshape(-1, 3)
    return deltaE_ciede2000(a, b)
