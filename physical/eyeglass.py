"""Adversarial eyeglass frames (Sharif, Bhagavatula, Bauer & Reiter 2016, "Accessorize to a crime").

The frame lives in the canonical 150x150 face chip (``worlds.faces``: dlib-style alignment from the 5 MTCNN
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
``EyeglassFrame`` is a configuration of the shared physical-attack loop (``physical.loop.PhysicalAttack``, the
patch's and the sticker's): it supplies the draw (chip index + EOT), the render (frame on the chip), the objective
and the success test; the loop runs Adam on the logits of the colours (sigmoid parametrisation; colours
initialised to a solid brown like a plain frame) with the speed settings (``precision``, ``channels_last``,
``compile``, ``eot_batch``), checkpoint / resume and the evaluation. Success is measured on ``eval_samples`` FRESH transformations drawn with a different generator
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physical.eot import EOTParams, EOTTransform, resolve_config
from physical.hyper import check_known_keys, check_nonneg
from physical.loop import (AttackContext, LoopOutcome, PhysicalAttack, PhysicalResult, RunOptions, device_of,
                           logit)
from testbed.runs import RunDir
from testbed.errors import ConfigError, ImageError
from testbed.palette import resolve_palette
from worlds.faces import (
    DEFAULT_PADDING,
    DEFAULT_SIZE,
    chip_template,
    image_to_chip_matrix,
    transform_points,
)
from testbed.models.face_descriptor import MATCH_THRESHOLD, face_distance

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only the annotations need it
    from typing import Unpack

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


def fitted_frame_mask(height: int, width: int, geometry: FrameGeometry | dict[str, Any] | None = None,
                      supersample: int = 4) -> Tensor:
    """The frame mask (1, 1, H, W) scaled to fill an H x W image (temple tip to temple tip across the width, or
    bridge top to rim bottom down the height, whichever is tighter), centred: what ``print_crop`` gives for a
    chip texture, and the default cut mask of ``printouts.sheets.glasses_sheet``."""
    g = _resolve_geometry(geometry)
    half_width = 0.5 + g.lens_width + g.temple_length  # in units of D, eye line midpoint to a temple tip
    top = min(g.lens_drop - g.lens_height, -g.bridge_raise - g.thickness / 2)
    bottom = max(g.lens_drop + g.lens_height, -g.bridge_raise + g.thickness / 2)
    d = min(width / (2 * half_width), height / (bottom - top))
    cy = height / 2 - d * (top + bottom) / 2
    return frame_mask_from_eyes((width / 2 - d / 2, cy), (width / 2 + d / 2, cy), height, width, g, supersample)


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
    (B x 5 x 2 or 5 x 2, image pixels): the inverse of ``worlds.faces.align_face``; zeros outside the chip."""
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
    from worlds.faces import detect_and_align

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
    dev = device_of(model, chips.device)
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


# ------------------------------------------------------------------------------------------------ attack
def _check_chips(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ImageError(f"{name} must be a float N x 3 x S x S batch of face chips, got {getattr(x, 'shape', type(x))}")
    if x.shape[-1] != x.shape[-2]:
        raise ImageError(f"{name} must be square face chips, got {tuple(x.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ImageError(f"{name} must lie in [0, 1]")
    return x.detach().float()


def _descriptor(d: Tensor | None, name: str, device: torch.device) -> Tensor | None:
    if d is None:
        return None
    if not isinstance(d, Tensor) or d.numel() != 128 or not d.is_floating_point():
        raise ConfigError(f"{name} must be a 128-d float descriptor, got {getattr(d, 'shape', type(d))}")
    return d.detach().reshape(128).float().to(device)


@dataclass
class FrameDraw:
    """One batch of eyeglass draws: which of the wearer's chips, and the EOT parameters."""

    chip_index: Tensor  # (B,) int64
    eot: EOTParams

    def to_dict(self) -> dict[str, Any]:
        return {"chip_index": self.chip_index.cpu(), "eot": self.eot.to("cpu").to_dict()}


@dataclass(kw_only=True)
class FrameContext(AttackContext):
    """One call of ``EyeglassFrame``: the wearer's chips, the enrolled and (impersonation) target descriptors."""

    chips: Tensor  # (N, 3, S, S) on ``device``
    enrolled: Tensor  # (128,)
    target: Tensor | None = None  # (128,)


def _worn(transform: EOTTransform, texture: Tensor, mask: Tensor | None, chips: Tensor, idx: Tensor,
          params: EOTParams) -> Tensor:
    """The drawn chips wearing the printed frame (``mask=None``: no frame), photographed through the draw."""
    x = chips[idx]
    if mask is not None:
        printed = transform.apply_print(texture.expand(len(idx), -1, -1, -1), params)
        x = mask * printed + (1 - mask) * x
    return transform.apply(x, params, print_stage=False)


@dataclass(frozen=True, kw_only=True)
class EyeglassFrame(PhysicalAttack):
    """Sharif et al.'s adversarial eyeglass frame under EOT (see the module docstring): a configuration of the
    shared physical-attack loop (``physical.loop``), so it has its speed settings (``channels_last``,
    ``precision``, ``compile``, ``eot_batch``), checkpoint / resume and fresh-draw evaluation.

    Hyper-parameters only; call with the face descriptor, the wearer's aligned chips, the enrolled descriptor and
    (impersonation) the target descriptor.
    """

    name: ClassVar[str] = "eyeglass"
    default_eot: ClassVar[str] = "sharif"
    # tv_kind was always in the eyeglass's config: kept there at every value (run directories resume)
    CONFIG_OMIT_DEFAULTS: ClassVar[dict[str, Any]] = {"precision": "fp32", "eot_batch": None}

    mode: Mode = "dodge"
    steps: int = 300
    lr: float = 0.05  # Adam on the colour logits
    loss: Literal["hinge", "distance"] = "hinge"
    margin: float = 0.15
    threshold: float = MATCH_THRESHOLD
    lambda_own: float = 1.0  # impersonation: weight of the hinge "closer to the target than to oneself"
    init: Literal["brown", "gray", "black", "uniform", "random"] = "brown"
    geometry: Any = None  # FrameGeometry or dict; None: the default frame
    checkpoint_every: int = 25
    # NCHW by default (the eyeglass's layout before the shared loop, so the documented runs keep their
    # arithmetic): NHWC gave no gain for the face descriptor on the 2-core CPU (bench: 2.75 vs 2.78 s per step of
    # 16 chips, docs/performance.md); channels_last=True is there for machines where NHWC is faster
    channels_last: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "geometry", _resolve_geometry(self.geometry))
        super().__post_init__()

    def validate(self) -> None:
        if self.mode not in ("dodge", "impersonate"):
            raise ConfigError(f"mode must be 'dodge' or 'impersonate', got {self.mode!r}")
        if self.loss not in ("hinge", "distance"):
            raise ConfigError(f"loss must be 'hinge' or 'distance', got {self.loss!r}")
        for n in ("margin", "threshold", "lambda_own"):
            check_nonneg(n, getattr(self, n))
        if self.init not in (*INIT_COLOURS, "uniform", "random"):
            raise ConfigError(f"init must be one of {(*INIT_COLOURS, 'uniform', 'random')}, got {self.init!r}")
        super().validate()

    # -- pieces (public)
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
        return self._draw(EOTTransform(self.eot), n, n_chips, generator, device)

    @staticmethod
    def _draw(transform: EOTTransform, n: int, n_chips: int, generator: torch.Generator,
              device: torch.device) -> tuple[Tensor, EOTParams]:
        idx = torch.randint(0, n_chips, (n,), generator=generator)
        return idx.to(device), transform.sample(n, generator, device)

    def render(self, texture: Tensor, mask: Tensor | None, chips: Tensor, idx: Tensor, params: EOTParams) -> Tensor:
        """Composite the (printed) frame onto the drawn chips and photograph them through the EOT draw.
        ``mask=None`` renders the chips without a frame."""
        return _worn(EOTTransform(self.eot), texture, mask, chips, idx, params)

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

    def context(self, model: nn.Module, chips: Tensor, enrolled: Tensor, target: Tensor | None = None, *,
                mask: Tensor | None = None) -> FrameContext:
        """The per-call context: chips, descriptors, the frame mask (default ``frame_mask``), EOT and palette, on
        the model's device (arguments checked; ConfigError / ImageError naming the bad one)."""
        chips = _check_chips(chips, "chips")
        device = device_of(model, chips.device)
        enrolled_d = _descriptor(enrolled, "enrolled", device)
        target_d = _descriptor(target, "target", device)
        if mask is None:
            mask = frame_mask(int(chips.shape[-1]), geometry=self.geometry)
        return FrameContext(model=model, device=device, mask=mask.float().to(device), transform=EOTTransform(self.eot),
                            palette=resolve_palette(self.palette).to(device), targeted=self.mode == "impersonate",
                            chips=chips.to(device), enrolled=enrolled_d, target=target_d)

    # -- the loop's hooks
    def _sample(self, ctx: FrameContext, n: int, generator: torch.Generator) -> FrameDraw:
        idx, params = self._draw(ctx.transform, n, len(ctx.chips), generator, ctx.device)
        return FrameDraw(idx, params)

    def _render(self, ctx: FrameContext, colours: Tensor | None, draw: FrameDraw) -> Tensor:
        return _worn(ctx.transform, colours, None if colours is None else ctx.mask, ctx.chips, draw.chip_index,
                     draw.eot)

    def _attack_loss(self, ctx: FrameContext, outputs: Tensor, goal: Tensor | None) -> Tensor:
        return self.objective(outputs, ctx.enrolled, ctx.target).mean()

    def _score(self, ctx: FrameContext, outputs: Tensor, goal: Tensor | None) -> dict[str, Tensor]:
        d_e = face_distance(outputs, ctx.enrolled)
        out = {"enrolled": d_e}
        d_t = None
        if ctx.target is not None:
            d_t = out["target"] = face_distance(outputs, ctx.target)
        out["success"] = self.is_success(d_e, d_t)
        return out

    def _result(self, ctx: FrameContext, run: LoopOutcome) -> PhysicalResult:
        texture = run.colours
        adversarial = ctx.mask * texture + (1 - ctx.mask) * ctx.chips
        clean = model_eval(ctx.model, ctx.chips)  # the wearer's chips as they are, no frame, no transformation
        extras: dict[str, Any] = {"mode": self.mode, "mask_fraction": float(ctx.mask.mean()),
                                  "clean_distance_enrolled": float(face_distance(clean, ctx.enrolled).mean())}
        if ctx.target is not None:
            extras["clean_distance_target"] = float(face_distance(clean, ctx.target).mean())
        return self._physical_result(ctx, run, perturbation=texture, adversarial=adversarial, extras=extras)

    def _save(self, run: RunDir, result: PhysicalResult) -> None:
        save_result(run, result)

    # -- the attack
    def __call__(
        self,
        model: nn.Module,
        chips: Tensor,
        enrolled: Tensor,
        *,
        target: Tensor | None = None,
        **run: Unpack[RunOptions],
    ) -> PhysicalResult:
        """Optimise the frame for the wearer's aligned ``chips`` (N, 3, S, S), against the ``enrolled``
        descriptor (128,) and, for impersonation, the ``target`` descriptor (128,)."""
        ctx = self.context(model, chips, enrolled, target)
        if self.mode == "impersonate" and ctx.target is None:
            raise ConfigError("impersonation needs target= (the descriptor of the face to impersonate)")
        if self.mode == "dodge" and ctx.target is not None:
            raise ConfigError("dodging takes no target=; use mode='impersonate' to impersonate someone")
        w0 = logit(self.initial_texture(int(ctx.chips.shape[-1]))).to(ctx.device)
        extra = {"chips_shape": list(ctx.chips.shape), "mask_fraction": float(ctx.mask.mean()),
                 **(run.pop("run_extra", None) or {})}
        return self._attack(ctx, w0, run_extra=extra, score_clean=True, **run)

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
        ctx = self.context(model, chips, enrolled, target, mask=mask)
        variants: dict[str, Tensor | None] = {"final": texture.to(ctx.device)}
        if baselines is not None:
            variants["initial"] = baselines.to(ctx.device)
            variants["clean"] = None
        scores, draws = self._evaluate(ctx, variants)
        distances: dict[str, Tensor] = {}
        out: dict[str, Any] = {"distances": distances, "draws": draws}
        for variant, prefix in (("final", ""), ("initial", "initial_"), ("clean", "clean_")):
            s = scores.get(variant, {})
            distances.update({prefix + k: v for k, v in s.items() if k != "success"})
            out[prefix + "success" if prefix else "success"] = s.get("success", torch.zeros(0, dtype=torch.bool))
        return out


@torch.no_grad()
def model_eval(model: nn.Module, x: Tensor) -> Tensor:
    return model(x)


def save_result(run: RunDir, result: PhysicalResult) -> None:
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
