"""Traffic-sign renderer: German (Vienna-convention) road signs, as in GTSRB, drawn from their designs.

Every sign is drawn in unit coordinates on a square canvas with PIL at ``supersample`` x the requested size
and box-filtered down (in premultiplied float), so edges are anti-aliased at any size. Legends use DejaVu Sans
Bold, which ships inside matplotlib (no system font is needed); digits are stretched to the legend box,
which approximates the condensed DIN 1451 lettering of real signs.

Output of :func:`render_sign`: a ``1x4xHxW`` float32 torch tensor in [0, 1], channels R, G, B, A
(straight, not premultiplied, alpha). Alpha is the sign's shape mask (anti-aliased); RGB outside the sign is 0.
:func:`render_sign_array` returns the same as an ``HxWx4`` float32 numpy array.

The canvas side in millimetres (the sign's physical size, for true-size printouts) is
:attr:`SignClass.size_mm` (nominal German sizes, "Größe 2": 600 mm discs, 900 mm triangles and octagon).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from testbed.errors import ConfigError
from testbed.models.signs import SIGN_CLASS_NAMES

# Approximate sRGB of the RAL traffic colours used on German signs.
RED = (193, 18, 28)  # RAL 3020 traffic red
BLUE = (0, 80, 150)  # RAL 5017 traffic blue
YELLOW = (245, 190, 0)  # RAL 1023 traffic yellow
WHITE = (245, 245, 242)  # RAL 9016 traffic white
BLACK = (20, 20, 22)  # RAL 9017 traffic black
GREY = (120, 120, 120)
GREEN = (0, 150, 70)
AMBER = (250, 170, 0)

Point = tuple[float, float]


def font_path() -> Path:
    """DejaVu Sans Bold as shipped inside matplotlib (always present where matplotlib is installed)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    if not path.is_file():
        raise ConfigError(f"the DejaVu Sans Bold font should ship with matplotlib at {path}, but it is missing")
    return path


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), 256)


@lru_cache(maxsize=64)
def _text_mask(text: str) -> Image.Image:
    """The text in white on black, cropped to its ink."""
    font = _font()
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (right - left + 20, bottom - top + 20), 0)
    ImageDraw.Draw(img).text((10 - left, 10 - top), text, fill=255, font=font)
    return img.crop(img.getbbox())


class _Canvas:
    """A supersampled RGBA drawing surface addressed in unit coordinates (0..1 across the canvas)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.img)

    def p(self, pt: Point) -> tuple[float, float]:
        return (pt[0] * self.n, pt[1] * self.n)

    def disc(self, c: Point, r: float, color) -> None:
        x, y = self.p(c)
        rr = r * self.n
        self.draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=color)

    def poly(self, pts: Sequence[Point], color) -> None:
        self.draw.polygon([self.p(q) for q in pts], fill=color)

    def line(self, pts: Sequence[Point], width: float, color, caps: bool = True) -> None:
        self.draw.line([self.p(q) for q in pts], fill=color, width=max(1, round(width * self.n)), joint="curve")
        if caps:
            for q in (pts[0], pts[-1]):
                self.disc(q, width / 2, color)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color, radius: float = 0.0) -> None:
        box = [x0 * self.n, y0 * self.n, x1 * self.n, y1 * self.n]
        if radius > 0:
            self.draw.rounded_rectangle(box, radius=radius * self.n, fill=color)
        else:
            self.draw.rectangle(box, fill=color)

    def rpoly(self, c: Point, apothem: float, n: int, rot_deg: float, color, corner: float = 0.0) -> None:
        """Regular ``n``-gon (apothem = centre-to-edge distance), corners rounded with radius ``corner``."""
        core = apothem - corner
        rad = core / math.cos(math.pi / n)
        pts = [
            (c[0] + rad * math.cos(math.radians(rot_deg + 360.0 * k / n)),
             c[1] + rad * math.sin(math.radians(rot_deg + 360.0 * k / n)))
            for k in range(n)
        ]
        self.poly(pts, color)
        if corner > 0:
            self.line(pts + [pts[0]], 2 * corner, color, caps=False)
            for q in pts:
                self.disc(q, corner, color)

    def text(self, text: str, box: tuple[float, float, float, float], color) -> None:
        """``text`` stretched to fill ``box`` = (x0, y0, x1, y1)."""
        mask = _text_mask(text)
        x0, y0, x1, y1 = (round(v * self.n) for v in box)
        mask = mask.resize((max(1, x1 - x0), max(1, y1 - y0)), Image.LANCZOS)
        self.img.paste(color, (x0, y0, x1, y1), mask)

    def arrowhead(self, tip: Point, direction: float, length: float, width: float, color) -> None:
        """A triangular arrowhead whose tip is at ``tip``, pointing at angle ``direction`` (degrees, y down)."""
        dx, dy = math.cos(math.radians(direction)), math.sin(math.radians(direction))
        bx, by = tip[0] - dx * length, tip[1] - dy * length
        nx, ny = -dy, dx
        self.poly([tip, (bx + nx * width / 2, by + ny * width / 2), (bx - nx * width / 2, by - ny * width / 2)], color)


# ---- sign bodies ---------------------------------------------------------------------------------------------
_TRI_APOTHEM = 1.0 / (2.0 * math.sqrt(3.0))  # equilateral triangle of side 1
_TRI_CY = 1.0 / math.sqrt(3.0) + (1.0 - math.sqrt(3.0) / 2.0) / 2.0  # centroid so the triangle is centred


def _prohibitory(c: _Canvas) -> None:
    """White disc with a red ring (Zeichen 250, 274, 276)."""
    c.disc((0.5, 0.5), 0.5, WHITE)
    c.disc((0.5, 0.5), 0.488, RED)
    c.disc((0.5, 0.5), 0.385, WHITE)


def _mandatory(c: _Canvas) -> None:
    """Blue disc with a thin white rim (Zeichen 209-222)."""
    c.disc((0.5, 0.5), 0.5, WHITE)
    c.disc((0.5, 0.5), 0.488, BLUE)


def _end_disc(c: _Canvas) -> None:
    """White disc with a thin grey edge (end-of-restriction signs)."""
    c.disc((0.5, 0.5), 0.5, GREY)
    c.disc((0.5, 0.5), 0.49, WHITE)


def _warning(c: _Canvas) -> None:
    """White triangle, apex up, red border, rounded corners (Zeichen 101-151)."""
    ctr = (0.5, _TRI_CY)
    c.rpoly(ctr, _TRI_APOTHEM, 3, -90, WHITE, corner=0.04)
    c.rpoly(ctr, _TRI_APOTHEM - 0.008, 3, -90, RED, corner=0.035)
    c.rpoly(ctr, _TRI_APOTHEM - 0.075, 3, -90, WHITE, corner=0.015)


def _end_stripes(c: _Canvas, n: int = 5, color=BLACK) -> None:
    """The diagonal stripes (top right to bottom left) of the end-of-restriction signs."""
    d = (-1 / math.sqrt(2), 1 / math.sqrt(2))
    nrm = (1 / math.sqrt(2), 1 / math.sqrt(2))
    r = 0.43
    for k in range(n):
        o = (k - (n - 1) / 2) * 0.045
        h = math.sqrt(max(r * r - o * o, 0.0))
        cx, cy = 0.5 + nrm[0] * o, 0.5 + nrm[1] * o
        c.line([(cx - d[0] * h, cy - d[1] * h), (cx + d[0] * h, cy + d[1] * h)], 0.014, color, caps=False)


def _digits(c: _Canvas, text: str, color=BLACK) -> None:
    w = 0.25 * len(text) if len(text) <= 2 else 0.58
    c.text(text, (0.5 - w / 2, 0.32, 0.5 + w / 2, 0.68), color)


def _car(c: _Canvas, cx: float, cy: float, s: float, color) -> None:
    """Front view of a car (as on the no-overtaking sign), centred at (cx, cy), about ``s`` wide."""
    c.poly([(cx - 0.30 * s, cy - 0.05 * s), (cx - 0.22 * s, cy - 0.42 * s), (cx + 0.22 * s, cy - 0.42 * s),
            (cx + 0.30 * s, cy - 0.05 * s)], color)
    c.rect(cx - 0.5 * s, cy - 0.1 * s, cx + 0.5 * s, cy + 0.32 * s, color, radius=0.06 * s)
    c.rect(cx - 0.42 * s, cy + 0.25 * s, cx - 0.22 * s, cy + 0.5 * s, color, radius=0.03 * s)
    c.rect(cx + 0.22 * s, cy + 0.25 * s, cx + 0.42 * s, cy + 0.5 * s, color, radius=0.03 * s)
    c.rect(cx - 0.17 * s, cy - 0.34 * s, cx + 0.17 * s, cy - 0.12 * s, WHITE)  # windscreen
    c.disc((cx - 0.33 * s, cy + 0.09 * s), 0.07 * s, WHITE)  # headlights
    c.disc((cx + 0.33 * s, cy + 0.09 * s), 0.07 * s, WHITE)


def _pedestrian(c: _Canvas, cx: float, top: float, h: float, color) -> None:
    """A walking person (stroke pictogram) ``h`` tall, head top at ``top``."""
    w = 0.085 * h
    c.disc((cx + 0.05 * h, top + 0.08 * h), 0.08 * h, color)  # head
    hip = (cx - 0.02 * h, top + 0.55 * h)
    neck = (cx + 0.03 * h, top + 0.22 * h)
    c.line([neck, hip], 1.5 * w, color)
    c.line([(cx + 0.01 * h, top + 0.27 * h), (cx - 0.2 * h, top + 0.45 * h)], w, color)  # back arm
    c.line([(cx + 0.03 * h, top + 0.27 * h), (cx + 0.18 * h, top + 0.42 * h), (cx + 0.24 * h, top + 0.5 * h)], w, color)
    c.line([hip, (cx - 0.18 * h, top + 0.75 * h), (cx - 0.27 * h, top + 0.95 * h)], 1.1 * w, color)  # back leg
    c.line([hip, (cx + 0.1 * h, top + 0.74 * h), (cx + 0.2 * h, top + 0.95 * h)], 1.1 * w, color)  # front leg


def _bent_arrow(c: _Canvas, mirror: bool, straight: bool) -> None:
    """White arrow up and bending right (or left when ``mirror``); with ``straight`` also a straight-on arrow."""
    sx = (lambda x: 1.0 - x) if mirror else (lambda x: x)
    w = 0.11
    col = WHITE
    if straight:
        x0 = 0.43
        c.line([(sx(x0), 0.84), (sx(x0), 0.36)], w, col, caps=False)
        c.arrowhead((sx(x0), 0.14), -90, 0.24, 0.3, col)
        # branch: quarter arc from the shaft to the right
        r, yb = 0.14, 0.62
        pts = [(sx(x0 + r - r * math.cos(t)), yb - r * math.sin(t)) for t in np.linspace(0, math.pi / 2, 12)]
        c.line(pts + [(sx(0.66), yb - r)], w, col, caps=False)
        c.arrowhead((sx(0.86), yb - r), 180 if mirror else 0, 0.22, 0.28, col)
    else:
        x0, r, yb = 0.36, 0.16, 0.58
        c.line([(sx(x0), 0.84), (sx(x0), yb)], w, col, caps=False)
        pts = [(sx(x0 + r - r * math.cos(t)), yb - r * math.sin(t)) for t in np.linspace(0, math.pi / 2, 12)]
        c.line(pts + [(sx(0.62), yb - r)], w, col, caps=False)
        c.arrowhead((sx(0.84), yb - r), 180 if mirror else 0, 0.24, 0.3, col)


# ---- the classes -----------------------------------------------------------------------------------------------
def _speed(value: int) -> Callable[[_Canvas], None]:
    def draw(c: _Canvas) -> None:
        _prohibitory(c)
        _digits(c, str(value))

    return draw


def _end_speed_80(c: _Canvas) -> None:
    _end_disc(c)
    _digits(c, "80", GREY)
    _end_stripes(c)


def _no_overtaking(c: _Canvas) -> None:
    _prohibitory(c)
    _car(c, 0.35, 0.47, 0.25, RED)
    _car(c, 0.65, 0.47, 0.25, BLACK)


def _end_no_overtaking(c: _Canvas) -> None:
    _end_disc(c)
    _car(c, 0.35, 0.47, 0.25, GREY)
    _car(c, 0.65, 0.47, 0.25, GREY)
    _end_stripes(c)


def _right_of_way(c: _Canvas) -> None:
    _warning(c)
    c.poly([(0.47, 0.40), (0.53, 0.40), (0.545, 0.84), (0.455, 0.84)], BLACK)
    c.rect(0.35, 0.575, 0.65, 0.615, BLACK)


def _priority_road(c: _Canvas) -> None:
    c.rpoly((0.5, 0.5), 0.3536, 4, 0, BLACK, corner=0.01)
    c.rpoly((0.5, 0.5), 0.3536 - 0.008, 4, 0, WHITE, corner=0.008)
    c.rpoly((0.5, 0.5), 0.20, 4, 0, YELLOW)


def _yield(c: _Canvas) -> None:
    ctr = (0.5, 1.0 - _TRI_CY)
    c.rpoly(ctr, _TRI_APOTHEM, 3, 90, WHITE, corner=0.04)
    c.rpoly(ctr, _TRI_APOTHEM - 0.008, 3, 90, RED, corner=0.035)
    c.rpoly(ctr, _TRI_APOTHEM - 0.1, 3, 90, WHITE, corner=0.012)


def _stop(c: _Canvas) -> None:
    c.rpoly((0.5, 0.5), 0.5, 8, 22.5, WHITE)
    c.rpoly((0.5, 0.5), 0.475, 8, 22.5, RED)
    c.text("STOP", (0.15, 0.385, 0.85, 0.615), WHITE)


def _no_vehicles(c: _Canvas) -> None:
    _prohibitory(c)


def _no_entry(c: _Canvas) -> None:
    c.disc((0.5, 0.5), 0.5, WHITE)
    c.disc((0.5, 0.5), 0.488, RED)
    c.rect(0.17, 0.41, 0.83, 0.59, WHITE)


def _general_caution(c: _Canvas) -> None:
    _warning(c)
    c.poly([(0.462, 0.42), (0.538, 0.42), (0.515, 0.71), (0.485, 0.71)], BLACK)
    c.disc((0.5, 0.78), 0.038, BLACK)


def _traffic_signals(c: _Canvas) -> None:
    _warning(c)
    c.rect(0.43, 0.39, 0.57, 0.85, BLACK, radius=0.03)
    c.disc((0.5, 0.47), 0.052, RED)
    c.disc((0.5, 0.62), 0.052, AMBER)
    c.disc((0.5, 0.77), 0.052, GREEN)


def _pedestrians(c: _Canvas) -> None:
    _warning(c)
    _pedestrian(c, 0.5, 0.39, 0.46, BLACK)


def _end_all_limits(c: _Canvas) -> None:
    _end_disc(c)
    _end_stripes(c)


def _turn(c: _Canvas, left: bool, straight: bool) -> None:
    """Turn right / left ahead, or go straight or right / left (``straight``): a blue disc with a bent arrow."""
    _mandatory(c)
    _bent_arrow(c, mirror=left, straight=straight)


def _ahead_only(c: _Canvas) -> None:
    _mandatory(c)
    c.line([(0.5, 0.84), (0.5, 0.4)], 0.12, WHITE, caps=False)
    c.arrowhead((0.5, 0.15), -90, 0.27, 0.34, WHITE)


def _keep(c: _Canvas, right: bool) -> None:
    _mandatory(c)
    sx = (lambda x: x) if right else (lambda x: 1.0 - x)
    c.line([(sx(0.27), 0.27), (sx(0.58), 0.58)], 0.12, WHITE, caps=False)
    c.arrowhead((sx(0.77), 0.77), 45 if right else 135, 0.3, 0.34, WHITE)


def _roundabout(c: _Canvas) -> None:
    _mandatory(c)
    r, w = 0.22, 0.085
    for k in range(3):
        # counter-clockwise on the page (as on German Zeichen 215): angles decrease in image coordinates
        a0 = math.radians(90 + 120 * k)
        ts = np.linspace(a0, a0 - math.radians(70), 10)
        pts = [(0.5 + r * math.cos(t), 0.5 + r * math.sin(t)) for t in ts]
        c.line(pts, w, WHITE, caps=False)
        t_end = a0 - math.radians(70)
        tip_t = t_end - math.radians(36)
        base = (0.5 + r * math.cos(t_end), 0.5 + r * math.sin(t_end))
        tip = (0.5 + r * math.cos(tip_t), 0.5 + r * math.sin(tip_t))
        direction = math.degrees(math.atan2(tip[1] - base[1], tip[0] - base[0]))
        c.arrowhead(tip, direction, math.dist(tip, base), 0.21, WHITE)


def _pedestrian_crossing(c: _Canvas) -> None:
    """Zeichen 350: blue square, white triangle, pedestrian on a zebra crossing."""
    c.rpoly((0.5, 0.5), 0.5, 4, 45, WHITE, corner=0.05)
    c.rpoly((0.5, 0.5), 0.488, 4, 45, BLUE, corner=0.045)
    c.rpoly((0.5, 0.58), 0.19, 3, -90, WHITE, corner=0.02)
    for k in range(4):
        x = 0.34 + k * 0.095
        c.rect(x, 0.755, x + 0.055, 0.79, BLACK)
    _pedestrian(c, 0.5, 0.33, 0.4, BLACK)


@dataclass(frozen=True)
class SignClass:
    """One sign class: its name (the classifier label), GTSRB class id (None when GTSRB has no such class),
    German sign number, shape of the alpha mask, and the physical side of the square canvas in mm."""

    name: str
    gtsrb_id: int | None
    vz: str  # German "Verkehrszeichen" number
    shape: str  # circle | octagon | triangle | inverted_triangle | diamond | square
    size_mm: float
    title: str
    draw: Callable[[_Canvas], None]


def _c(name, gid, vz, shape, title, draw) -> SignClass:
    size = {"circle": 600.0, "octagon": 900.0, "triangle": 900.0, "inverted_triangle": 900.0,
            "diamond": 600.0 * math.sqrt(2.0), "square": 600.0}[shape]
    return SignClass(name, gid, vz, shape, size, title, draw)


SIGN_CLASSES: tuple[SignClass, ...] = (
    _c("speed_limit_20", 0, "274-52", "circle", "Speed limit 20 km/h", _speed(20)),
    _c("speed_limit_30", 1, "274-53", "circle", "Speed limit 30 km/h", _speed(30)),
    _c("speed_limit_50", 2, "274-55", "circle", "Speed limit 50 km/h", _speed(50)),
    _c("speed_limit_60", 3, "274-56", "circle", "Speed limit 60 km/h", _speed(60)),
    _c("speed_limit_70", 4, "274-57", "circle", "Speed limit 70 km/h", _speed(70)),
    _c("speed_limit_80", 5, "274-58", "circle", "Speed limit 80 km/h", _speed(80)),
    _c("end_speed_limit_80", 6, "278-58", "circle", "End of speed limit 80 km/h", _end_speed_80),
    _c("speed_limit_100", 7, "274-60", "circle", "Speed limit 100 km/h", _speed(100)),
    _c("speed_limit_120", 8, "274-62", "circle", "Speed limit 120 km/h", _speed(120)),
    _c("no_overtaking", 9, "276", "circle", "No overtaking", _no_overtaking),
    _c("right_of_way_next_intersection", 11, "301", "triangle", "Right of way at the next intersection",
       _right_of_way),
    _c("priority_road", 12, "306", "diamond", "Priority road", _priority_road),
    _c("yield", 13, "205", "inverted_triangle", "Give way (yield)", _yield),
    _c("stop", 14, "206", "octagon", "Stop", _stop),
    _c("no_vehicles", 15, "250", "circle", "No vehicles", _no_vehicles),
    _c("no_entry", 17, "267", "circle", "No entry", _no_entry),
    _c("general_caution", 18, "101", "triangle", "General caution", _general_caution),
    _c("traffic_signals", 26, "131", "triangle", "Traffic signals ahead", _traffic_signals),
    _c("pedestrians", 27, "133", "triangle", "Pedestrians", _pedestrians),
    _c("end_all_limits", 32, "282", "circle", "End of all speed and passing limits", _end_all_limits),
    _c("turn_right_ahead", 33, "209-20", "circle", "Turn right ahead", lambda c: _turn(c, False, False)),
    _c("turn_left_ahead", 34, "209-10", "circle", "Turn left ahead", lambda c: _turn(c, True, False)),
    _c("ahead_only", 35, "209-30", "circle", "Ahead only", _ahead_only),
    _c("straight_or_right", 36, "214-20", "circle", "Go straight or right", lambda c: _turn(c, False, True)),
    _c("straight_or_left", 37, "214-10", "circle", "Go straight or left", lambda c: _turn(c, True, True)),
    _c("keep_right", 38, "222-20", "circle", "Keep right", lambda c: _keep(c, True)),
    _c("keep_left", 39, "222-10", "circle", "Keep left", lambda c: _keep(c, False)),
    _c("roundabout", 40, "215", "circle", "Roundabout", _roundabout),
    _c("end_no_overtaking", 41, "280", "circle", "End of no overtaking", _end_no_overtaking),
    _c("pedestrian_crossing", None, "350", "square", "Pedestrian crossing (zebra)", _pedestrian_crossing),
)
if tuple(s.name for s in SIGN_CLASSES) != SIGN_CLASS_NAMES:  # the registry entry's label order is the source
    raise RuntimeError("worlds.signs.render.SIGN_CLASSES and testbed.models.signs.SIGN_CLASS_NAMES disagree; "
                       "keep them in the same order")
_BY_NAME = {s.name: s for s in SIGN_CLASSES}

# GTSRB's 43 class names (index = GTSRB class id), used for ``--data gtsrb``.
GTSRB_CLASS_NAMES: tuple[str, ...] = (
    "speed_limit_20", "speed_limit_30", "speed_limit_50", "speed_limit_60", "speed_limit_70", "speed_limit_80",
    "end_speed_limit_80", "speed_limit_100", "speed_limit_120", "no_overtaking", "no_overtaking_trucks",
    "right_of_way_next_intersection", "priority_road", "yield", "stop", "no_vehicles", "no_trucks", "no_entry",
    "general_caution", "dangerous_curve_left", "dangerous_curve_right", "double_curve", "bumpy_road",
    "slippery_road", "road_narrows_right", "road_work", "traffic_signals", "pedestrians", "children_crossing",
    "bicycles_crossing", "ice_snow", "wild_animals", "end_all_limits", "turn_right_ahead", "turn_left_ahead",
    "ahead_only", "straight_or_right", "straight_or_left", "keep_right", "keep_left", "roundabout",
    "end_no_overtaking", "end_no_overtaking_trucks",
)


def class_names() -> tuple[str, ...]:
    """The rendered classes' names, in classifier label order (``testbed.models.signs.SIGN_CLASS_NAMES``)."""
    return SIGN_CLASS_NAMES


def get_sign(name: str) -> SignClass:
    """The :class:`SignClass` called ``name``; an unknown name lists the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown sign class {name!r}; known classes: {', '.join(class_names())}") from None


@lru_cache(maxsize=256)
def _render_cached(name: str, size: int, supersample: int) -> np.ndarray:
    sign = get_sign(name)
    n = size * supersample
    canvas = _Canvas(n)
    sign.draw(canvas)
    a = np.asarray(canvas.img, dtype=np.float32) / 255.0
    # box-filter in premultiplied space so the edges do not pick up the transparent background's colour
    rgb = a[..., :3] * a[..., 3:]
    stacked = np.concatenate([rgb, a[..., 3:]], axis=-1).reshape(size, supersample, size, supersample, 4).mean((1, 3))
    alpha = stacked[..., 3:]
    rgb = np.where(alpha > 1e-6, stacked[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    out = np.concatenate([np.clip(rgb, 0, 1), alpha], axis=-1).astype(np.float32)
    out.setflags(write=False)
    return out


def render_sign_array(name: str, size: int = 64, *, supersample: int = 4) -> np.ndarray:
    """Sign ``name`` as an ``size x size x 4`` float32 RGBA array in [0, 1] (straight alpha = shape mask)."""
    if not isinstance(size, (int, np.integer)) or size < 8 or size > 8192:
        raise ConfigError(f"sign size must be an integer number of pixels in [8, 8192], got {size!r}")
    if supersample not in (1, 2, 3, 4, 6, 8):
        raise ConfigError(f"supersample must be one of 1, 2, 3, 4, 6, 8, got {supersample!r}")
    return _render_cached(name, int(size), int(supersample)).copy()


def render_sign(name: str, size: int = 64, *, supersample: int = 4) -> torch.Tensor:
    """Sign ``name`` as a ``1x4xHxW`` float32 tensor (RGB + alpha mask, straight alpha, in [0, 1])."""
    return torch.from_numpy(render_sign_array(name, size, supersample=supersample)).permute(2, 0, 1)[None].contiguous()


def composite(rgba: torch.Tensor, background: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Alpha-composite a ``Bx4xHxW`` render over a ``Bx3xHxW`` background (or a grey level); returns Bx3xHxW."""
    if rgba.ndim != 4 or rgba.shape[1] != 4:
        raise ConfigError(f"expected a Bx4xHxW RGBA tensor, got shape {tuple(rgba.shape)}")
    a = rgba[:, 3:]
    return rgba[:, :3] * a + (1 - a) * background


def render_sheet(size: int = 64, columns: int = 6) -> torch.Tensor:
    """All classes on white, in label order, as a 1x3xHxW contact sheet (for docs and eyeballing)."""
    tiles = [composite(render_sign(s.name, size)) for s in SIGN_CLASSES]
    rows = math.ceil(len(tiles) / columns)
    sheet = torch.ones(1, 3, rows * (size + 4), columns * (size + 4))
    for i, t in enumerate(tiles):
        r, col = divmod(i, columns)
        sheet[..., r * (size + 4) + 2 : r * (size + 4) + 2 + size, col * (size + 4) + 2 : col * (size + 4) + 2 + size] = t
    return sheet
