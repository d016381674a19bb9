"""Synthetic traffic-sign dataset, deterministic by seed.

Each sample is two steps (the testbed's randomness convention): :func:`sample_params` draws a
:class:`SampleParams` from a ``numpy.random.Generator`` seeded by ``(seed, split, index)``, and
:func:`apply_params` renders it: a sign (see :mod:`worlds.signs.render`) at a random pose, scale, rotation and
perspective, with lighting, colour cast, print-like gamut compression, partial occlusion, composited on a random
crop of a real photograph (shipped with scikit-image / matplotlib, see :mod:`testbed.photos`) or a procedural
texture, then camera blur, noise and JPEG. The same ``(config, index)`` always gives the same image, on any
machine with the same library versions, so a dataset can be regenerated instead of stored.

The two splits use different background photographs (:data:`SPLIT_PHOTOS`) and different per-sample seeds.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import cv2
import numpy as np
import torch

from testbed.errors import ConfigError
from worlds.signs.render import (SIGN_CLASSES, ArtworkParams, class_names, render_sign_array,
                                 sample_artwork)

# Background photographs per split: disjoint. The two motorcycle photos are a stereo pair (nearly the same
# scene), so they go to the same split.
SPLIT_PHOTOS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "coffee", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field", "ihc",
              "camera", "brick", "grass", "page"),
    "heldout": ("chelsea", "grace_hopper", "retina", "coins", "gravel", "moon"),
}
_SPLIT_CODE = {"train": 1, "heldout": 2}
#: The artwork split (``worlds.signs.render.ARTWORK_SPLITS``) each dataset split draws its sign drawings from.
SPLIT_ARTWORK: dict[str, str] = {"train": "train", "heldout": "heldout-artwork"}
_BASE_RENDER = 128  # signs are rendered once per class at this size, then resampled
BACKGROUND_KINDS = ("photo", "paper", "noise", "gradient")


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random scene and camera parameters (fractions are of the output image side)."""

    sign_scale: tuple[float, float] = (0.55, 0.95)  # sign canvas side / image side
    max_shift: float = 0.12
    rotation_deg: float = 15.0
    perspective: float = 0.16  # corner jitter / sign side
    background_probs: tuple[float, float, float, float] = (0.6, 0.2, 0.1, 0.1)  # photo, paper, noise, gradient
    sign_gain: tuple[float, float] = (0.5, 1.25)  # lighting on the sign
    shadow_prob: float = 0.3
    colour_cast: float = 0.15  # per-channel gain spread
    desaturate: tuple[float, float] = (0.0, 0.5)
    print_prob: float = 0.5  # print-like gamut compression of the sign (paper white, ink black)
    global_gain: tuple[float, float] = (0.6, 1.3)
    gamma: tuple[float, float] = (0.7, 1.4)
    blur_sigma: tuple[float, float] = (0.0, 0.9)  # in output pixels
    motion_blur_prob: float = 0.15
    noise_std: tuple[float, float] = (0.0, 0.04)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)
    occlusion_prob: float = 0.25
    occlusion_depth: tuple[float, float] = (0.05, 0.2)  # band depth / sign side
    artwork_prob: float = 0.0  # a random drawing of the sign (render.sample_artwork) instead of the canonical one
    artwork_pool: int = 96  # drawings per class and split a sample picks from (0: a fresh drawing per sample)
    pole_prob: float = 0.0  # a grey pole below the sign, in the sign's plane (perspective-correct)

    def __post_init__(self) -> None:
        for name in ("sign_scale", "sign_gain", "desaturate", "global_gain", "gamma", "blur_sigma", "noise_std",
                     "jpeg_quality", "occlusion_depth"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ConfigError(f"AugmentConfig.{name}: lower bound {lo} is above upper bound {hi}")
        if not (0.1 <= self.sign_scale[0] and self.sign_scale[1] <= 1.5):
            raise ConfigError(f"AugmentConfig.sign_scale must lie in [0.1, 1.5], got {self.sign_scale}")
        p = self.background_probs
        if len(p) != 4 or min(p) < 0 or abs(sum(p) - 1.0) > 1e-6:
            raise ConfigError(f"AugmentConfig.background_probs must be 4 non-negative numbers summing to 1, got {p}")
        if not isinstance(self.artwork_pool, int) or not 0 <= self.artwork_pool <= 100_000:
            raise ConfigError(f"AugmentConfig.artwork_pool must be an integer in [0, 100000], got {self.artwork_pool!r}")
        for name in ("shadow_prob", "print_prob", "motion_blur_prob", "jpeg_prob", "occlusion_prob", "artwork_prob",
                     "pole_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"AugmentConfig.{name} must be a probability in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class DatasetConfig:
    """What to generate: ``n`` images of ``size`` x ``size`` from ``split`` with ``seed``."""

    n: int = 1000
    size: int = 32
    split: str = "train"
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.split not in SPLIT_PHOTOS:
            raise ConfigError(f"unknown split {self.split!r}; expected one of {', '.join(SPLIT_PHOTOS)}")
        if not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"dataset size n must be a positive integer, got {self.n!r}")
        if not isinstance(self.size, int) or not 16 <= self.size <= 512:
            raise ConfigError(f"image size must be an integer in [16, 512], got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetConfig":
        d = dict(d)
        aug = d.pop("augment", {}) or {}
        aug = {k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()}
        try:
            return cls(augment=AugmentConfig(**aug), **d)
        except TypeError as exc:
            raise ConfigError(f"invalid dataset config: {exc}") from None


@dataclass(frozen=True)
class SampleParams:
    """Everything random about one sample (replayable)."""

    label: int
    background: str  # a BACKGROUND_KINDS entry
    photo: str | None
    crop: tuple[float, float, float]  # (x, y, side) of the photo crop, fractions of the photo's short side
    flip_background: bool
    texture_seed: int
    quad: tuple[tuple[float, float], ...]  # destination corners of the sign canvas (work pixels; TL, TR, BR, BL)
    sign_gain: float
    channel_gain: tuple[float, float, float]
    desaturate: float
    print_range: tuple[float, float] | None  # (ink black, paper white) or None
    shadow: tuple[float, float, float] | None  # (angle, offset, strength) of a linear shadow on the sign
    occlusion: tuple[float, float, float, float, float] | None  # (angle, depth, r, g, b)
    global_gain: float
    gamma: float
    blur_sigma: float
    motion_blur: tuple[float, float] | None  # (length px, angle deg)
    noise_std: float
    noise_seed: int
    jpeg_quality: int | None
    artwork: ArtworkParams | None = None  # None: the canonical drawing
    artwork_key: tuple[int, int, int] | None = None  # (dataset seed, split code, pool index) of a pooled drawing
    pole: tuple[float, float] | None = None  # (width / sign side, grey level) of a pole below the sign


def _u(rng: np.random.Generator, lohi: tuple[float, float]) -> float:
    return float(rng.uniform(lohi[0], lohi[1]))


def sample_params(rng: np.random.Generator, label: int, photos: tuple[str, ...], work: int,
                  aug: AugmentConfig, artwork_split: str = "train", pool_seed: int = 0) -> SampleParams:
    """Draw one sample's parameters (work = side of the working image in pixels; the sign's drawing, when
    ``aug.artwork_prob`` > 0, from ``artwork_split``). With ``artwork_prob`` and ``pole_prob`` 0 the draws are
    exactly those of the datasets made before artwork variation existed."""
    kind = BACKGROUND_KINDS[int(rng.choice(4, p=np.asarray(aug.background_probs)))]
    photo = photos[int(rng.integers(len(photos)))] if kind == "photo" else None
    side = _u(rng, (0.12, 0.7))
    crop = (_u(rng, (0, 1 - side)), _u(rng, (0, 1 - side)), side)
    flip = bool(rng.random() < 0.5)
    tex_seed = int(rng.integers(2**31))

    s = _u(rng, aug.sign_scale) * work
    cx = work / 2 + _u(rng, (-aug.max_shift, aug.max_shift)) * work
    cy = work / 2 + _u(rng, (-aug.max_shift, aug.max_shift)) * work
    th = math.radians(_u(rng, (-aug.rotation_deg, aug.rotation_deg)))
    corners = []
    for ux, uy in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
        jx, jy = (rng.uniform(-aug.perspective, aug.perspective, size=2) * 0.5)
        x, y = (ux + jx) * s, (uy + jy) * s
        corners.append((cx + x * math.cos(th) - y * math.sin(th), cy + x * math.sin(th) + y * math.cos(th)))

    cg = tuple(float(v) for v in rng.uniform(1 - aug.colour_cast, 1 + aug.colour_cast, size=3))
    print_range = None
    if rng.random() < aug.print_prob:
        print_range = (_u(rng, (0.0, 0.15)), _u(rng, (0.82, 1.0)))
    shadow = None
    if rng.random() < aug.shadow_prob:
        shadow = (_u(rng, (0, 2 * math.pi)), _u(rng, (-0.3, 0.3)), _u(rng, (0.3, 0.7)))
    occ = None
    if rng.random() < aug.occlusion_prob:
        occ = (_u(rng, (0, 2 * math.pi)), _u(rng, aug.occlusion_depth), *(float(v) for v in rng.uniform(0, 1, 3)))
    motion = None
    if rng.random() < aug.motion_blur_prob:
        motion = (_u(rng, (2.0, 4.0)), _u(rng, (0, 180)))
    jpeg = int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1)) if rng.random() < aug.jpeg_prob else None
    artwork = pole = key = None
    if aug.artwork_prob > 0 and rng.random() < aug.artwork_prob:
        if aug.artwork_pool > 0:  # one of the split's pooled drawings of this class (drawn from their own seeds)
            key = (pool_seed, int(rng.integers(aug.artwork_pool)))
            artwork = _pooled_artwork(label, artwork_split, *key)
        else:
            artwork = sample_artwork(SIGN_CLASSES[label].name, rng, artwork_split)
    if aug.pole_prob > 0 and rng.random() < aug.pole_prob:
        pole = (_u(rng, (0.04, 0.1)), _u(rng, (0.25, 0.75)))
    return SampleParams(
        label=label, background=kind, photo=photo, crop=crop, flip_background=flip, texture_seed=tex_seed,
        quad=tuple(corners), sign_gain=_u(rng, aug.sign_gain), channel_gain=cg,  # type: ignore[arg-type]
        desaturate=_u(rng, aug.desaturate), print_range=print_range, shadow=shadow, occlusion=occ,
        global_gain=_u(rng, aug.global_gain), gamma=_u(rng, aug.gamma), blur_sigma=_u(rng, aug.blur_sigma),
        motion_blur=motion, noise_std=_u(rng, aug.noise_std), noise_seed=int(rng.integers(2**31)),
        jpeg_quality=jpeg, artwork=artwork, pole=pole,
        artwork_key=None if key is None else (key[0], _ARTWORK_SPLIT_CODE[artwork_split], key[1]),
    )


_ARTWORK_SPLIT_CODE = {"train": 1, "heldout-artwork": 2}
_POOL_RENDER = 80  # pooled drawings are rendered once at this size (2x supersampled) and resampled


@lru_cache(maxsize=8192)
def _pooled_artwork(label: int, split: str, seed: int, k: int) -> ArtworkParams:
    return sample_artwork(SIGN_CLASSES[label].name, np.random.default_rng([seed, _ARTWORK_SPLIT_CODE[split], label, k]),
                          split)


@lru_cache(maxsize=4096)
def _pooled_render(label: int, art: ArtworkParams) -> np.ndarray:
    out = render_sign_array(SIGN_CLASSES[label].name, _POOL_RENDER, supersample=2, artwork=art)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=32)
def _photo_array(name: str) -> np.ndarray:
    from testbed.photos import load_photo

    x = load_photo(name)[0].permute(1, 2, 0).numpy().astype(np.float32)
    x.setflags(write=False)
    return x


@lru_cache(maxsize=64)
def _sign_base(label: int) -> np.ndarray:
    return render_sign_array(SIGN_CLASSES[label].name, _BASE_RENDER)


def _background(p: SampleParams, work: int) -> np.ndarray:
    if p.background == "photo":
        img = _photo_array(p.photo)  # type: ignore[arg-type]
        short = min(img.shape[:2])
        x0, y0, side = (int(v * short) for v in p.crop)
        side = max(side, 8)
        crop = img[y0 : y0 + side, x0 : x0 + side]
        out = cv2.resize(crop, (work, work), interpolation=cv2.INTER_AREA if side > work else cv2.INTER_LINEAR)
        return out[:, ::-1].copy() if p.flip_background else out
    rng = np.random.default_rng(p.texture_seed)
    if p.background == "paper":
        base = rng.uniform(0.7, 1.0) * (1 + rng.uniform(-0.04, 0.04, 3))
        ramp = np.linspace(-1, 1, work, dtype=np.float32)
        g = rng.uniform(-0.08, 0.08) * ramp[None, :] + rng.uniform(-0.08, 0.08) * ramp[:, None]
        return np.clip(base[None, None, :] + g[..., None], 0, 1).astype(np.float32)
    if p.background == "noise":
        k = int(rng.integers(2, 9))
        low = rng.uniform(0, 1, (k, k, 3)).astype(np.float32)
        out = cv2.resize(low, (work, work), interpolation=cv2.INTER_CUBIC)
        out += rng.normal(0, rng.uniform(0.0, 0.08), out.shape).astype(np.float32)
        return np.clip(out, 0, 1)
    top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    t = np.linspace(0, 1, work, dtype=np.float32)[:, None, None]
    out = top * (1 - t) + bottom * t
    return np.broadcast_to(out, (work, work, 3)).astype(np.float32)


def apply_params(p: SampleParams, size: int, work: int) -> np.ndarray:
    """Render the sample described by ``p`` as a ``size x size x 3`` float32 RGB array in [0, 1]."""
    bg = _background(p, work)
    side = max(8, int(round(max(math.dist(p.quad[0], p.quad[1]), math.dist(p.quad[1], p.quad[2])))))
    if p.artwork is None:
        sign = _sign_base(p.label)
    elif p.artwork_key is not None:
        sign = _pooled_render(p.label, p.artwork)
    else:  # drawn at about its size in the work image (2x supersampled), not cached per class
        sign = render_sign_array(SIGN_CLASSES[p.label].name, min(_BASE_RENDER, max(32, -(-side // 16) * 16)),
                                 supersample=2, artwork=p.artwork)
    src_img = cv2.resize(sign, (side, side), interpolation=cv2.INTER_AREA) if side < sign.shape[0] else sign
    n = src_img.shape[0]
    src = np.float32([[0, 0], [n, 0], [n, n], [0, n]])
    hom = cv2.getPerspectiveTransform(src, np.float32(p.quad))
    if p.pole is not None:  # the pole runs down from the sign's centre in the sign's plane, behind the sign
        width, grey = p.pole
        corners = np.float32([[[n * (0.5 - width / 2), n * 0.5], [n * (0.5 + width / 2), n * 0.5],
                               [n * (0.5 + width / 2), n * 3.0], [n * (0.5 - width / 2), n * 3.0]]])
        pts = cv2.perspectiveTransform(corners, hom)[0]
        if np.isfinite(pts).all() and np.abs(pts).max() < 50 * work:
            mask = np.zeros((work, work), np.uint8)
            cv2.fillConvexPoly(mask, np.round(pts * 16).astype(np.int32), 255, cv2.LINE_AA, 4)
            m = (mask.astype(np.float32) / 255.0)[..., None]
            bg = bg * (1 - m) + np.float32(grey) * m
    warped = cv2.warpPerspective(src_img, hom, (work, work), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=(0, 0, 0, 0))
    rgb, alpha = warped[..., :3], warped[..., 3:]

    # the sign's appearance: print gamut, fading, lighting, shadow, colour cast
    if p.print_range is not None:
        lo, hi = p.print_range
        rgb = lo + (hi - lo) * rgb
    grey = rgb.mean(-1, keepdims=True)
    rgb = rgb + p.desaturate * (grey - rgb)
    rgb = rgb * p.sign_gain
    if p.shadow is not None:
        ang, off, strength = p.shadow
        yy, xx = np.mgrid[0:work, 0:work].astype(np.float32) / work - 0.5
        proj = xx * math.cos(ang) + yy * math.sin(ang) - off
        shade = 1 - strength * np.clip(proj * 8 + 0.5, 0, 1)
        rgb = rgb * shade[..., None]
    rgb = rgb * np.asarray(p.channel_gain, dtype=np.float32)
    img = rgb * alpha + bg * (1 - alpha)

    if p.occlusion is not None:
        ang, depth, r, g, b = p.occlusion
        ys, xs = np.nonzero(alpha[..., 0] > 0.5)
        if len(xs):
            yy, xx = np.mgrid[0:work, 0:work].astype(np.float32)
            d = (xx - xs.mean()) * math.cos(ang) + (yy - ys.mean()) * math.sin(ang)
            proj = xs * math.cos(ang) + ys * math.sin(ang) - (xs.mean() * math.cos(ang) + ys.mean() * math.sin(ang))
            extent = proj.max() - proj.min()
            edge = proj.max() - depth * extent
            m = np.clip(d - edge + 0.5, 0, 1)[..., None]
            occ_col = np.asarray((r, g, b), dtype=np.float32) * (0.9 + 0.2 * bg)
            img = img * (1 - m) + occ_col * m

    img = np.clip(img * p.global_gain, 0, 1) ** p.gamma
    scale = work / size
    if p.blur_sigma > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=p.blur_sigma * scale)
    if p.motion_blur is not None:
        length, ang = p.motion_blur
        k = int(round(length * scale)) | 1
        kern = np.zeros((k, k), np.float32)
        kern[k // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), ang, 1.0)
        kern = cv2.warpAffine(kern, rot, (k, k))
        kern /= max(kern.sum(), 1e-6)
        img = cv2.filter2D(img, -1, kern)
    img = cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_AREA)
    if p.noise_std > 0:
        img = img + np.random.default_rng(p.noise_seed).normal(0, p.noise_std, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1)
    if p.jpeg_quality is not None:
        u8 = np.round(img * 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, p.jpeg_quality])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0
    return img.astype(np.float32)


@dataclass
class SignDataset:
    """A generated dataset: ``images`` N x 3 x S x S float32 in [0, 1], ``labels`` N int64."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    config: DatasetConfig

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def tensor_dataset(self) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(self.images, self.labels)


def sample_rng(config: DatasetConfig, index: int) -> np.random.Generator:
    """The generator for sample ``index`` of ``config`` (independent of every other sample's)."""
    return np.random.default_rng([config.seed, _SPLIT_CODE[config.split], index])


def generate_sample(config: DatasetConfig, index: int) -> tuple[np.ndarray, SampleParams]:
    """Sample ``index`` (label ``index % num_classes``, so datasets are class-balanced) and its parameters."""
    work = 2 * config.size
    params = sample_params(sample_rng(config, index), index % len(SIGN_CLASSES), SPLIT_PHOTOS[config.split], work,
                           config.augment, SPLIT_ARTWORK[config.split], config.seed)
    return apply_params(params, config.size, work), params


def generate_dataset(config: DatasetConfig, *, progress: bool = False) -> SignDataset:
    """Generate ``config.n`` samples (deterministic: same config -> identical tensors)."""
    prev_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # per-image work is tiny; threads only add overhead and run-to-run noise
    try:
        images = np.empty((config.n, config.size, config.size, 3), np.float32)
        labels = np.empty(config.n, np.int64)
        it = range(config.n)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"signs {config.split}", unit="img")
        for i in it:
            img, params = generate_sample(config, i)
            images[i] = img
            labels[i] = params.label
    finally:
        cv2.setNumThreads(prev_threads)
    return SignDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels),
                       class_names(), config)
