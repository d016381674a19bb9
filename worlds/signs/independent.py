"""An independent held-out set of traffic-sign images: drawn by a different method than the training renderer.

Why it is independent of what ``sign-cnn`` is trained on (:mod:`worlds.signs.render` + :mod:`worlds.signs.dataset`):

* **Geometry**: every sign is hand-written here as vector paths from the German designs (Vienna convention), with
  its own coordinates, proportions and pictograms (e.g. the cars are seen from behind, not from the front; the
  arrows have their own shafts, bends and heads). Nothing is imported from ``render`` or ``dataset``; the only
  shared thing is the label order (``testbed.models.signs.SIGN_CLASS_NAMES``). ``tests/test_sign_artwork.py``
  checks the imports.
* **Rasteriser**: matplotlib's Agg renderer (``RendererAgg.draw_path``: Bezier circles, stroked joins and caps),
  not PIL's ``ImageDraw``; legends are glyph outlines (``matplotlib.textpath.TextPath``) in Computer Modern Sans
  and Computer Modern Bold, fonts neither artwork split of the renderer uses.
* **Scene and camera**: perspective by ``skimage.transform.ProjectiveTransform`` + ``warp`` (not OpenCV), blur by
  ``scipy.ndimage``, JPEG by PIL (not OpenCV), on backgrounds the training set never shows: street scenes drawn
  here (sky, facades with windows, trees, road) and images of scikit-image / matplotlib that are not in
  ``testbed.photos`` (clock, text, cell micrograph, and the shaded-relief terrain of matplotlib's sample data).

It is never used in training or model selection: sign-cnn is trained and its epochs are judged on the rendered
splits only; this set is rendered after training, to measure (``testbed signs evaluate --data independent``).
Deterministic: sample ``i`` of seed ``s`` is drawn from ``numpy.random.default_rng([s, 0x1D, i])``.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from testbed.errors import ConfigError
from testbed.models.signs import SIGN_CLASS_NAMES

INDEPENDENT_FONTS: tuple[str, ...] = ("cmss10", "cmb10")
_CANVAS = 160  # sign canvas side in pixels before the camera

# Paints chosen here (not the renderer's values), each sample shifts them.
_PAINT = {"red": (0.80, 0.07, 0.16), "blue": (0.05, 0.33, 0.62), "yellow": (0.98, 0.78, 0.05),
          "white": (0.97, 0.97, 0.95), "black": (0.08, 0.08, 0.08), "grey": (0.52, 0.52, 0.52),
          "green": (0.1, 0.65, 0.3), "amber": (1.0, 0.65, 0.0)}


@dataclass(frozen=True)
class _Style:
    paint: dict
    font: str
    ring: float  # red ring width of discs, fraction of the diameter
    border: float  # red border width of triangles, fraction of the side
    rim: float  # thin white outer rim, fraction of the diameter
    legend: float  # legend height multiplier
    bold: float  # extra legend stroke width, fraction of the canvas
    shaft: float  # arrow shaft width, fraction of the canvas
    head: float  # arrowhead size multiplier
    barb: float  # arrowhead notch depth (fraction of its length): 0.1 nearly triangular, 0.35 barbed
    bend: float  # bend radius of the turn arrows, fraction of the canvas
    reach: float  # where arrow shafts start at the bottom (y, fraction of the canvas)


class _Pen:
    """Paths on a square canvas in design units (0..1, y down), rasterised by matplotlib's Agg."""

    def __init__(self, n: int, style: _Style) -> None:
        from matplotlib.backends.backend_agg import RendererAgg
        from matplotlib.transforms import Affine2D

        self.n, self.s = n, style
        self.r = RendererAgg(n, n, 72)
        self.tf = Affine2D().scale(n, -n).translate(0, n)

    def col(self, name: str) -> tuple[float, float, float, float]:
        return (*self.s.paint[name], 1.0)

    def fill(self, path, colour: str, stroke: float = 0.0, join: str = "round") -> None:
        gc = self.r.new_gc()
        gc.set_antialiased(True)
        gc.set_linewidth(stroke * self.n)
        if stroke > 0:
            gc.set_foreground(self.col(colour))
            gc.set_joinstyle(join)
        self.r.draw_path(gc, path, self.tf, self.col(colour))
        gc.restore()

    def stroke(self, pts, width: float, colour: str, cap: str = "butt") -> None:
        from matplotlib.path import Path

        gc = self.r.new_gc()
        gc.set_antialiased(True)
        gc.set_linewidth(width * self.n)
        gc.set_foreground(self.col(colour))
        gc.set_capstyle(cap)
        gc.set_joinstyle("round")
        self.r.draw_path(gc, Path(np.asarray(pts, float)), self.tf, None)
        gc.restore()

    def circle(self, c, r: float, colour: str) -> None:
        from matplotlib.path import Path

        self.fill(Path.circle(c, r), colour)

    def polygon(self, pts, colour: str, rounding: float = 0.0) -> None:
        from matplotlib.path import Path

        pts = np.asarray(pts, float)
        if rounding > 0:  # shrink, then a round-joined stroke grows it back: rounded corners
            c = pts.mean(0)
            inset = []
            for i in range(len(pts)):
                a, b, d = pts[i - 1], pts[i], pts[(i + 1) % len(pts)]
                e1, e2 = (b - a) / np.linalg.norm(b - a), (d - b) / np.linalg.norm(d - b)
                bis = (e2 - e1)
                bis = bis / (np.linalg.norm(bis) + 1e-12)
                half = math.acos(max(-1.0, min(1.0, float(-e1 @ e2)))) / 2
                inset.append(b + bis * rounding / max(math.sin(half), 1e-3) * (1 if (c - b) @ bis > 0 else -1))
            self.fill(Path(np.vstack([inset, inset[:1]]), closed=True), colour, stroke=2 * rounding)
        else:
            self.fill(Path(np.vstack([pts, pts[:1]]), closed=True), colour)

    def text(self, text: str, centre, height: float, colour: str, width: float | None = None) -> None:
        """``text`` as glyph outlines, ``height`` tall (cap height), centred at ``centre``; ``width``: its width
        (stretched or condensed), default its natural width."""
        from matplotlib.path import Path

        glyphs = _glyph_path(text, self.s.font)
        v = glyphs.vertices.copy()
        x0, y0 = v.min(0)
        x1, y1 = v.max(0)
        h = height * self.s.legend
        w = (width * self.s.legend if width else h * (x1 - x0) / (y1 - y0))
        v[:, 0] = centre[0] - w / 2 + (v[:, 0] - x0) / (x1 - x0) * w
        v[:, 1] = centre[1] + h / 2 - (v[:, 1] - y0) / (y1 - y0) * h  # glyph y is up
        self.fill(Path(v, glyphs.codes), colour, stroke=self.s.bold, join="miter")

    def arrowhead(self, tip, direction_deg: float, length: float, width: float, colour: str) -> None:
        d = np.array([math.cos(math.radians(direction_deg)), math.sin(math.radians(direction_deg))])
        nrm = np.array([-d[1], d[0]])
        length, width = length * self.s.head, width * self.s.head
        base = np.asarray(tip) - d * length
        self.polygon([tip, base + nrm * width / 2, base + d * length * self.s.barb, base - nrm * width / 2], colour)

    def rgba(self) -> np.ndarray:
        return np.asarray(self.r.buffer_rgba(), dtype=np.float32) / 255.0


@lru_cache(maxsize=64)
def _glyph_path(text: str, font: str):
    import matplotlib
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    fname = f"{matplotlib.get_data_path()}/fonts/ttf/{font}.ttf"
    return TextPath((0, 0), text, size=100, prop=FontProperties(fname=fname))


# ---- sign designs (German Verkehrszeichen, written from the designs, in canvas units 0..1) ----------------------
def _ring_disc(p: _Pen) -> None:
    p.circle((0.5, 0.5), 0.5, "white")
    p.circle((0.5, 0.5), 0.5 - p.s.rim, "red")
    p.circle((0.5, 0.5), 0.5 - p.s.rim - p.s.ring, "white")


def _blue_disc(p: _Pen) -> None:
    p.circle((0.5, 0.5), 0.5, "white")
    p.circle((0.5, 0.5), 0.5 - p.s.rim, "blue")


def _end_disc(p: _Pen) -> None:
    p.circle((0.5, 0.5), 0.5, "black")
    p.circle((0.5, 0.5), 0.5 - 0.006, "white")


def _cancel_lines(p: _Pen, n: int = 5) -> None:
    """Thin diagonal lines from upper right to lower left across the disc."""
    for k in range(n):
        off = (k - (n - 1) / 2) * 0.04
        a = np.array([0.5 + 0.31 + off * 0.7071, 0.5 - 0.31 + off * 0.7071])
        b = np.array([0.5 - 0.31 + off * 0.7071, 0.5 + 0.31 + off * 0.7071])
        shrink = abs(off) * 0.9
        d = (b - a) / np.linalg.norm(b - a)
        p.stroke([a + d * shrink, b - d * shrink], 0.016, "black")


def _triangle(p: _Pen, apex_up: bool = True) -> None:
    h = math.sqrt(3) / 2
    top, bot = (0.5 - h / 2, 0.5 + h / 2)
    outer = [(0.5, top), (1.0, bot), (0.0, bot)] if apex_up else [(0.0, top), (1.0, top), (0.5, bot)]
    c = np.mean(outer, 0)
    p.polygon(outer, "white", rounding=0.035)
    inset = lambda pts, t: [tuple(c + (np.asarray(q) - c) * (1 - t)) for q in pts]  # noqa: E731
    p.polygon(inset(outer, 0.03), "red", rounding=0.03)
    p.polygon(inset(outer, 0.03 + 3 * p.s.border), "white", rounding=0.012)


def _car_rear(p: _Pen, cx: float, cy: float, w: float, colour: str) -> None:
    """A car seen from behind: body, cabin, wheels, rear window."""
    p.polygon([(cx - 0.3 * w, cy - 0.05 * w), (cx - 0.22 * w, cy - 0.4 * w), (cx + 0.22 * w, cy - 0.4 * w),
               (cx + 0.3 * w, cy - 0.05 * w)], colour, rounding=0.01 * w)
    p.polygon([(cx - 0.5 * w, cy - 0.08 * w), (cx + 0.5 * w, cy - 0.08 * w), (cx + 0.5 * w, cy + 0.3 * w),
               (cx - 0.5 * w, cy + 0.3 * w)], colour, rounding=0.05 * w)
    for sx in (-1, 1):
        p.polygon([(cx + sx * 0.44 * w, cy + 0.25 * w), (cx + sx * 0.26 * w, cy + 0.25 * w),
                   (cx + sx * 0.26 * w, cy + 0.5 * w), (cx + sx * 0.44 * w, cy + 0.5 * w)], colour)
    p.polygon([(cx - 0.17 * w, cy - 0.32 * w), (cx + 0.17 * w, cy - 0.32 * w), (cx + 0.21 * w, cy - 0.12 * w),
               (cx - 0.21 * w, cy - 0.12 * w)], "white")


def _walker(p: _Pen, cx: float, top: float, h: float, colour: str, lw: float) -> None:
    """A walking person, mid-stride, facing right."""
    p.circle((cx + 0.04 * h, top + 0.09 * h), 0.085 * h, colour)
    sh, hip = (cx + 0.02 * h, top + 0.24 * h), (cx - 0.03 * h, top + 0.58 * h)
    p.stroke([sh, hip], lw * 1.4, colour, cap="round")
    p.stroke([sh, (cx + 0.16 * h, top + 0.4 * h), (cx + 0.2 * h, top + 0.52 * h)], lw, colour, cap="round")
    p.stroke([sh, (cx - 0.13 * h, top + 0.38 * h), (cx - 0.2 * h, top + 0.5 * h)], lw, colour, cap="round")
    p.stroke([hip, (cx + 0.08 * h, top + 0.78 * h), (cx + 0.16 * h, top + 0.98 * h)], lw * 1.1, colour, cap="round")
    p.stroke([hip, (cx - 0.12 * h, top + 0.78 * h), (cx - 0.24 * h, top + 0.96 * h)], lw * 1.1, colour, cap="round")


def _speed(text: str) -> Callable[[_Pen], None]:
    def draw(p: _Pen) -> None:
        _ring_disc(p)
        p.text(text, (0.5, 0.5), 0.36, "black", width=0.26 * len(text) if len(text) < 3 else 0.56)

    return draw


def _end_80(p: _Pen) -> None:
    _end_disc(p)
    p.text("80", (0.5, 0.5), 0.36, "grey", width=0.5)
    _cancel_lines(p)


def _no_overtaking(p: _Pen) -> None:
    _ring_disc(p)
    _car_rear(p, 0.34, 0.5, 0.24, "red")
    _car_rear(p, 0.66, 0.5, 0.24, "black")


def _end_no_overtaking(p: _Pen) -> None:
    _end_disc(p)
    _car_rear(p, 0.34, 0.5, 0.24, "grey")
    _car_rear(p, 0.66, 0.5, 0.24, "grey")
    _cancel_lines(p)


def _right_of_way(p: _Pen) -> None:
    _triangle(p)
    p.polygon([(0.475, 0.36), (0.525, 0.36), (0.54, 0.8), (0.46, 0.8)], "black")
    p.polygon([(0.37, 0.555), (0.63, 0.555), (0.63, 0.6), (0.37, 0.6)], "black")


def _priority(p: _Pen) -> None:
    p.polygon([(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)], "black", rounding=0.012)
    p.polygon([(0.5, 0.012), (0.988, 0.5), (0.5, 0.988), (0.012, 0.5)], "white", rounding=0.01)
    k = 0.5 - 0.2 * p.s.ring / 0.1
    p.polygon([(0.5, k), (1 - k, 0.5), (0.5, 1 - k), (k, 0.5)], "yellow")


def _yield(p: _Pen) -> None:
    _triangle(p, apex_up=False)


def _stop(p: _Pen) -> None:
    pts = [(0.5 + 0.5 / math.cos(math.pi / 8) * math.cos(math.pi / 8 + k * math.pi / 4),
            0.5 + 0.5 / math.cos(math.pi / 8) * math.sin(math.pi / 8 + k * math.pi / 4)) for k in range(8)]
    p.polygon(pts, "white")
    c = np.array([0.5, 0.5])
    p.polygon([tuple(c + (np.asarray(q) - c) * (1 - 2 * p.s.rim - 0.01)) for q in pts], "red")
    p.text("STOP", (0.5, 0.5), 0.25, "white", width=0.66)


def _no_vehicles(p: _Pen) -> None:
    _ring_disc(p)


def _no_entry(p: _Pen) -> None:
    p.circle((0.5, 0.5), 0.5, "white")
    p.circle((0.5, 0.5), 0.5 - p.s.rim, "red")
    p.polygon([(0.18, 0.42), (0.82, 0.42), (0.82, 0.58), (0.18, 0.58)], "white")


def _caution(p: _Pen) -> None:
    _triangle(p)
    p.polygon([(0.465, 0.38), (0.535, 0.38), (0.515, 0.68), (0.485, 0.68)], "black", rounding=0.008)
    p.circle((0.5, 0.75), 0.036, "black")


def _signals(p: _Pen) -> None:
    _triangle(p)
    p.polygon([(0.435, 0.36), (0.565, 0.36), (0.565, 0.82), (0.435, 0.82)], "black", rounding=0.02)
    for y, c in ((0.44, "red"), (0.59, "amber"), (0.74, "green")):
        p.circle((0.5, y), 0.048, c)


def _pedestrians(p: _Pen) -> None:
    _triangle(p)
    _walker(p, 0.5, 0.37, 0.43, "black", 0.04)


def _end_all(p: _Pen) -> None:
    _end_disc(p)
    _cancel_lines(p, 6)


def _turn(right: bool, straight: bool) -> Callable[[_Pen], None]:
    def draw(p: _Pen) -> None:
        _blue_disc(p)
        m = (lambda x: x) if right else (lambda x: 1 - x)
        w = p.s.shaft
        x0 = 0.44 if straight else 0.38
        if straight:
            p.stroke([(m(x0), p.s.reach), (m(x0), 0.32)], w, "white")
            p.arrowhead((m(x0), 0.13), -90, 0.22, 0.28, "white")
        r = p.s.bend
        ys = 0.64 if straight else 0.6
        arc = [(m(x0 + r - r * math.cos(t)), ys - r * math.sin(t)) for t in np.linspace(0, math.pi / 2, 16)]
        p.stroke([(m(x0), p.s.reach)] + arc + [(m(x0 + r + 0.06), ys - r)], w, "white")
        p.arrowhead((m(x0 + r + 0.27), ys - r), 0 if right else 180, 0.22, 0.28, "white")

    return draw


def _ahead(p: _Pen) -> None:
    _blue_disc(p)
    p.stroke([(0.5, p.s.reach), (0.5, 0.35)], p.s.shaft * 1.1, "white")
    p.arrowhead((0.5, 0.13), -90, 0.25, 0.32, "white")


def _keep(right: bool) -> Callable[[_Pen], None]:
    def draw(p: _Pen) -> None:
        _blue_disc(p)
        m = (lambda x: x) if right else (lambda x: 1 - x)
        p.stroke([(m(0.25), 0.25), (m(0.6), 0.6)], p.s.shaft * 1.1, "white")
        p.arrowhead((m(0.78), 0.78), 45 if right else 135, 0.28, 0.32, "white")

    return draw


def _roundabout(p: _Pen) -> None:
    _blue_disc(p)
    r = 0.21
    for k in range(3):
        a0 = math.radians(-90 + 120 * k)
        ts = np.linspace(a0, a0 - math.radians(72), 12)
        p.stroke([(0.5 + r * math.cos(t), 0.5 + r * math.sin(t)) for t in ts], p.s.shaft * 0.8, "white")
        te = a0 - math.radians(72)
        tip = (0.5 + r * math.cos(te - 0.55), 0.5 + r * math.sin(te - 0.55))
        base = (0.5 + r * math.cos(te), 0.5 + r * math.sin(te))
        p.arrowhead(tip, math.degrees(math.atan2(tip[1] - base[1], tip[0] - base[0])), 0.13, 0.2, "white")


def _crossing(p: _Pen) -> None:
    p.polygon([(0, 0), (1, 0), (1, 1), (0, 1)], "white", rounding=0.05)
    p.polygon([(0.015, 0.015), (0.985, 0.015), (0.985, 0.985), (0.015, 0.985)], "blue", rounding=0.045)
    p.polygon([(0.5, 0.19), (0.85, 0.8), (0.15, 0.8)], "white", rounding=0.02)
    for k in range(4):
        x = 0.33 + k * 0.09
        p.polygon([(x, 0.72), (x + 0.05, 0.72), (x + 0.05, 0.76), (x, 0.76)], "black")
    _walker(p, 0.5, 0.36, 0.34, "black", 0.032)


_DESIGNS: dict[str, tuple[str, Callable[[_Pen], None]]] = {
    "speed_limit_20": ("circle", _speed("20")), "speed_limit_30": ("circle", _speed("30")),
    "speed_limit_50": ("circle", _speed("50")), "speed_limit_60": ("circle", _speed("60")),
    "speed_limit_70": ("circle", _speed("70")), "speed_limit_80": ("circle", _speed("80")),
    "end_speed_limit_80": ("circle", _end_80), "speed_limit_100": ("circle", _speed("100")),
    "speed_limit_120": ("circle", _speed("120")), "no_overtaking": ("circle", _no_overtaking),
    "right_of_way_next_intersection": ("triangle", _right_of_way), "priority_road": ("diamond", _priority),
    "yield": ("triangle", _yield), "stop": ("octagon", _stop), "no_vehicles": ("circle", _no_vehicles),
    "no_entry": ("circle", _no_entry), "general_caution": ("triangle", _caution),
    "traffic_signals": ("triangle", _signals), "pedestrians": ("triangle", _pedestrians),
    "end_all_limits": ("circle", _end_all), "turn_right_ahead": ("circle", _turn(True, False)),
    "turn_left_ahead": ("circle", _turn(False, False)), "ahead_only": ("circle", _ahead),
    "straight_or_right": ("circle", _turn(True, True)), "straight_or_left": ("circle", _turn(False, True)),
    "keep_right": ("circle", _keep(True)), "keep_left": ("circle", _keep(False)), "roundabout": ("circle", _roundabout),
    "end_no_overtaking": ("circle", _end_no_overtaking), "pedestrian_crossing": ("square", _crossing),
}
if tuple(_DESIGNS) != SIGN_CLASS_NAMES:
    raise RuntimeError("worlds.signs.independent designs must follow testbed.models.signs.SIGN_CLASS_NAMES")


def _style(rng: np.random.Generator) -> _Style:
    paint = {}
    for k, (r, g, b) in _PAINT.items():
        gain = rng.uniform(0.85, 1.08)
        paint[k] = tuple(float(np.clip(v * gain + rng.uniform(-0.05, 0.05), 0, 1)) for v in (r, g, b))
    return _Style(paint=paint, font=INDEPENDENT_FONTS[int(rng.integers(len(INDEPENDENT_FONTS)))],
                  ring=float(rng.uniform(0.08, 0.11)), border=float(rng.uniform(0.05, 0.07)),
                  rim=float(rng.uniform(0.008, 0.02)), legend=float(rng.uniform(0.9, 1.08)),
                  bold=float(rng.uniform(0.0, 0.012)), shaft=float(rng.uniform(0.09, 0.15)),
                  head=float(rng.uniform(0.85, 1.15)), barb=float(rng.uniform(0.0, 0.35)),
                  bend=float(rng.uniform(0.12, 0.21)), reach=float(rng.uniform(0.78, 0.88)))


def draw_sign(name: str, rng: np.random.Generator, size: int = _CANVAS) -> np.ndarray:
    """Class ``name`` drawn with a random style: ``size x size x 4`` float32 RGBA (straight alpha)."""
    if name not in _DESIGNS:
        raise ConfigError(f"unknown sign class {name!r}")
    pen = _Pen(size, _style(rng))
    _DESIGNS[name][1](pen)
    return pen.rgba()


# ---- backgrounds never used in training -------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _stock(name: str) -> np.ndarray:
    import matplotlib
    import skimage.data
    from skimage.color import gray2rgb

    if name == "terrain":
        from matplotlib.colors import LightSource

        dem = np.load(f"{matplotlib.get_data_path()}/sample_data/jacksboro_fault_dem.npz")["elevation"]
        img = LightSource(azdeg=315, altdeg=45).shade(dem.astype(float), cmap=matplotlib.colormaps["gist_earth"],
                                                      blend_mode="soft")[..., :3]
        return _shrink(img.astype(np.float32), 256)
    img = getattr(skimage.data, name)().astype(np.float32) / 255.0
    img = (gray2rgb(img) if img.ndim == 2 else img[..., :3]).astype(np.float32)
    return _shrink(img, 256)


def _shrink(img: np.ndarray, short: int) -> np.ndarray:
    """``img`` resized so its short side is at most ``short`` (anti-aliased), float32."""
    from skimage.transform import resize

    f = short / min(img.shape[:2])
    if f >= 1:
        return img.astype(np.float32)
    return resize(img, (round(img.shape[0] * f), round(img.shape[1] * f)), order=1, anti_aliasing=True
                  ).astype(np.float32)


_STOCK = ("clock", "text", "cell", "terrain")


def _street(rng: np.random.Generator, n: int) -> np.ndarray:
    """A street scene drawn with matplotlib: sky, a row of facades with windows, trees, the road."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.path import Path
    from matplotlib.transforms import Affine2D

    r = RendererAgg(n, n, 72)
    tf = Affine2D().scale(n, -n).translate(0, n)

    def fill(path, rgb) -> None:
        gc = r.new_gc()
        gc.set_antialiased(True)
        gc.set_linewidth(0)
        r.draw_path(gc, path, tf, (*rgb, 1.0))
        gc.restore()

    def rect(x0, y0, x1, y1) -> Path:
        return Path([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)], closed=True)

    def box(x0, y0, x1, y1, rgb) -> None:
        fill(rect(x0, y0, x1, y1), rgb)

    sky = np.array([rng.uniform(0.45, 0.75), rng.uniform(0.6, 0.85), rng.uniform(0.8, 1.0)])
    if rng.random() < 0.3:
        sky = np.full(3, rng.uniform(0.6, 0.85))  # overcast
    box(0, 0, 1, 1, tuple(sky))
    horizon = rng.uniform(0.55, 0.8)
    x = rng.uniform(-0.2, 0)
    while x < 1:
        w, top = rng.uniform(0.15, 0.4), rng.uniform(0.05, horizon - 0.15)
        wall = tuple(rng.uniform(0.3, 0.9) * np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.6, 1.0)]))
        box(x, top, x + w, horizon, wall)
        win = tuple(np.array(wall) * rng.uniform(0.3, 0.6))
        windows = [rect(wx, wy, wx + 0.035, wy + 0.05) for wy in np.arange(top + 0.04, horizon - 0.06, 0.09)
                   for wx in np.arange(x + 0.03, x + w - 0.05, 0.07)]
        if windows:
            fill(Path.make_compound_path(*windows), win)
        x += w + rng.uniform(0, 0.05)
    for _ in range(int(rng.integers(0, 4))):
        cx, cy, rr = rng.uniform(0, 1), rng.uniform(0.2, horizon), rng.uniform(0.06, 0.18)
        box(cx - 0.012, cy, cx + 0.012, horizon, (0.3, 0.22, 0.12))
        fill(Path.circle((cx, cy), rr), (rng.uniform(0.1, 0.3), rng.uniform(0.35, 0.6), rng.uniform(0.1, 0.25)))
    box(0, horizon, 1, 1, tuple(np.full(3, rng.uniform(0.25, 0.45))))
    return np.asarray(r.buffer_rgba(), dtype=np.float32)[..., :3] / 255.0


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    from skimage.transform import resize

    if rng.random() < 0.55:
        return _street(rng, n)
    img = _stock(_STOCK[int(rng.integers(len(_STOCK)))])
    short = min(img.shape[:2])
    side = int(rng.uniform(0.3, 1.0) * short)
    y0, x0 = int(rng.integers(0, img.shape[0] - side + 1)), int(rng.integers(0, img.shape[1] - side + 1))
    out = resize(img[y0:y0 + side, x0:x0 + side], (n, n), order=1, anti_aliasing=side > n)
    return out.astype(np.float32)


# ---- the camera ----------------------------------------------------------------------------------------------
def independent_sample(index: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, int]:
    """Sample ``index`` of the independent set: (``size x size x 3`` float32 RGB in [0, 1], label); label =
    ``index % 30`` (class-balanced)."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter
    from skimage.transform import ProjectiveTransform, warp

    rng = np.random.default_rng([seed, 0x1D, index])
    label = index % len(SIGN_CLASS_NAMES)
    n = 4 * size  # the scene, 4x the output (box-filtered down at the end)
    s = rng.uniform(0.5, 0.9) * n  # the sign's side in the scene
    sign = draw_sign(SIGN_CLASS_NAMES[label], rng, int(math.ceil(s * 1.25)))  # vector: drawn at about its size
    bg = _background(rng, n)
    # the sign's corners in the scene: position, in-plane tilt and a perspective from a yaw / pitch
    cx, cy = n / 2 + rng.uniform(-0.08, 0.08) * n, n / 2 + rng.uniform(-0.08, 0.08) * n
    tilt = math.radians(rng.uniform(-10, 10))
    yaw, pitch = rng.uniform(-0.3, 0.3), rng.uniform(-0.15, 0.15)
    corners = []
    for u, v in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
        depth = 1 + yaw * u + pitch * v
        x, y = u * s / depth, v * s / depth
        corners.append((cx + x * math.cos(tilt) - y * math.sin(tilt), cy + x * math.sin(tilt) + y * math.cos(tilt)))
    m = sign.shape[0]
    t = ProjectiveTransform.from_estimate(np.array([(0, 0), (m, 0), (m, m), (0, m)], float), np.array(corners))
    premult = np.concatenate([sign[..., :3] * sign[..., 3:], sign[..., 3:]], -1)
    warped = warp(premult, t.inverse, output_shape=(n, n), order=1, cval=0.0)
    if rng.random() < 0.4:  # a pole below the sign
        pole_x = cx + rng.uniform(-0.01, 0.01) * n
        w = rng.uniform(0.03, 0.06) * n
        bg[int(cy):, int(pole_x - w / 2):int(pole_x + w / 2)] = rng.uniform(0.3, 0.7)
    # light on the sign: brightness, a colour temperature, and fading
    light = rng.uniform(0.45, 1.15) * np.array([1, rng.uniform(0.93, 1.05), rng.uniform(0.85, 1.1)])
    rgb = warped[..., :3] * light + bg * (1 - warped[..., 3:])
    rgb = (np.clip(rgb, 0, 1) ** rng.uniform(0.8, 1.25)).astype(np.float32)
    sigma = rng.uniform(0.0, 1.6)
    if sigma > 0.2:
        rgb = gaussian_filter(rgb, (sigma, sigma, 0))
    small = rgb.reshape(size, 4, size, 4, 3).mean((1, 3))
    small = small + rng.normal(0, rng.uniform(0, 0.03), small.shape)
    img = Image.fromarray(np.round(np.clip(small, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(50, 96)))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
    return out, label


def independent_set(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples (indices 0..n-1) of the independent set: images ``n x 3 x size x size`` in [0, 1], labels."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    imgs = np.empty((n, size, size, 3), np.float32)
    labels = np.empty(n, np.int64)
    for i in range(n):
        imgs[i], labels[i] = independent_sample(i, seed, size)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
