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
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

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


def _font_file(name: str) -> Path:
    """A font of matplotlib's own data folder (``name`` without ``.ttf``; never a system font)."""
    if name == CANONICAL_FONT:
        return font_path()
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"
    if not path.is_file():
        raise ConfigError(f"font {name!r} should ship with matplotlib at {path}, but it is missing")
    return path


@lru_cache(maxsize=16)
def _font(name: str = "DejaVuSans-Bold") -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_file(name)), 256)


@lru_cache(maxsize=256)
def _text_mask(text: str, font: str = "DejaVuSans-Bold") -> Image.Image:
    """The text in white on black, cropped to its ink."""
    f = _font(font)
    left, top, right, bottom = f.getbbox(text)
    img = Image.new("L", (right - left + 20, bottom - top + 20), 0)
    ImageDraw.Draw(img).text((10 - left, 10 - top), text, fill=255, font=f)
    return img.crop(img.getbbox())


# ---- artwork variation -----------------------------------------------------------------------------------------
CANONICAL_FONT = "DejaVuSans-Bold"
#: Legend fonts (matplotlib's own) per artwork split; disjoint, and both disjoint from the fonts of the independent
#: held-out set (``worlds.signs.independent``: cmss10, cmb10).
ARTWORK_FONTS: dict[str, tuple[str, ...]] = {
    "train": ("DejaVuSans-Bold", "DejaVuSans", "DejaVuSansMono-Bold", "DejaVuSerif-Bold", "STIXGeneralBol", "cmr10"),
    "heldout-artwork": ("DejaVuSansMono", "STIXGeneral", "DejaVuSerif", "cmtt10"),
}
#: The named artwork splits: ``train`` (what sign-cnn is trained on and what a sticker is optimised over) and
#: ``heldout-artwork`` (other fonts, other random draws: what a sticker / the model is evaluated on).
ARTWORK_SPLITS: tuple[str, ...] = tuple(ARTWORK_FONTS)
_ARTWORK_SPLIT_CODE = {"train": 11, "heldout-artwork": 12}

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ArtworkParams:
    """One drawing of a sign: everything that differs between two real signs of the same class (replayable).

    The defaults are the canonical artwork (what ``render_sign(name, size)`` has always drawn). Lengths are
    multipliers of the canonical design's, offsets and stroke weights fractions of the canvas side.
    """

    font: str = CANONICAL_FONT  # legend font (a .ttf of matplotlib's data folder, without the suffix)
    legend_width: float = 1.0  # legend box width multiplier
    legend_height: float = 1.0  # legend box height multiplier
    legend_dy: float = 0.0  # vertical offset of the legend (fraction of the canvas, + = down)
    legend_weight: float = 0.0  # stroke dilation (> 0) or erosion (< 0) of the legend, fraction of the canvas
    rim: float = 1.0  # coloured border width multiplier (red ring, triangle border, stop's white rim)
    edge: float = 1.0  # thin outer edge width multiplier (white rim of discs and triangles)
    red: RGB = RED
    blue: RGB = BLUE
    yellow: RGB = YELLOW
    white: RGB = WHITE
    black: RGB = BLACK
    grey: RGB = GREY
    arrow_shaft: float = 1.0  # arrow shaft width multiplier
    arrow_head_length: float = 1.0
    arrow_head_width: float = 1.0
    arrow_notch: float = 0.0  # 0: triangular head; > 0: swept-back head (notch depth / head length)
    arrow_bend: float = 1.0  # bend radius multiplier of the turn arrows
    pictogram: float = 1.0  # size multiplier of pictograms (cars, pedestrian, lights, "!", cross)
    wear: float = 0.0  # 0..1: faded and flaked paint
    dirt: float = 0.0  # 0..1: grime
    texture_seed: int = 0  # the wear and dirt patterns

    def __post_init__(self) -> None:
        _font_file(self.font)
        for name in ("legend_width", "legend_height", "rim", "edge", "arrow_shaft", "arrow_head_length",
                     "arrow_head_width", "arrow_bend", "pictogram"):
            v = getattr(self, name)
            if not 0.3 <= v <= 3.0:
                raise ConfigError(f"ArtworkParams.{name} must be a multiplier in [0.3, 3], got {v!r}")
        if not (-0.2 <= self.legend_dy <= 0.2 and -0.05 <= self.legend_weight <= 0.05):
            raise ConfigError(f"ArtworkParams.legend_dy must lie in [-0.2, 0.2] and legend_weight in [-0.05, 0.05], "
                              f"got {self.legend_dy!r}, {self.legend_weight!r}")
        if not (0.0 <= self.arrow_notch <= 0.8 and 0.0 <= self.wear <= 1.0 and 0.0 <= self.dirt <= 1.0):
            raise ConfigError("ArtworkParams.arrow_notch must lie in [0, 0.8], wear and dirt in [0, 1]")
        for name in ("red", "blue", "yellow", "white", "black", "grey"):
            v = getattr(self, name)
            if len(v) != 3 or not all(isinstance(x, (int, np.integer)) and 0 <= x <= 255 for x in v):
                raise ConfigError(f"ArtworkParams.{name} must be three integers in [0, 255], got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ArtworkParams":
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"invalid artwork parameters: {exc}") from None


CANONICAL_ARTWORK = ArtworkParams()


def _as_numpy_rng(generator) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator).item()))
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool) and generator >= 0:
        return np.random.default_rng(int(generator))
    raise ConfigError(f"generator must be a numpy Generator, a torch.Generator or a non-negative int seed, "
                      f"got {type(generator).__name__}")


def _shade(rng: np.random.Generator, base: RGB, gain: tuple[float, float], spread: float) -> RGB:
    """``base`` times a common gain plus a per-channel offset (a different paint batch or film)."""
    g = rng.uniform(*gain)
    return tuple(int(np.clip(round(c * g + rng.uniform(-spread, spread)), 0, 255)) for c in base)  # type: ignore


def sample_artwork(sign: str, generator, split: str = "train") -> ArtworkParams:
    """Draw one artwork of class ``sign`` from ``split`` (``ARTWORK_SPLITS``).

    ``generator``: a ``numpy.random.Generator``, a ``torch.Generator`` (one 62-bit seed is drawn from it) or an int
    seed. The splits draw from the same ranges but from disjoint legend fonts (:data:`ARTWORK_FONTS`), and the
    generator stream is mixed with the split, so the same seed never gives the same artwork in two splits.
    """
    get_sign(sign)
    if split not in ARTWORK_FONTS:
        raise ConfigError(f"unknown artwork split {split!r}; expected one of {', '.join(ARTWORK_SPLITS)}")
    base = _as_numpy_rng(generator)
    rng = np.random.default_rng([int(base.integers(2**62)), _ARTWORK_SPLIT_CODE[split]])
    fonts = ARTWORK_FONTS[split]
    u = rng.uniform
    wear = 0.0 if u() < 0.5 else float(u(0.05, 0.6))
    dirt = 0.0 if u() < 0.5 else float(u(0.05, 0.6))
    return ArtworkParams(
        font=fonts[int(rng.integers(len(fonts)))],
        legend_width=float(u(0.8, 1.12)), legend_height=float(u(0.82, 1.12)), legend_dy=float(u(-0.03, 0.03)),
        legend_weight=float(u(-0.006, 0.01)),
        rim=float(u(0.7, 1.35)), edge=float(u(0.3, 2.5)),
        red=_shade(rng, RED, (0.78, 1.15), 22), blue=_shade(rng, BLUE, (0.7, 1.3), 22),
        yellow=_shade(rng, YELLOW, (0.85, 1.05), 25), white=_shade(rng, WHITE, (0.86, 1.04), 8),
        black=_shade(rng, BLACK, (0.5, 2.5), 12), grey=_shade(rng, GREY, (0.75, 1.3), 12),
        arrow_shaft=float(u(0.75, 1.3)), arrow_head_length=float(u(0.75, 1.25)),
        arrow_head_width=float(u(0.8, 1.2)), arrow_notch=0.0 if u() < 0.5 else float(u(0.1, 0.35)),
        arrow_bend=float(u(0.7, 1.3)), pictogram=float(u(0.85, 1.15)),
        wear=wear, dirt=dirt, texture_seed=int(rng.integers(2**31)),
    )


class _Canvas:
    """A supersampled RGBA drawing surface addressed in unit coordinates (0..1 across the canvas), with the artwork
    whose colours and proportions the sign bodies read (``self.art``)."""

    def __init__(self, n: int, art: ArtworkParams = CANONICAL_ARTWORK) -> None:
        self.n = n
        self.art = art
        self.img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.img)
        self.red, self.blue, self.yellow = art.red, art.blue, art.yellow
        self.white, self.black, self.grey = art.white, art.black, art.grey
        self.green, self.amber = GREEN, AMBER

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
        """``text`` stretched to fill ``box`` = (x0, y0, x1, y1), as the artwork sizes, moves and weights it."""
        art = self.art
        if art.legend_width != 1.0 or art.legend_height != 1.0 or art.legend_dy != 0.0:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2 + art.legend_dy
            hw, hh = (box[2] - box[0]) / 2 * art.legend_width, (box[3] - box[1]) / 2 * art.legend_height
            box = (cx - hw, cy - hh, cx + hw, cy + hh)
        mask = _text_mask(text, art.font)
        x0, y0, x1, y1 = (round(v * self.n) for v in box)
        mask = mask.resize((max(1, x1 - x0), max(1, y1 - y0)), Image.LANCZOS)
        k = round(abs(art.legend_weight) * self.n)
        if k >= 1:
            size = 2 * k + 1
            pad = Image.new("L", (mask.width + 2 * size, mask.height + 2 * size), 0)
            pad.paste(mask, (size, size))
            pad = pad.filter(ImageFilter.MaxFilter(size) if art.legend_weight > 0 else ImageFilter.MinFilter(size))
            mask, x0, y0 = pad, x0 - size, y0 - size
        self.img.paste(color, (x0, y0, x0 + mask.width, y0 + mask.height), mask)

    def arrowhead(self, tip: Point, direction: float, length: float, width: float, color) -> None:
        """An arrowhead whose tip is at ``tip``, pointing at angle ``direction`` (degrees, y down); its length, width
        and swept-back notch follow the artwork."""
        art = self.art
        length, width = length * art.arrow_head_length, width * art.arrow_head_width
        dx, dy = math.cos(math.radians(direction)), math.sin(math.radians(direction))
        bx, by = tip[0] - dx * length, tip[1] - dy * length
        nx, ny = -dy, dx
        left, right = (bx + nx * width / 2, by + ny * width / 2), (bx - nx * width / 2, by - ny * width / 2)
        if art.arrow_notch > 0:
            notch = (bx + dx * length * art.arrow_notch, by + dy * length * art.arrow_notch)
            self.poly([tip, left, notch, right], color)
        else:
            self.poly([tip, left, right], color)


def _weathered(rgba: np.ndarray, art: ArtworkParams) -> np.ndarray:
    """Wear (paint faded towards a chalky white and flaked off in spots) and dirt (dark grime, heavier at the
    bottom) on a ``HxWx4`` straight-alpha render; deterministic in ``art.texture_seed``."""
    if art.wear <= 0 and art.dirt <= 0:
        return rgba
    h = rgba.shape[0]
    rng = np.random.default_rng(art.texture_seed)

    def smooth_noise(cells: int) -> np.ndarray:
        import cv2

        low = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
        return cv2.resize(low, (h, h), interpolation=cv2.INTER_CUBIC)

    rgb = rgba[..., :3].copy()
    if art.wear > 0:
        fade = art.wear * (0.35 + 0.4 * smooth_noise(int(rng.integers(3, 7))))[..., None]
        rgb = rgb + fade * (0.92 - rgb) * 0.6
        flakes = (smooth_noise(int(rng.integers(12, 24))) > 1.0 - 0.12 * art.wear)[..., None]
        rgb = np.where(flakes, 0.55 * rgb + 0.45 * 0.8, rgb)
    if art.dirt > 0:
        ramp = np.linspace(0.4, 1.0, h, dtype=np.float32)[:, None]
        grime = art.dirt * 0.5 * np.clip(smooth_noise(int(rng.integers(4, 10))) * ramp, 0, 1)[..., None]
        brown = np.asarray((0.33, 0.27, 0.18), np.float32)
        rgb = rgb * (1 - grime) + brown * grime
    return np.concatenate([np.clip(rgb, 0, 1), rgba[..., 3:]], axis=-1).astype(np.float32)


# ---- sign bodies ---------------------------------------------------------------------------------------------
_TRI_APOTHEM = 1.0 / (2.0 * math.sqrt(3.0))  # equilateral triangle of side 1
_TRI_CY = 1.0 / math.sqrt(3.0) + (1.0 - math.sqrt(3.0) / 2.0) / 2.0  # centroid so the triangle is centred


def _prohibitory(c: _Canvas) -> None:
    """White disc with a red ring (Zeichen 250, 274, 276)."""
    a = c.art
    c.disc((0.5, 0.5), 0.5, c.white)
    c.disc((0.5, 0.5), 0.5 - 0.012 * a.edge, c.red)
    c.disc((0.5, 0.5), 0.5 - 0.012 * a.edge - 0.103 * a.rim, c.white)


def _mandatory(c: _Canvas) -> None:
    """Blue disc with a thin white rim (Zeichen 209-222)."""
    c.disc((0.5, 0.5), 0.5, c.white)
    c.disc((0.5, 0.5), 0.5 - 0.012 * c.art.edge, c.blue)


def _end_disc(c: _Canvas) -> None:
    """White disc with a thin grey edge (end-of-restriction signs)."""
    c.disc((0.5, 0.5), 0.5, c.grey)
    c.disc((0.5, 0.5), 0.5 - 0.01 * c.art.edge, c.white)


def _warning(c: _Canvas, apex_up: bool = True, inner: float = 0.075, inner_corner: float = 0.015) -> None:
    """White triangle with a red border and rounded corners: apex up (Zeichen 101-151) or down (yield)."""
    a = c.art
    ctr = (0.5, _TRI_CY) if apex_up else (0.5, 1.0 - _TRI_CY)
    rot = -90 if apex_up else 90
    e = 0.008 * a.edge
    c.rpoly(ctr, _TRI_APOTHEM, 3, rot, c.white, corner=0.04)
    c.rpoly(ctr, _TRI_APOTHEM - e, 3, rot, c.red, corner=0.035)
    c.rpoly(ctr, _TRI_APOTHEM - e - (inner - 0.008) * a.rim, 3, rot, c.white, corner=inner_corner)


def _end_stripes(c: _Canvas, n: int = 5, color=None) -> None:
    """The diagonal stripes (top right to bottom left) of the end-of-restriction signs."""
    color = c.black if color is None else color
    d = (-1 / math.sqrt(2), 1 / math.sqrt(2))
    nrm = (1 / math.sqrt(2), 1 / math.sqrt(2))
    r = 0.43
    for k in range(n):
        o = (k - (n - 1) / 2) * 0.045
        h = math.sqrt(max(r * r - o * o, 0.0))
        cx, cy = 0.5 + nrm[0] * o, 0.5 + nrm[1] * o
        c.line([(cx - d[0] * h, cy - d[1] * h), (cx + d[0] * h, cy + d[1] * h)], 0.014 * c.art.rim, color,
               caps=False)


def _digits(c: _Canvas, text: str, color=None) -> None:
    w = 0.25 * len(text) if len(text) <= 2 else 0.58
    c.text(text, (0.5 - w / 2, 0.32, 0.5 + w / 2, 0.68), c.black if color is None else color)


def _car(c: _Canvas, cx: float, cy: float, s: float, color) -> None:
    """Front view of a car (as on the no-overtaking sign), centred at (cx, cy), about ``s`` wide."""
    s = s * c.art.pictogram
    c.poly([(cx - 0.30 * s, cy - 0.05 * s), (cx - 0.22 * s, cy - 0.42 * s), (cx + 0.22 * s, cy - 0.42 * s),
            (cx + 0.30 * s, cy - 0.05 * s)], color)
    c.rect(cx - 0.5 * s, cy - 0.1 * s, cx + 0.5 * s, cy + 0.32 * s, color, radius=0.06 * s)
    c.rect(cx - 0.42 * s, cy + 0.25 * s, cx - 0.22 * s, cy + 0.5 * s, color, radius=0.03 * s)
    c.rect(cx + 0.22 * s, cy + 0.25 * s, cx + 0.42 * s, cy + 0.5 * s, color, radius=0.03 * s)
    c.rect(cx - 0.17 * s, cy - 0.34 * s, cx + 0.17 * s, cy - 0.12 * s, c.white)  # windscreen
    c.disc((cx - 0.33 * s, cy + 0.09 * s), 0.07 * s, c.white)  # headlights
    c.disc((cx + 0.33 * s, cy + 0.09 * s), 0.07 * s, c.white)


def _pedestrian(c: _Canvas, cx: float, top: float, h: float, color) -> None:
    """A walking person (stroke pictogram) ``h`` tall, head top at ``top``."""
    if c.art.pictogram != 1.0:
        centre = top + h / 2
        h = h * c.art.pictogram
        top = centre - h / 2
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
    a = c.art
    w = 0.11 * a.arrow_shaft
    col = c.white
    if straight:
        x0 = 0.43
        c.line([(sx(x0), 0.84), (sx(x0), 0.36)], w, col, caps=False)
        c.arrowhead((sx(x0), 0.14), -90, 0.24, 0.3, col)
        # branch: quarter arc from the shaft to the right
        r, yb = 0.14 * a.arrow_bend, 0.62
        pts = [(sx(x0 + r - r * math.cos(t)), yb - r * math.sin(t)) for t in np.linspace(0, math.pi / 2, 12)]
        c.line(pts + [(sx(0.66), yb - r)], w, col, caps=False)
        c.arrowhead((sx(0.86), yb - r), 180 if mirror else 0, 0.22, 0.28, col)
    else:
        x0, r, yb = 0.36, 0.16 * a.arrow_bend, 0.58
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
    _digits(c, "80", c.grey)
    _end_stripes(c)


def _no_overtaking(c: _Canvas) -> None:
    _prohibitory(c)
    _car(c, 0.35, 0.47, 0.25, c.red)
    _car(c, 0.65, 0.47, 0.25, c.black)


def _end_no_overtaking(c: _Canvas) -> None:
    _end_disc(c)
    _car(c, 0.35, 0.47, 0.25, c.grey)
    _car(c, 0.65, 0.47, 0.25, c.grey)
    _end_stripes(c)


def _right_of_way(c: _Canvas) -> None:
    _warning(c)
    p = c.art.pictogram
    cy = 0.62
    c.poly([(0.5 - 0.03 * p, cy - 0.22 * p), (0.5 + 0.03 * p, cy - 0.22 * p), (0.5 + 0.045 * p, cy + 0.22 * p),
            (0.5 - 0.045 * p, cy + 0.22 * p)], c.black)
    c.rect(0.5 - 0.15 * p, 0.595 - 0.02 * p, 0.5 + 0.15 * p, 0.595 + 0.02 * p, c.black)


def _priority_road(c: _Canvas) -> None:
    a = c.art
    e = 0.008 * a.edge
    c.rpoly((0.5, 0.5), 0.3536, 4, 0, c.black, corner=0.01)
    c.rpoly((0.5, 0.5), 0.3536 - e, 4, 0, c.white, corner=0.008)
    c.rpoly((0.5, 0.5), 0.3536 - e - (0.3536 - 0.008 - 0.20) * a.rim, 4, 0, c.yellow)


def _yield(c: _Canvas) -> None:
    _warning(c, apex_up=False, inner=0.1, inner_corner=0.012)


def _stop(c: _Canvas) -> None:
    c.rpoly((0.5, 0.5), 0.5, 8, 22.5, c.white)
    c.rpoly((0.5, 0.5), 0.5 - 0.025 * c.art.rim, 8, 22.5, c.red)
    c.text("STOP", (0.15, 0.385, 0.85, 0.615), c.white)


def _no_vehicles(c: _Canvas) -> None:
    _prohibitory(c)


def _no_entry(c: _Canvas) -> None:
    c.disc((0.5, 0.5), 0.5, c.white)
    c.disc((0.5, 0.5), 0.5 - 0.012 * c.art.edge, c.red)
    hw, hh = 0.33 * c.art.legend_width, 0.09 * c.art.legend_height
    c.rect(0.5 - hw, 0.5 - hh, 0.5 + hw, 0.5 + hh, c.white)


def _general_caution(c: _Canvas) -> None:
    _warning(c)
    p = c.art.pictogram
    cx, cy = 0.5, 0.6
    c.poly([(cx - 0.038 * p, cy - 0.18 * p), (cx + 0.038 * p, cy - 0.18 * p), (cx + 0.015 * p, cy + 0.11 * p),
            (cx - 0.015 * p, cy + 0.11 * p)], c.black)
    c.disc((cx, cy + 0.18 * p), 0.038 * p, c.black)


def _traffic_signals(c: _Canvas) -> None:
    _warning(c)
    p = c.art.pictogram
    cy = 0.62
    c.rect(0.5 - 0.07 * p, cy - 0.23 * p, 0.5 + 0.07 * p, cy + 0.23 * p, c.black, radius=0.03 * p)
    c.disc((0.5, cy - 0.15 * p), 0.052 * p, c.red)
    c.disc((0.5, cy), 0.052 * p, c.amber)
    c.disc((0.5, cy + 0.15 * p), 0.052 * p, c.green)


def _pedestrians(c: _Canvas) -> None:
    _warning(c)
    _pedestrian(c, 0.5, 0.39, 0.46, c.black)


def _end_all_limits(c: _Canvas) -> None:
    _end_disc(c)
    _end_stripes(c)


def _turn(c: _Canvas, left: bool, straight: bool) -> None:
    """Turn right / left ahead, or go straight or right / left (``straight``): a blue disc with a bent arrow."""
    _mandatory(c)
    _bent_arrow(c, mirror=left, straight=straight)


def _ahead_only(c: _Canvas) -> None:
    _mandatory(c)
    c.line([(0.5, 0.84), (0.5, 0.4)], 0.12 * c.art.arrow_shaft, c.white, caps=False)
    c.arrowhead((0.5, 0.15), -90, 0.27, 0.34, c.white)


def _keep(c: _Canvas, right: bool) -> None:
    _mandatory(c)
    sx = (lambda x: x) if right else (lambda x: 1.0 - x)
    c.line([(sx(0.27), 0.27), (sx(0.58), 0.58)], 0.12 * c.art.arrow_shaft, c.white, caps=False)
    c.arrowhead((sx(0.77), 0.77), 45 if right else 135, 0.3, 0.34, c.white)


def _roundabout(c: _Canvas) -> None:
    _mandatory(c)
    r, w = 0.22 * c.art.arrow_bend ** 0.5, 0.085 * c.art.arrow_shaft
    for k in range(3):
        # counter-clockwise on the page (as on German Zeichen 215): angles decrease in image coordinates
        a0 = math.radians(90 + 120 * k)
        ts = np.linspace(a0, a0 - math.radians(70), 10)
        pts = [(0.5 + r * math.cos(t), 0.5 + r * math.sin(t)) for t in ts]
        c.line(pts, w, c.white, caps=False)
        t_end = a0 - math.radians(70)
        tip_t = t_end - math.radians(36)
        base = (0.5 + r * math.cos(t_end), 0.5 + r * math.sin(t_end))
        tip = (0.5 + r * math.cos(tip_t), 0.5 + r * math.sin(tip_t))
        direction = math.degrees(math.atan2(tip[1] - base[1], tip[0] - base[0]))
        c.arrowhead(tip, direction, math.dist(tip, base), 0.21, c.white)


def _pedestrian_crossing(c: _Canvas) -> None:
    """Zeichen 350: blue square, white triangle, pedestrian on a zebra crossing."""
    c.rpoly((0.5, 0.5), 0.5, 4, 45, c.white, corner=0.05)
    c.rpoly((0.5, 0.5), 0.5 - 0.012 * c.art.edge, 4, 45, c.blue, corner=0.045)
    c.rpoly((0.5, 0.58), 0.19, 3, -90, c.white, corner=0.02)
    for k in range(4):
        x = 0.34 + k * 0.095
        c.rect(x, 0.755, x + 0.055, 0.79, c.black)
    _pedestrian(c, 0.5, 0.33, 0.4, c.black)


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


@lru_cache(maxsize=128)
def _render_cached(name: str, size: int, supersample: int, art: ArtworkParams = CANONICAL_ARTWORK) -> np.ndarray:
    sign = get_sign(name)
    n = size * supersample
    canvas = _Canvas(n, art)
    sign.draw(canvas)
    a = np.asarray(canvas.img, dtype=np.float32) / 255.0
    # box-filter in premultiplied space so the edges do not pick up the transparent background's colour
    rgb = a[..., :3] * a[..., 3:]
    stacked = np.concatenate([rgb, a[..., 3:]], axis=-1).reshape(size, supersample, size, supersample, 4).mean((1, 3))
    alpha = stacked[..., 3:]
    rgb = np.where(alpha > 1e-6, stacked[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    out = np.concatenate([np.clip(rgb, 0, 1), alpha], axis=-1).astype(np.float32)
    out = _weathered(out, art)
    out.setflags(write=False)
    return out


def render_sign_array(name: str, size: int = 64, *, supersample: int = 4,
                      artwork: ArtworkParams | None = None) -> np.ndarray:
    """Sign ``name`` as an ``size x size x 4`` float32 RGBA array in [0, 1] (straight alpha = shape mask), drawn
    with ``artwork`` (default: the canonical artwork, :data:`CANONICAL_ARTWORK`)."""
    if not isinstance(size, (int, np.integer)) or size < 8 or size > 8192:
        raise ConfigError(f"sign size must be an integer number of pixels in [8, 8192], got {size!r}")
    if supersample not in (1, 2, 3, 4, 6, 8):
        raise ConfigError(f"supersample must be one of 1, 2, 3, 4, 6, 8, got {supersample!r}")
    if artwork is not None and not isinstance(artwork, ArtworkParams):
        raise ConfigError(f"artwork must be an ArtworkParams (see sample_artwork), got {type(artwork).__name__}")
    return _render_cached(name, int(size), int(supersample), artwork or CANONICAL_ARTWORK).copy()


def render_sign(name: str, size: int = 64, *, supersample: int = 4,
                artwork: ArtworkParams | None = None) -> torch.Tensor:
    """Sign ``name`` as a ``1x4xHxW`` float32 tensor (RGB + alpha mask, straight alpha, in [0, 1]), drawn with
    ``artwork`` (default: the canonical artwork)."""
    arr = render_sign_array(name, size, supersample=supersample, artwork=artwork)
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


# ---- placement on a pole ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlacementParams:
    """Where a sign stands in a frame: a planar sign on a pole seen by a pinhole camera (replayable).

    The sign's square canvas (side 1 in sign units) is rotated by ``yaw``/``pitch``/``roll`` about its centre and
    put at the depth where, seen head-on, its side spans ``scale`` of the frame width; ``focal`` is the focal
    length in frame widths (smaller = stronger perspective). The pole, ``pole_width`` sign sides wide, runs from
    the sign's centre straight down in the sign's plane (so it foreshortens with the sign).
    """

    # each field with its valid range [lo, hi] (checked in __post_init__)
    scale: float = field(default=0.7, metadata={"range": (0.05, 2.0)})
    cx: float = field(default=0.5, metadata={"range": (-1.0, 2.0)})  # sign centre, fraction of the frame width
    cy: float = field(default=0.45, metadata={"range": (-1.0, 2.0)})  # fraction of the frame height
    yaw_deg: float = field(default=0.0, metadata={"range": (-79.99, 79.99)})  # below 80 degrees: the sign faces us
    pitch_deg: float = field(default=0.0, metadata={"range": (-79.99, 79.99)})
    roll_deg: float = field(default=0.0, metadata={"range": (-90.0, 90.0)})
    focal: float = field(default=1.6, metadata={"range": (0.3, 20.0)})
    pole_width: float = field(default=0.07, metadata={"range": (0.0, 0.3)})
    pole_grey: float = field(default=0.55, metadata={"range": (0.0, 1.0)})

    def __post_init__(self) -> None:
        for f in fields(self):
            lo, hi = f.metadata["range"]
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ConfigError(f"PlacementParams {f.name} must be a number in [{lo:g}, {hi:g}], got {v!r}")


def sample_placement(generator, *, scale: tuple[float, float] = (0.45, 0.8), max_yaw: float = 35.0,
                     max_pitch: float = 15.0, max_roll: float = 6.0) -> PlacementParams:
    """A random :class:`PlacementParams` (``generator`` as for :func:`sample_artwork`)."""
    rng = _as_numpy_rng(generator)
    u = rng.uniform
    return PlacementParams(scale=float(u(*scale)), cx=float(u(0.4, 0.6)), cy=float(u(0.38, 0.55)),
                           yaw_deg=float(u(-max_yaw, max_yaw)), pitch_deg=float(u(-max_pitch, max_pitch)),
                           roll_deg=float(u(-max_roll, max_roll)), focal=float(u(0.9, 3.0)),
                           pole_width=float(u(0.04, 0.1)), pole_grey=float(u(0.3, 0.75)))


def placement_homography(p: PlacementParams, out_hw: tuple[int, int]) -> np.ndarray:
    """The 3x3 homography from sign-canvas unit coordinates ``(u, v, 1)`` (0..1 across the canvas, v down) to
    output pixel coordinates ``(x, y, 1)`` (pixel centres at integers + 0.5) of a ``out_hw`` frame."""
    h, w = out_hw
    ya, pi, ro = (math.radians(v) for v in (p.yaw_deg, p.pitch_deg, p.roll_deg))
    ry = np.array([[math.cos(ya), 0, math.sin(ya)], [0, 1, 0], [-math.sin(ya), 0, math.cos(ya)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pi), -math.sin(pi)], [0, math.sin(pi), math.cos(pi)]])
    rz = np.array([[math.cos(ro), -math.sin(ro), 0], [math.sin(ro), math.cos(ro), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    f = p.focal * w  # focal length in pixels
    depth = p.focal / p.scale  # in sign sides: a head-on sign spans scale * w pixels
    k = np.array([[f, 0, p.cx * w], [0, f, p.cy * h], [0, 0, 1]])
    # (u, v, 1) -> 3-D point rot @ (u - 0.5, v - 0.5, 0) + (0, 0, depth)
    m = np.column_stack([rot[:, 0], rot[:, 1], -0.5 * rot[:, 0] - 0.5 * rot[:, 1] + np.array([0, 0, depth])])
    return k @ m


def place_on_pole(sign_rgba: torch.Tensor, placement: PlacementParams | Sequence[PlacementParams],
                  background: torch.Tensor | float = 0.5, out_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Put ``Bx4xSxS`` sign renders (straight alpha, e.g. :func:`render_sign` output with a sticker applied) on a
    pole in front of ``background`` (``Bx3xHxW`` or a grey level), seen in perspective: returns ``Bx3xHxW``.

    Differentiable in ``sign_rgba`` and ``background`` (the warp is ``grid_sample`` through the inverse of
    :func:`placement_homography`; the render is first area-resampled to about its size in the frame, so a large
    render does not alias). ``placement``: one for all, or one per batch item.
    """
    import torch.nn.functional as F

    if sign_rgba.ndim != 4 or sign_rgba.shape[1] != 4:
        raise ConfigError(f"expected a Bx4xSxS RGBA sign, got shape {tuple(sign_rgba.shape)}")
    b = sign_rgba.shape[0]
    if isinstance(background, torch.Tensor):
        if background.ndim != 4 or background.shape[1] != 3:
            raise ConfigError(f"expected a Bx3xHxW background, got shape {tuple(background.shape)}")
        out_hw = tuple(background.shape[-2:])  # type: ignore[assignment]
        bg = background.expand(b, -1, -1, -1) if background.shape[0] == 1 else background
    else:
        if out_hw is None:
            raise ConfigError("place_on_pole: give out_hw=(H, W) with a grey-level background")
        bg = torch.full((b, 3, *out_hw), float(background), dtype=sign_rgba.dtype, device=sign_rgba.device)
    h, w = out_hw  # type: ignore[misc]
    places = [placement] * b if isinstance(placement, PlacementParams) else list(placement)
    if len(places) != b:
        raise ConfigError(f"got {len(places)} placements for {b} signs")
    dev, dt = sign_rgba.device, sign_rgba.dtype
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float64) + 0.5,
                            torch.arange(w, device=dev, dtype=torch.float64) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    grids, poles = [], []
    side = max(8, sign_rgba.shape[-1])
    for p in places:
        hom = placement_homography(p, (h, w))
        inv = torch.from_numpy(np.linalg.inv(hom)).to(dev)
        uvw = pix @ inv.T
        u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
        front = uvw[:, 2] > 0
        # the pole, anti-aliased over about one output pixel (its footprint in sign units from the Jacobian)
        px = 1.0 / max(1.0, p.scale * w * p.focal / (p.focal + 1.0))
        half = p.pole_width / 2
        pole = ((half - (u - 0.5).abs()) / px + 0.5).clamp(0, 1) * ((v - 0.5) / px + 0.5).clamp(0, 1)
        poles.append((pole * front).reshape(h, w).to(dt))
        grids.append(torch.stack([u * 2 - 1, v * 2 - 1], -1).reshape(h, w, 2).to(dt))
        side = min(side, max(8, int(math.ceil(p.scale * w * 1.5))))
    sign = sign_rgba
    if side < sign_rgba.shape[-1]:
        rgb_p = sign_rgba[:, :3] * sign_rgba[:, 3:]  # resample premultiplied
        small = F.interpolate(torch.cat([rgb_p, sign_rgba[:, 3:]], 1), size=(side, side), mode="bilinear",
                              antialias=True, align_corners=False)
        sign = small
    else:
        sign = torch.cat([sign_rgba[:, :3] * sign_rgba[:, 3:], sign_rgba[:, 3:]], 1)
    warped = F.grid_sample(sign, torch.stack(grids), mode="bilinear", padding_mode="zeros", align_corners=False)
    pole = torch.stack(poles)[:, None]
    grey = torch.tensor([p.pole_grey for p in places], dtype=dt, device=dev).view(b, 1, 1, 1)
    # a cylinder's shading across the pole is left out: a flat grey bar, darker than most sky
    scene = bg * (1 - pole) + grey * pole
    return warped[:, :3] + (1 - warped[:, 3:]) * scene


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
