"""A simulated print-and-photograph camera (OpenCV + albumentations, deliberately not the kornia EOT code).

Pipeline for each frame, in linear light where physics is linear:

1. printer (once per sheet): gamut compression (saturation towards luminance, dot gain, ink black point,
   paper white) and ordered-dither halftoning (16x16 Bayer, so a patch's mean reflectance is exact to 1/256);
2. placement into a scene photo (a real photograph shipped with scikit-image / matplotlib) with a 3-D
   perspective (tilt, in-plane rotation, distance, focal length), area-averaged before warping (no moire);
3. lighting (exposure, white balance, smooth brightness gradient), defocus or motion blur (albumentations);
4. sRGB encoding, sensor noise (read + shot noise via albumentations) and JPEG (albumentations).

Parameters are sampled from a ``numpy.random.Generator`` (seeded per frame from ``(seed, index)``) into a
JSON-serialisable :class:`SimParams`, then applied by :meth:`SimulatedCamera.render`, so any draw can be
replayed. Each frame reports where the page (and every object in the sheet sidecar) landed in the frame.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from camera.sources import FrameSource
from testbed.errors import ConfigError, ImageError

DEFAULT_SCENES = ("coffee", "chelsea", "astronaut", "rocket", "motorcycle_left", "grace_hopper")


# ------------------------------------------------------------------------------------------- colour
def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def bayer_matrix(n: int) -> np.ndarray:
    """n x n Bayer threshold matrix (n a power of two) with thresholds (k + 0.5) / n^2."""
    if n < 2 or n & (n - 1):
        raise ConfigError(f"halftone cell must be a power of two >= 2, got {n}")
    m = np.array([[0, 2], [3, 1]])
    while m.shape[0] < n:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return (m + 0.5) / (n * n)


# ------------------------------------------------------------------------------------------ printer
@dataclass
class PrinterParams:
    """A simple inkjet-on-plain-paper model; colours are relative to paper white = (1, 1, 1)."""

    saturation: float = 0.82  # chroma kept (linear light, around luminance)
    dot_gain_gamma: float = 1.12  # > 1 darkens mid-tones
    black: tuple[float, float, float] = (0.035, 0.032, 0.04)  # linear reflectance of full ink
    paper: tuple[float, float, float] = (1.0, 1.0, 1.0)  # linear reflectance of bare paper
    halftone_cell: int = 16  # Bayer cell size in raster pixels; 0 disables halftoning

    def validate(self) -> "PrinterParams":
        if not 0 < self.saturation <= 1:
            raise ConfigError(f"printer saturation must be in (0, 1], got {self.saturation}")
        if not 0.3 <= self.dot_gain_gamma <= 3:
            raise ConfigError(f"printer dot_gain_gamma must be in [0.3, 3], got {self.dot_gain_gamma}")
        if any(not 0 <= b < p <= 1 for b, p in zip(self.black, self.paper)):
            raise ConfigError(f"printer black {self.black} must be below paper {self.paper}, both in [0, 1]")
        if self.halftone_cell:
            bayer_matrix(self.halftone_cell)
        return self

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

    def _tone(self, srgb: np.ndarray) -> np.ndarray:
        """Intended sRGB -> ink-independent 'lightness' in linear [0, 1] before the black/paper mapping."""
        p = self.params
        lin = srgb_to_linear(srgb)
        y = lin @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        lin = y[..., None] + p.saturation * (lin - y[..., None])
        return np.clip(lin, 0.0, 1.0) ** p.dot_gain_gamma

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

    def print_linear(self, page_srgb: np.ndarray) -> np.ndarray:
        """A page raster (HxWx3 sRGB float) as printed: linear reflectance, halftoned."""
        t = self._tone(page_srgb.astype(np.float32))
        n = self.params.halftone_cell
        if n:
            H, W = t.shape[:2]
            bm = bayer_matrix(n).astype(np.float32)
            out = np.empty_like(t)
            for c, (dy, dx) in enumerate(((0, 0), (n // 2, n // 4), (n // 4, n // 2))):  # offset screens
                thr = np.roll(bm, (dy, dx), axis=(0, 1))
                thr = np.tile(thr, (H // n + 1, W // n + 1))[:H, :W]
                coverage = 1.0 - t[..., c]
                out[..., c] = (coverage <= thr).astype(np.float32)  # 1 = bare paper, 0 = ink dot
            t = out
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "SimParams":
        return SimParams(**d)


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

    def __init__(self, page: torch.Tensor, page_size_mm: tuple[float, float], *,
                 config: SimCameraConfig | None = None, printer: SimulatedPrinter | None = None, seed: int = 0,
                 n_frames: int | None = 10, objects: Sequence[dict[str, Any]] = (), dpi: float | None = None,
                 page_index: int = 0) -> None:
        super().__init__(f"simulated:seed={seed}", n_frames)
        if not isinstance(page, torch.Tensor) or page.ndim != 4 or page.shape[:2] != (1, 3):
            raise ImageError(f"page must be a 1x3xHxW tensor, got {getattr(page, 'shape', type(page))}")
        self.page_w_mm, self.page_h_mm = (float(v) for v in page_size_mm)
        if self.page_w_mm <= 0 or self.page_h_mm <= 0:
            raise ConfigError(f"page_size_mm must be positive, got {page_size_mm}")
        self.config = (config or SimCameraConfig()).validate()
        self.printer = printer or SimulatedPrinter()
        self.seed = int(seed)
        self.objects = [o for o in objects if o.get("page", 0) == page_index]
        self.dpi = dpi
        srgb = page[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        self._printed = self.printer.print_linear(srgb)  # linear reflectance, halftoned
        self._scene_cache: dict[str, np.ndarray] = {}

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
        blur = ("none", "defocus", "motion")[int(rng.choice(3, p=np.array(c.blur_probs)))]
        blur_size = 0
        if blur == "defocus":
            blur_size = int(rng.integers(c.defocus_radius[0], c.defocus_radius[1] + 1))
        elif blur == "motion":
            blur_size = int(rng.integers(c.motion_length[0], c.motion_length[1] + 1)) | 1
        wb = (float(rng.uniform(1 - c.white_balance, 1 + c.white_balance)), 1.0,
              float(rng.uniform(1 - c.white_balance, 1 + c.white_balance)))
        return SimParams(
            index=int(index), scene=scene, scene_offset=scene_offset, homography_mm=hom.tolist(),
            tilt_x_deg=tx, tilt_y_deg=ty, rotation_deg=rot, focal_px=f,
            exposure=float(rng.uniform(*c.exposure)), wb_gains=wb,
            gradient_amp=float(rng.uniform(*c.gradient)), gradient_angle=float(rng.uniform(0, 2 * math.pi)),
            blur=blur, blur_size=blur_size, blur_angle=float(rng.uniform(0, 180)),
            read_noise=float(rng.uniform(*c.read_noise)), shot_noise=float(rng.uniform(*c.shot_noise)),
            noise_seed=int(rng.integers(2**31 - 1)), jpeg_quality=int(rng.integers(c.jpeg_quality[0],
                                                                                   c.jpeg_quality[1] + 1)))

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
        if name not in self._scene_cache:
            from testbed.photos import load_photo

            x = load_photo(name)[0].permute(1, 2, 0).numpy()
            self._scene_cache[name] = srgb_to_linear(x)
        img = self._scene_cache[name]
        h, w = img.shape[:2]
        s = max(W / w, H / h) * 1.1
        big = cv2.resize(img, (max(W, round(w * s)), max(H, round(h * s))), interpolation=cv2.INTER_LINEAR)
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
        import albumentations.augmentations.blur.functional as abf
        import albumentations.augmentations.pixel.functional as apf

        W, H = self.config.frame_size
        hom_mm = np.asarray(params.homography_mm, np.float64)
        hom = hom_mm @ self.page_px_to_mm()  # page px -> frame px
        # anti-alias: area-average the printed page to about the frame's sampling before warping
        src = self._printed
        Hs, Ws = src.shape[:2]
        corners_px = np.array([[0, 0], [Ws - 1, 0], [Ws - 1, Hs - 1], [0, Hs - 1]], float)
        scale = self._max_scale(hom, corners_px)
        r = min(1.0, 1.5 * scale)
        if r < 1.0:
            src = cv2.resize(src, (max(2, round(Ws * r)), max(2, round(Hs * r))), interpolation=cv2.INTER_AREA)
            rx, ry = src.shape[1] / Ws, src.shape[0] / Hs
            S = np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5], [0, 0, 1.0]])
            hom_src = hom @ np.linalg.inv(S)
        else:
            hom_src = hom
        sheet = cv2.warpPerspective(src, hom_src, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=(0, 0, 0))
        alpha = cv2.warpPerspective(np.ones(src.shape[:2], np.float32), hom_src, (W, H), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        scene = self._scene(params.scene, params.scene_offset)
        lin = alpha * sheet + (1.0 - alpha) * scene
        # lighting
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        ramp = ((xx - W / 2) * math.cos(params.gradient_angle) + (yy - H / 2) * math.sin(params.gradient_angle))
        ramp = 1.0 + params.gradient_amp * ramp / (0.5 * math.hypot(W, H))
        gain = params.exposure * np.array(params.wb_gains, np.float32)
        lin = (lin * ramp[..., None] * gain).astype(np.float32)
        # optics blur (albumentations kernels)
        if params.blur == "defocus" and params.blur_size > 0:
            lin = abf.defocus(lin, radius=params.blur_size, alias_blur=0.3)
        elif params.blur == "motion" and params.blur_size > 1:
            lin = abf.convolve(lin, kernel=_motion_kernel(params.blur_size, params.blur_angle))
        srgb = linear_to_srgb(lin)
        # sensor noise: read + shot, in the encoded domain (albumentations add_noise)
        nrng = np.random.default_rng(params.noise_seed)
        sigma = np.sqrt(params.read_noise ** 2 + params.shot_noise * srgb).astype(np.float32)
        noisy = apf.add_noise(srgb, (nrng.standard_normal(srgb.shape).astype(np.float32) * sigma))
        u8 = np.clip(np.round(np.clip(noisy, 0, 1) * 255), 0, 255).astype(np.uint8)
        bgr = np.ascontiguousarray(u8[..., ::-1])  # OpenCV's JPEG expects BGR for correct chroma
        bgr = apf.image_compression(bgr, quality=params.jpeg_quality, image_type=".jpg")
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)
        page_corners = self.project_mm(params, [[0, 0], [self.page_w_mm, 0], [self.page_w_mm, self.page_h_mm],
                                                [0, self.page_h_mm]])
        objects = {}
        for o in self.objects:
            x, y, w, h = o["x_mm"], o["y_mm"], o["width_mm"], o["height_mm"]
            objects[o["name"]] = self.project_mm(params, [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]).tolist()
        meta = {"params": params.to_dict(), "page_corners_px": page_corners.tolist(), "objects": objects,
                "printer": asdict(self.printer.params)}
        return image, meta

    def project_mm(self, params: SimParams, points_mm: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """Where page points (mm) land in the frame (pixel-centre coordinates, as OpenCV reports corners)."""
        return project_points(params.homography_mm, np.asarray(points_mm, float))

    @staticmethod
    def _max_scale(hom: np.ndarray, pts: np.ndarray) -> float:
        """Largest linear magnification (frame px per source px) of the homography at the given points."""
        best = 0.0
        for x, y in pts:
            d = 1.0
            p = project_points(hom, np.array([[x, y], [x + d, y], [x, y + d]]))
            J = np.column_stack([p[1] - p[0], p[2] - p[0]])
            best = max(best, float(np.linalg.svd(J, compute_uv=False)[0]))
        return best


def _motion_kernel(size: int, angle_deg: float) -> np.ndarray:
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    dx, dy = math.cos(math.radians(angle_deg)) * c, math.sin(math.radians(angle_deg)) * c
    cv2.line(k, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1, cv2.LINE_AA)
    return k / k.sum()
