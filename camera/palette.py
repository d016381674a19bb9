"""Measure a printer's printable colours from a photo of the printed colour chart.

Procedure: rectify the chart (``camera.rectify``), then for each patch take a trimmed mean of its inner area in
linear light and divide by the local paper white, which is a smooth (quadratic) surface fitted to the white
gaps between the patches - this removes exposure, white balance and uneven lighting. Colours are therefore
relative to paper white = (1, 1, 1) unless ``paper_white`` is given.

The result is a :class:`testbed.palette.Palette`: the palette file format, its one loader (``load_palette``, an
Nx3 tensor for the NPS loss) and the shipped default live in ``testbed/palette.py``, which needs no OpenCV.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from camera.rectify import ObjectSpec, Rectified, load_object_spec, rectify
from camera.simulated import linear_to_srgb, srgb_to_linear
from testbed.errors import ConfigError, ImageError
from testbed.palette import Palette


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
    """CIEDE2000 colour difference between Nx3 sRGB arrays in [0, 1] (D65): the project's one implementation,
    ``physical.printer_profile`` (checked against scikit-image and Sharma's published pairs)."""
    from physical.printer_profile import delta_e2000_rgb

    return delta_e2000_rgb(rgb_a, rgb_b)
