"""Channels: what happens to an image between the attacker's file and the model's input.

A channel takes a batch of digital images (BCHW RGB float in [0, 1], each with a stable id) and returns what the
model sees after the physical loop, at the same size:

* ``none``       - the identity (digital evaluation);
* ``simulated``  - print -> photograph -> rectify -> crop back, simulated (``PrintPhotoSimulator`` below, or
  ``camera.simulated`` once it exists: ``backend: camera``);
* ``folder``     - a folder of real photos of the printouts, one file per (tag, image id), already rectified
  or rectified with ``camera.rectify``;
* ``live``       - one frame per image from a live source (webcam index, video file, stream URL).

Evaluation independence: the simulator here is written in plain torch (``grid_sample``, ``conv2d``) and torchvision's
JPEG codec, with its own parameter ranges and its own seeds, derived from (experiment seed, repetition, image id).
It shares no code and no random draws with ``physical.eot`` (kornia), which attacks optimise over; so an
evaluation never reuses a transformation an attack optimised on. The draw depends on the image id and the
repetition only, not on the cell: the clean and the adversarial version of an image are "photographed" under the
same conditions, as on one printed page in Kurakin et al. 2016.
"""
from __future__ import annotations

import hashlib
import math
import re
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from testbed.errors import ConfigError, ImageError, SourceError
from testbed.imageio import check_images

CHANNEL_KINDS = ("none", "simulated", "folder", "live")


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across runs and machines)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


@dataclass
class ChannelOutput:
    """Images after the channel (same shape as the input) and the per-image parameters that produced them."""

    images: Tensor
    params: list[dict[str, Any]]


class Channel(ABC):
    """``transmit(images, ids, rep=, tag=)`` -> ChannelOutput."""

    kind: str = "channel"

    @abstractmethod
    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput: ...

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


class IdentityChannel(Channel):
    kind = "none"

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        check_images(images)
        return ChannelOutput(images.clone(), [{} for _ in ids])


# ------------------------------------------------------------------------------------------ simulator
@dataclass(frozen=True)
class SimulatorConfig:
    """Ranges of the simulated print-and-photograph loop (uniform draws; pixels are pixels of the digital image)."""

    # print: paper white and ink black levels, per-channel gamma, saturation loss, dot gain (Gaussian sigma)
    paper_white: tuple[float, float] = (0.86, 0.97)
    ink_black: tuple[float, float] = (0.02, 0.09)
    gamma: tuple[float, float] = (0.88, 1.12)
    saturation: tuple[float, float] = (0.78, 0.97)
    dot_gain_sigma: tuple[float, float] = (0.2, 0.6)
    # photograph: photo pixels per digital pixel, rotation (deg), perspective corner jitter (fraction of size)
    scale: tuple[float, float] = (0.8, 1.6)
    rotation_deg: tuple[float, float] = (-6.0, 6.0)
    perspective: tuple[float, float] = (0.0, 0.05)
    # light: global gain, illuminant colour (per-channel gain), linear illumination gradient amplitude
    light_gain: tuple[float, float] = (0.8, 1.15)
    illuminant: tuple[float, float] = (0.93, 1.07)
    gradient: tuple[float, float] = (0.0, 0.15)
    # optics and sensor: defocus (Gaussian sigma, photo px), noise std, JPEG quality
    defocus_sigma: tuple[float, float] = (0.3, 1.1)
    noise_std: tuple[float, float] = (0.004, 0.02)
    jpeg_quality: tuple[int, int] = (70, 95)
    # rectification: std of the marker-corner localisation error (photo px)
    corner_error_px: float = 0.6
    background: tuple[float, float] = (0.25, 0.6)

    def __post_init__(self) -> None:
        for f in self.__dataclass_fields__:
            v = getattr(self, f)
            if isinstance(v, tuple):
                if len(v) != 2 or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in v) or v[0] > v[1]:
                    raise ConfigError(f"simulator {f} must be a [min, max] pair of numbers, got {v!r}")
                if v[0] < 0 and f != "rotation_deg":
                    raise ConfigError(f"simulator {f} must be >= 0, got {v!r}")
        if not (1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100):
            raise ConfigError(f"simulator jpeg_quality must lie in [1, 100], got {self.jpeg_quality!r}")
        if self.scale[0] <= 0:
            raise ConfigError(f"simulator scale must be > 0, got {self.scale!r}")
        if not (math.isfinite(self.corner_error_px) and self.corner_error_px >= 0):
            raise ConfigError(f"simulator corner_error_px must be >= 0, got {self.corner_error_px!r}")

    @classmethod
    def preset(cls, name: str) -> "SimulatorConfig":
        """'default' (a phone photo of an inkjet print, as Kurakin et al.), 'mild', 'harsh'."""
        if name == "default":
            return cls()
        if name == "mild":
            return cls(paper_white=(0.94, 0.99), ink_black=(0.0, 0.04), gamma=(0.96, 1.04), saturation=(0.92, 1.0),
                       dot_gain_sigma=(0.0, 0.3), scale=(1.0, 1.5), rotation_deg=(-2, 2), perspective=(0, 0.02),
                       light_gain=(0.95, 1.05), illuminant=(0.98, 1.02), gradient=(0, 0.05),
                       defocus_sigma=(0.0, 0.5), noise_std=(0.0, 0.008), jpeg_quality=(90, 98), corner_error_px=0.3)
        if name == "harsh":
            return cls(scale=(0.6, 1.2), rotation_deg=(-12, 12), perspective=(0.02, 0.09), light_gain=(0.65, 1.2),
                       gradient=(0.05, 0.3), defocus_sigma=(0.6, 1.8), noise_std=(0.01, 0.035),
                       jpeg_quality=(55, 85), corner_error_px=1.2)
        raise ConfigError(f"unknown simulator preset {name!r}; known presets: default, mild, harsh")


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 homography mapping 4 points ``src`` to ``dst`` (DLT, h33 = 1)."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y]); b.append(u)
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y]); b.append(v)
    h = np.linalg.solve(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def _warp(src: Tensor, h_out_to_src: np.ndarray, out_hw: tuple[int, int], fill: float | Tensor) -> Tensor:
    """Sample ``src`` (1xCxHxW) at H(out pixel centre) for every output pixel (bilinear; outside -> ``fill``)."""
    oh, ow = out_hw
    sh, sw = src.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(oh, dtype=torch.float64) + 0.5, torch.arange(ow, dtype=torch.float64) + 0.5,
                            indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.from_numpy(h_out_to_src).T
    px, py = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
    grid = torch.stack([px / sw * 2 - 1, py / sh * 2 - 1], -1)[None].float()
    ones = torch.ones_like(src[:, :1])
    out = F.grid_sample(torch.cat([src, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img, cover = out[:, :-1], out[:, -1:]
    fill_t = torch.as_tensor(fill, dtype=src.dtype).view(1, -1, 1, 1)
    return img + (1 - cover) * fill_t


def _gauss_blur(x: Tensor, sigma: float) -> Tensor:
    if sigma < 0.05:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t * t / (2 * sigma * sigma)); k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class PrintPhotoSimulator:
    """Print -> photograph -> rectify -> crop back, one image at a time: ``sample(rng, h, w)`` then ``apply``."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()

    def sample(self, rng: np.random.Generator, h: int, w: int) -> dict[str, Any]:
        c = self.config
        u = lambda r: float(rng.uniform(r[0], r[1]))  # noqa: E731
        s = u(c.scale)
        ang = math.radians(u(c.rotation_deg))
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
        centred = (corners - [w / 2, h / 2]) * s
        rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        jitter = rng.uniform(-1, 1, size=(4, 2)) * u(c.perspective) * np.array([w, h]) * s
        photo_pts = centred @ rot.T + jitter
        margin = 6.0
        photo_pts -= photo_pts.min(0) - margin
        ph, pw = (int(math.ceil(v + margin)) for v in photo_pts.max(0)[::-1])
        estimated = photo_pts + rng.normal(0, c.corner_error_px, size=(4, 2))
        theta = rng.uniform(0, 2 * math.pi)
        return {
            "paper_white": u(c.paper_white), "ink_black": u(c.ink_black),
            "gamma": [u(c.gamma) for _ in range(3)], "saturation": u(c.saturation),
            "dot_gain_sigma": u(c.dot_gain_sigma), "scale": s, "photo_hw": [ph, pw],
            "photo_corners": photo_pts.tolist(), "estimated_corners": estimated.tolist(),
            "light_gain": u(c.light_gain), "illuminant": [u(c.illuminant) for _ in range(3)],
            "gradient": u(c.gradient), "gradient_dir": [math.cos(theta), math.sin(theta)],
            "defocus_sigma": u(c.defocus_sigma), "noise_std": u(c.noise_std),
            "noise_seed": int(rng.integers(0, 2**62)), "background": u(c.background),
            "jpeg_quality": int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)),
        }

    @torch.no_grad()
    def apply(self, image: Tensor, p: dict[str, Any]) -> Tensor:
        """``image`` 1x3xHxW in [0, 1] -> the rectified photo of its printout, 1x3xHxW."""
        from torchvision.io import decode_jpeg, encode_jpeg

        x = image.detach().float().cpu()
        h, w = x.shape[-2:]
        # print: saturation loss, per-channel tone curve into [ink black, paper white], dot gain
        grey = x.mean(1, keepdim=True)
        x = grey + p["saturation"] * (x - grey)
        gamma = torch.tensor(p["gamma"]).view(1, 3, 1, 1)
        x = p["ink_black"] + (p["paper_white"] - p["ink_black"]) * x.clamp(0, 1) ** gamma
        x = _gauss_blur(x, p["dot_gain_sigma"])
        # photograph: the page seen through a homography at ``scale`` photo px per digital px
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
        photo_pts = np.asarray(p["photo_corners"])
        h_photo_to_img = _homography(photo_pts, corners)
        if p["scale"] < 1:  # antialias before the camera's lower resolution samples the print
            x = _gauss_blur(x, 0.5 / p["scale"])
        photo = _warp(x, h_photo_to_img, tuple(p["photo_hw"]), p["background"])
        ph, pw = photo.shape[-2:]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, ph), torch.linspace(-1, 1, pw), indexing="ij")
        gdx, gdy = p["gradient_dir"]
        light = p["light_gain"] * (1 + p["gradient"] * (gdx * xs + gdy * ys))
        photo = photo * light * torch.tensor(p["illuminant"]).view(1, 3, 1, 1)
        photo = _gauss_blur(photo, p["defocus_sigma"])
        g = torch.Generator().manual_seed(p["noise_seed"])
        photo = photo + p["noise_std"] * torch.randn(photo.shape, generator=g)
        q = photo.clamp(0, 1).mul(255).round().to(torch.uint8)[0]
        with warnings.catch_warnings():  # torchvision 0.29 flags its codecs as deprecated (still supported)
            warnings.simplefilter("ignore", DeprecationWarning)
            photo = decode_jpeg(encode_jpeg(q, quality=p["jpeg_quality"])).float().div(255)[None]
        # rectify: homography from the estimated marker corners back to the digital frame, crop back
        h_img_to_photo = _homography(corners, np.asarray(p["estimated_corners"]))
        return _warp(photo, h_img_to_photo, (h, w), 0.5).clamp(0, 1)


class SimulatedChannel(Channel):
    """The simulated camera: one independent draw per (seed, repetition, image id)."""

    kind = "simulated"

    def __init__(self, seed: int, preset: str = "default", overrides: dict[str, Any] | None = None) -> None:
        base = asdict(SimulatorConfig.preset(preset))
        for k, v in (overrides or {}).items():
            if k not in base:
                raise ConfigError(f"channel.simulator has no parameter {k!r}; known: {', '.join(sorted(base))}")
            base[k] = tuple(v) if isinstance(v, list) else v
        self.sim = PrintPhotoSimulator(SimulatorConfig(**base))
        self.seed, self.preset = seed, preset

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        check_images(images)
        if len(ids) != images.shape[0]:
            raise ConfigError(f"got {images.shape[0]} images but {len(ids)} ids")
        outs, params = [], []
        h, w = images.shape[-2:]
        for img, iid in zip(images, ids):
            rng = np.random.default_rng(derive_seed(self.seed, "channel", rep, iid))
            p = self.sim.sample(rng, h, w)
            outs.append(self.sim.apply(img[None], p))
            params.append(p)
        return ChannelOutput(torch.cat(outs).to(images.device), params)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "backend": "pipelines.channels.PrintPhotoSimulator", "preset": self.preset,
                "config": asdict(self.sim.config)}


# ------------------------------------------------------------------------------------------ real photos
def tag_dirname(tag: str) -> str:
    """A cell tag as a folder name: 'mobilenet_v2/fgsm/eps8' -> 'mobilenet_v2__fgsm__eps8'."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "__", tag)


class FolderChannel(Channel):
    """Real photos of the printouts: ``<folder>/<tag dir>/rep<r>/<image id>.<png|jpg|...>``.

    The harness writes the images to print under ``<run dir>/to_print/`` with the same layout. Photos must be
    rectified already (cropped to the printed image) unless ``rectify`` is given: a callable
    ``(photo 1x3xHxW, image id) -> 1x3xhxw`` (e.g. from ``camera.rectify``), which raises when it finds no markers.
    """

    kind = "folder"

    def __init__(self, folder: str | Path, rectify: Any = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"channel folder {self.folder} does not exist or is not a folder")
        if not any(self.folder.rglob("*")):
            raise SourceError(f"channel folder {self.folder} is empty: expected photos of the printouts under "
                              "<tag>/rep<r>/<image id>.png|jpg")
        self.rectify = rectify

    def path_for(self, tag: str, rep: int, iid: str) -> Path:
        d = self.folder / tag_dirname(tag) / f"rep{rep}"
        for ext in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"):
            q = d / f"{iid}{ext}"
            if q.is_file():
                return q
        raise SourceError(f"channel folder: no photo for image {iid!r} of {tag!r} repetition {rep}: expected "
                          f"{d / iid}.png (or .jpg)")

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        from camera.sources import decode_image_bytes

        check_images(images)
        h, w = images.shape[-2:]
        outs, params = [], []
        for iid in ids:
            path = self.path_for(tag, rep, iid)
            photo = decode_image_bytes(path.read_bytes(), str(path))  # grayscale / RGBA / 16-bit refused there
            if self.rectify is not None:
                photo = self.rectify(photo, iid)
            outs.append(F.interpolate(photo, size=(h, w), mode="bilinear", antialias=True, align_corners=False))
            params.append({"path": str(path)})
        return ChannelOutput(torch.cat(outs).clamp(0, 1).to(images.device), params)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "folder": str(self.folder)}


class LiveChannel(Channel):
    """One frame per image from a live source (the printout held in front of the camera), resized to the image."""

    kind = "live"

    def __init__(self, source: Any, rectify: Any = None, timeout_s: float = 10.0) -> None:
        from camera.sources import open_source

        self.spec = source
        self.source = open_source(source, timeout_s=timeout_s) if not hasattr(source, "read") else source
        self.rectify = rectify

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        check_images(images)
        h, w = images.shape[-2:]
        outs, params = [], []
        for iid in ids:
            try:
                frame = self.source.read()
            except StopIteration:
                raise SourceError(f"live channel {self.source!r} ended before image {iid!r}") from None
            photo = frame.image if self.rectify is None else self.rectify(frame.image, iid)
            outs.append(F.interpolate(photo, size=(h, w), mode="bilinear", antialias=True, align_corners=False))
            params.append({"seq": frame.seq, "source": frame.source})
        return ChannelOutput(torch.cat(outs).clamp(0, 1).to(images.device), params)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": str(self.spec)}


class CameraSimChannel(Channel):
    """The full loop with the camera engineer's code: ``printouts.patch_sheet`` (the image at ``width_mm`` with
    4 ArUco markers) -> ``camera.simulated.SimulatedCamera`` (printer with halftoning, a scene, 3-D pose,
    lighting, blur, noise, JPEG; OpenCV + albumentations) -> ``camera.rectify`` (markers -> homography -> warp
    back) -> resize to the image size. One independent printer + photo draw per (seed, repetition, image id)."""

    kind = "simulated"

    def __init__(self, seed: int, *, width_mm: float = 50.0, dpi: float = 300.0, frame_size: tuple[int, int] = (1280, 960),
                 max_tilt_deg: float = 25.0, halftone_cell: int = 4, sample_printer: bool = True) -> None:
        from camera.simulated import SimCameraConfig
        from printouts.sheets import check_dpi

        check_dpi(dpi)
        if not (isinstance(width_mm, (int, float)) and 5 <= width_mm <= 1000):
            raise ConfigError(f"channel.simulator.width_mm must be a printed width in [5, 1000] mm, got {width_mm!r}")
        self.seed, self.width_mm, self.dpi = seed, float(width_mm), float(dpi)
        self.halftone_cell, self.sample_printer = int(halftone_cell), bool(sample_printer)
        self.cam_config = SimCameraConfig(frame_size=tuple(frame_size), max_tilt_deg=float(max_tilt_deg)).validate()

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        from camera.rectify import ObjectSpec, rectify
        from camera.simulated import PrinterParams, SimulatedCamera, SimulatedPrinter
        from printouts.sheets import SheetConfig, patch_sheet

        check_images(images)
        h, w = images.shape[-2:]
        outs, params = [], []
        for img, iid in zip(images, ids):
            s = derive_seed(self.seed, "camera-channel", rep, iid)
            pp = PrinterParams.sample(np.random.default_rng(s)) if self.sample_printer else PrinterParams()
            pp = PrinterParams(**{**asdict(pp), "halftone_cell": self.halftone_cell})
            page_mm = self.width_mm * max(1.0, h / w) + 85  # object + markers + header/footer
            sheet = patch_sheet(img[None].cpu(), width_mm=self.width_mm,
                                config=SheetConfig(dpi=self.dpi, page=f"{page_mm:.0f}x{page_mm:.0f}", margin_mm=4))
            pg = sheet.pages[0]
            cam = SimulatedCamera(sheet.render_page(0, self.dpi), (pg.width_mm, pg.height_mm), config=self.cam_config,
                                  printer=SimulatedPrinter(pp), seed=s % (2**32), n_frames=1, objects=sheet.objects,
                                  dpi=self.dpi)
            frame = cam.read()
            r = rectify(frame.image, ObjectSpec.from_record(sheet.objects[0]), source=f"simulated photo of {iid}")
            outs.append(F.interpolate(r.image, size=(h, w), mode="bilinear", antialias=True, align_corners=False))
            params.append({"camera": frame.meta["params"], "printer": asdict(pp), "rectify": r.summary()})
        return ChannelOutput(torch.cat(outs).clamp(0, 1).to(images.device), params)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "backend": "camera.simulated + camera.rectify + printouts.patch_sheet",
                "width_mm": self.width_mm, "dpi": self.dpi, "halftone_cell": self.halftone_cell,
                "camera": asdict(self.cam_config)}


def make_channel(spec: dict[str, Any], seed: int) -> Channel:
    """A channel from the experiment's ``channel:`` section (validated by ``pipelines.experiment``)."""
    kind = spec.get("kind", "none")
    if kind == "none":
        return IdentityChannel()
    if kind == "simulated":
        if spec.get("backend", "torch") == "camera":
            return CameraSimChannel(seed, **(spec.get("simulator") or {}))
        return SimulatedChannel(seed, spec.get("preset", "default"), spec.get("simulator") or {})
    if kind == "folder":
        return FolderChannel(spec["folder"])
    if kind == "live":
        return LiveChannel(spec["source"])
    raise ConfigError(f"channel.kind must be one of {CHANNEL_KINDS}, got {kind!r}")
