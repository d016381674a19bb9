"""A user's own photo of a sign as the sticker attack's sign: where the sign is, at print resolution, and its size.

``testbed sticker --sign-photo PHOTO`` attacks the sign in a photo instead of a rendered one. The sign is located
by one of:

* ``polygon`` — its outline, ``x1,y1,x2,y2,...`` in photo pixels (x right, y down, the photo's top-left corner
  at (0, 0), so pixel (i, j) covers [i, i+1) x [j, j+1));
* ``mask`` — a mask image of the photo's size (white = the sign);
* ``corners`` — the camera/rectify convention: the four corners TL, TR, BR, BL (clockwise from top-left, the
  order of ``camera.rectify``'s marker corners) of the sign's bounding square in the photo. The photo is then
  rectified by the homography that takes this quadrilateral to a frontal square, so a sign photographed at an
  angle comes out face-on and the printed stickers have the right shape; the sign's outline inside the square is
  the polygon / mask when given (in photo pixels, mapped by the same homography), else the whole square.

Without ``corners`` the photo is cropped (axis-aligned) to a square around the sign with ``margin`` of context on
each side and resampled (antialiased) to ``size`` pixels; with them the rectified square gets the same margin.
Either way the result is a ``SignPhoto``: the sign image (1, 3, S, S) in [0, 1] — photo context included, the
sign's surroundings are part of what the camera sees —, its alpha (1, 1, S, S) (the sticker stays inside it and
its budget is measured on it), and ``box``: the sign's extent (x0, y0, x1, y1) in sign-image pixels, which with the
sign's physical width (``--sign-width-mm``) gives the millimetres per pixel of the printed stickers.

Tensors only (BCHW RGB float in [0, 1]); the polygon is rasterised at 4 x 4 samples per pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from physical.eot_stages import warp_pixels
from testbed.errors import ConfigError, ImageError

Point = tuple[float, float]
SUPERSAMPLE = 4


@dataclass
class SignPhoto:
    """The sign cut (or rectified) from a photo at print resolution."""

    sign: Tensor  # (1, 3, S, S) in [0, 1]: the sign with its photo context
    alpha: Tensor  # (1, 1, S, S) in [0, 1]: the sign's own area
    box: tuple[float, float, float, float]  # the sign's extent (x0, y0, x1, y1) in sign-image pixels
    outline: list[Point] | None = None  # the sign's outline in sign-image pixels (None: from a mask)
    source: dict[str, Any] = field(default_factory=dict)  # how it was made (JSON: recorded in the run config)

    def mm_per_px(self, sign_width_mm: float) -> float:
        """Millimetres per sign-image pixel for a sign ``sign_width_mm`` wide (its box's width)."""
        return float(sign_width_mm) / (self.box[2] - self.box[0])


def parse_points(text: str, *, what: str, count: int | None = None, minimum: int = 3) -> list[Point]:
    """``"x1,y1,x2,y2,..."`` as a list of (x, y) floats; ConfigError naming ``what`` for anything else."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{what} must be numbers x1,y1,x2,y2,... (photo pixels), got {text!r}") from None
    if len(values) % 2 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{what} must be an even number of finite coordinates x1,y1,x2,y2,..., got {text!r}")
    pts = [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    if count is not None and len(pts) != count:
        raise ConfigError(f"{what} needs exactly {count} points (x,y pairs), got {len(pts)}")
    if len(pts) < minimum:
        raise ConfigError(f"{what} needs at least {minimum} points (x,y pairs), got {len(pts)}")
    return pts


def polygon_area(points: Sequence[Point]) -> float:
    """The polygon's signed area (shoelace; positive when clockwise in image coordinates, y down)."""
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, list(points[1:]) + [points[0]]))


def polygon_alpha(points: Sequence[Point], height: int, width: int) -> Tensor:
    """The polygon (pixel-edge coordinates) as an anti-aliased (1, 1, H, W) coverage mask in [0, 1]: the even-odd
    rule at 4 x 4 sample points per pixel."""
    k = SUPERSAMPLE
    ys = (torch.arange(height * k, dtype=torch.float64) + 0.5) / k
    xs = (torch.arange(width * k, dtype=torch.float64) + 0.5) / k
    yy, xx = ys[:, None], xs[None, :]
    inside = torch.zeros(height * k, width * k, dtype=torch.bool)
    for (x0, y0), (x1, y1) in zip(points, list(points[1:]) + [points[0]]):
        if y0 == y1:
            continue
        crosses = (yy >= min(y0, y1)) & (yy < max(y0, y1))  # the edge spans this row of sample points
        x_at = x0 + (yy - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xx < x_at)
    return F.avg_pool2d(inside.float()[None, None], k)


def _check_photo(photo: Tensor) -> Tensor:
    if not isinstance(photo, Tensor) or photo.ndim != 4 or photo.shape[:2] != (1, 3):
        raise ImageError(f"sign photo must be a 1x3xHxW RGB tensor, got {getattr(photo, 'shape', type(photo))}")
    return photo.detach().float().cpu().clamp(0, 1)


def _inside(points: Sequence[Point], w: int, h: int, what: str) -> None:
    for x, y in points:
        if not (-0.5 <= x <= w + 0.5 and -0.5 <= y <= h + 0.5):
            raise ConfigError(f"{what}: point ({x:g}, {y:g}) lies outside the {w}x{h} photo")


def homography(src: Sequence[Point], dst: Sequence[Point]) -> Tensor:
    """The 3x3 homography taking the four ``src`` points to ``dst`` (float64, DLT with h33 = 1)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    a, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)
    if abs(float(torch.linalg.det(a))) < 1e-9:
        raise ConfigError("sign corners are degenerate (three on a line, or repeated): give four corners TL, TR, "
                          "BR, BL of the sign's bounding square")
    hvec = torch.linalg.solve(a, b)
    return torch.cat([hvec, torch.ones(1, dtype=torch.float64)]).view(3, 3)


def _apply_h(hom: Tensor, points: Sequence[Point]) -> list[Point]:
    p = torch.tensor([[x, y, 1.0] for x, y in points], dtype=torch.float64) @ hom.T
    return [(float(a / c), float(b / c)) for a, b, c in p.tolist()]


def sign_from_photo(
    photo: Tensor, size: int = 128, *, polygon: Sequence[Point] | None = None, mask: Tensor | None = None,
    corners: Sequence[Point] | None = None, margin: float = 0.1,
) -> SignPhoto:
    """The sign in ``photo`` (1, 3, H, W) at ``size`` x ``size`` pixels, located by ``polygon`` (photo pixels),
    ``mask`` ((1, 1, H, W) or (H, W), > 0.5 = sign) or the four ``corners`` of its bounding square (TL, TR, BR, BL;
    the photo is rectified to a frontal view); ``margin`` = context kept on each side, a fraction of the sign's
    size."""
    photo = _check_photo(photo)
    h, w = photo.shape[-2:]
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ConfigError(f"sign size must be an integer >= 8 pixels, got {size!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 1:
        raise ConfigError(f"sign margin must be a fraction in [0, 1] of the sign's size, got {margin!r}")
    if polygon is not None and mask is not None:
        raise ConfigError("give the sign's outline as a polygon or as a mask, not both")
    if polygon is not None:
        polygon = [(float(x), float(y)) for x, y in polygon]
        _inside(polygon, w, h, "sign polygon")
        if abs(polygon_area(polygon)) < 16.0:
            raise ConfigError(f"sign polygon encloses {abs(polygon_area(polygon)):.1f} square pixels of the photo; "
                              "outline the sign (at least 4x4 pixels)")
    if mask is not None:
        m = mask.detach().float().cpu()
        while m.ndim < 4:
            m = m[None]
        if m.shape[-2:] != (h, w) or m.shape[:2] != (1, 1):
            raise ImageError(f"sign mask is {m.shape[-2]}x{m.shape[-1]} but the photo is {h}x{w}; draw the mask "
                             "on the photo itself (white = the sign)")
        mask = m.clamp(0, 1)
        if float((mask > 0.5).sum()) < 16:
            raise ImageError("sign mask marks fewer than 16 pixels (white = the sign): nothing to attack")
    source: dict[str, Any] = {"photo_size": [int(w), int(h)], "margin": float(margin), "size": size}
    if corners is not None:
        return _rectified(photo, size, corners, polygon, mask, margin, source)
    if polygon is None and mask is None:
        raise ConfigError("locate the sign in the photo: --sign-polygon, --sign-mask or --sign-corners")
    # axis-aligned square crop around the sign, with context
    if polygon is not None:
        xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
        x0, y0, x1, y1 = max(min(xs), 0.0), max(min(ys), 0.0), min(max(xs), float(w)), min(max(ys), float(h))
        source["polygon"] = [list(p) for p in polygon]
    else:
        on = (mask[0, 0] > 0.5).nonzero()
        y0, x0 = float(on[:, 0].min()), float(on[:, 1].min())
        y1, x1 = float(on[:, 0].max()) + 1, float(on[:, 1].max()) + 1
        source["mask"] = True
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = cx - side / 2, cy - side / 2
    scale = size / side  # sign-image pixels per photo pixel
    # the crop by an exact pixel-edge affine map (photo -> sign image), after an antialiasing pre-shrink
    pre = max(1, int(1 / scale / 2))
    src = F.avg_pool2d(photo, pre, ceil_mode=True) if pre > 1 else photo
    s2 = scale * pre  # sign-image pixels per (pre-shrunk) source pixel
    # pixel-centre coordinates (align_corners=True): centre u of the source is at edge u + 0.5
    tx, ty = (0.5 - left / pre) * s2 - 0.5, (0.5 - top / pre) * s2 - 0.5
    aff = torch.tensor([[[s2, 0.0, tx], [0.0, s2, ty]]], dtype=torch.float64)
    sign = _antialiased_warp(src, aff, size, s2)
    if polygon is not None:
        outline = [((x - left) * scale, (y - top) * scale) for x, y in polygon]
        alpha = polygon_alpha(outline, size, size)
    else:
        outline = None
        msrc = F.avg_pool2d(mask, pre, ceil_mode=True) if pre > 1 else mask
        alpha = _antialiased_warp(msrc, aff, size, s2, padding="zeros").clamp(0, 1)
    box = ((x0 - left) * scale, (y0 - top) * scale, (x1 - left) * scale, (y1 - top) * scale)
    source.update(crop_px=[left, top, side], px_per_photo_px=scale)
    return _checked(SignPhoto(sign.clamp(0, 1), alpha, box, outline, source))


def _antialiased_warp(src: Tensor, m: Tensor, size: int, scale: float, padding: str = "border") -> Tensor:
    """Warp by the pixel map ``m`` into size x size; when shrinking (``scale`` < 1), supersample the output and
    box-filter it down, so no photo detail aliases."""
    k = 1 if scale >= 1 else min(8, math.ceil(1 / scale))
    if k > 1:
        up = torch.tensor([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2], [0, 0, 1]], dtype=torch.float64)
        full = torch.cat([m[0], torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)]) if m.shape[-2] == 2 else m[0]
        out = warp_pixels(src.double(), (up @ full)[None], (size * k, size * k), padding)
        return F.avg_pool2d(out, k).float()
    return warp_pixels(src.double(), m, (size, size), padding).float()


def _rectified(photo: Tensor, size: int, corners: Sequence[Point], polygon: list[Point] | None,
               mask: Tensor | None, margin: float, source: dict[str, Any]) -> SignPhoto:
    """The photo rectified so that ``corners`` (TL, TR, BR, BL of the sign's bounding square) become a frontal
    square of ``size / (1 + 2 margin)`` pixels in the middle of the sign image."""
    h, w = photo.shape[-2:]
    corners = [(float(x), float(y)) for x, y in corners]
    if len(corners) != 4:
        raise ConfigError(f"sign corners need exactly 4 points TL, TR, BR, BL, got {len(corners)}")
    _inside(corners, w, h, "sign corners")
    if polygon_area(corners) <= 0:
        raise ConfigError("sign corners must go clockwise TL, TR, BR, BL (the camera.rectify order); these go "
                          "counter-clockwise or cross")
    inner = size / (1 + 2 * margin)
    o = (size - inner) / 2
    square = [(o, o), (o + inner, o), (o + inner, o + inner), (o, o + inner)]
    hom = homography(corners, square)  # photo pixel edges -> sign-image pixel edges
    # scale of the map at the sign's centre: pre-shrink the photo so the warp never skips photo pixels
    ctr = _apply_h(torch.linalg.inv(hom), [(size / 2, size / 2)])[0]
    near = _apply_h(hom, [ctr, (ctr[0] + 1, ctr[1]), (ctr[0], ctr[1] + 1)])
    scale = min(math.dist(near[0], near[1]), math.dist(near[0], near[2]))  # sign px per photo px
    pre = max(1, int(1 / max(scale, 1e-9) / 2))
    src = F.avg_pool2d(photo, pre, ceil_mode=True) if pre > 1 else photo
    shrink = torch.tensor([[pre, 0, 0], [0, pre, 0], [0, 0, 1]], dtype=torch.float64)  # pre-shrunk edge -> photo edge
    centre = torch.tensor([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], dtype=torch.float64)  # centre -> edge coordinates
    m = torch.linalg.inv(centre) @ hom @ shrink @ centre  # pre-shrunk centre coords -> sign-image centre coords
    sign = _antialiased_warp(src, m[None], size, scale * pre)
    if polygon is not None:
        outline: list[Point] | None = _apply_h(hom, polygon)
        alpha = polygon_alpha(outline, size, size)
        source["polygon"] = [list(p) for p in polygon]
    elif mask is not None:
        outline = None
        msrc = F.avg_pool2d(mask, pre, ceil_mode=True) if pre > 1 else mask
        alpha = _antialiased_warp(msrc, m[None], size, scale * pre, padding="zeros").clamp(0, 1)
        source["mask"] = True
    else:
        outline = square
        alpha = polygon_alpha(square, size, size)
    if outline is not None:
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        box = (max(min(xs), 0.0), max(min(ys), 0.0), min(max(xs), float(size)), min(max(ys), float(size)))
    else:
        on = (alpha[0, 0] > 0.5).nonzero()
        if not len(on):
            raise ImageError("the sign mask lies outside the rectified square: check --sign-corners")
        box = (float(on[:, 1].min()), float(on[:, 0].min()), float(on[:, 1].max()) + 1, float(on[:, 0].max()) + 1)
    source.update(corners=[list(p) for p in corners], homography=hom.tolist(), rectified=True)
    return _checked(SignPhoto(sign.clamp(0, 1), alpha, box, outline, source))


def _checked(sp: SignPhoto) -> SignPhoto:
    if float(sp.alpha.sum()) < 16:
        raise ImageError("the sign covers fewer than 16 pixels of the sign image: outline a larger part of the photo")
    if sp.box[2] - sp.box[0] < 4 or sp.box[3] - sp.box[1] < 4:
        raise ImageError("the sign is narrower than 4 pixels in the sign image: outline the whole sign")
    return sp


def example_sign_photo(
    sign: str = "stop", photo: str = "coffee",
    corners: Sequence[Point] = ((372.0, 40.0), (548.0, 58.0), (542.0, 228.0), (370.0, 214.0)),
) -> tuple[Tensor, list[Point] | None, list[Point]]:
    """A stand-in for a user's photo of a sign: the project's rendering of ``sign`` put into the shipped photo
    ``photo`` so that its square canvas lands on ``corners`` (TL, TR, BR, BL, photo pixels; a perspective view).
    Returns (photo (1, 3, H, W), the sign's outline in photo pixels — the octagon of ``stop``, None for the
    other shapes —, the corners)."""
    from testbed.photos import load_photo
    from worlds.signs.render import render_sign

    base = load_photo(photo).float()
    corners = [(float(x), float(y)) for x, y in corners]
    reach = max(math.dist(corners[0], corners[2]), math.dist(corners[1], corners[3]))
    r = int(2 ** math.ceil(math.log2(max(reach * 2, 64))))  # render at about twice the size it is seen at
    rgba = render_sign(sign, r).float()
    pre = torch.cat([rgba[:, :3] * rgba[:, 3:4], rgba[:, 3:4]], 1)  # premultiplied: warp colour with coverage
    hom = homography([(0.0, 0.0), (r, 0.0), (r, r), (0.0, r)], corners)
    centre = torch.tensor([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], dtype=torch.float64)
    m = torch.linalg.inv(centre) @ hom @ centre
    warped = warp_pixels(pre.double(), m[None], tuple(base.shape[-2:]), "zeros").float()
    out = (base * (1 - warped[:, 3:4]) + warped[:, :3]).clamp(0, 1)
    outline = None
    if sign == "stop":  # worlds.signs.render._stop: a regular octagon, apothem 0.5 of the canvas, rotated 22.5 deg
        rad = 0.5 / math.cos(math.pi / 8)
        octagon = [((0.5 + rad * math.cos(math.radians(22.5 + 45 * k))) * r,
                    (0.5 + rad * math.sin(math.radians(22.5 + 45 * k))) * r) for k in range(8)]
        outline = _apply_h(hom, octagon)
    return out, outline, corners


__all__ = ["SignPhoto", "example_sign_photo", "homography", "parse_points", "polygon_alpha", "polygon_area", "sign_from_photo"]
