"""Adversarial eyeglass frames (Sharif, Bhagavatula, Bauer & Reiter 2016, "Accessorize to a crime").

The frame lives in the canonical 150x150 face chip (``testbed.faces``: dlib-style alignment from the 5 MTCNN
landmarks), so one texture fits every photo of the wearer:

1. the wearer's photo is detected and aligned once (``align_wearer``); the enrolled descriptor is the clean
   chip's descriptor (or the mean over several photos / clean augmented views, ``enroll``);
2. the frame is composited onto the chip: ``mask * printed(texture) + (1 - mask) * chip`` — the printer colour
   error of the EOT draw applies to the frame only;
3. the EOT transformation (small head movement: rotation / scale / shift of the whole chip; lighting) is applied
   to the composited chip, then the face descriptor.

Losses (``d_e`` = distance to the wearer's enrolled descriptor, ``d_t`` = to the target's; ``thr`` = 0.6):

* dodging: ``hinge``: ``relu(thr + margin - d_e)``; ``distance``: ``-d_e``;
* impersonation: ``hinge``: ``relu(d_t - (thr - margin)) + lambda_own * relu(d_t - d_e + margin)``;
  ``distance``: ``d_t + lambda_own * relu(d_t - d_e + margin)``;

plus ``lambda_tv * TV + lambda_nps * NPS`` of the texture inside the mask (Sharif's smoothness and printability).
Adam on the logits of the colours (sigmoid parametrisation), colours initialised to a solid brown like a
plain frame. Success is measured on ``eval_samples`` FRESH transformations drawn with a different generator
(``eval_seed``), never the optimisation's: dodging succeeds where ``d_e > thr``; impersonation where
``d_t < thr`` and ``d_t < d_e``. The same draws are scored for the wearer without glasses ("clean") and with the
unoptimised frame ("initial").

The frame mask (two elliptical rims, a bridge, temple stubs; about 6.5% of the chip) is built from the
template's eye centres (``frame_mask``) and placed into the full photo through the landmarks' similarity
(``place_in_image`` / ``wear``), e.g. to check the whole detect-align-describe pipeline or to print it
(``print_crop`` -> ``printouts.sheets.glasses_sheet``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physical.eot import EOTParams, EOTTransform, resolve_config
from physical.hyper import RunHyperParams, check_int, check_known_keys, check_nonneg
from physical.regularizers import nps, resolve_palette, total_variation
from physical.runs import RunDir
from testbed.errors import ConfigError, ImageError
from testbed.faces import (
    DEFAULT_PADDING,
    DEFAULT_SIZE,
    chip_template,
    image_to_chip_matrix,
    transform_points,
)
from testbed.models.face_descriptor import MATCH_THRESHOLD, face_distance

Mode = Literal["dodge", "impersonate"]
#: Solid colours the frame texture can start from (RGB in [0, 1]); "brown" is a plain tortoiseshell frame.
INIT_COLOURS: dict[str, tuple[float, float, float]] = {
    "brown": (0.45, 0.30, 0.18),
    "gray": (0.5, 0.5, 0.5),
    "black": (0.12, 0.12, 0.12),
}
#: Typical adult interpupillary distance (mm), to give the printed frame its real size.
INTERPUPILLARY_MM = 63.0


# ------------------------------------------------------------------------------------------------ mask
@dataclass(frozen=True)
class FrameGeometry:
    """Shape of the frame, in units of the distance ``D`` between the eye centres (scale-free).

    Each rim is an elliptical ring centred ``lens_drop * D`` below the eye centre, outer semi-axes
    ``lens_width * D`` x ``lens_height * D``, ring width ``thickness * D``. The bridge joins the rims'
    inner edges ``bridge_raise * D`` above the eye line; temple stubs run ``temple_length * D`` outwards
    from the rims' outer edges at the same height. The default covers about 6.5% of a 150x150 chip.
    """

    lens_width: float = 0.42
    lens_height: float = 0.33
    lens_drop: float = 0.06
    thickness: float = 0.115
    bridge_raise: float = 0.10
    temple_length: float = 0.12

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"frame geometry {f.name} must be a finite number, got {v!r}")
            object.__setattr__(self, f.name, float(v))
        for n in ("lens_width", "lens_height", "thickness"):
            if getattr(self, n) <= 0:
                raise ConfigError(f"frame geometry {n} must be > 0, got {getattr(self, n)}")
        if self.thickness >= min(self.lens_width, self.lens_height):
            raise ConfigError(
                f"frame geometry thickness ({self.thickness}) must be smaller than the lens semi-axes "
                f"({self.lens_width}, {self.lens_height})"
            )
        if self.temple_length < 0:
            raise ConfigError(f"frame geometry temple_length must be >= 0, got {self.temple_length}")

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrameGeometry":
        check_known_keys(cls, data, "frame geometry")
        return cls(**data)


def _resolve_geometry(g: Any) -> FrameGeometry:
    if g is None:
        return FrameGeometry()
    if isinstance(g, FrameGeometry):
        return g
    if isinstance(g, dict):
        return FrameGeometry.from_dict(g)
    raise ConfigError(f"frame geometry must be a FrameGeometry, a dict or None, got {type(g).__name__}")


def frame_mask_from_eyes(
    left_eye: tuple[float, float] | Tensor,
    right_eye: tuple[float, float] | Tensor,
    height: int,
    width: int,
    geometry: FrameGeometry | dict[str, Any] | None = None,
    supersample: int = 4,
) -> Tensor:
    """The frame silhouette (1, 1, H, W) in [0, 1] (anti-aliased) for eye centres given in continuous pixel
    coordinates (pixel (i, j) centred at (j + 0.5, i + 0.5)); follows the tilt of the eye line."""
    g = _resolve_geometry(geometry)
    if not isinstance(supersample, int) or supersample < 1:
        raise ConfigError(f"supersample must be an integer >= 1, got {supersample!r}")
    le = torch.as_tensor(left_eye, dtype=torch.float64).flatten()
    re = torch.as_tensor(right_eye, dtype=torch.float64).flatten()
    if le.numel() != 2 or re.numel() != 2:
        raise ConfigError("eye centres must be (x, y) pairs")
    axis = re - le
    d = float(axis.norm())
    if not d > 1e-6:
        raise ConfigError(f"eye centres must differ, got {le.tolist()} and {re.tolist()}")
    ux, uy = float(axis[0]) / d, float(axis[1]) / d  # along the eye line (left -> right)
    mid = (le + re) / 2
    s = supersample
    ys = (torch.arange(height * s, dtype=torch.float64) + 0.5) / s
    xs = (torch.arange(width * s, dtype=torch.float64) + 0.5) / s
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    # face frame coordinates in units of D: u to the wearer's left-of-image -> right, v downwards
    u = ((xx - mid[0]) * ux + (yy - mid[1]) * uy) / d
    v = (-(xx - mid[0]) * uy + (yy - mid[1]) * ux) / d
    a, b, t = g.lens_width, g.lens_height, g.thickness
    m = torch.zeros_like(u, dtype=torch.bool)
    for cu in (-0.5, 0.5):
        du, dv = u - cu, v - g.lens_drop
        outer = (du / a) ** 2 + (dv / b) ** 2 <= 1.0
        inner = (du / (a - t)) ** 2 + (dv / (b - t)) ** 2 < 1.0
        m |= outer & ~inner
    band = (v - (-g.bridge_raise)).abs() <= t / 2
    m |= band & (u.abs() <= 0.5 - a + t / 2)  # bridge (overlaps the rims a little)
    reach = 0.5 + a - t / 2
    m |= band & (u.abs() >= reach) & (u.abs() <= reach + t / 2 + g.temple_length)  # temple stubs
    out = m.to(torch.float32)[None, None]
    if s > 1:
        out = F.avg_pool2d(out, s)
    return out


def frame_mask(
    size: int = DEFAULT_SIZE,
    padding: float = DEFAULT_PADDING,
    geometry: FrameGeometry | dict[str, Any] | None = None,
    supersample: int = 4,
) -> Tensor:
    """The frame mask in the canonical face chip (1, 1, size, size), placed from the template's eye centres."""
    t = chip_template(size, padding)
    return frame_mask_from_eyes(t[0], t[1], size, size, geometry, supersample)


# ------------------------------------------------------------------------------------------------ placement
def place_in_image(chip_image: Tensor, landmarks: Tensor, height: int, width: int,
                   padding: float = DEFAULT_PADDING) -> Tensor:
    """Warp a chip-space image (B, C, S, S) into a full photo (B, C, H, W) of the face with these landmarks
    (B x 5 x 2 or 5 x 2, image pixels): the inverse of ``testbed.faces.align_face``; zeros outside the chip."""
    if not isinstance(chip_image, Tensor) or chip_image.ndim != 4 or chip_image.shape[-1] != chip_image.shape[-2]:
        raise ConfigError(f"chip_image must be B x C x S x S, got {getattr(chip_image, 'shape', type(chip_image))}")
    size = int(chip_image.shape[-1])
    lms = torch.as_tensor(landmarks).to(device=chip_image.device, dtype=chip_image.dtype)
    if lms.ndim == 2:
        lms = lms[None]
    m = image_to_chip_matrix(lms, size, padding)  # image -> chip
    if m.shape[0] != chip_image.shape[0]:
        m = m.expand(chip_image.shape[0], -1, -1)
    ys = torch.arange(height, device=chip_image.device, dtype=chip_image.dtype) + 0.5
    xs = torch.arange(width, device=chip_image.device, dtype=chip_image.dtype) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy], dim=-1).view(1, -1, 2).expand(m.shape[0], -1, -1)
    q = transform_points(m, pts)
    grid = (2 * q / size - 1).view(m.shape[0], height, width, 2)
    return F.grid_sample(chip_image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def wear(image: Tensor, texture: Tensor, mask: Tensor, landmarks: Tensor,
         padding: float = DEFAULT_PADDING) -> Tensor:
    """The photo (1, 3, H, W) with the frame (chip-space ``texture`` (1, 3, S, S), ``mask`` (1, 1, S, S))
    put on the face with these landmarks."""
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
        raise ImageError(f"image must be 1 x 3 x H x W, got {getattr(image, 'shape', type(image))}")
    h, w = image.shape[-2:]
    stack = torch.cat([texture * mask, mask], dim=1).to(image)
    placed = place_in_image(stack, landmarks, h, w, padding)
    alpha = placed[:, 3:4].clamp(0, 1)
    return (image * (1 - alpha) + placed[:, :3]).clamp(0, 1)


@dataclass
class FrameCrop:
    """The frame cut out of the chip for printing: ``image`` (1, 3, h, w) with white outside the frame,
    ``mask`` (1, 1, h, w) bool, and the real width at which to print it (from a typical interpupillary
    distance): ``printouts.sheets.glasses_sheet(crop.image, crop.mask, width_mm=crop.width_mm)``."""

    image: Tensor
    mask: Tensor
    width_mm: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the chip (x1, y1 exclusive)


def print_crop(texture: Tensor, mask: Tensor, padding: float = DEFAULT_PADDING,
               interpupillary_mm: float = INTERPUPILLARY_MM) -> FrameCrop:
    """Crop the frame's bounding box out of a chip-space texture for printing at true size."""
    size = int(mask.shape[-1])
    hard = mask[0, 0] >= 0.5
    if not bool(hard.any()):
        raise ImageError("eyeglass mask is empty: nothing to print")
    rows, cols = torch.nonzero(hard.any(dim=1)).flatten(), torch.nonzero(hard.any(dim=0)).flatten()
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    img = texture[..., y0:y1, x0:x1].clone()
    m = hard[y0:y1, x0:x1][None, None]
    img = torch.where(m, img, torch.ones_like(img))
    t = chip_template(size, padding)
    eye_px = float((t[1] - t[0]).norm())
    return FrameCrop(img, m, (x1 - x0) * interpupillary_mm / eye_px, (x0, y0, x1, y1))


# ------------------------------------------------------------------------------------------------ wearer
def align_wearer(images: Tensor | list[Tensor], detector: Any = None, size: int = DEFAULT_SIZE,
                 padding: float = DEFAULT_PADDING) -> tuple[Tensor, list[Any]]:
    """Detect and align the wearer in each photo (each 1 x 3 x H x W): chips (N, 3, S, S) and the
    ``AlignedFace`` records (landmarks, matrix) for placing the frame back into the photos."""
    from testbed.faces import detect_and_align

    items = list(images) if isinstance(images, (list, tuple)) else [images[i : i + 1] for i in range(len(images))]
    if not items:
        raise ImageError("align_wearer needs at least one photo of the wearer")
    faces = [detect_and_align(x, detector, size, padding) for x in items]
    chips = torch.cat([f.crop.detach() for f in faces])
    return chips, faces


@torch.no_grad()
def enroll(model: nn.Module, chips: Tensor, *, views: int = 0, eot: Any = "sharif",
           generator: torch.Generator | None = None) -> Tensor:
    """The enrolled descriptor (128,): the mean descriptor of the clean chips, and of ``views`` clean
    augmented views of them (EOT draws from ``generator``) when ``views > 0``."""
    chips = _check_chips(chips, "chips")
    dev = _device_of(model, chips.device)
    chips = chips.to(dev)
    descs = [model(chips)]
    if views > 0:
        if generator is None:
            raise ConfigError("enroll with views > 0 needs an explicit torch.Generator")
        t = EOTTransform(resolve_config(eot))
        idx = torch.randint(0, len(chips), (views,), generator=generator)
        params = t.sample(views, generator, dev)
        descs.append(model(t.apply(chips[idx.to(dev)], params)))
    return torch.cat(descs).mean(dim=0)


# ------------------------------------------------------------------------------------------------ result
@dataclass
class EyeglassResult:
    """What ``EyeglassFrame`` returns (tensors on CPU, detached). E = number of fresh evaluation draws."""

    mode: str
    texture: Tensor  # (1, 3, S, S) frame colours in chip space (meaningful where mask > 0)
    mask: Tensor  # (1, 1, S, S) in [0, 1]
    adversarial: Tensor  # (N, 3, S, S) the wearer's chips wearing the frame (untransformed)
    loss_history: list[float]
    success: Tensor  # (E,) bool, the optimised frame on the fresh draws
    initial_success: Tensor  # (E,) the unoptimised (solid) frame on the same draws
    clean_success: Tensor  # (E,) no frame at all on the same draws
    distances: dict[str, Tensor]  # "enrolled", "target" (impersonation), and "initial_*", "clean_*": (E,)
    seed: int
    eval_seed: int
    config: dict[str, Any]
    train_draws: list[dict[str, Any]] = field(default_factory=list)
    eval_draws: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return _rate(self.success)

    @property
    def initial_success_rate(self) -> float:
        return _rate(self.initial_success)

    @property
    def clean_success_rate(self) -> float:
        return _rate(self.clean_success)

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "success_rate": self.success_rate,
            "initial_success_rate": self.initial_success_rate,
            "clean_success_rate": self.clean_success_rate,
            "eval_samples": int(self.success.numel()),
            "seed": self.seed,
            "eval_seed": self.eval_seed,
            "mask_fraction": float(self.mask.mean()),
            "final_loss": self.loss_history[-1] if self.loss_history else None,
            "steps": len(self.loss_history),
        }
        for k, v in self.distances.items():
            if v.numel():
                out[f"distance_{k}_mean"] = float(v.mean())
                out[f"distance_{k}_min"] = float(v.min())
                out[f"distance_{k}_max"] = float(v.max())
        out.update({k: v for k, v in self.extras.items() if isinstance(v, (int, float, str, bool, list, type(None)))})
        return out


def _rate(x: Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


# ------------------------------------------------------------------------------------------------ attack
_check_pos_int, _check_nonneg = check_int, check_nonneg


def _check_chips(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ImageError(f"{name} must be a float N x 3 x S x S batch of face chips, got {getattr(x, 'shape', type(x))}")
    if x.shape[-1] != x.shape[-2]:
        raise ImageError(f"{name} must be square face chips, got {tuple(x.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ImageError(f"{name} must lie in [0, 1]")
    return x.detach().float()


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else fallback


def _descriptor(d: Tensor | None, name: str, device: torch.device) -> Tensor | None:
    if d is None:
        return None
    if not isinstance(d, Tensor) or d.numel() != 128 or not d.is_floating_point():
        raise ConfigError(f"{name} must be a 128-d float descriptor, got {getattr(d, 'shape', type(d))}")
    return d.detach().reshape(128).float().to(device)


def _logit(p: Tensor) -> Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


@dataclass(frozen=True, kw_only=True)
class EyeglassFrame(RunHyperParams):
    """Sharif et al.'s adversarial eyeglass frame under EOT (see the module docstring).

    Hyper-parameters only; call with the face descriptor, the wearer's aligned chips, the enrolled descriptor and
    (impersonation) the target descriptor.
    """

    name: ClassVar[str] = "eyeglass"

    mode: Mode = "dodge"
    steps: int = 300
    batch_size: int = 16  # EOT draws per step, one forward pass
    lr: float = 0.05  # Adam on the colour logits
    loss: Literal["hinge", "distance"] = "hinge"
    margin: float = 0.15
    threshold: float = MATCH_THRESHOLD
    lambda_own: float = 1.0  # impersonation: weight of the hinge "closer to the target than to oneself"
    lambda_tv: float = 0.0
    lambda_nps: float = 0.0
    tv_kind: Literal["l1", "l2", "isotropic"] = "l1"
    nps_kind: Literal["min", "product"] = "min"
    palette: str | None = None  # palette JSON; None: the default palette
    init: Literal["brown", "gray", "black", "uniform", "random"] = "brown"
    eot: Any = None  # EOTConfig, preset name or dict; None: "sharif"
    geometry: Any = None  # FrameGeometry or dict; None: the default frame
    eval_samples: int = 1000
    eval_batch_size: int = 100
    seed: int = 0
    eval_seed: int | None = None  # default seed + 1_000_003
    checkpoint_every: int = 25
    keep_draws: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "eot", resolve_config(self.eot if self.eot is not None else "sharif"))
        object.__setattr__(self, "geometry", _resolve_geometry(self.geometry))
        self.validate()

    def validate(self) -> None:
        if self.mode not in ("dodge", "impersonate"):
            raise ConfigError(f"mode must be 'dodge' or 'impersonate', got {self.mode!r}")
        _check_pos_int("steps", self.steps, 0)
        _check_pos_int("batch_size", self.batch_size)
        _check_nonneg("lr", self.lr)
        if self.loss not in ("hinge", "distance"):
            raise ConfigError(f"loss must be 'hinge' or 'distance', got {self.loss!r}")
        for n in ("margin", "threshold", "lambda_own", "lambda_tv", "lambda_nps"):
            _check_nonneg(n, getattr(self, n))
        if self.tv_kind not in ("l1", "l2", "isotropic"):
            raise ConfigError(f"tv_kind must be l1, l2 or isotropic, got {self.tv_kind!r}")
        if self.nps_kind not in ("min", "product"):
            raise ConfigError(f"nps_kind must be min or product, got {self.nps_kind!r}")
        if self.init not in (*INIT_COLOURS, "uniform", "random"):
            raise ConfigError(f"init must be one of {(*INIT_COLOURS, 'uniform', 'random')}, got {self.init!r}")
        _check_pos_int("eval_samples", self.eval_samples, 0)
        _check_pos_int("eval_batch_size", self.eval_batch_size)
        self.validate_run()
        if self.palette is not None:
            resolve_palette(self.palette)

    # -- pieces
    def initial_texture(self, size: int = DEFAULT_SIZE) -> Tensor:
        """The starting colours (1, 3, size, size), from ``init`` (and ``seed`` for the random ones)."""
        g = torch.Generator().manual_seed(self.seed + 7)
        if self.init in INIT_COLOURS:
            return torch.tensor(INIT_COLOURS[self.init]).view(1, 3, 1, 1).expand(1, 3, size, size).clone()
        if self.init == "uniform":  # one random solid colour
            return torch.rand(1, 3, 1, 1, generator=g).expand(1, 3, size, size).clone()
        return torch.rand(1, 3, size, size, generator=g)

    def sample(self, n: int, n_chips: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, EOTParams]:
        """Draw ``n`` (chip index, EOT parameters) pairs."""
        idx = torch.randint(0, n_chips, (n,), generator=generator)
        return idx.to(device), EOTTransform(self.eot).sample(n, generator, device)

    def render(self, texture: Tensor, mask: Tensor | None, chips: Tensor, idx: Tensor, params: EOTParams) -> Tensor:
        """Composite the (printed) frame onto the drawn chips and photograph them through the EOT draw.
        ``mask=None`` renders the chips without a frame."""
        t = EOTTransform(self.eot)
        x = chips[idx]
        if mask is not None:
            printed = t.apply_print(texture.expand(len(idx), -1, -1, -1), params)
            x = mask * printed + (1 - mask) * x
        return t.apply(x, params, print_stage=False)

    def objective(self, emb: Tensor, enrolled: Tensor, target: Tensor | None) -> Tensor:
        """Per-sample attack loss (B,) from descriptors (B, 128)."""
        d_e = face_distance(emb, enrolled)
        if self.mode == "dodge":
            if self.loss == "hinge":
                return F.relu(self.threshold + self.margin - d_e)
            return -d_e
        assert target is not None
        d_t = face_distance(emb, target)
        own = self.lambda_own * F.relu(d_t - d_e + self.margin)
        if self.loss == "hinge":
            return F.relu(d_t - (self.threshold - self.margin)) + own
        return d_t + own

    def is_success(self, d_e: Tensor, d_t: Tensor | None) -> Tensor:
        if self.mode == "dodge":
            return d_e > self.threshold
        assert d_t is not None
        return (d_t < self.threshold) & (d_t < d_e)

    def _regularise(self, colours: Tensor, mask: Tensor, palette: Tensor) -> Tensor:
        out = colours.new_zeros(())
        if self.lambda_tv > 0:
            out = out + self.lambda_tv * total_variation(colours, mask=mask, kind=self.tv_kind)
        if self.lambda_nps > 0:
            out = out + self.lambda_nps * nps(colours, palette, mask=mask, kind=self.nps_kind)
        return out

    # -- the attack
    def __call__(
        self,
        model: nn.Module,
        chips: Tensor,
        enrolled: Tensor,
        *,
        target: Tensor | None = None,
        run_dir: str | Path | None = None,
        run_extra: dict[str, Any] | None = None,
        progress: bool = False,
        callback: Callable[[int, float], None] | None = None,
    ) -> EyeglassResult:
        """Optimise the frame for the wearer's aligned ``chips`` (N, 3, S, S), against the ``enrolled``
        descriptor (128,) and, for impersonation, the ``target`` descriptor (128,)."""
        chips = _check_chips(chips, "chips")
        device = _device_of(model, chips.device)
        chips = chips.to(device)
        enrolled_d = _descriptor(enrolled, "enrolled", device)
        target_d = _descriptor(target, "target", device)
        if self.mode == "impersonate" and target_d is None:
            raise ConfigError("impersonation needs target= (the descriptor of the face to impersonate)")
        if self.mode == "dodge" and target_d is not None:
            raise ConfigError("dodging takes no target=; use mode='impersonate' to impersonate someone")
        size = int(chips.shape[-1])
        mask = frame_mask(size, geometry=self.geometry).to(device)
        palette = resolve_palette(self.palette).to(device)
        w0 = _logit(self.initial_texture(size)).to(device)

        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed)  # CPU generator: same draws on any device
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        history: list[float] = []
        draws: list[dict[str, Any]] = []
        start, run = 0, None
        if run_dir is not None:
            extra = {"chips_shape": list(chips.shape), "mask_fraction": float(mask.mean()), **(run_extra or {})}
            run = RunDir(run_dir, {**self.config(), **extra}, ignore=("checkpoint_every",))
            ckpt = run.latest_checkpoint()
            if ckpt is not None:
                with torch.no_grad():
                    w.copy_(ckpt["w"].to(device))
                opt.load_state_dict(ckpt["optimizer"])
                gen.set_state(ckpt["generator"])
                history, draws, start = list(ckpt["history"]), list(ckpt.get("draws", [])), int(ckpt["step"])
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=self.steps, initial=start, desc=f"eyeglass-{self.mode}", unit="step")
        for step in range(start, self.steps):
            idx, params = self.sample(self.batch_size, len(chips), gen, device)
            colours = torch.sigmoid(w)
            emb = model(self.render(colours, mask, chips, idx, params))
            loss = self.objective(emb, enrolled_d, target_d).mean() + self._regularise(colours, mask, palette)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            if self.keep_draws:
                draws.append({"chip_index": idx.cpu(), "eot": {k: v.cpu() for k, v in params.to_dict().items()}})
            done = step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.4f}")
            if run is not None and (done % self.checkpoint_every == 0 or done == self.steps):
                run.save_checkpoint({"w": w.detach().cpu(), "optimizer": opt.state_dict(),
                                     "generator": gen.get_state(), "history": history, "draws": draws}, done)
            if callback is not None:
                callback(done, history[-1])
        if bar is not None:
            bar.close()
        optimise_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        texture = torch.sigmoid(w.detach())
        ev = self.evaluate(model, texture, chips, enrolled_d, target_d, mask=mask, baselines=torch.sigmoid(w0))
        extras = {"optimise_seconds": optimise_s, "eval_seconds": time.perf_counter() - t1,
                  "clean_distance_enrolled": float(face_distance(model_eval(model, chips), enrolled_d).mean())}
        if target_d is not None:
            extras["clean_distance_target"] = float(face_distance(model_eval(model, chips), target_d).mean())
        adv = (mask * texture + (1 - mask) * chips).detach()
        result = EyeglassResult(
            mode=self.mode, texture=texture.cpu(), mask=mask.cpu(), adversarial=adv.cpu(), loss_history=history,
            success=ev["success"], initial_success=ev["initial_success"], clean_success=ev["clean_success"],
            distances=ev["distances"], seed=self.seed, eval_seed=self.resolved_eval_seed, config=self.config(),
            train_draws=draws, eval_draws=ev["draws"], extras=extras,
        )
        if run is not None:
            save_result(run, result)
        return result

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        texture: Tensor,
        chips: Tensor,
        enrolled: Tensor,
        target: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        baselines: Tensor | None = None,
    ) -> dict[str, Any]:
        """Score a frame texture on ``eval_samples`` FRESH draws (generator seeded ``eval_seed``).

        Returns success (E,), distances {"enrolled", "target"} and, with ``baselines`` (an initial texture), the
        same for that texture ("initial_*") and for the chips without a frame ("clean_*") on the same draws.
        """
        chips = _check_chips(chips, "chips")
        device = _device_of(model, chips.device)
        chips, texture = chips.to(device), texture.to(device)
        enrolled_d = _descriptor(enrolled, "enrolled", device)
        target_d = _descriptor(target, "target", device)
        if mask is None:
            mask = frame_mask(int(chips.shape[-1]), geometry=self.geometry)
        mask = mask.to(device)
        gen = torch.Generator().manual_seed(self.resolved_eval_seed)
        variants: dict[str, tuple[Tensor, Tensor | None]] = {"": (texture, mask)}
        if baselines is not None:
            variants["initial_"] = (baselines.to(device), mask)
            variants["clean_"] = (texture, None)
        dist: dict[str, list[Tensor]] = {}
        draws: list[dict[str, Any]] = []
        left = self.eval_samples
        while left > 0:
            n = min(self.eval_batch_size, left)
            idx, params = self.sample(n, len(chips), gen, device)
            draws.append({"chip_index": idx.cpu(), "eot": {k: v.cpu() for k, v in params.to_dict().items()}})
            for prefix, (tex, m) in variants.items():
                emb = model(self.render(tex, m, chips, idx, params))
                dist.setdefault(prefix + "enrolled", []).append(face_distance(emb, enrolled_d).cpu())
                if target_d is not None:
                    dist.setdefault(prefix + "target", []).append(face_distance(emb, target_d).cpu())
            left -= n
        distances = {k: torch.cat(v) for k, v in dist.items()}
        out: dict[str, Any] = {"distances": distances, "draws": draws}
        for prefix, key in (("", "success"), ("initial_", "initial_success"), ("clean_", "clean_success")):
            if prefix + "enrolled" in distances:
                out[key] = self.is_success(distances[prefix + "enrolled"], distances.get(prefix + "target"))
            else:
                out[key] = torch.zeros(0, dtype=torch.bool)
        return out


@torch.no_grad()
def model_eval(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


def save_result(run: RunDir, result: EyeglassResult) -> None:
    """Write the frame (lossless), the mask, the chips wearing it, the draws and the metrics."""
    run.save_image("texture", result.texture)
    run.save_image("frame", result.texture * result.mask + (1 - result.mask))  # white outside the frame
    run.save_image("mask", result.mask)
    for i in range(len(result.adversarial)):
        run.save_image(f"adversarial_chip_{i}", result.adversarial[i : i + 1])
    run.save_tensors("eval_draws", result.eval_draws)
    run.save_tensors("eval_distances", {"distances": result.distances, "success": result.success,
                                        "initial_success": result.initial_success,
                                        "clean_success": result.clean_success})
    if result.train_draws:
        run.save_tensors("train_draws", result.train_draws)
    run.save_metrics(result.metrics())
