"""``testbed printer-profile``: fit the user's printer + paper + camera colour model from photos of their chart.

Photos of the printed colour chart (``testbed print chart``, its sidecar JSON gives each patch's intended colour
and position) are rectified with ``camera.rectify`` and measured with ``camera.palette.measure_chart`` (inner 60 %
of each patch, trimmed mean, divided by the local paper white); the per-patch median over the photos is fitted by
``physical.printer_profile.fit_profile`` (3-D LUT / polynomial / small MLP, chosen by the CIEDE2000 error on
patches held out of the fit) and written as a plain-JSON profile.

It also gives the simulated printer a colour-transform hook (:class:`ProfiledPrinter`): a printer with a known
colour error (:class:`ColourError`) for experiments, or the simulated printer driven by a fitted profile
(:meth:`ProfiledPrinter.from_profile`), so the simulation prints through the user's measured printer.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camera.simulated import PrinterParams, SimulatedPrinter
from testbed import cli_types
from testbed.errors import ConfigError, ImageError, TestbedError

ColourTransform = Callable[[np.ndarray], np.ndarray]  # Nx3 intended sRGB in [0, 1] -> Nx3 in [0, 1]


# ------------------------------------------------------------------------------------------------ measuring
@dataclass
class ChartMeasurement:
    """Per-patch intended and measured colours (Nx3 sRGB; measured relative to paper white, median over photos)
    and one record per photo (``ok``, ``error`` or rectification summary)."""

    intended: np.ndarray
    measured: np.ndarray
    photos: list[dict[str, Any]]


def measure_chart_photos(photos: Sequence[str | Path | torch.Tensor], sheet: str | Path | dict[str, Any], *,
                         object_name: str | None = None, convert: bool = False) -> ChartMeasurement:
    """Rectify and measure every photo of the chart; photos whose markers cannot be read are named and skipped."""
    from camera.palette import measure_chart
    from camera.rectify import load_object_spec, rectify
    from camera.sources import ImageSequenceSource

    spec = load_object_spec(sheet, object_name)
    if "patches" not in spec.record:
        raise ConfigError(f"--sheet: object '{spec.name}' is a {spec.record.get('kind', 'printout')}, not a colour "
                          "chart (make one with `testbed print chart`)")
    images: list[tuple[str, torch.Tensor]] = []
    paths = [p for p in photos if not isinstance(p, torch.Tensor)]
    if paths:
        files: list[str] = []
        for item in paths:
            src = ImageSequenceSource(str(item), convert=convert)
            src.open()
            files += [str(p) for p in src.paths]
        images += [(str(f.meta["path"]), f.image) for f in ImageSequenceSource(files, convert=convert)]
    images += [(f"image {i}", p) for i, p in enumerate(photos) if isinstance(p, torch.Tensor)]
    colours, records, intended = [], [], None
    for name, image in images:
        try:
            rect = rectify(image, spec, px_per_mm=4.0, source=name)
            pal = measure_chart(rect.image, spec)
        except TestbedError as exc:
            records.append({"photo": name, "ok": False, "error": cli_types.one_line(exc)})
            continue
        colours.append(pal.colors)
        intended = pal.intended
        records.append({"photo": name, "ok": True, "tilt_deg": round(rect.tilt_deg, 2),
                        "reprojection_error_px": round(rect.reprojection_error_px, 3)})
    if not colours:
        why = "; ".join(f"{r['photo']}: {r['error']}" for r in records[:3])
        raise ImageError(f"no chart photo could be measured ({len(records)} given): {why}")
    return ChartMeasurement(np.asarray(intended, np.float64), np.median(np.stack(colours), 0).astype(np.float64),
                            records)


def fit_from_photos(photos: Sequence[str | Path | torch.Tensor], sheet: str | Path | dict[str, Any], *,
                    object_name: str | None = None, folds: int = 5, seed: int = 0, convert: bool = False):
    """Measure the chart photos and fit a profile (``physical.printer_profile.PrinterProfile``)."""
    from physical.printer_profile import fit_profile

    m = measure_chart_photos(photos, sheet, object_name=object_name, convert=convert)
    meta = {"sheet": str(sheet) if not isinstance(sheet, dict) else "(in memory)", "photos": m.photos,
            "photos_used": sum(r["ok"] for r in m.photos), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return fit_profile(m.intended, m.measured, folds=folds, seed=seed, meta=meta), m


# ------------------------------------------------------------------------------------------------ simulated printer
@dataclass(frozen=True)
class ColourError:
    """A known printer colour error, applied to the intended sRGB before the printer's own model: per-channel
    gamma, then a row-normalised 3x3 channel mix (inks bleeding into each other / a wrong colour table)."""

    mix: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    gamma: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @staticmethod
    def hue_shift(strength: float) -> ColourError:
        """Each channel takes ``strength`` of the next one (R <- G, G <- B, B <- R): a hue rotation."""
        s = float(strength)
        if not 0 <= s <= 1:
            raise ConfigError(f"colour error strength must be in [0, 1], got {strength}")
        return ColourError(mix=((1 - s, s, 0.0), (0.0, 1 - s, s), (s, 0.0, 1 - s)), gamma=(1.0, 1.0 + s / 2, 1.0))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(rgb, np.float32), 0, 1) ** np.asarray(self.gamma, np.float32)
        m = np.asarray(self.mix, np.float32)
        return np.clip(x @ (m / m.sum(1, keepdims=True)).T, 0, 1)


def transform_u8(page: np.ndarray, transform: ColourTransform) -> np.ndarray:
    """``transform`` applied to every inked pixel of an HxWx3 uint8 page (bare paper, 255, stays paper)."""
    inked = (page != 255).any(-1)
    out = page.copy()
    vals = transform(page[inked].astype(np.float32) / 255.0)
    out[inked] = np.clip(np.asarray(vals) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


class ProfiledPrinter(SimulatedPrinter):
    """A :class:`camera.simulated.SimulatedPrinter` whose driver first maps every inked colour through
    ``colour_transform`` (Nx3 intended sRGB -> Nx3), then prints as the base model does."""

    def __init__(self, params: PrinterParams | None = None, colour_transform: ColourTransform | None = None) -> None:
        super().__init__(params)
        self.colour_transform = colour_transform

    @staticmethod
    def from_profile(profile: Any, params: PrinterParams | None = None) -> ProfiledPrinter:
        """The simulated printer driven by a fitted profile: a neutral ink model (no gamut compression, no dot
        gain, ideal black) behind the profile's colours, so prints look as the profile predicts (plus halftone)."""
        base = params or PrinterParams(saturation=1.0, dot_gain_gamma=1.0, black=(0.0, 0.0, 0.0))

        def colours(rgb: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return profile.colours(torch.as_tensor(np.asarray(rgb, np.float32))).numpy()

        return ProfiledPrinter(base, colours)

    def _map(self, rgb: np.ndarray) -> np.ndarray:
        if self.colour_transform is None:
            return rgb
        shape = rgb.shape
        return np.asarray(self.colour_transform(np.asarray(rgb, np.float32).reshape(-1, 3)), np.float32).reshape(shape)

    def expected_colors(self, rgb: np.ndarray) -> np.ndarray:
        return super().expected_colors(self._map(rgb))

    def print_u8(self, page: np.ndarray, dots_per_px: int = 1) -> np.ndarray:
        if self.colour_transform is not None and isinstance(page, np.ndarray) and page.dtype == np.uint8 \
                and page.ndim == 3:
            page = transform_u8(page, self.colour_transform)
        return super().print_u8(page, dots_per_px)

    def print_linear(self, page_srgb: np.ndarray, dots_per_px: int = 1) -> np.ndarray:
        return super().print_linear(self._map(page_srgb), dots_per_px)


# ------------------------------------------------------------------------------------------------ command line
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "printer-profile",
        help="fit a colour model of your printer + paper + camera from photos of the printed chart",
        description="Rectifies each photo of the chart printed by `testbed print chart`, measures its patches "
                    "relative to paper white, compares a 3-D LUT, polynomials and a small MLP by the CIEDE2000 "
                    "error on patches held out of the fit, and writes the best as a plain-JSON profile. Use it "
                    "with `printer_profile: profile.json` in an EOT config, and as a palette (--palette profile.json) "
                    "for the NPS loss. --check PROFILE validates an existing profile and prints its figures.")
    p.add_argument("photos", nargs="*", help="chart photos: files, folders or globs")
    p.add_argument("--sheet", help="the chart's sidecar JSON (from `testbed print chart`)")
    p.add_argument("--object", help="object name in the sidecar (default: the first)")
    p.add_argument("--out", type=cli_types.output_file, help="profile JSON to write")
    p.add_argument("--folds", type=cli_types.integer(2, 20), default=5, help="held-out folds (cross-validation)")
    p.add_argument("--seed", type=cli_types.seed, default=0, help="seed of the fold split and the MLP's start")
    p.add_argument("--check", metavar="PROFILE", help="validate a profile file and print its figures (no fitting)")
    p.add_argument("--convert-images", action="store_true", help="convert grayscale/RGBA/16-bit explicitly")
    p.set_defaults(func=run)


def _print_fit(fit: dict[str, Any]) -> None:
    h = fit.get("held_out_de2000", {})
    print(f"chosen model: {fit.get('chosen')}  held-out CIEDE2000 over {fit.get('n_patches')} patches "
          f"({fit.get('folds')}-fold): mean {h.get('mean')}, p95 {h.get('p95')}, max {h.get('max')}")
    u = fit.get("unprofiled_de2000")
    if u:
        print(f"without a profile (intended colour as the prediction): mean {u['mean']}, p95 {u['p95']}")
    for label, c in (fit.get("candidates") or {}).items():
        print(f"  {label:14s} mean {c.get('mean'):>7}  p95 {c.get('p95'):>7}  max {c.get('max'):>7}")


def run(args: argparse.Namespace) -> int:
    """Handler of ``testbed printer-profile``."""
    from physical.printer_profile import load_profile

    if args.check:
        if args.photos or args.out:
            raise ConfigError("--check PROFILE takes no photos and no --out")
        prof = load_profile(args.check)
        print(f"{args.check}: valid printer profile ({prof.kind} model)")
        _print_fit(prof.fit)
        return 0
    if not args.photos or not args.sheet or not args.out:
        raise ConfigError("give chart PHOTOS, --sheet chart.json and --out profile.json (or --check PROFILE)")
    prof, m = fit_from_photos(args.photos, args.sheet, object_name=args.object, folds=args.folds, seed=args.seed,
                              convert=args.convert_images)
    for r in m.photos:
        if not r["ok"]:
            print(f"skipped {r['photo']}: {r['error']}")
    prof.save(args.out)
    print(f"profile from {prof.meta['photos_used']} of {len(m.photos)} photo(s), {len(m.intended)} patches "
          f"-> {args.out}")
    _print_fit(prof.fit)
    return 0
