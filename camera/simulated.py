"""A simulated print-and-photograph camera (OpenCV + albumentations, deliberately not the kornia EOT code).

Pipeline for each frame, in linear light where physics is linear:

1. printer (once per sheet): gamut compression (saturation towards luminance, dot gain, ink black point,
   paper white) and ordered-dither halftoning (16x16 Bayer, dispersed dots, 256 levels, three offset screens) at
   the printer's *dot pitch* (``PrinterParams.dpi``, 600 by default). Each page-raster pixel becomes a block of
   ``round(printer dpi / raster dpi)`` x same dots; what is stored is the exact area average of its dots'
   reflectance (computed from per-block threshold tables, not by rendering every dot), i.e. the print as a camera
   integrating over at least one raster pixel sees it;
2. the camera integrates over its pixel footprint: the printed page is area-averaged to about twice the frame's
   sampling, low-passed by the lens / optical low-pass filter / pixel aperture (Gaussian, ``pixel_sigma`` frame px)
   and only then sampled through a 3-D perspective (tilt, in-plane rotation, distance, focal length) into a scene
   photo (a real photograph shipped with scikit-image / matplotlib) - no aliasing moire from the halftone;
3. lighting (exposure, white balance, smooth brightness gradient), defocus or motion blur (albumentations);
4. sRGB encoding, sensor noise (read + shot noise) and JPEG (``testbed.imageio.jpeg_round_trip``, libjpeg-turbo).

Parameters are sampled from a ``numpy.random.Generator`` (seeded per frame from ``(seed, index)``) into a
JSON-serialisable :class:`SimParams`, then applied by :meth:`SimulatedCamera.render`, so any draw can be
replayed. Each frame reports where the page (and every object in the sheet sidecar) landed in the frame.

:func:`print_photograph` is the harness's batch mode: BCHW images -> printed on a sheet with ArUco markers ->
photographed -> rectified with ``camera.rectify`` -> BCHW images at the input size plus per-image parameters,
each image's draw seeded from ``(seed, key, repetition)``. :class:`InSituPatch` photographs a printed patch lying in
a scene. Many photos (``print_photograph(workers=)``, :meth:`InSituPatch.shoot_many`) are rendered on a thread pool;
they are the same photos, bit for bit, as one by one.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import cv2
import numpy as np
import torch

from camera.sources import FrameSource
from testbed.errors import ConfigError, ImageError

DEFAULT_SCENES = ("coffee", "chelsea", "astronaut", "rocket", "motorcycle_left", "grace_hopper")
DEMOSAIC_METHODS = ("none", "bilinear", "edge-aware")

_T = TypeVar("_T")
_R = TypeVar("_R")
_POOLS = threading.Lock()
_pool_state = {"running": 0, "cv2_threads": 1, "torch_threads": 1}  # pools running; the libraries' threads before


def photo_workers(workers: int | None, n: int) -> int:
    """Threads for ``n`` independent photos: ``workers``, or the CPU cores this process may use (None), at most n."""
    if workers is None:
        from testbed.machine import cpu_cores

        workers = cpu_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive number of threads, got {workers!r}")
    return max(1, min(int(workers), int(n)))


@contextlib.contextmanager
def _photo_pool_threads() -> Iterator[None]:
    """OpenCV and torch single-threaded while photo threads run (they are the parallelism; restored after the last
    pool ends)."""
    with _POOLS:
        if _pool_state["running"] == 0:
            _pool_state["cv2_threads"], _pool_state["torch_threads"] = cv2.getNumThreads(), torch.get_num_threads()
            cv2.setNumThreads(1)
            torch.set_num_threads(1)
        _pool_state["running"] += 1
    try:
        yield
    finally:
        with _POOLS:
            _pool_state["running"] -= 1
            if _pool_state["running"] == 0:
                cv2.setNumThreads(_pool_state["cv2_threads"])
                torch.set_num_threads(_pool_state["torch_threads"])


def ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """``map(fn, items)`` on ``workers`` threads (OpenCV and numpy release the GIL), yielded in the items' order
    with at most 2 x workers photos in flight (a long run never holds all its frames)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with _photo_pool_threads(), ThreadPoolExecutor(workers, thread_name_prefix="photo") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ------------------------------------------------------------------------------------------- colour
def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear light -> sRGB in [0, 1] (float32; vectorised, one ``power`` pass plus a sparse fix-up of darks)."""
    return _encode_srgb(np.clip(np.asarray(x, np.float32), 0.0, 1.0))


def bayer_matrix(n: int) -> np.ndarray:
    """n x n Bayer threshold matrix (n a power of two) with thresholds (k + 0.5) / n^2."""
    if n < 2 or n & (n - 1):
        raise ConfigError(f"halftone cell must be a power of two >= 2, got {n}")
    m = np.array([[0, 2], [3, 1]])
    while m.shape[0] < n:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return (m + 0.5) / (n * n)


#: halftone screens: ``bayer`` (ordered dispersed dots, an inkjet-like fine screen) and ``clustered`` (a clustered-dot
#: screen at 45°, the AM screen office laser printers lay down: dots grow from two centres per cell)
HALFTONE_SCREENS = ("bayer", "clustered")


def clustered_dot_matrix(n: int) -> np.ndarray:
    """n x n threshold matrix (n even, >= 4) of a 45° clustered-dot screen, thresholds (k + 0.5) / n^2.

    Each cell holds two dot centres, its middle and its corner, so the dots lie on a lattice rotated 45° with pitch
    n / sqrt(2) printer dots: at 600 dpi, n = 8 is the classic 106-lpi 45° screen of a 600-dpi office laser
    (n^2 + 1 = 65 coverage levels per cell). Dots are inked in order of their distance to the nearest centre, so ink
    grows as round clusters that join into a checkerboard at half coverage and leave round holes above it (ties
    broken by position, deterministically)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 4 or n % 2:
        raise ConfigError(f"a clustered-dot halftone cell must be an even number of dots >= 4, got {n!r}")
    y, x = np.mgrid[0:n, 0:n] + 0.5
    centres = [(n / 2, n / 2), (0, 0), (0, n), (n, 0), (n, n)]
    dist = np.min([np.hypot(y - cy, x - cx) for cy, cx in centres], axis=0)
    order = np.lexsort((x.ravel(), y.ravel(), np.round(dist.ravel(), 9)))
    ranks = np.empty(n * n, np.int64)
    ranks[order] = np.arange(n * n)
    return (ranks.reshape(n, n) + 0.5) / (n * n)


def screen_matrix_builder(screen: str) -> Callable[[int], np.ndarray]:
    """The threshold-matrix builder of a halftone ``screen`` (:data:`HALFTONE_SCREENS`); ConfigError otherwise."""
    builders = {"bayer": bayer_matrix, "clustered": clustered_dot_matrix}
    if not isinstance(screen, str) or screen not in builders:
        raise ConfigError(f"halftone screen must be one of {HALFTONE_SCREENS}, got {screen!r}")
    return builders[screen]


def halftone_matrix(n: int, screen: str = "bayer") -> np.ndarray:
    """The n x n threshold matrix of a halftone ``screen`` (:data:`HALFTONE_SCREENS`)."""
    return screen_matrix_builder(screen)(n)


# ------------------------------------------------------------------------------------------ printer
@dataclass
class PrinterParams:
    """A simple inkjet-on-plain-paper model; colours are relative to paper white = (1, 1, 1)."""

    saturation: float = 0.82  # chroma kept (linear light, around luminance)
    dot_gain_gamma: float = 1.12  # > 1 darkens mid-tones
    black: tuple[float, float, float] = (0.035, 0.032, 0.04)  # linear reflectance of full ink
    paper: tuple[float, float, float] = (1.0, 1.0, 1.0)  # linear reflectance of bare paper
    halftone_cell: int = 16  # screen cell size in printer dots (cell^2 + 1 levels); 0 disables halftoning
    dpi: float = 600.0  # printer dot pitch (dots per inch) at which the halftone is laid down
    halftone_screen: str = "bayer"  # "bayer" (dispersed dots, power-of-two cell) or "clustered" (45° AM dots, even cell)
    grain: float = 0.0  # std of the print's multiplicative reflectance grain (0: none); see SimulatedPrinter.grain_field
    grain_mm: float = 0.25  # the grain's correlation length on paper (Gaussian sigma, mm)
    grain_seed: int = 0  # the grain field's seed (drawn per print; recorded, so a photo replays)

    def validate(self) -> "PrinterParams":
        if not 0 < self.saturation <= 1:
            raise ConfigError(f"printer saturation must be in (0, 1], got {self.saturation}")
        if not 0.3 <= self.dot_gain_gamma <= 3:
            raise ConfigError(f"printer dot_gain_gamma must be in [0.3, 3], got {self.dot_gain_gamma}")
        if any(not 0 <= b < p <= 1 for b, p in zip(self.black, self.paper)):
            raise ConfigError(f"printer black {self.black} must be below paper {self.paper}, both in [0, 1]")
        build = screen_matrix_builder(self.halftone_screen)
        if self.halftone_cell:
            build(self.halftone_cell)
        if not (isinstance(self.dpi, (int, float)) and 50 <= self.dpi <= 4800):
            raise ConfigError(f"printer dpi must be a dot pitch in [50, 4800] dots per inch, got {self.dpi!r}")
        if isinstance(self.grain, bool) or not (isinstance(self.grain, (int, float)) and 0 <= self.grain <= 0.5):
            raise ConfigError(f"printer grain must be a reflectance std in [0, 0.5], got {self.grain!r}")
        if isinstance(self.grain_mm, bool) or not (isinstance(self.grain_mm, (int, float))
                                                   and 0.02 <= self.grain_mm <= 5):
            raise ConfigError(f"printer grain_mm must be a length in [0.02, 5] mm, got {self.grain_mm!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The record of this printer (JSON); the default ``bayer`` screen is left out, so records made before the
        screen could be chosen stay byte-identical and replay as they did (``PrinterParams(**record)``)."""
        d = asdict(self)
        if d["halftone_screen"] == "bayer":
            del d["halftone_screen"]
        if not d["grain"]:  # likewise the grain, when there is none
            del d["grain"], d["grain_mm"], d["grain_seed"]
        return d

    @staticmethod
    def sample(rng: np.random.Generator) -> "PrinterParams":
        """A random plausible printer (for robustness studies)."""
        k = float(rng.uniform(0.02, 0.06))
        return PrinterParams(saturation=float(rng.uniform(0.7, 0.92)), dot_gain_gamma=float(rng.uniform(1.0, 1.25)),
                             black=tuple(float(k * rng.uniform(0.9, 1.1)) for _ in range(3)))


class SimulatedPrinter:
    """Maps intended sRGB colours to the reflectance a printer puts on paper."""

    def __init__(self, params: PrinterParams | None = None) -> None:
        self.params = (params or PrinterParams()).validate()
        self._tables: dict[int, np.ndarray] = {}

    def _tone(self, srgb: np.ndarray) -> np.ndarray:
        """Intended sRGB -> ink-independent 'lightness' in linear [0, 1] before the black/paper mapping."""
        p = self.params
        lin = srgb_to_linear(srgb)
        y = lin @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        lin = y[..., None] + np.float32(p.saturation) * (lin - y[..., None])
        return np.power(np.clip(lin, 0.0, 1.0), np.float32(p.dot_gain_gamma))

    def _reflect(self, t: np.ndarray) -> np.ndarray:
        black = np.array(self.params.black, np.float32)
        paper = np.array(self.params.paper, np.float32)
        return black + (paper - black) * t

    def expected_colors(self, rgb: np.ndarray) -> np.ndarray:
        """Mean printed colour (sRGB in [0, 1], relative to paper white) of Nx3 intended sRGB colours."""
        rgb = np.asarray(rgb, np.float32)
        if rgb.ndim != 2 or rgb.shape[1] != 3:
            raise ImageError(f"colours must be Nx3, got shape {rgb.shape}")
        lin = self._reflect(self._tone(rgb)) / np.array(self.params.paper, np.float32)
        return linear_to_srgb(lin)

    def dots_per_px(self, raster_dpi: float | None) -> int:
        """Printer dots per raster pixel along each axis (the driver replicates each pixel into a b x b block)."""
        if not raster_dpi:
            return 1
        return max(1, int(round(self.params.dpi / float(raster_dpi))))

    def _block_table(self, b: int) -> np.ndarray:
        """Ink fraction of a b x b dot block: table[channel, block class, q] for coverage level q in 0..n^2.

        The screen (offset per channel) is periodic, so a block's dots see one of g x g threshold sets
        (g = n / gcd(n, b)); a dot is inked when coverage > its threshold, i.e. when its rank m < q with
        q = ceil(coverage * n^2 - 0.5). The table holds the cumulative count of ranks < q per class / b^2.
        """
        if b in self._tables:
            return self._tables[b]
        n = self.params.halftone_cell
        ranks = np.round(halftone_matrix(n, self.params.halftone_screen) * n * n - 0.5).astype(np.int64)
        g = n // math.gcd(n, b)
        idx = (np.arange(g)[:, None] * b + np.arange(b)[None, :]) % n  # g x b dot rows (cols) of each class
        tabs = []
        for dy, dx in ((0, 0), (n // 2, n // 4), (n // 4, n // 2)):  # offset screens (dot-off-dot)
            r = np.roll(ranks, (dy, dx), axis=(0, 1))
            blocks = r[idx[:, None, :, None], idx[None, :, None, :]].reshape(g * g, b * b)  # class -> its ranks
            hist = np.zeros((g * g, n * n + 1), np.float64)
            np.add.at(hist, (np.repeat(np.arange(g * g), b * b), blocks.ravel() + 1), 1.0)
            tabs.append(np.cumsum(hist, axis=1) / (b * b))  # [:, q] = #(ranks < q) / b^2
        self._tables[b] = np.stack(tabs).astype(np.float32)
        return self._tables[b]

    def grain_field(self, shape: tuple[int, int], raster_dpi: float) -> np.ndarray | None:
        """The print's grain as a multiplicative factor per raster pixel (HxW float32, mean 1), or None without
        grain: white Gaussian noise low-passed by a Gaussian of sigma ``grain_mm`` on paper and scaled to std
        ``grain`` — the cell-to-cell fluctuation of the ink / toner laid down and the paper's own texture, one
        field for the three channels (a lightness fluctuation), seeded by ``grain_seed``."""
        p = self.params
        if not p.grain:
            return None
        sigma_px = p.grain_mm / 25.4 * float(raster_dpi)
        field = np.random.default_rng(int(p.grain_seed)).standard_normal(shape).astype(np.float32)
        if sigma_px > 0.3:
            field = cv2.GaussianBlur(field, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
            field *= np.float32(1.0 / max(float(field.std()), 1e-12))
        field *= np.float32(p.grain)
        field += np.float32(1.0)
        return np.maximum(field, 0.0, out=field)

    def print_u8(self, page: np.ndarray, dots_per_px: int = 1) -> np.ndarray:
        """:meth:`print_linear` for an 8-bit page raster (HxWx3 uint8 RGB, what a printer driver receives), with the
        print's grain (:meth:`grain_field`, when ``grain`` > 0) over the whole sheet."""
        out = self._print_u8(page, dots_per_px)
        grain = self.grain_field(out.shape[:2], self.params.dpi / max(1, int(dots_per_px)))
        if grain is not None:
            out *= grain[..., None]
        return out

    def _print_u8(self, page: np.ndarray, dots_per_px: int = 1) -> np.ndarray:
        """:meth:`print_u8` without the grain.

        The same model, computed with OpenCV per-pixel ops (a LUT for sRGB decoding, ``cv2.transform`` for the
        saturation matrix, one table lookup for halftone + ink/paper reflectance). Bare paper (255) stays paper and,
        when halftoning, solid black (0, 0, 0) is full ink whatever the screen (every dot inked), so the full model
        runs only over the bounding box, per band of rows, of the other pixels (the image, anti-aliased text).
        """
        if page.dtype != np.uint8 or page.ndim != 3 or page.shape[2] != 3:
            raise ImageError(f"page must be an HxWx3 uint8 array, got {page.dtype} {page.shape}")
        p = self.params
        H, W = page.shape[:2]
        if len(set(p.paper)) == 1:
            out = np.full((H, W, 3), p.paper[0], np.float32)
        else:
            out = cv2.merge([np.full((H, W), v, np.float32) for v in p.paper])
        white = cv2.inRange(page, (255, 255, 255), (255, 255, 255))  # 255 where bare paper
        if not p.halftone_cell:
            ink_rows = np.flatnonzero(cv2.reduce(white, 1, cv2.REDUCE_MIN).ravel() == 0)
            if len(ink_rows):
                ink_cols = np.flatnonzero(cv2.reduce(white[ink_rows[0]:ink_rows[-1] + 1], 0,
                                                     cv2.REDUCE_MIN).ravel() == 0)
                self._print_block(page, out, ink_rows[0], ink_rows[-1] + 1, ink_cols[0], ink_cols[-1] + 1, 1)
            return out
        black = cv2.inRange(page, (0, 0, 0), (0, 0, 0))
        if black.any():
            out[black > 0] = np.array(p.black, np.float32)
        other = cv2.bitwise_not(cv2.bitwise_or(white, black))  # 255 where neither paper nor solid ink
        band = 64
        nb = -(-H // band)
        padded = other if nb * band == H else np.vstack([other, np.zeros((nb * band - H, W), np.uint8)])
        band_cols = padded.reshape(nb, band, W).max(axis=1)  # per band of rows: which columns need the model
        for k in np.flatnonzero(band_cols.any(axis=1)):
            y0, y1 = int(k) * band, min(H, (int(k) + 1) * band)
            cols = np.flatnonzero(band_cols[k])
            self._print_block(page, out, y0, y1, int(cols[0]), int(cols[-1]) + 1, int(dots_per_px))
        return out

    def _tone_u8(self, rgb: np.ndarray) -> np.ndarray:
        """The printer's tone (linear, in [0, 1], before the ink/paper mapping) of HxWx3 uint8 colours: sRGB
        decoding (a LUT), the saturation matrix (``cv2.transform``) and the dot gain."""
        p = self.params
        lin = cv2.LUT(np.ascontiguousarray(rgb), _srgb_to_linear_table())
        w = np.array([0.2126, 0.7152, 0.0722], np.float32)
        m = p.saturation * np.eye(3, dtype=np.float32) + (1 - p.saturation) * np.outer(np.ones(3, np.float32), w)
        t = cv2.transform(lin, m.astype(np.float32))  # convex rows: stays in [0, 1]
        cv2.threshold(t, 0.0, 0.0, cv2.THRESH_TOZERO, dst=t)
        # t ** dot_gain_gamma as exp(gamma * log t) (OpenCV's vectorised exp/log, ~1/10 of np.power; log 0 = -inf)
        cv2.log(t, dst=t)
        np.multiply(t, np.float32(p.dot_gain_gamma), out=t)
        return cv2.exp(t, dst=t)

    def _levels(self, t: np.ndarray) -> np.ndarray:
        """Halftone coverage level q = ceil(coverage * n^2 - 0.5) in 0..n^2 of a tone array (int32; ``t`` is
        overwritten)."""
        nn = self.params.halftone_cell ** 2
        t *= np.float32(-nn)
        t += np.float32(nn - 0.5)  # coverage * n^2 - 0.5
        q = np.ceil(t, out=t)
        np.clip(q, 0, nn, out=q)
        return q.astype(np.int32)

    def _reflectance_tables(self, b: int) -> np.ndarray:
        """Per channel, the mean reflectance of a b x b dot block: [channel, class * (n^2 + 1) + q] (float32)."""
        black, paper = np.array(self.params.black, np.float32), np.array(self.params.paper, np.float32)
        refl = black[:, None, None] + (paper - black)[:, None, None] * (1.0 - self._block_table(b))
        return refl.reshape(3, -1)

    def _print_block(self, page: np.ndarray, out: np.ndarray, y0: int, y1: int, x0: int, x1: int, b: int) -> None:
        """The full printer model on ``page[y0:y1, x0:x1]``, written into ``out`` (halftone screen phase from the
        absolute position, so blocks tile exactly)."""
        p = self.params
        t = self._tone_u8(page[y0:y1, x0:x1])
        n = p.halftone_cell
        if not n:
            black, paper = np.array(p.black, np.float32), np.array(p.paper, np.float32)
            out[y0:y1, x0:x1] = black + (paper - black) * t
            return
        nn = n * n
        g = n // math.gcd(n, b)
        refl = self._reflectance_tables(b)
        cls = (((np.arange(y0, y1) % g)[:, None] * g + (np.arange(x0, x1) % g)[None, :]) * (nn + 1)).astype(np.int32)
        qi = self._levels(t)
        for c in range(3):
            qc = qi[..., c]
            qc += cls
            out[y0:y1, x0:x1, c] = np.take(refl[c], qc)

    def print_cells(self, raster: "CellRaster", dots_per_px: int = 1, gain: float = 1.0) -> np.ndarray:
        """A raster made of ``up`` x ``up`` blocks of one colour (``raster.cells`` replicated, as the sheet writer
        upsamples a patch), cut along ``raster.inside``, printed: HxWx4 float32, the premultiplied colour (``gain``
        x linear reflectance inside the cut, 0 outside) and the coverage (1 inside, 0 outside).

        The same values as ``print_u8(raster.page())`` (times ``gain``, premultiplied), but the tone curve and the
        halftone level are computed once per cell, and each printed pixel is one table lookup. Without halftoning
        the full page is printed by :meth:`print_u8`.
        """
        p = self.params
        n, b = p.halftone_cell, int(dots_per_px)
        H, W = raster.inside.shape
        if not n:
            refl = self.print_u8(raster.page(), b)
            refl *= np.float32(gain)
            out = np.empty((H, W, 4), np.float32)
            np.copyto(out[..., 3], raster.inside)
            np.multiply(refl, raster.inside[..., None], out=out[..., :3])
            return out
        nn = n * n
        q = self._levels(self._tone_u8(raster.cells))  # h x w x 3, one level per cell and channel
        refl = self._reflectance_tables(b)
        refl *= np.float32(gain)
        refl = np.concatenate([refl, np.zeros((3, nn + 1), np.float32)], axis=1)  # the last block: outside the cut
        base = raster.class_index(n // math.gcd(n, b), nn + 1)  # h x up x w x up (int32)
        planes = [np.take(refl[c], (base + q[:, None, :, None, c]).reshape(H, W)) for c in range(3)]
        grain = self.grain_field((H, W), p.dpi / max(1, b))
        if grain is not None:
            planes = [plane * grain for plane in planes]
        return cv2.merge([*planes, raster.coverage])  # contiguous lookups, one interleave

    def print_linear(self, page_srgb: np.ndarray, dots_per_px: int = 1) -> np.ndarray:
        """A page raster (HxWx3 sRGB float) as printed: linear reflectance of each raster pixel's area.

        ``dots_per_px`` = 1: every raster pixel is one printer dot (binary: ink black or paper). ``b`` > 1: each
        pixel is a b x b block of halftone dots and the value is the exact mean reflectance of its dots.
        """
        t = self._tone(np.asarray(page_srgb, np.float32))
        n = self.params.halftone_cell
        if n:
            b = int(dots_per_px)
            if b < 1:
                raise ConfigError(f"dots_per_px must be >= 1, got {dots_per_px}")
            tab = self._block_table(b)
            H, W = t.shape[:2]
            g = n // math.gcd(n, b)
            cls = ((np.arange(H) % g)[:, None] * g + (np.arange(W) % g)[None, :]) * (n * n + 1)
            q = np.clip(np.ceil((1.0 - t) * (n * n) - 0.5), 0, n * n).astype(np.int32)  # coverage level
            for c in range(3):
                t[..., c] = 1.0 - np.take(tab[c].ravel(), cls + q[..., c])  # paper fraction of the block
        return self._reflect(t).astype(np.float32)


# ------------------------------------------------------------------------------------------- camera
@dataclass
class SimCameraConfig:
    """Ranges from which each frame's parameters are drawn (all JSON-serialisable)."""

    frame_size: tuple[int, int] = (1920, 1080)  # (width, height)
    scenes: tuple[str, ...] = DEFAULT_SCENES
    sheet_height_frac: tuple[float, float] = (0.6, 0.9)  # projected page long side / frame height
    max_tilt_deg: float = 35.0  # out-of-plane tilt about x and about y, each in [-max, max]
    rotation_deg: tuple[float, float] = (-25.0, 25.0)  # in-plane
    focal_frac: tuple[float, float] = (0.8, 1.5)  # focal length / frame width
    exposure: tuple[float, float] = (0.55, 0.8)  # linear gain (paper white stays below clipping)
    white_balance: float = 0.08  # red/blue gains in [1 - wb, 1 + wb]
    gradient: tuple[float, float] = (0.0, 0.15)  # brightness ramp amplitude across the frame
    blur_probs: tuple[float, float, float] = (0.3, 0.4, 0.3)  # none, defocus, motion
    defocus_radius: tuple[int, int] = (1, 3)  # px
    motion_length: tuple[int, int] = (3, 7)  # px (odd kernel size)
    read_noise: tuple[float, float] = (0.002, 0.01)
    shot_noise: tuple[float, float] = (0.0, 0.0004)  # variance per unit signal
    jpeg_quality: tuple[int, int] = (75, 95)
    pixel_sigma: float = 0.4  # pixel aperture (box ~ 0.29) + lens MTF, as one Gaussian (frame px), before sampling
    # what real cameras do before the sensor data becomes a JPEG (off in the legacy presets 'default'/'mild'/'harsh'):
    auto_exposure: bool = False  # meter the frame: mean to ae_mid, highlights (98th pct) at most ae_high; `exposure`
    ae_mid: float = 0.18  # is then the metering error (a gain around 1)
    ae_high: float = 0.9
    illuminant: float = 0.0  # colour of the light: red/blue gains in [1 - x, 1 + x] (drawn only when > 0)
    auto_white_balance: bool = False  # white-patch AWB on the brightest 5% of the frame; `white_balance` = residual
    auto_black_level: bool = False  # the ISP maps the frame's darkest 0.5% to black (auto levels)
    saturation_boost: tuple[float, float] = (1.0, 1.0)  # the ISP's colour saturation (linear, around luminance)
    sharpen: tuple[float, float] = (0.0, 0.0)  # the ISP's unsharp mask amount (sigma 1 px), drawn only when > 0
    # the sensor and lens geometry of a real camera (off in every preset but 'kurakin-phone'; off, they draw nothing
    # and change no frame and no record):
    demosaic: str = "none"  # "none": every pixel sees R, G and B; else each photosite sees one colour through an
    # RGGB Bayer colour-filter array and the ISP interpolates the other two: OpenCV's "bilinear" or "edge-aware"
    lens_distortion: tuple[float, float] = (0.0, 0.0)  # radial distortion k1 left in the photo (r_u = r_d + k1 r_d^3,
    # r normalised to the frame's centre-to-corner distance; k1 > 0 barrel), drawn per photo; (0, 0): none

    @staticmethod
    def preset(name: str, **overrides: Any) -> "SimCameraConfig":
        """A named set of ranges (``PRESETS``): 'phone' (Kurakin et al.'s phone photo of a printed page),
        'kurakin-phone' (that photo as measured against the paper: in focus, base-ISO noise, JPEG ~95),
        'webcam' (a webcam 1-2 m away), 'harsh' (stress), and the legacy uncalibrated 'default' and 'mild'."""
        presets: dict[str, dict[str, Any]] = {
            "default": {},
            # Kurakin et al. 2016: a phone photo of a printed page, the page filling most of the frame, held roughly
            # square to it, good light; the phone meters the frame (auto-exposure) and white-balances it, then
            # writes a high-quality JPEG. Aimed at the paper's clean-photo accuracy; docs/harness.md has how far off.
            "phone": dict(sheet_height_frac=(0.8, 0.95), max_tilt_deg=15.0, rotation_deg=(-8.0, 8.0),
                          focal_frac=(0.9, 1.3), auto_exposure=True, ae_mid=0.45, exposure=(0.85, 1.1), illuminant=0.12,
                          auto_white_balance=True, white_balance=0.03, auto_black_level=True,
                          saturation_boost=(1.05, 1.2), sharpen=(0.3, 0.7), gradient=(0.0, 0.1),
                          blur_probs=(0.7, 0.3, 0.0), defocus_radius=(1, 1), read_noise=(0.002, 0.005),
                          shot_noise=(0.0, 0.0002), jpeg_quality=(88, 96)),
            # Kurakin et al.'s set-up as measured against the paper (experiments/kurakin_mobilenet_v2_phone.yaml,
            # docs/harness.md has each value's reason): 'phone', with the page in focus (phase-detect autofocus on a
            # flat printed page in office light: 15% of shots 1 px soft, no motion blur), base-ISO noise after the
            # ISP's denoising, and the camera app's JPEG quality (~95), the sensor's Bayer mosaic and the lens's residual
            # distortion (the markers the rectification detects then miss the image's true position by ~0.1 px)
            "kurakin-phone": dict(sheet_height_frac=(0.8, 0.95), max_tilt_deg=15.0, rotation_deg=(-8.0, 8.0),
                                  focal_frac=(0.9, 1.3), auto_exposure=True, ae_mid=0.45, exposure=(0.85, 1.1),
                                  illuminant=0.12, auto_white_balance=True, white_balance=0.03, auto_black_level=True,
                                  saturation_boost=(1.05, 1.2), sharpen=(0.3, 0.7), gradient=(0.0, 0.1),
                                  blur_probs=(0.85, 0.15, 0.0), defocus_radius=(1, 1), read_noise=(0.001, 0.003),
                                  shot_noise=(0.0, 0.0001), jpeg_quality=(92, 97),
                                  # a phone's sensor: an RGGB Bayer mosaic, demosaiced by the ISP (edge-aware); its
                                  # lens: radial distortion of at most 1 % at the frame corner left in the JPEG
                                  demosaic="edge-aware", lens_distortion=(-0.01, 0.01)),
            # a webcam 1-2 m from the object: small in the frame, softer optics, more noise, stronger compression
            "webcam": dict(sheet_height_frac=(0.35, 0.6), max_tilt_deg=25.0, rotation_deg=(-10.0, 10.0),
                           auto_exposure=True, exposure=(0.8, 1.15), illuminant=0.15, auto_white_balance=True,
                           white_balance=0.05, auto_black_level=True, saturation_boost=(1.0, 1.15), sharpen=(0.2, 0.5),
                           gradient=(0.0, 0.15), blur_probs=(0.4, 0.5, 0.1),
                           defocus_radius=(1, 2), motion_length=(3, 5), read_noise=(0.004, 0.012),
                           shot_noise=(0.0001, 0.0006), jpeg_quality=(70, 90)),
            "mild": dict(max_tilt_deg=12.0, rotation_deg=(-8.0, 8.0), blur_probs=(0.6, 0.4, 0.0),
                         defocus_radius=(1, 1), gradient=(0.0, 0.05), read_noise=(0.001, 0.004),
                         shot_noise=(0.0, 0.0001), jpeg_quality=(90, 98)),
            "harsh": dict(max_tilt_deg=40.0, sheet_height_frac=(0.45, 0.75), exposure=(0.4, 0.8),
                          gradient=(0.05, 0.3), blur_probs=(0.1, 0.5, 0.4), defocus_radius=(2, 4),
                          motion_length=(5, 9), read_noise=(0.006, 0.02), shot_noise=(0.0002, 0.001),
                          jpeg_quality=(55, 85)),
        }
        if name not in presets:
            raise ConfigError(f"unknown simulated-camera preset {name!r}; known presets: {', '.join(presets)}")
        fields = SimCameraConfig.__dataclass_fields__
        bad = sorted(set(overrides) - set(fields))
        if bad:
            raise ConfigError(f"SimCameraConfig has no parameter(s) {bad}; known: {', '.join(sorted(fields))}")
        kw = {**presets[name], **overrides}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
        return SimCameraConfig(**kw).validate()

    def validate(self) -> "SimCameraConfig":
        w, h = self.frame_size
        if not (64 <= w <= 8192 and 64 <= h <= 8192):
            raise ConfigError(f"frame_size {self.frame_size} must be within 64..8192 px per side")
        if not self.scenes:
            raise ConfigError("scenes must name at least one photo")
        lo, hi = self.sheet_height_frac
        if not 0.05 <= lo <= hi <= 1.0:
            raise ConfigError(f"sheet_height_frac {self.sheet_height_frac} must satisfy 0.05 <= lo <= hi <= 1")
        if not 0 <= self.max_tilt_deg < 80:
            raise ConfigError(f"max_tilt_deg must be in [0, 80), got {self.max_tilt_deg}")
        if abs(sum(self.blur_probs) - 1) > 1e-6 or min(self.blur_probs) < 0:
            raise ConfigError(f"blur_probs {self.blur_probs} must be 3 non-negative numbers summing to 1")
        q0, q1 = self.jpeg_quality
        if not 1 <= q0 <= q1 <= 100:
            raise ConfigError(f"jpeg_quality {self.jpeg_quality} must satisfy 1 <= lo <= hi <= 100")
        if not 0 <= self.pixel_sigma <= 3:
            raise ConfigError(f"pixel_sigma must be in [0, 3] frame px, got {self.pixel_sigma}")
        if not (0 < self.ae_mid < self.ae_high <= 1.5):
            raise ConfigError(f"auto-exposure targets must satisfy 0 < ae_mid < ae_high <= 1.5, got "
                              f"{self.ae_mid}, {self.ae_high}")
        if not 0 <= self.illuminant < 0.5:
            raise ConfigError(f"illuminant must be in [0, 0.5), got {self.illuminant}")
        if self.demosaic not in DEMOSAIC_METHODS:
            raise ConfigError(f"demosaic must be one of {', '.join(DEMOSAIC_METHODS)}, got {self.demosaic!r}")
        lo, hi = self.lens_distortion
        if not -0.1 <= lo <= hi <= 0.1:
            raise ConfigError(f"lens_distortion {self.lens_distortion} must satisfy -0.1 <= lo <= hi <= 0.1 (k1 at the "
                              "frame corner)")
        return self


@dataclass
class SimParams:
    """Everything one frame's rendering depends on (replay: ``camera.render(params)``)."""

    index: int
    scene: str
    scene_offset: tuple[float, float]  # crop position in [0, 1]^2
    homography_mm: list[list[float]]  # page mm -> frame px (pixel-centre coordinates)
    tilt_x_deg: float
    tilt_y_deg: float
    rotation_deg: float
    focal_px: float
    exposure: float
    wb_gains: tuple[float, float, float]
    gradient_amp: float
    gradient_angle: float
    blur: str  # none | defocus | motion
    blur_size: int
    blur_angle: float
    read_noise: float
    shot_noise: float
    noise_seed: int
    jpeg_quality: int
    auto_exposure: bool = False
    ae_mid: float = 0.18
    ae_high: float = 0.9
    illuminant_gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    auto_white_balance: bool = False
    auto_black_level: bool = False
    saturation: float = 1.0
    sharpen: float = 0.0
    demosaic: str = "none"
    distortion_k1: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("demosaic", "distortion_k1"):  # recorded only when on: the other presets' records stay as they were
            if d[k] == SimParams.__dataclass_fields__[k].default:
                del d[k]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "SimParams":
        d = dict(d)
        for k in ("scene_offset", "wb_gains", "illuminant_gains"):
            if k in d:
                d[k] = tuple(d[k])
        return SimParams(**d)


def draw_optics(rng: np.random.Generator, c: SimCameraConfig) -> dict[str, Any]:
    """The photo's lighting, optics, sensor and JPEG parameters (every ``SimParams`` field but the pose), drawn
    from ``c``'s ranges in a fixed order (the legacy presets' streams are unchanged: the auto-exposure / white
    balance fields draw nothing, the illuminant draws only when ``c.illuminant`` > 0)."""
    blur = ("none", "defocus", "motion")[int(rng.choice(3, p=np.array(c.blur_probs)))]
    blur_size = 0
    if blur == "defocus":
        blur_size = int(rng.integers(c.defocus_radius[0], c.defocus_radius[1] + 1))
    elif blur == "motion":
        blur_size = int(rng.integers(c.motion_length[0], c.motion_length[1] + 1)) | 1
    wb = (float(rng.uniform(1 - c.white_balance, 1 + c.white_balance)), 1.0,
          float(rng.uniform(1 - c.white_balance, 1 + c.white_balance)))
    out = dict(exposure=float(rng.uniform(*c.exposure)), wb_gains=wb,
               gradient_amp=float(rng.uniform(*c.gradient)), gradient_angle=float(rng.uniform(0, 2 * math.pi)),
               blur=blur, blur_size=blur_size, blur_angle=float(rng.uniform(0, 180)),
               read_noise=float(rng.uniform(*c.read_noise)), shot_noise=float(rng.uniform(*c.shot_noise)),
               noise_seed=int(rng.integers(2**31 - 1)),
               jpeg_quality=int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)),
               auto_exposure=bool(c.auto_exposure), ae_mid=float(c.ae_mid), ae_high=float(c.ae_high),
               auto_white_balance=bool(c.auto_white_balance))
    if c.illuminant > 0:
        out["illuminant_gains"] = (float(rng.uniform(1 - c.illuminant, 1 + c.illuminant)), 1.0,
                                   float(rng.uniform(1 - c.illuminant, 1 + c.illuminant)))
    if c.auto_black_level:
        out["auto_black_level"] = True
    if tuple(c.saturation_boost) != (1.0, 1.0):
        out["saturation"] = float(rng.uniform(*c.saturation_boost))
    if c.sharpen[1] > 0:
        out["sharpen"] = float(rng.uniform(*c.sharpen))
    if c.demosaic != "none":
        out["demosaic"] = str(c.demosaic)
    if tuple(c.lens_distortion) != (0.0, 0.0):
        out["distortion_k1"] = float(rng.uniform(*c.lens_distortion))
    return out


def _rot(ax: str, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[ax]


def project_points(h: np.ndarray | list, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to Nx2 points."""
    h = np.asarray(h, np.float64)
    p = np.hstack([np.asarray(pts, np.float64).reshape(-1, 2), np.ones((len(pts), 1))]) @ h.T
    return p[:, :2] / p[:, 2:3]


class SimulatedCamera(FrameSource):
    """A FrameSource that photographs a printed page in a scene; see the module docstring.

    ``page``: the page raster (1x3xHxW RGB in [0, 1], e.g. a PNG from ``printouts`` or a PDF rasterised by
    pypdfium2) covering ``page_size_mm`` = (width, height) at ``dpi`` (if None: raster size / page size). ``objects``: object records from the sheet
    sidecar (``x_mm``, ``y_mm``, ``width_mm``, ``height_mm`` on this page) whose true corners each frame reports
    in ``frame.meta["objects"]``.
    """

    def __init__(self, page: torch.Tensor | np.ndarray, page_size_mm: tuple[float, float], *,
                 config: SimCameraConfig | None = None, printer: SimulatedPrinter | None = None, seed: int = 0,
                 n_frames: int | None = 10, objects: Sequence[dict[str, Any]] = (), dpi: float | None = None,
                 page_index: int = 0) -> None:
        super().__init__(f"simulated:seed={seed}", n_frames)
        if isinstance(page, np.ndarray):
            if page.dtype != np.uint8 or page.ndim != 3 or page.shape[2] != 3:
                raise ImageError(f"a numpy page must be HxWx3 uint8 RGB, got {page.dtype} {page.shape}")
        elif not isinstance(page, torch.Tensor) or page.ndim != 4 or page.shape[:2] != (1, 3):
            raise ImageError(f"page must be a 1x3xHxW tensor, got {getattr(page, 'shape', type(page))}")
        self.page_w_mm, self.page_h_mm = (float(v) for v in page_size_mm)
        if self.page_w_mm <= 0 or self.page_h_mm <= 0:
            raise ConfigError(f"page_size_mm must be positive, got {page_size_mm}")
        self.config = (config or SimCameraConfig()).validate()
        self.printer = printer or SimulatedPrinter()
        self.seed = int(seed)
        self.objects = [o for o in objects if o.get("page", 0) == page_index]
        self.dpi = dpi
        if isinstance(page, torch.Tensor):  # the printer driver gets 8-bit RGB
            page = page[0].detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
            page = np.ascontiguousarray(page.cpu().numpy())
        raster_dpi = dpi if dpi else 25.4 * page.shape[1] / self.page_w_mm
        self.dots_per_px = self.printer.dots_per_px(raster_dpi)
        # linear reflectance of each raster pixel: the exact area mean of its dots_per_px^2 halftone dots
        self._printed = self.printer.print_u8(page, self.dots_per_px)

    # FrameSource
    def _open(self) -> None:
        pass

    def _read(self) -> tuple[torch.Tensor, dict[str, Any]]:
        params = self.sample_params(self._seq)
        img, meta = self.render(params)
        return img, meta

    # sampling
    def sample_params(self, index: int) -> SimParams:
        """Parameters of frame ``index``, drawn from ``numpy.random.default_rng([seed, index])``."""
        rng = np.random.default_rng([self.seed, int(index)])
        c = self.config
        W, H = c.frame_size
        scene = str(c.scenes[int(rng.integers(len(c.scenes)))])
        scene_offset = (float(rng.uniform()), float(rng.uniform()))
        tx, ty = (float(rng.uniform(-c.max_tilt_deg, c.max_tilt_deg)) for _ in range(2))
        rot = float(rng.uniform(*c.rotation_deg))
        f = float(rng.uniform(*c.focal_frac)) * W
        frac = float(rng.uniform(*c.sheet_height_frac))
        u_off = rng.uniform(size=2)
        hom = None
        for attempt in range(30):
            hom = self._homography(tx, ty, rot, f, frac, u_off, W, H)
            if hom is not None:
                break
            frac *= 0.93
            u_off = rng.uniform(size=2)
        if hom is None:
            raise ConfigError("could not place the page inside the frame; lower sheet_height_frac")
        return SimParams(index=int(index), scene=scene, scene_offset=scene_offset, homography_mm=hom.tolist(),
                         tilt_x_deg=tx, tilt_y_deg=ty, rotation_deg=rot, focal_px=f, **draw_optics(rng, c))

    def _homography(self, tx: float, ty: float, rot: float, f: float, frac: float, u_off: np.ndarray,
                    W: int, H: int) -> np.ndarray | None:
        w, h = self.page_w_mm, self.page_h_mm
        R = _rot("z", rot) @ _rot("y", ty) @ _rot("x", tx)
        z = f * max(w, h) / (frac * H)
        pose = np.column_stack([R[:, 0], R[:, 1], np.array([0.0, 0.0, z])])
        centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1.0]])
        K0 = np.array([[f, 0, 0], [0, f, 0], [0, 0, 1.0]])
        h0 = K0 @ pose @ centre
        corners = project_points(h0, np.array([[0, 0], [w, 0], [w, h], [0, h]], float))
        margin = 8.0
        lo, hi = corners.min(0), corners.max(0)
        span = hi - lo
        if span[0] > W - 2 * margin or span[1] > H - 2 * margin:
            return None
        # choose a translation so the page lies inside the frame
        sx = margin - lo[0] + u_off[0] * (W - 2 * margin - span[0])
        sy = margin - lo[1] + u_off[1] * (H - 2 * margin - span[1])
        shift = np.array([[1, 0, sx], [0, 1, sy], [0, 0, 1.0]])
        return shift @ h0

    # rendering
    def _scene(self, name: str, offset: tuple[float, float]) -> np.ndarray:
        W, H = self.config.frame_size
        big = _scene_linear(name, W, H)  # shared by all cameras of this frame size (read-only)
        y0 = int(offset[1] * (big.shape[0] - H))
        x0 = int(offset[0] * (big.shape[1] - W))
        return big[y0:y0 + H, x0:x0 + W]

    def page_px_to_mm(self) -> np.ndarray:
        """3x3 map from page-raster pixel-centre coordinates to page mm."""
        Hs, Ws = self._printed.shape[:2]
        if self.dpi:  # renderers round the raster size up; the scale is exactly dpi / 25.4
            kx = ky = self.dpi / 25.4
        else:
            kx, ky = Ws / self.page_w_mm, Hs / self.page_h_mm
        return np.array([[1 / kx, 0, 0.5 / kx], [0, 1 / ky, 0.5 / ky], [0, 0, 1.0]])

    def render(self, params: SimParams) -> tuple[torch.Tensor, dict[str, Any]]:
        """Apply ``params``: the frame (1x3xHxW RGB in [0, 1]) and metadata with the true corner positions."""
        cfg = self.config
        W, H = cfg.frame_size
        hom = np.asarray(params.homography_mm, np.float64) @ self.page_px_to_mm()  # page px -> frame px
        src = self._printed
        Hs, Ws = src.shape[:2]
        corners_px = np.array([[0, 0], [Ws - 1, 0], [Ws - 1, Hs - 1], [0, Hs - 1], [Ws / 2, Hs / 2]], float)
        scales = self._scales(hom, corners_px)  # frame px per page px, largest singular value at each point
        # the camera integrates over its pixel footprint: area-average the print to ~2x the frame's sampling
        # (at its closest point), then a Gaussian for lens + optical low-pass + pixel aperture, then sample
        r = min(1.0, 2.0 * float(scales.max()))
        hom_src = hom
        if r < 1.0:
            src = cv2.resize(src, (max(2, round(Ws * r)), max(2, round(Hs * r))), interpolation=cv2.INTER_AREA)
            rx, ry = src.shape[1] / Ws, src.shape[0] / Hs
            S = np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5], [0, 0, 1.0]])
            hom_src = hom @ np.linalg.inv(S)
        if cfg.pixel_sigma > 0:
            typical = float(scales.max()) / min(r, 1.0)  # frame px per src px where the page is closest
            sig = cfg.pixel_sigma / typical
            if sig > 0.2:
                src = cv2.GaussianBlur(src, (0, 0), sig, borderType=cv2.BORDER_REPLICATE)
        # only the page's bounding box is warped; the rest of the frame is the scene
        quad = project_points(hom_src, np.array([[-0.5, -0.5], [src.shape[1] - 0.5, -0.5],
                                                  [src.shape[1] - 0.5, src.shape[0] - 0.5],
                                                  [-0.5, src.shape[0] - 0.5]]))
        if params.distortion_k1:
            lin = self._render_distorted(src, hom_src, quad, params)
            return self._develop(lin, params)
        x0, y0 = (max(0, int(math.floor(v)) - 2) for v in quad.min(0))
        x1, y1 = min(W, int(math.ceil(quad[:, 0].max())) + 2), min(H, int(math.ceil(quad[:, 1].max())) + 2)
        lin = self._scene(params.scene, params.scene_offset).copy()
        if x1 > x0 and y1 > y0:
            shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]])
            warped = cv2.warpPerspective(src, shift @ hom_src, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE)
            # page coverage of each pixel: the anti-aliased page quad (1/16 px vertex precision)
            cover = np.zeros((y1 - y0, x1 - x0), np.uint8)
            q16 = np.round((quad - [x0, y0]) * 16).astype(np.int32)
            cv2.fillConvexPoly(cover, q16, 255, cv2.LINE_AA, shift=4)
            _blend_over(lin[y0:y1, x0:x1], warped, cover.astype(np.float32) * np.float32(1 / 255))
        return self._develop(lin, params)

    def _render_distorted(self, src: np.ndarray, hom_src: np.ndarray, quad: np.ndarray,
                          params: SimParams) -> np.ndarray:
        """The linear frame through a lens with radial distortion ``params.distortion_k1``: each frame pixel
        samples the ideal (pinhole) frame where :func:`distort_grid` says it looks, i.e. the page straight from the
        print (one interpolation, as without distortion) and its coverage from the anti-aliased ideal page quad."""
        W, H = self.config.frame_size
        ux, uy = distort_grid(params.distortion_k1, (W, H))
        lin = cv2.remap(self._scene(params.scene, params.scene_offset), ux, uy, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT_101)
        qx0, qy0 = (int(math.floor(v)) - 2 for v in quad.min(0))
        qx1, qy1 = (int(math.ceil(v)) + 2 for v in quad.max(0))
        rows = np.flatnonzero(((uy >= qy0) & (uy <= qy1)).any(1))
        cols = np.flatnonzero(((ux >= qx0) & (ux <= qx1)).any(0))
        if not len(rows) or not len(cols):
            return lin
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        bx, by = ux[y0:y1, x0:x1].astype(np.float64), uy[y0:y1, x0:x1].astype(np.float64)
        inv = np.linalg.inv(hom_src)  # ideal frame px -> print px
        w = inv[2, 0] * bx + inv[2, 1] * by + inv[2, 2]
        sx = ((inv[0, 0] * bx + inv[0, 1] * by + inv[0, 2]) / w).astype(np.float32)
        sy = ((inv[1, 0] * bx + inv[1, 1] * by + inv[1, 2]) / w).astype(np.float32)
        warped = cv2.remap(src, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        cover = np.zeros((qy1 - qy0, qx1 - qx0), np.uint8)  # the ideal page quad, anti-aliased (1/16 px vertices)
        cv2.fillConvexPoly(cover, np.round((quad - [qx0, qy0]) * 16).astype(np.int32), 255, cv2.LINE_AA, shift=4)
        a = cv2.remap(cover.astype(np.float32) * np.float32(1 / 255), (bx - qx0).astype(np.float32),
                      (by - qy0).astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        _blend_over(lin[y0:y1, x0:x1], warped, a)
        return lin

    def _develop(self, lin: np.ndarray, params: SimParams) -> tuple[torch.Tensor, dict[str, Any]]:
        """Develop the linear frame and report where the page and the sheet's objects landed."""
        image, develop = develop_frame(lin, params)
        page_corners = self.project_mm(params, [[0, 0], [self.page_w_mm, 0], [self.page_w_mm, self.page_h_mm],
                                                [0, self.page_h_mm]])
        objects = {}
        for o in self.objects:
            x, y, w, h = o["x_mm"], o["y_mm"], o["width_mm"], o["height_mm"]
            objects[o["name"]] = self.project_mm(params, [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]).tolist()
        meta = {"params": params.to_dict(), "page_corners_px": page_corners.tolist(), "objects": objects,
                "printer": self.printer.params.to_dict(), "develop": develop}
        return image, meta

    def project_mm(self, params: SimParams, points_mm: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Where page points (mm) land in the frame (pixel-centre coordinates, as OpenCV reports corners), through
        the lens's distortion when the photo has one."""
        pts = project_points(params.homography_mm, np.asarray(points_mm, float))
        if params.distortion_k1:
            pts = distort_points(params.distortion_k1, self.config.frame_size, pts)
        return pts

    @staticmethod
    def _scales(hom: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """Largest linear magnification (frame px per source px) of the homography at each point (vectorised)."""
        h = np.asarray(hom, np.float64)
        p = np.hstack([np.asarray(pts, np.float64), np.ones((len(pts), 1))])
        q = p @ h.T
        J = (h[None, :2, :2] * q[:, 2, None, None] - q[:, :2, None] * h[None, 2:3, :2]) / q[:, 2, None, None] ** 2
        return np.linalg.svd(J, compute_uv=False)[:, 0]


def develop_frame(lin: np.ndarray, params: SimParams,
                  region: tuple[int, int, int, int] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The camera after the optics' geometry: light the linear frame ``lin`` (HxWx3 float32, modified in place),
    meter it (auto-exposure / white balance, when the params say so), blur, encode to sRGB, add sensor noise and
    write a JPEG. Returns the frame (1x3xHxW RGB in [0, 1]) and what the metering chose.

    ``region`` = (x0, y0, x1, y1): develop only the part of the frame a caller looks at (e.g. what the model's view
    is computed from); see :func:`develop_part`, which this calls with the whole frame's subsample as metering."""
    H, W = lin.shape[:2]
    if region is None:
        return develop_part(lin, (0, 0), (W, H), lin[::8, ::8], params)
    x0, y0, x1, y1 = develop_box(region, params, (W, H))
    return develop_part(np.ascontiguousarray(lin[y0:y1, x0:x1]), (x0, y0), (W, H), lin[::8, ::8], params, region)


def develop_box(region: tuple[int, int, int, int], params: SimParams,
                frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the part of the linear frame :func:`develop_part` needs to develop ``region`` exactly:
    the region grown to whole 16-px blocks of the frame's JPEG block grid plus one block (a JPEG block depends on
    its own pixels, the decoder's chroma upsampling on its neighbours' edge), plus the rows/columns the blur and
    sharpening kernels reach."""
    W, H = frame_size
    jx0, jy0, jx1, jy1 = _jpeg_box(region, frame_size)
    halo = _filter_reach(params)
    return max(0, jx0 - halo), max(0, jy0 - halo), min(W, jx1 + halo), min(H, jy1 + halo)


def _jpeg_box(region: tuple[int, int, int, int], frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
    W, H = frame_size
    x0, y0, x1, y1 = (int(v) for v in region)
    box = (max(0, (x0 // 16 - 1) * 16), max(0, (y0 // 16 - 1) * 16),
           min(W, (-(-x1 // 16) + 1) * 16), min(H, (-(-y1 // 16) + 1) * 16))
    if box[2] <= box[0] or box[3] <= box[1] or x1 <= x0 or y1 <= y0:
        raise ImageError(f"develop region {region} is empty or outside the {W}x{H} frame")
    return box


def _blur_kernel(params: SimParams) -> np.ndarray | None:
    if params.blur == "defocus" and params.blur_size > 0:
        return _defocus_kernel(params.blur_size, 0.3)
    if params.blur == "motion" and params.blur_size > 1:
        return _motion_kernel(params.blur_size, params.blur_angle)
    return None


def _filter_reach(params: SimParams) -> int:
    """Pixels the optics blur and the ISP's unsharp mask reach, together."""
    kernel = _blur_kernel(params)
    return ((kernel.shape[0] // 2 if kernel is not None else 0) + (_SHARPEN_KSIZE // 2 if params.sharpen > 0 else 0)
            + (_DEMOSAIC_REACH if params.demosaic != "none" else 0))


def develop_part(lin: np.ndarray, origin: tuple[int, int], frame_size: tuple[int, int], metering: np.ndarray,
                 params: SimParams, region: tuple[int, int, int, int] | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`develop_frame` on a part of a W x H linear frame: ``lin`` holds its pixels from ``origin`` = (x, y)
    on (modified in place), ``metering`` = the whole frame's ``[::8, ::8]`` subsample (what the camera meters).

    Without ``region``, ``lin`` is the whole frame. With it, ``lin`` must cover :func:`develop_box` of the region;
    the frame returned (1x3xHxW) is then bit for bit the whole frame's inside ``region`` (and a little around it)
    and 0 elsewhere: lighting, blur, sharpening, sRGB, noise and quantisation run on ``lin``, the JPEG on the
    region's blocks."""
    from testbed.imageio import jpeg_round_trip

    W, H = frame_size
    ox, oy = (int(v) for v in origin)
    h, w = lin.shape[:2]
    jx0, jy0, jx1, jy1 = (ox, oy, ox + w, oy + h) if region is None else _jpeg_box(region, frame_size)
    need = (0, 0, W, H) if region is None else develop_box(region, params, frame_size)
    if ox > need[0] or oy > need[1] or ox + w < need[2] or oy + h < need[3]:
        raise ImageError(f"the frame part at {origin} of {w}x{h} does not cover {need} (frame {W}x{H})")
    # lighting: exposure x white balance x a linear brightness ramp (rank-1 construction, one multiply)
    ca, sa = math.cos(params.gradient_angle), math.sin(params.gradient_angle)
    k = params.gradient_amp / (0.5 * math.hypot(W, H))

    def ramp_at(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return (np.float32(1.0) + np.float32(k) * ((ys.astype(np.float32) - H / 2) * sa)[:, None]
                + np.float32(k) * ((xs.astype(np.float32) - W / 2) * ca)[None, :]).astype(np.float32, copy=False)

    ramp = ramp_at(np.arange(oy, oy + h), np.arange(ox, ox + w))
    gains = np.array(params.illuminant_gains, np.float64)
    exposure = float(params.exposure)
    info: dict[str, Any] = {}
    black = 0.0
    if params.auto_exposure or params.auto_white_balance or params.auto_black_level:
        # metering on a 1/64 subsample of the frame as the light reaches the sensor (illuminant and ramp included)
        sub = metering.astype(np.float64) * ramp_at(np.arange(0, H, 8), np.arange(0, W, 8))[:, :, None] * gains
        lum = sub @ np.array([0.2126, 0.7152, 0.0722])
        if params.auto_white_balance:  # white patch: the brightest 5% should be neutral
            top = sub[lum >= np.percentile(lum, 95)].mean(0)
            corr = np.clip(top[1] / np.maximum(top, 1e-6), 0.7, 1.4)  # a camera's AWB covers plausible lights only
            gains = gains * corr
            sub = sub * corr
            lum = sub @ np.array([0.2126, 0.7152, 0.0722])
            info["awb_gains"] = [round(float(v), 5) for v in corr]
        if params.auto_exposure:  # average metering to middle grey, highlights protected
            ae = min(params.ae_mid / max(float(lum.mean()), 1e-6),
                     params.ae_high / max(float(np.percentile(lum, 98)), 1e-6))
            exposure *= ae
            info["ae_gain"] = round(float(ae), 5)
        if params.auto_black_level:
            black = min(0.2, 0.95 * float(np.percentile(lum, 0.5)) * exposure)  # the darkest 0.5% -> ~black
            info["black_level"] = round(black, 6)
    info["exposure"] = round(exposure, 6)
    gains = gains * np.array(params.wb_gains, np.float64)
    if black > 0 or params.saturation != 1.0:
        # the ramp, then exposure x white balance and the ISP's levels and saturation as one 3x4 colour transform
        cv2.multiply(lin, cv2.merge([ramp, ramp, ramp]), dst=lin)
        y = np.array([0.2126, 0.7152, 0.0722])
        m = params.saturation * np.eye(3) + (1 - params.saturation) * np.outer(np.ones(3), y)
        m = m @ np.diag(exposure * gains) / (1.0 - black)
        lin = cv2.transform(lin, np.hstack([m, np.full((3, 1), -black / (1.0 - black))]).astype(np.float32))
        cv2.threshold(lin, 0.0, 0.0, cv2.THRESH_TOZERO, dst=lin)  # max(lin, 0)
    else:
        cv2.multiply(lin, cv2.merge([ramp * np.float32(exposure * g) for g in gains]), dst=lin)
    # optics blur (albumentations kernels)
    kernel = _blur_kernel(params)
    if kernel is not None:
        lin = _convolve(lin, kernel)
    if params.demosaic != "none":  # the sensor samples the lens's image through its colour filters; the ISP demosaics
        lin = cfa_demosaic(lin, (ox, oy), params.demosaic)
    if params.sharpen > 0:  # the ISP's unsharp mask
        soft = cv2.GaussianBlur(lin, (_SHARPEN_KSIZE, _SHARPEN_KSIZE), _SHARPEN_SIGMA, borderType=cv2.BORDER_REPLICATE)
        lin = cv2.addWeighted(lin, 1.0 + params.sharpen, soft, -params.sharpen, 0.0)
        cv2.threshold(lin, 0.0, 0.0, cv2.THRESH_TOZERO, dst=lin)  # max(lin, 0)
    if (jx0, jy0, jx1, jy1) != (ox, oy, ox + w, oy + h):  # the filters' reach done: the JPEG's blocks
        lin = np.ascontiguousarray(lin[jy0 - oy:jy1 - oy, jx0 - ox:jx1 - ox])
    srgb = _encode_srgb_fast(lin)
    # sensor noise, read + shot (variance read^2 + shot * signal), in the encoded domain; Gaussian draws by
    # inverse-CDF lookup of uniform bytes from the frame's own numpy Generator (no global RNG)
    shot, read = float(params.shot_noise), float(params.read_noise)
    if shot > 0 or read > 0:
        nrng = np.random.default_rng(params.noise_seed)
        z = _generator_bytes(nrng, H * W * 3).reshape(H, W, 3)[jy0:jy1, jx0:jx1]
        z = cv2.LUT(np.ascontiguousarray(z), _normal_table())
        if shot > 0:  # sigma = sqrt(read^2 + shot * signal): one affine pass, a square root, one multiply-add
            sigma = cv2.transform(srgb, np.hstack([shot * np.eye(3), np.full((3, 1), read ** 2)]).astype(np.float32))
            cv2.sqrt(sigma, dst=sigma)
            cv2.accumulateProduct(sigma, z, srgb)
        else:
            cv2.scaleAdd(z, read, srgb, dst=srgb)
    u8 = cv2.convertScaleAbs(srgb, alpha=255.0)  # round + saturate to uint8
    u8 = jpeg_round_trip(u8, params.jpeg_quality)  # the project's one reference JPEG (the same bytes as OpenCV's)
    image = (torch.empty if (jx0, jy0, jx1, jy1) == (0, 0, W, H) else torch.zeros)((1, 3, H, W), dtype=torch.float32)
    out = image.numpy()
    for c, plane in enumerate(cv2.split(u8)):  # R, G, B planes (contiguous CHW)
        np.multiply(plane, np.float32(1 / 255), out=out[0, c, jy0:jy1, jx0:jx1], dtype=np.float32)
    return image, info


_SHARPEN_SIGMA, _SHARPEN_KSIZE = 1.0, 9  # the ISP's unsharp mask: OpenCV's own kernel size for sigma 1 (float)
_DEMOSAIC_REACH = 3  # pixels OpenCV's bilinear / edge-aware demosaic reads around each pixel (<= 2), and one to spare
# OpenCV's code for an RGGB mosaic whose first local pixel is (row parity, column parity) of the frame's pattern
_BAYER_CODES = {(0, 0): "BG", (0, 1): "GB", (1, 0): "GR", (1, 1): "RG"}


def cfa_demosaic(lin: np.ndarray, origin: tuple[int, int] = (0, 0), method: str = "edge-aware") -> np.ndarray:
    """A linear RGB image (HxWx3 float32, the light reaching the sensor) as a Bayer sensor and its ISP return it:
    each photosite keeps one colour of an RGGB colour-filter array (R on even frame rows and columns, B on odd rows
    and columns, G elsewhere; ``origin`` = the frame position of ``lin[0, 0]``, so a part of a frame is sampled in
    the frame's own pattern), saturates at 1, is quantised to 16 bits, and the two missing colours are
    interpolated by OpenCV's ``bilinear`` or ``edge-aware`` demosaic. A flat colour comes back exactly (to 16 bits);
    detail finer than the mosaic's 2-px period is smoothed and its colour aliased, as in every camera's JPEG."""
    if method not in DEMOSAIC_METHODS or method == "none":
        raise ConfigError(f"demosaic method must be bilinear or edge-aware, got {method!r}")
    r0, c0 = int(origin[1]) % 2, int(origin[0]) % 2
    raw = np.empty(lin.shape[:2], np.float32)
    raw[r0::2, c0::2] = lin[r0::2, c0::2, 0]
    raw[r0::2, 1 - c0::2] = lin[r0::2, 1 - c0::2, 1]
    raw[1 - r0::2, c0::2] = lin[1 - r0::2, c0::2, 1]
    raw[1 - r0::2, 1 - c0::2] = lin[1 - r0::2, 1 - c0::2, 2]
    raw16 = np.clip(raw * np.float32(65535) + np.float32(0.5), 0, 65535).astype(np.uint16)
    code = getattr(cv2, f"COLOR_Bayer{_BAYER_CODES[(r0, c0)]}2RGB" + ("_EA" if method == "edge-aware" else ""))
    out = cv2.cvtColor(raw16, code).astype(np.float32)
    out *= np.float32(1 / 65535)
    return out


def _blend_over(roi: np.ndarray, page: np.ndarray, coverage: np.ndarray) -> None:
    """``roi`` (HxWx3 float32, a view into the frame) becomes ``page`` where ``coverage`` (HxW in [0, 1]) is 1, in
    place; ``page`` is used as scratch."""
    page -= roi
    page *= coverage[..., None]
    roi += page


def distort_grid(k1: float, frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel (x, y) of a W x H frame taken through a lens with radial distortion ``k1``, the ideal
    (pinhole) position it images: r_u = r_d (1 + k1 r_d^2) about the frame centre, r normalised to the centre-to-
    corner distance (Imatest's third-order model). Two HxW float32 maps for ``cv2.remap``."""
    W, H = frame_size
    cx, cy, R = (W - 1) / 2, (H - 1) / 2, 0.5 * math.hypot(W, H)
    xs, ys = (np.arange(W) - cx) / R, (np.arange(H) - cy) / R
    f = 1.0 + k1 * (ys[:, None] ** 2 + xs[None, :] ** 2)
    return (cx + R * xs[None, :] * f).astype(np.float32), (cy + R * ys[:, None] * f).astype(np.float32)


def distort_points(k1: float, frame_size: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    """Where ideal (pinhole) frame points (Nx2 px) land through a lens with radial distortion ``k1`` (the inverse of
    :func:`distort_grid`'s map, by Newton's method on r_d (1 + k1 r_d^2) = r_u)."""
    W, H = frame_size
    c, R = np.array([(W - 1) / 2, (H - 1) / 2]), 0.5 * math.hypot(W, H)
    v = (np.asarray(pts, np.float64).reshape(-1, 2) - c) / R
    ru = np.linalg.norm(v, axis=1)
    rd = ru.copy()
    for _ in range(8):
        rd -= (rd * (1 + k1 * rd ** 2) - ru) / (1 + 3 * k1 * rd ** 2)
    scale = np.divide(rd, ru, out=np.ones_like(ru), where=ru > 0)
    return c + R * v * scale[:, None]


def _generator_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``rng.bytes(n)`` as a uint8 array, without its three copies: the same bytes (numpy draws them as full-range
    uint32, little-endian) and the same generator state afterwards."""
    words = rng.integers(0, 2**32, size=(n - 1) // 4 + 1, dtype=np.uint32)
    return words.astype("<u4", copy=False).view(np.uint8)[:n]


@functools.lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    """Standard-normal quantiles of the 256 byte levels (inverse CDF at bin centres, rescaled to unit variance)."""
    from scipy.special import ndtri

    z = ndtri((np.arange(256, dtype=np.float64) + 0.5) / 256)
    return (z / z.std()).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _scene_linear(name: str, W: int, H: int) -> np.ndarray:
    """A scene photo in linear light, resized to cover a W x H frame with 10 % to spare (cached, read-only)."""
    from testbed.photos import load_photo

    x = load_photo(name)[0].permute(1, 2, 0).numpy()
    h, w = x.shape[:2]
    s = max(W / w, H / h) * 1.1
    big = cv2.resize(srgb_to_linear(x), (max(W, round(w * s)), max(H, round(h * s))), interpolation=cv2.INTER_LINEAR)
    big.flags.writeable = False
    return big


@functools.lru_cache(maxsize=1)
def _srgb_to_linear_table() -> np.ndarray:
    """sRGB decoding of the 256 byte levels (a LUT for ``cv2.LUT``)."""
    return srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)


def _encode_srgb(lin: np.ndarray) -> np.ndarray:
    """sRGB encoding of non-negative linear float32 (values > 1 stay > 1; they saturate at uint8 conversion)."""
    out = np.power(lin, np.float32(1 / 2.4))
    out *= np.float32(1.055)
    out -= np.float32(0.055)
    dark = lin <= 0.0031308
    if dark.any():
        out[dark] = lin[dark] * np.float32(12.92)
    return out


def _encode_srgb_fast(lin: np.ndarray) -> np.ndarray:
    """:func:`_encode_srgb` for the camera's frames: x^(1/2.4) as OpenCV's vectorised exp(log(x) / 2.4) (within
    1e-4/255 of the exact curve; ~1/3 of the time of ``np.power`` on a frame). ``lin`` must be >= 0."""
    out = cv2.log(lin)  # log(0) = -inf -> exp(-inf) = 0; the dark part is replaced below anyway
    np.multiply(out, np.float32(1 / 2.4), out=out)
    cv2.exp(out, dst=out)
    cv2.addWeighted(out, 1.055, out, 0.0, -0.055, dst=out)
    dark = np.flatnonzero(lin.reshape(-1) <= np.float32(0.0031308))  # the linear toe (usually few pixels)
    if len(dark):
        out.reshape(-1)[dark] = lin.reshape(-1)[dark] * np.float32(12.92)
    return out


def _convolve(lin: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``albumentations``' ``convolve`` for a non-negative float frame and kernel: ``cv2.filter2D`` (reflect-101
    border), then the clip to [0, 1] it applies to float images (only the upper bound can bind here)."""
    out = cv2.filter2D(lin, -1, kernel)
    return cv2.threshold(out, 1.0, 1.0, cv2.THRESH_TRUNC, dst=out)[1]


@functools.lru_cache(maxsize=16)
def _defocus_kernel(radius: int, alias_blur: float) -> np.ndarray:
    """albumentations' defocus kernel (aliased disc, then a 3x3 Gaussian), cropped to its support.

    ``albumentations.defocus`` convolves with a 17x17 kernel for any radius <= 8, which sends OpenCV down its
    slow DFT path (~0.2 s per 1080p frame); the cropped kernel gives the same image in ~0.01 s.
    """
    n = radius + 2
    t = np.arange(-n, n + 1)
    x, y = np.meshgrid(t, t)
    disk = ((x ** 2 + y ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    k = cv2.GaussianBlur(disk, (3, 3), alias_blur, borderType=cv2.BORDER_CONSTANT)
    k = k[1:-1, 1:-1]  # the outer ring is zero (the disc's support + the 3x3 Gaussian): one tap less per side
    return (k / k.sum()).astype(np.float32)


def _motion_kernel(size: int, angle_deg: float) -> np.ndarray:
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    dx, dy = math.cos(math.radians(angle_deg)) * c, math.sin(math.radians(angle_deg)) * c
    cv2.line(k, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
    return k / k.sum()


# ------------------------------------------------------------------------------- harness batch mode
# The harness photographs its sheets under the legacy `default` preset at this tilt (not that preset's 35°): every
# table made with `default` used it. Every other preset keeps its own tilt unless the config names one.
LEGACY_SHEET_TILT_DEG = 25.0

@dataclass
class PrintPhotoConfig:
    """The harness's loop: each image printed at ``width_mm`` on a small sheet with 4 ArUco markers (page raster
    at ``dpi``, halftoned at ``printer_dpi``), photographed by :class:`SimulatedCamera` (``preset`` ranges with
    ``frame_size`` / ``max_tilt_deg``, plus any other ``SimCameraConfig`` field in ``camera``), rectified from
    its markers by ``camera.rectify`` back to the image's own pixel grid. ``max_tilt_deg`` left at ``None`` keeps
    the preset's own tilt (the legacy ``default`` preset: 25°, the harness's sheet tilt since the first tables)."""

    width_mm: float = 50.0
    dpi: float = 300.0
    printer_dpi: float = 600.0
    halftone_cell: int = 16
    halftone_screen: str = "bayer"  # or "clustered": a 600-dpi office laser's 45° AM screen (halftone_cell 8: 106 lpi)
    grain: float = 0.0  # the print's reflectance grain std (PrinterParams.grain), one field drawn per print
    grain_mm: float = 0.25  # its correlation length on paper (mm)
    sample_printer: bool = True  # a random plausible printer per image (else the default PrinterParams)
    preset: str = "default"
    frame_size: tuple[int, int] = (1280, 960)
    max_tilt_deg: float | None = None
    camera: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "PrintPhotoConfig":
        if isinstance(self.width_mm, bool) or not (isinstance(self.width_mm, (int, float)) and 5 <= self.width_mm <= 1000):
            raise ConfigError(f"print-photo width_mm must be a printed width in [5, 1000] mm, got {self.width_mm!r}")
        _check_printer_and_camera(self, self.dpi)
        return self

    def camera_config(self) -> SimCameraConfig:
        tilt = self.max_tilt_deg
        if tilt is not None and (isinstance(tilt, bool) or not isinstance(tilt, (int, float))):
            raise ConfigError(f"print-photo max_tilt_deg must be a number of degrees, got {tilt!r}")
        if tilt is None and self.preset == "default":
            tilt = LEGACY_SHEET_TILT_DEG
        over: dict[str, Any] = {"frame_size": tuple(self.frame_size)}
        if tilt is not None:
            over["max_tilt_deg"] = float(tilt)
        return SimCameraConfig.preset(self.preset, **over, **(self.camera or {}))


def _check_printer_and_camera(cfg: Any, raster_dpi: int) -> None:
    """The checks a print-and-photograph config shares: the raster dpi, the printer (``halftone_cell``,
    ``printer_dpi``) and the camera preset with its overrides (``cfg.camera_config()``)."""
    from printouts.sheets import check_dpi

    check_dpi(raster_dpi)
    configured_printer(cfg, PrinterParams()).validate()
    cfg.camera_config()


def configured_printer(cfg: Any, base: PrinterParams) -> PrinterParams:
    """``base`` (a sampled or the default printer) with a print-and-photograph config's printer settings: its
    halftone (``halftone_cell`` at ``printer_dpi``, ``halftone_screen``) and grain (``grain``, ``grain_mm``; the
    grain's seed is drawn per print by the caller, after its other draws)."""
    return replace(base, halftone_cell=cfg.halftone_cell, dpi=cfg.printer_dpi, halftone_screen=cfg.halftone_screen,
                   grain=cfg.grain, grain_mm=cfg.grain_mm)


MAX_RETAKES = 4  # print_photograph: further photos drawn when the markers of one cannot be read


@dataclass
class PrintPhotoResult:
    """Rectified photos of the printed images (Bx3xHxW RGB in [0, 1], the input size) and per-image records:
    ``key``, ``rep``, ``printer`` (PrinterParams), ``camera`` (SimParams, replayable), ``rectify`` (summary),
    ``page_mm``."""

    images: torch.Tensor
    params: list[dict[str, Any]]


class _SheetLayout:
    """One sheet layout per image size (the image is swapped in per image; markers and page are shared)."""

    def __init__(self, h: int, w: int, config: PrintPhotoConfig) -> None:
        from printouts.sheets import ImageItem, SheetConfig, patch_sheet

        page_mm = config.width_mm * max(1.0, h / w) + 85  # object + markers + header/footer
        self.sheet = patch_sheet(torch.full((1, 3, h, w), 0.5), width_mm=config.width_mm,
                                 config=SheetConfig(dpi=config.dpi, page=f"{page_mm:.0f}x{page_mm:.0f}", margin_mm=4))
        self.item = next(it for it in self.sheet.pages[0].items if isinstance(it, ImageItem))
        pg = self.sheet.pages[0]
        self.page_mm = (pg.width_mm, pg.height_mm)
        self.dpi = config.dpi
        self._lock = threading.Lock()  # render swaps the image into the shared sheet

    def render(self, image: torch.Tensor) -> np.ndarray:
        """The page raster (HxWx3 uint8) with ``image`` (3xHxW) in place, as the PDF/PNG writer would rasterise it."""
        from printouts.sheets import render_page_rgb

        chw = image.detach().float().cpu().numpy()
        rgb = np.ascontiguousarray(np.clip(chw * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))
        with self._lock:
            self.item.rgb = rgb
            return render_page_rgb(self.sheet.pages[0], self.dpi)


def _photograph_one(image: torch.Tensor, layout: _SheetLayout, printer: PrinterParams, cam_cfg: SimCameraConfig,
                    sim: SimParams | None, cam_seed: int, source: str) -> tuple[torch.Tensor, dict[str, Any]]:
    from camera.rectify import ObjectSpec, RectifyError, rectify

    cam = SimulatedCamera(layout.render(image), layout.page_mm, config=cam_cfg, printer=SimulatedPrinter(printer),
                          seed=cam_seed, n_frames=1, objects=layout.sheet.objects, dpi=layout.dpi)
    spec = ObjectSpec.from_record(layout.sheet.objects[0])
    if sim is not None:  # replay
        r = rectify(cam.render(sim)[0], spec, source=source)
    else:  # a photographer retakes a photo whose markers cannot be read (draws 0, 1, ...: still deterministic)
        for attempt in range(MAX_RETAKES + 1):
            sim = cam.sample_params(attempt)
            try:
                r = rectify(cam.render(sim)[0], spec, source=source)
                break
            except RectifyError as exc:
                if attempt == MAX_RETAKES:
                    raise RectifyError(f"{exc} (after {MAX_RETAKES} retakes: the camera preset is too harsh for "
                                       f"frame_size {cam_cfg.frame_size} / width_mm; enlarge either)") from None
    out = r.image
    if out.shape[-2:] != image.shape[-2:]:
        out = torch.nn.functional.interpolate(out, size=tuple(image.shape[-2:]), mode="bilinear", antialias=True,
                                              align_corners=False)
    return out, {"camera": sim.to_dict(), "printer": printer.to_dict(), "rectify": r.summary(),
                             "page_mm": list(layout.page_mm), "dots_per_px": cam.dots_per_px}


def print_photograph(images: torch.Tensor, *, seed: int = 0, rep: int = 0, keys: Sequence[int] | None = None,
                     config: PrintPhotoConfig | None = None, workers: int | None = None) -> PrintPhotoResult:
    """Print each image (BCHW RGB [0, 1]) on a marker sheet, photograph it, rectify it back to its own size.

    Image ``i``'s printer and camera are drawn from ``numpy.random.default_rng([seed, keys[i], rep])`` (``keys``
    default to the batch indices; the harness passes a stable key per image id so that the clean and the
    adversarial version of an image are photographed under the same conditions). These draws share nothing with
    the kornia EOT used for optimisation. Replay one image with :func:`replay_print_photograph`. The images are
    photographed on ``workers`` threads (default: the CPU cores); the result does not depend on it.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ImageError(f"images must be a Bx3xHxW RGB tensor, got {getattr(images, 'shape', type(images))}")
    if not torch.isfinite(images).all() or float(images.min()) < 0 or float(images.max()) > 1:
        raise ImageError("images must be finite and within [0, 1]")
    cfg = (config or PrintPhotoConfig()).validate()
    keys = list(range(images.shape[0])) if keys is None else [int(k) for k in keys]
    if len(keys) != images.shape[0]:
        raise ConfigError(f"got {images.shape[0]} images but {len(keys)} keys")
    if any(k < 0 for k in keys) or seed < 0 or rep < 0:
        raise ConfigError("seed, rep and keys must be non-negative integers")
    h, w = images.shape[-2:]
    layout = _SheetLayout(h, w, cfg)
    cam_cfg = cfg.camera_config()
    cpu = images.cpu()

    def one(i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        rng = np.random.default_rng([int(seed), keys[i], int(rep)])
        pp = configured_printer(cfg, PrinterParams.sample(rng) if cfg.sample_printer else PrinterParams())
        cam_seed = int(rng.integers(2**63 - 1))
        if pp.grain:  # drawn after the camera's seed: photos without grain keep every earlier draw
            pp = replace(pp, grain_seed=int(rng.integers(2**31 - 1)))
        out, rec = _photograph_one(cpu[i], layout, pp, cam_cfg, None, cam_seed, f"simulated photo of image {i}")
        return out, {"key": keys[i], "rep": int(rep), "seed": int(seed), **rec}

    done = list(ordered_map(one, range(len(keys)), photo_workers(workers, len(keys))))
    return PrintPhotoResult(torch.cat([o for o, _ in done]).to(images.device), [r for _, r in done])


def replay_print_photograph(image: torch.Tensor, record: dict[str, Any],
                            config: PrintPhotoConfig | None = None) -> torch.Tensor:
    """Re-render one image (1x3xHxW) from its recorded ``print_photograph`` parameters (JSON round-trip safe)."""
    cfg = (config or PrintPhotoConfig()).validate()
    pr = dict(record["printer"])
    pr["black"], pr["paper"] = tuple(pr["black"]), tuple(pr["paper"])
    sim = SimParams.from_dict({**record["camera"], "scene_offset": tuple(record["camera"]["scene_offset"]),
                               "wb_gains": tuple(record["camera"]["wb_gains"])})
    layout = _SheetLayout(image.shape[-2], image.shape[-1], cfg)
    out, _ = _photograph_one(image[0].cpu(), layout, PrinterParams(**pr), cfg.camera_config(), sim, 0, "replay")
    return out.to(image.device)


# ------------------------------------------------------------------------------- in situ: the patch in the scene
class CellRaster:
    """A printer-driver raster made of ``up`` x ``up`` blocks of one colour (``cells``, hxwx3 uint8, replicated
    nearest as the sheet writer upsamples a patch), printed only where ``inside`` (HxW bool, H = h*up): the cut
    shape. :meth:`SimulatedPrinter.print_cells` prints it with one tone computation per cell."""

    def __init__(self, cells: np.ndarray, up: int, inside: np.ndarray) -> None:
        self.cells = np.ascontiguousarray(cells, np.uint8)
        self.up = int(up)
        self.inside = np.ascontiguousarray(inside, bool)
        self.coverage = self.inside.astype(np.float32)
        h, w = self.cells.shape[:2]
        if self.inside.shape != (h * self.up, w * self.up):
            raise ImageError(f"cut of shape {self.inside.shape} does not match {h}x{w} cells at x{up}")
        self._class_index: dict[tuple[int, int], np.ndarray] = {}

    @staticmethod
    def from_page(page: np.ndarray, up: int, inside: np.ndarray) -> "CellRaster | None":
        """The cells of ``page`` (HxWx3 uint8, paper white outside ``inside``) when it is made of ``up`` x ``up``
        blocks of one colour inside the cut, else None."""
        H, W = inside.shape
        if page.shape != (H, W, 3) or H % up or W % up:
            return None
        h, w = H // up, W // up
        # each cell's colour: taken from a pixel of the block inside the cut (any, when the block is all outside)
        blocks = inside.reshape(h, up, w, up).transpose(0, 2, 1, 3).reshape(h, w, up * up)
        k = blocks.argmax(-1)
        ys = np.arange(h)[:, None] * up + k // up
        xs = np.arange(w)[None, :] * up + k % up
        cand = CellRaster(page[ys, xs], up, inside)
        return cand if np.array_equal(cand.page(), page) else None

    def page(self) -> np.ndarray:
        """The full raster (HxWx3 uint8): the cells replicated, paper white (255) outside the cut."""
        big = np.repeat(np.repeat(self.cells, self.up, 0), self.up, 1)
        big[~self.inside] = 255
        return big

    def class_index(self, g: int, stride: int) -> np.ndarray:
        """Offset of each pixel's table block: (its halftone class (y % g, x % g)) * ``stride``, and the block
        after the last class outside the cut; shaped h x up x w x up (cached)."""
        key = (g, stride)
        if key not in self._class_index:
            H, W = self.inside.shape
            cls = ((np.arange(H) % g)[:, None] * g + (np.arange(W) % g)[None, :]) * stride
            cls[~self.inside] = g * g * stride
            h, w = self.cells.shape[:2]
            self._class_index[key] = cls.astype(np.int32).reshape(h, self.up, w, self.up)
        return self._class_index[key]


@dataclass
class InSituConfig:
    """A printed patch photographed where it is used: cut out along its mask, lying in a scene at its physical
    size, the whole scene photographed by :class:`SimulatedCamera`'s develop stage (``preset``), and the frame
    classified as the model sees a photo (resize the short side to 256/224 x input, centre crop).

    Geometry: the scene is a plane textured with a shipped photo. At the nominal distance the model's centre crop
    of the frame spans the photo's own canonical crop, in which the patch (``width_mm`` wide) covers ``area`` of
    the model's input; ``zoom`` draws the apparent size relative to that (<= 1: the camera is never closer than
    nominal; a tilted plane can still bring the patch's near edge closer, so its share can exceed ``area`` a little:
    ``params["patch_fraction_of_view"]`` records it). The plane is tilted about x and y (``max_tilt_deg``), the camera rolled
    (``roll_deg``), aimed within ``aim`` x the view of the centre; the patch lies anywhere in the nominal view,
    rotated by up to ``patch_rotation_deg``. The print's paper white is lit like the scene's bright surfaces
    (``paper_light``, relative to the photo's linear scale). None of this is the EOT code the attacks optimise over.
    """

    preset: str = "phone"
    frame_size: tuple[int, int] = (640, 480)  # the model's crop of it is 420 px: ~2x its 224-px input
    width_mm: float = 60.0
    area: float = 0.1
    zoom: tuple[float, float] = (0.8, 1.0)
    max_tilt_deg: float = 30.0
    roll_deg: tuple[float, float] = (-10.0, 10.0)
    aim: float = 0.1
    patch_rotation_deg: float = 22.5
    paper_light: tuple[float, float] = (0.7, 1.0)
    focal_frac: tuple[float, float] = (0.8, 1.4)
    raster_dpi: float = 300.0
    printer_dpi: float = 600.0
    halftone_cell: int = 16
    halftone_screen: str = "bayer"  # or "clustered": a 600-dpi office laser's 45° AM screen (halftone_cell 8: 106 lpi)
    grain: float = 0.0  # the print's reflectance grain std (PrinterParams.grain), one field drawn per print
    grain_mm: float = 0.25  # its correlation length on paper (mm)
    sample_printer: bool = True
    input_size: int = 224
    camera: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "InSituConfig":
        if not (isinstance(self.width_mm, (int, float)) and 5 <= self.width_mm <= 1000):
            raise ConfigError(f"in-situ width_mm must be a printed width in [5, 1000] mm, got {self.width_mm!r}")
        if not 0 < self.area < 1:
            raise ConfigError(f"in-situ area must be in (0, 1), got {self.area}")
        lo, hi = self.zoom
        if not 0.2 <= lo <= hi <= 3:
            raise ConfigError(f"in-situ zoom {self.zoom} must satisfy 0.2 <= lo <= hi <= 3")
        if not 0 <= self.max_tilt_deg < 70:
            raise ConfigError(f"in-situ max_tilt_deg must be in [0, 70), got {self.max_tilt_deg}")
        lo, hi = self.paper_light
        if not 0 < lo <= hi <= 2:
            raise ConfigError(f"in-situ paper_light {self.paper_light} must satisfy 0 < lo <= hi <= 2")
        if not 16 <= int(self.input_size) <= 1024:
            raise ConfigError(f"in-situ input_size must be in [16, 1024], got {self.input_size}")
        _check_printer_and_camera(self, self.raster_dpi)
        if tuple(self.camera_config().lens_distortion) != (0.0, 0.0):
            raise ConfigError(f"in-situ photos model no lens distortion (preset {self.preset!r} has "
                              f"lens_distortion {self.camera_config().lens_distortion}); add camera: "
                              "{lens_distortion: [0, 0]} to photograph in situ through this preset")
        return self

    def camera_config(self) -> SimCameraConfig:
        return SimCameraConfig.preset(self.preset, frame_size=tuple(self.frame_size), **(self.camera or {}))


@dataclass
class InSituShot:
    """One in-situ photo: the frame (1x3xHxW; None when rendered for the view only), what the model sees of it
    (1x3xSxS), the same without the patch (``clean_view``, when asked for) and the JSON-serialisable record
    (``params``)."""

    frame: torch.Tensor | None
    view: torch.Tensor
    clean_view: torch.Tensor | None
    params: dict[str, Any]


@functools.lru_cache(maxsize=24)
def _photo_linear(name: str) -> np.ndarray:
    """A shipped photo at its own resolution in linear light (cached, read-only)."""
    from testbed.photos import load_photo

    x = srgb_to_linear(load_photo(name)[0].permute(1, 2, 0).numpy())
    x.flags.writeable = False
    return x


class InSituPatch:
    """Prints one patch (``patch`` 1x3xSxS in [0, 1], ``mask`` 1x1xSxS) cut along its mask and photographs it
    lying in scenes: :meth:`shoot` (scene name, seed, index) -> :class:`InSituShot`; any shot replays from its
    record with :meth:`replay`."""

    def __init__(self, patch: torch.Tensor, mask: torch.Tensor, config: InSituConfig | None = None) -> None:
        from printouts.sheets import _to_soft_mask, mask_edge

        if not isinstance(patch, torch.Tensor) or patch.ndim != 4 or patch.shape[:2] != (1, 3):
            raise ImageError(f"patch must be a 1x3xHxW tensor, got {getattr(patch, 'shape', type(patch))}")
        self.config = (config or InSituConfig()).validate()
        self.cam_cfg = self.config.camera_config()
        h, w = patch.shape[-2:]
        soft = _to_soft_mask(mask, (h, w))
        if float(soft.mean()) <= 0:
            raise ImageError("the patch mask is empty")
        self.mask_fraction = float(soft.mean())
        cfg = self.config
        # the printer driver's raster: each patch pixel replicated to about raster_dpi (integer factor, nearest, as
        # the sheet writer does), the cut following the mask's edge at that resolution
        up = max(1, int(round(cfg.width_mm / max(h, w) * cfg.raster_dpi / 25.4)))
        rgb = np.clip(patch[0].detach().float().cpu().numpy() * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        self.raster = np.ascontiguousarray(np.repeat(np.repeat(rgb, up, 0), up, 1))
        self.cut = mask_edge(soft, up).astype(np.float32)
        self.raster[self.cut == 0] = 255  # cut away: nothing printed outside the edge
        self.up = up
        # the same raster as cells (one tone computation per patch pixel when printing); rebuilt from ``raster``
        # if a caller replaces it (e.g. with a colour-transformed copy)
        self._cells: CellRaster | None = CellRaster(rgb, up, self.cut > 0)
        self._cells_of = self.raster
        self.raster_dpi = 25.4 * self.raster.shape[1] / cfg.width_mm
        self.pitch_mm = cfg.width_mm / self.raster.shape[1]
        # the patch side in the model's canonical view: mask area / view area = cfg.area
        S = int(cfg.input_size)
        self.side_px = (cfg.area * S * S / self.mask_fraction) ** 0.5 * (w / max(h, w))
        self.view_mm = cfg.width_mm * S / self.side_px  # the model's canonical view of the scene, in mm

    # -- sampling
    def sample(self, scene: str, seed: int, index: int) -> dict[str, Any]:
        """One photo's parameters from ``numpy.random.default_rng([seed, index])`` (JSON-serialisable)."""
        cfg, c = self.config, self.cam_cfg
        rng = np.random.default_rng([int(seed), int(index)])
        printer = configured_printer(cfg, PrinterParams.sample(rng) if cfg.sample_printer else PrinterParams())
        V, half = self.view_mm, cfg.width_mm / 2
        lim = max(0.0, V / 2 - half)
        rec = {
            "scene": scene, "seed": int(seed), "index": int(index), "printer": printer.to_dict(),
            "patch_centre_mm": [float(rng.uniform(-lim, lim)), float(rng.uniform(-lim, lim))],
            "patch_rotation_deg": float(rng.uniform(-cfg.patch_rotation_deg, cfg.patch_rotation_deg)),
            "zoom": float(rng.uniform(*cfg.zoom)),
            "tilt_x_deg": float(rng.uniform(-cfg.max_tilt_deg, cfg.max_tilt_deg)),
            "tilt_y_deg": float(rng.uniform(-cfg.max_tilt_deg, cfg.max_tilt_deg)),
            "roll_deg": float(rng.uniform(*cfg.roll_deg)),
            "aim_mm": [float(rng.uniform(-cfg.aim, cfg.aim) * V), float(rng.uniform(-cfg.aim, cfg.aim) * V)],
            "focal_px": float(rng.uniform(*cfg.focal_frac)) * c.frame_size[0],
            "paper_light": float(rng.uniform(*cfg.paper_light)),
        }
        optics = draw_optics(rng, c)
        rec["camera"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in optics.items()}
        if printer.grain:  # drawn last: photos without grain keep every earlier draw
            rec["printer"] = replace(printer, grain_seed=int(rng.integers(2**31 - 1))).to_dict()
        return rec

    # -- geometry
    def _plane_to_frame(self, rec: dict[str, Any]) -> np.ndarray:
        """Homography scene-plane mm (origin: the canonical view's centre) -> frame px (pixel centres)."""
        W, H = self.cam_cfg.frame_size
        f = rec["focal_px"]
        R = _rot("z", rec["roll_deg"]) @ _rot("y", rec["tilt_y_deg"]) @ _rot("x", rec["tilt_x_deg"])
        crop_px = H * 224.0 / 256.0  # the model's centre crop of the frame (short side 256 -> crop 224)
        z = f * (self.view_mm / rec["zoom"]) / crop_px
        ax, ay = rec["aim_mm"]
        t = -R[:, :2] @ np.array([ax, ay]) + np.array([0.0, 0.0, z])
        K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]])
        return K @ np.column_stack([R[:, 0], R[:, 1], t])

    def _patch_to_plane(self, rec: dict[str, Any]) -> np.ndarray:
        """Homography patch-raster px (pixel centres) -> scene-plane mm."""
        n_h, n_w = self.raster.shape[:2]
        a = math.radians(rec["patch_rotation_deg"])
        cx, cy = rec["patch_centre_mm"]
        k = self.pitch_mm
        centre = np.array([[k, 0, -k * (n_w - 1) / 2], [0, k, -k * (n_h - 1) / 2], [0, 0, 1.0]])
        rot = np.array([[math.cos(a), -math.sin(a), cx], [math.sin(a), math.cos(a), cy], [0, 0, 1.0]])
        return rot @ centre

    def _scene_to_plane(self, scene: str) -> np.ndarray:
        """Homography scene-photo px (its own resolution) -> plane mm: its canonical crop spans the view."""
        h, w = _photo_linear(scene).shape[:2]
        k = self.view_mm / (min(h, w) * 224.0 / 256.0)  # mm per photo pixel
        return np.array([[k, 0, -k * (w - 1) / 2], [0, k, -k * (h - 1) / 2], [0, 0, 1.0]])

    # -- rendering
    def shoot(self, scene: str, seed: int, index: int, clean: bool = False, frame: bool = True) -> InSituShot:
        """Draw and render one photo of the patch in ``scene`` (also the same photo without it if ``clean``;
        ``frame=False``: only what the model's view is made of, see :meth:`replay`)."""
        return self.replay(self.sample(scene, seed, index), clean=clean, frame=frame)

    def shoot_many(self, requests: Iterable[tuple[str, int, int]], clean: bool = False,
                   workers: int | None = None, frame: bool = True) -> Iterator[InSituShot]:
        """:meth:`shoot` for each ``(scene, seed, index)``, rendered on ``workers`` threads (default: the CPU cores)
        and yielded in the requests' order; the shots are identical to calling :meth:`shoot` one by one."""
        reqs = list(requests)
        return ordered_map(lambda r: self.shoot(r[0], r[1], r[2], clean=clean, frame=frame), reqs,
                           photo_workers(workers, len(reqs)))

    def view_region(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the part of the frame the model's view is computed from (its centre crop after the
        antialiased resize, with the resize filter's reach and 2 px to spare)."""
        W, H = self.cam_cfg.frame_size
        S = int(self.config.input_size)
        short = round(S * 256 / 224)  # testbed.photos.imagenet_preprocess: resize the short side, centre-crop S
        s = short / min(H, W)
        h2, w2 = max(1, round(H * s)), max(1, round(W * s))
        top, left = (h2 - S) // 2, (w2 - S) // 2
        fy, fx = H / h2, W / w2  # frame px per resized px: the bilinear filter's half-width (antialiased)
        return (max(0, math.floor(left * fx - fx) - 2), max(0, math.floor(top * fy - fy) - 2),
                min(W, math.ceil((left + S) * fx + fx) + 2), min(H, math.ceil((top + S) * fy + fy) + 2))

    def replay(self, rec: dict[str, Any], clean: bool = False, frame: bool = True) -> InSituShot:
        """Render a recorded photo (bit-exact for the same record). ``frame=False`` renders only the part of the
        frame the model's view is made of (:meth:`view_region`) and the 1/64 subsample the camera meters: the same
        ``view`` and ``clean_view`` bit for bit, with less work, and ``frame`` is None."""
        from testbed.photos import imagenet_preprocess

        W, H = self.cam_cfg.frame_size
        to_frame = self._plane_to_frame(rec)
        scene = _photo_linear(rec["scene"])
        optics = SimParams.from_dict({"index": rec["index"], "scene": rec["scene"], "scene_offset": (0.0, 0.0),
                                      "homography_mm": to_frame.tolist(), "tilt_x_deg": rec["tilt_x_deg"],
                                      "tilt_y_deg": rec["tilt_y_deg"], "rotation_deg": rec["roll_deg"],
                                      "focal_px": rec["focal_px"], **rec["camera"]})
        hom = to_frame @ self._scene_to_plane(rec["scene"])
        region = None if frame else self.view_region()
        if region is None:  # the whole frame; the camera meters its [::8, ::8] subsample
            parts = [((0, 0, 1), (W, H))]
        else:  # the part the view needs, and the metering subsample on its own (the same pixels: tested)
            x0, y0, x1, y1 = develop_box(region, optics, (W, H))
            parts = [((x0, y0, 1), (x1 - x0, y1 - y0)), ((0, 0, 8), (-(-W // 8), -(-H // 8)))]
        lins = []
        for (ox, oy, step), size in parts:
            m = np.array([[1.0 / step, 0, -ox / step], [0, 1.0 / step, -oy / step], [0, 0, 1.0]])
            lins.append(cv2.warpPerspective(scene, m @ hom, size, flags=cv2.INTER_LINEAR,
                                            borderMode=cv2.BORDER_REFLECT_101))
        bases = [x.copy() for x in lins] if clean else None
        coverage = self._composite(lins, [p[0] for p in parts], rec, to_frame)

        def develop(xs: list[np.ndarray]) -> tuple[torch.Tensor, dict[str, Any]]:
            if region is None:
                return develop_frame(xs[0], optics)
            return develop_part(xs[0], parts[0][0][:2], (W, H), xs[1], optics, region)

        image, info = develop(lins)
        S = int(self.config.input_size)
        view = imagenet_preprocess(image, S)
        clean_view = imagenet_preprocess(develop(bases)[0], S) if bases is not None else None
        return InSituShot(image if frame else None, view, clean_view,
                          {**rec, "develop": info, "patch_fraction_of_view": coverage})

    def _composite(self, lins: list[np.ndarray], grids: list[tuple[int, int, int]], rec: dict[str, Any],
                   to_frame: np.ndarray) -> float:
        """Print the patch (the record's printer), lay it on the plane, composite it into each of ``lins`` (linear,
        in place; ``lins[i]`` holds the frame pixels (x0 + step * j, y0 + step * i) for ``grids[i]`` = (x0, y0,
        step)) with its cut edge anti-aliased; returns the fraction of the model's view the patch covers."""
        W, H = self.cam_cfg.frame_size
        pr = dict(rec["printer"])
        pr["black"], pr["paper"] = tuple(pr["black"]), tuple(pr["paper"])
        printer = SimulatedPrinter(PrinterParams(**pr))
        b = printer.dots_per_px(self.raster_dpi)
        if self._cells_of is not self.raster:  # the raster was replaced: its cells, if it still has that form
            self._cells, self._cells_of = CellRaster.from_page(self.raster, self.up, self.cut > 0), self.raster
        if self._cells is not None:  # premultiplied colour + coverage, printed once per patch pixel
            src = printer.print_cells(self._cells, b, gain=rec["paper_light"])
        else:
            refl = printer.print_u8(self.raster, b)
            refl *= np.float32(rec["paper_light"])
            src = np.dstack([refl * self.cut[..., None], self.cut])
        hom = to_frame @ self._patch_to_plane(rec)
        n_h, n_w = src.shape[:2]
        corners = np.array([[0, 0], [n_w - 1, 0], [n_w - 1, n_h - 1], [0, n_h - 1], [n_w / 2, n_h / 2]], float)
        scales = SimulatedCamera._scales(hom, corners)
        r = min(1.0, 2.0 * float(scales.max()))
        if r < 1.0:  # the camera integrates over its pixel footprint (as SimulatedCamera.render)
            src = cv2.resize(src, (max(2, round(n_w * r)), max(2, round(n_h * r))), interpolation=cv2.INTER_AREA)
            rx, ry = src.shape[1] / n_w, src.shape[0] / n_h
            hom = hom @ np.linalg.inv(np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5], [0, 0, 1.0]]))
        sig = self.cam_cfg.pixel_sigma / (float(scales.max()) / min(r, 1.0))
        if sig > 0.2:
            src = cv2.GaussianBlur(src, (0, 0), sig, borderType=cv2.BORDER_CONSTANT)
        quad = project_points(hom, np.array([[-1, -1], [src.shape[1], -1], [src.shape[1], src.shape[0]],
                                             [-1, src.shape[0]]], float))
        x0, y0 = (max(0, int(math.floor(v)) - 2) for v in quad.min(0))
        x1, y1 = min(W, int(math.ceil(quad[:, 0].max())) + 2), min(H, int(math.ceil(quad[:, 1].max())) + 2)
        if x1 <= x0 or y1 <= y0:
            return 0.0
        shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]])
        warped = cv2.warpPerspective(src, shift @ hom, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        for lin, (gx, gy, step) in zip(lins, grids):  # the warped patch's pixels on each target's grid
            h, w = lin.shape[:2]
            fx0 = max(x0, gx + step * max(0, -(-(x0 - gx) // step)))  # the first grid column / row in the box
            fy0 = max(y0, gy + step * max(0, -(-(y0 - gy) // step)))
            fx1, fy1 = min(x1, gx + step * w), min(y1, gy + step * h)
            if fx1 <= fx0 or fy1 <= fy0:
                continue
            part = np.ascontiguousarray(warped[fy0 - y0:fy1 - y0:step, fx0 - x0:fx1 - x0:step])
            r, g, bl, a = cv2.split(part)
            roi = lin[(fy0 - gy) // step:(fy0 - gy) // step + part.shape[0],
                      (fx0 - gx) // step:(fx0 - gx) // step + part.shape[1]]
            clear = cv2.subtract(1.0, a)
            roi[...] = cv2.add(cv2.multiply(roi, cv2.merge([clear, clear, clear])), cv2.merge([r, g, bl]))
        a = cv2.extractChannel(warped, 3)[..., None]
        # coverage of the model's centre crop (a square of 224/256 of the frame's short side)
        c = H * 224.0 / 256.0
        cx0, cy0 = (W - c) / 2, (H - c) / 2
        ix0, iy0 = max(x0, int(round(cx0))), max(y0, int(round(cy0)))
        ix1, iy1 = min(x1, int(round(cx0 + c))), min(y1, int(round(cy0 + c)))
        if ix1 <= ix0 or iy1 <= iy0:
            return 0.0
        return float(a[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0].sum() / (c * c))
