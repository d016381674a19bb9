"""Universal physical perturbations optimised over the print-photo distribution (EOT).

* ``UniversalPatch`` — Brown et al. 2017's adversarial patch: one patch (any mask shape: circle, square, an image
  mask) pasted at a random place, size and rotation into a set of scene photos, then photographed through the
  EOT distribution; targeted or untargeted; Adam on a sigmoid parametrisation; loss = classification
  + lambda_nps * NPS + lambda_tv * TV.
* ``SignSticker`` — Eykholt et al. 2018's RP2: the perturbation is confined to a mask on a sign image
  (rectangular stickers, graffiti-like strokes, a user mask PNG); loss = classification + lambda_norm * ||M delta||_p
  + lambda_nps * NPS + lambda_tv * TV, over the EOT distribution (default preset "rp2"). The sign may be given at
  print resolution (``input_size`` = the model's input: each draw is warped at print resolution and resampled
  down, as a camera would); ``alpha=`` measures the sticker budget on the sign's own area (``max_mask_fraction``);
  ``saliency`` + ``saliency_mask`` place sticker cells where the loss is most sensitive (RP2's mask step).

Both are configurations of the one physical-attack loop (``physical.loop.PhysicalAttack``): frozen dataclasses of
hyper-parameters whose hooks say how the perturbation enters the scene (``_render``), which class each draw aims
at (``_goal``) and how a draw is scored; the model and the data come at call time in an explicit per-call context
(``PatchContext``, ``StickerContext``). The loop owns the speed settings (``precision``, ``channels_last``,
``compile``, ``eot_batch``; docs/performance.md), checkpoint / resume through ``run_dir=``, progress, and the
success measured on ``eval_samples`` FRESH draws from a different generator (seeded ``eval_seed``), never the
optimisation's. Both return a ``physical.loop.PhysicalResult``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physical.eot import EOTParams, EOTTransform, ResizeStage, warp_pixels
from physical.hyper import check_int, check_known_keys, check_nonneg
from physical.loop import (  # noqa: F401 - PhysicalResult is re-exported: the attacks' result type
    AttackContext, LoopOutcome, PhysicalAttack, PhysicalResult, RunOptions, device_of, logit, replace_context,
)
from physical.losses import LOSS_KINDS, classification_loss, is_adversarial
from physical.regularizers import lp_norm
from physical.speed import prepared_model
from testbed.runs import RunDir
from testbed.errors import ConfigError, ImageError
from testbed.palette import resolve_palette

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only the annotations need it
    from typing import Unpack

# ------------------------------------------------------------------------------------------------ masks


def circle_mask(size: int) -> Tensor:
    """(1, 1, size, size) disc, anti-aliased at the edge (values in [0, 1])."""
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    d = torch.sqrt(ax[:, None] ** 2 + ax[None, :] ** 2)
    return (size / 2 - d + 0.5).clamp(0, 1)[None, None]


def square_mask(size: int) -> Tensor:
    return torch.ones(1, 1, size, size)


def load_mask(path: str | Path, size: tuple[int, int] | int | None = None) -> Tensor:
    """A mask PNG as (1, 1, H, W) in [0, 1]: the alpha channel if there is one, else the grey level."""
    from testbed.inputs import decode_checked, open_image_checked

    p = Path(path)
    with open_image_checked(p, what="mask file") as img:  # missing/special/empty/oversized: ImageError
        decode_checked(img, what="mask file", source=str(p))
        arr = img.getchannel("A") if "A" in img.getbands() else img.convert("L")
        m = torch.frombuffer(bytearray(arr.tobytes()), dtype=torch.uint8).view(arr.size[1], arr.size[0])
    m = m.float().div(255.0)[None, None]
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        m = F.interpolate(m, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    if float(m.max()) <= 0:
        raise ImageError(f"mask file {p} is empty (all zero)")
    return m


def make_mask(shape: str, size: int) -> Tensor:
    """A patch mask: 'circle', 'square', or the path of a mask PNG (resized to ``size``)."""
    if shape == "circle":
        return circle_mask(size)
    if shape == "square":
        return square_mask(size)
    from testbed.inputs import IMAGE_EXTENSIONS

    if Path(shape).suffix.lower() in IMAGE_EXTENSIONS:
        return load_mask(shape, size)
    raise ConfigError(f"patch shape must be 'circle', 'square' or a mask image path, got {shape!r}")


def rectangles_mask(height: int, width: int, boxes: list[tuple[float, float, float, float]]) -> Tensor:
    """Rectangular stickers: boxes as (x0, y0, x1, y1) fractions of the sign; (1, 1, H, W)."""
    m = torch.zeros(1, 1, height, width)
    for box in boxes:
        if len(box) != 4:
            raise ConfigError(f"sticker box must be (x0, y0, x1, y1) fractions, got {box!r}")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ConfigError(f"sticker box must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {box!r}")
        m[..., round(y0 * height) : max(round(y1 * height), round(y0 * height) + 1),
          round(x0 * width) : max(round(x1 * width), round(x0 * width) + 1)] = 1.0
    return m


def rp2_rectangles(height: int, width: int) -> Tensor:
    """Two horizontal bars above and below the sign's centre, like RP2's "subtle" black-and-white stickers
    (about 8% of the sign's bounding square)."""
    return rectangles_mask(height, width, [(0.25, 0.28, 0.75, 0.36), (0.25, 0.64, 0.75, 0.72)])


def mask_fraction_of_sign(mask: Tensor, alpha: Tensor | None = None) -> float:
    """The fraction of the sign's own area that the sticker mask covers: ``sum(mask * alpha) / sum(alpha)``
    (``alpha`` = the sign's shape mask, (1, 1, H, W)); without ``alpha``, the fraction of the whole image."""
    if alpha is None:
        return float(mask.float().mean())
    if alpha.shape != mask.shape:
        raise ConfigError(f"sign alpha must have the mask's shape {tuple(mask.shape)}, got {tuple(alpha.shape)}")
    area = float(alpha.sum())
    if area <= 0:
        raise ConfigError("sign alpha is empty (all zero): the sign has no area to measure the sticker against")
    return float((mask * alpha).sum()) / area


def rp2_sign_rectangles(
    alpha: Tensor, budget: float = 0.095, *, x_range: tuple[float, float] = (0.18, 0.82),
    legend: tuple[float, float] = (0.385, 0.615), gap: float = 0.02,
) -> Tensor:
    """RP2's two rectangular stickers, one above and one below the sign's legend (the stop sign's "STOP" spans
    ``legend`` = (y0, y1) of the canvas), sized so that they cover at most ``budget`` of the sign's own area
    (``alpha``, (1, 1, H, W)). The bars are ``x_range`` wide and as tall as the budget allows; (1, 1, H, W),
    already multiplied by ``alpha`` (stickers stay on the sign)."""
    if alpha.ndim != 4 or alpha.shape[:2] != (1, 1):
        raise ConfigError(f"sign alpha must have shape (1, 1, H, W), got {tuple(alpha.shape)}")
    if not 0 < budget <= 1:
        raise ConfigError(f"sticker budget must be a fraction in (0, 1], got {budget!r}")
    h, w = alpha.shape[-2:]
    width = x_range[1] - x_range[0]
    height = budget * float(alpha.mean()) / (2 * width)  # first guess, fraction of the canvas height
    y_top, y_bot = legend[0] - gap, legend[1] + gap
    best = None
    for k in range(round(height * h) + 2, 0, -1):  # the tallest bars (whole pixels) within the budget
        bh = k / h
        if y_top - bh < 0 or y_bot + bh > 1:
            continue
        m = rectangles_mask(h, w, [(x_range[0], y_top - bh, x_range[1], y_top), (x_range[0], y_bot, x_range[1], y_bot + bh)])
        m = m * alpha
        if mask_fraction_of_sign(m, alpha) <= budget:
            best = m
            break
    if best is None:
        raise ConfigError(f"no rectangle sticker of at least one pixel fits a budget of {budget:.3f} of the sign "
                          f"at {h}x{w} pixels; render the sign larger")
    return best


def saliency_mask(
    saliency: Tensor, alpha: Tensor, budget: float = 0.095, *, cell: int = 8, inside: float = 0.999,
) -> Tensor:
    """RP2's mask placement: rectangular sticker cells where the attack loss is most sensitive. ``saliency``
    (1, 1, H, W) is a non-negative map (e.g. ``SignSticker.saliency``: |d loss / d sign| summed over EOT
    draws); the sign is cut into ``cell`` x ``cell`` pixel squares, only squares lying on the sign (mean alpha
    >= ``inside``) are eligible, and squares are taken in decreasing mean saliency while the mask stays within
    ``budget`` of the sign's own area. Returns (1, 1, H, W), multiplied by ``alpha``."""
    if saliency.ndim != 4 or saliency.shape != alpha.shape or saliency.shape[:2] != (1, 1):
        raise ConfigError(f"saliency and alpha must both be (1, 1, H, W), got {tuple(saliency.shape)} and "
                          f"{tuple(alpha.shape)}")
    _check_pos_int("cell", cell)
    if not 0 < budget <= 1:
        raise ConfigError(f"sticker budget must be a fraction in (0, 1], got {budget!r}")
    h, w = alpha.shape[-2:]
    if h % cell or w % cell:
        raise ConfigError(f"sign size {h}x{w} must be a multiple of the cell size {cell}")
    score = F.avg_pool2d(saliency.float(), cell) * (F.avg_pool2d(alpha.float(), cell) >= inside)
    cell_area = F.avg_pool2d(alpha.float(), cell).flatten() * cell * cell
    sign_area = float(alpha.sum())
    order = score.flatten().argsort(descending=True, stable=True)
    chosen = torch.zeros(score.numel())
    used = 0.0
    for i in order.tolist():
        if float(score.flatten()[i]) <= 0:
            break
        if (used + float(cell_area[i])) / sign_area > budget:
            break
        chosen[i] = 1.0
        used += float(cell_area[i])
    if used == 0:
        raise ConfigError(f"no {cell}x{cell} sticker cell fits a budget of {budget:.3f} of the sign")
    m = F.interpolate(chosen.view_as(score), scale_factor=cell, mode="nearest") * alpha
    return m


def strokes_mask(
    height: int, width: int, generator: torch.Generator, *, strokes: int = 4, thickness: float = 0.04,
    region: tuple[float, float, float, float] = (0.2, 0.2, 0.8, 0.8),
) -> Tensor:
    """Graffiti-like strokes: ``strokes`` random line segments of the given thickness (fraction of the size)."""
    x0, y0, x1, y1 = region
    pts = torch.rand(strokes, 4, generator=generator)
    ax, ay = x0 + (x1 - x0) * pts[:, 0], y0 + (y1 - y0) * pts[:, 1]
    bx, by = x0 + (x1 - x0) * pts[:, 2], y0 + (y1 - y0) * pts[:, 3]
    yy, xx = torch.meshgrid(
        (torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width, indexing="ij"
    )
    dx, dy = (bx - ax)[:, None, None], (by - ay)[:, None, None]
    t = ((xx - ax[:, None, None]) * dx + (yy - ay[:, None, None]) * dy) / (dx * dx + dy * dy).clamp_min(1e-9)
    t = t.clamp(0, 1)
    d = torch.sqrt((xx - ax[:, None, None] - t * dx) ** 2 + (yy - ay[:, None, None] - t * dy) ** 2)
    return (d <= thickness / 2).any(dim=0).float()[None, None]


# ------------------------------------------------------------------------------------------------ placement
@dataclass(frozen=True)
class PlacementConfig:
    """Where a patch goes in a scene: the fraction of the scene its mask covers, rotation, location."""

    area: tuple[float, float] = (0.1, 0.1)  # fraction of the scene area covered by the mask, uniform
    rotation: float = 22.5  # degrees, uniform in [-rotation, rotation]
    inside: bool = True  # keep the (rotated) patch inside the scene; else its centre is anywhere

    def __post_init__(self) -> None:
        a = self.area
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            a = (float(a), float(a))
        if not (isinstance(a, (tuple, list)) and len(a) == 2 and 0 < a[0] <= a[1] <= 1):
            raise ConfigError(f"placement area must be (min, max) fractions with 0 < min <= max <= 1, got {self.area!r}")
        object.__setattr__(self, "area", (float(a[0]), float(a[1])))
        if not (isinstance(self.rotation, (int, float)) and 0 <= self.rotation <= 180):
            raise ConfigError(f"placement rotation must be in [0, 180] degrees, got {self.rotation!r}")
        object.__setattr__(self, "rotation", float(self.rotation))

    def to_dict(self) -> dict[str, Any]:
        return {"area": list(self.area), "rotation": self.rotation, "inside": self.inside}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PlacementConfig":
        check_known_keys(cls, data, "placement")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


@dataclass
class Draw:
    """One batch of draws of a physical attack: placement (patch only) and the EOT parameters."""

    eot: EOTParams
    scene_index: Tensor | None = None  # (B,) int64
    area: Tensor | None = None  # (B,)
    angle: Tensor | None = None  # (B,) degrees
    center: Tensor | None = None  # (B, 2) pixels (x, y)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"eot": self.eot.cpu().to_dict()}
        for k in ("scene_index", "area", "angle", "center"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v.cpu()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Draw":
        return cls(eot=EOTParams.from_dict(data["eot"]), **{k: v for k, v in data.items() if k != "eot"})


# ------------------------------------------------------------------------------------------------ classifier layer
_check_pos_int, _check_nonneg = check_int, check_nonneg


@dataclass(frozen=True, kw_only=True)
class _EOTAttack(PhysicalAttack):
    """The classifier layer of the shared loop (``physical.loop.PhysicalAttack``) for the patch and the sticker: a
    classification loss (CE or C&W margin) towards / away from a per-draw goal class; success = the prediction is
    the target (targeted) or not the label (untargeted)."""

    name: ClassVar[str] = "eot-attack"
    default_eot: ClassVar[str] = "athalye-eot-2d"

    #: ``tail_fraction`` at 1.0 (the plain mean) is left out of the config, so earlier run directories resume
    CONFIG_OMIT_DEFAULTS: ClassVar[dict[str, Any]] = {**PhysicalAttack.CONFIG_OMIT_DEFAULTS, "tail_fraction": 1.0}

    loss: Literal["ce", "cw"] = "ce"
    kappa: float = 0.0
    init: Literal["random", "gray", "source"] = "random"
    # hard-draw weighting: the loss is the mean of the ceil(tail_fraction x draws) largest per-draw losses of the
    # step (CVaR at that level; 1.0: the plain mean over the draws)
    tail_fraction: float = 1.0

    def validate(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ConfigError(f"loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        _check_nonneg("kappa", self.kappa)
        t = self.tail_fraction
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise ConfigError(f"tail_fraction must be in (0, 1], got {t!r}")
        if t < 1 and self.eot_batch is not None and self.eot_batch < self.batch_size:
            raise ConfigError(f"tail_fraction {t:g} needs every draw of a step in one pass: eot_batch "
                              f"{self.eot_batch} < batch_size {self.batch_size}")
        if self.init not in ("random", "gray", "source"):
            raise ConfigError(f"init must be random, gray or source, got {self.init!r}")
        super().validate()

    # -- the loop's hooks shared by the classifier attacks
    def _attack_loss(self, ctx: AttackContext, outputs: Tensor, goal: Tensor | None) -> Tensor:
        if self.tail_fraction >= 1:
            return classification_loss(outputs, goal, targeted=ctx.targeted, kind=self.loss, kappa=self.kappa)
        return tail_mean(classification_loss(outputs, goal, targeted=ctx.targeted, kind=self.loss, kappa=self.kappa,
                                             reduction="none"), self.tail_fraction)

    def _score(self, ctx: AttackContext, outputs: Tensor, goal: Tensor | None) -> dict[str, Tensor]:
        return {"success": is_adversarial(outputs, goal, targeted=ctx.targeted), "predictions": outputs.argmax(dim=1)}

    def _save_scores(self, run: RunDir, result: PhysicalResult) -> None:
        preds = result.predictions
        run.save_tensors("eval_success", {
            "success": result.success, "initial": result.initial_success,
            "predictions": preds if preds is not None else torch.zeros(0, dtype=torch.int64)})


def tail_mean(losses: Tensor, fraction: float) -> Tensor:
    """The mean of the ``ceil(fraction x n)`` largest of ``n`` per-draw losses: the conditional value at risk of the
    step's draws at level ``fraction`` (1: the plain mean). The gradient flows only through the hardest draws, so
    the optimisation works on the draws the patch still loses (e.g. a scene whose own object is confident) instead
    of polishing the ones it already wins."""
    k = max(1, math.ceil(fraction * losses.numel() - 1e-9))
    return losses.flatten().topk(k).values.mean()


def _check_model_batch(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ImageError(f"{name} must be a float BCHW RGB tensor in [0, 1], got {shape}")
    if x.dtype == torch.float64:
        raise ImageError(f"{name} must be float32, got float64")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ImageError(f"{name} must lie in [0, 1]")
    return x.detach()


# ------------------------------------------------------------------------------------------------ patch
@dataclass(frozen=True, kw_only=True)
class UniversalPatch(_EOTAttack):
    """Brown et al. 2017's universal adversarial patch under EOT (see the module docstring)."""

    name: ClassVar[str] = "patch"
    default_eot: ClassVar[str] = "athalye-eot-2d"

    patch_size: int = 64  # resolution of the patch parameter (pixels per side)
    shape: str = "circle"  # circle | square | path of a mask PNG
    placement: Any = None  # PlacementConfig or dict; None: area 0.1, rotation 22.5

    def __post_init__(self) -> None:
        p = self.placement
        if p is None:
            p = PlacementConfig()
        elif isinstance(p, dict):
            p = PlacementConfig.from_dict(p)
        elif not isinstance(p, PlacementConfig):
            raise ConfigError(f"placement must be a PlacementConfig or a dict, got {type(p).__name__}")
        object.__setattr__(self, "placement", p)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        _check_pos_int("patch_size", self.patch_size, 2)
        if self.init == "source":
            raise ConfigError("a patch has no source image: init must be 'random' or 'gray'")
        make_mask(self.shape, 4)  # validates the shape name / file

    def __call__(
        self,
        model: nn.Module,
        scenes: Tensor,
        *,
        target: int | None = None,
        labels: Tensor | None = None,
        initial: Tensor | None = None,
        **run: Unpack[RunOptions],
    ) -> PhysicalResult:
        """Optimise the patch over ``scenes`` (N, 3, H, W). Targeted: ``target`` class index; untargeted: pass
        ``labels`` (N,), the scenes' true classes, to push away from. ``initial``: colours (1, 3, P, P) in [0, 1]
        to start from (e.g. another run's patch) instead of ``init``."""
        ctx = self.context(model, scenes, target=target, labels=labels)
        init_gen = torch.Generator().manual_seed(self.seed + 7)
        if initial is not None:
            if tuple(initial.shape) != (1, 3, self.patch_size, self.patch_size):
                raise ConfigError(f"initial patch has shape {tuple(initial.shape)}, expected "
                                  f"(1, 3, {self.patch_size}, {self.patch_size})")
            colours0 = initial.detach().float().cpu().clamp(1e-4, 1 - 1e-4)
        elif self.init == "random":
            colours0 = torch.rand(1, 3, self.patch_size, self.patch_size, generator=init_gen)
        else:
            colours0 = torch.full((1, 3, self.patch_size, self.patch_size), 0.5)
        w0 = logit(colours0).to(ctx.device)
        extra = {"scenes_shape": list(ctx.scenes.shape), "target": target,
                 "labels": None if ctx.labels is None else ctx.labels.tolist(), **(run.pop("run_extra", None) or {})}
        return self._attack(ctx, w0, run_extra=extra, **run)

    def context(self, model: nn.Module, scenes: Tensor, *, target: int | None = None, labels: Any = None
                ) -> PatchContext:
        """The per-call context: the scenes and goal on the model's device, the patch mask, EOT and palette
        (arguments checked; ConfigError / ImageError naming the bad one)."""
        scenes = _check_model_batch(scenes, "scenes")
        device = device_of(model, scenes.device)
        scenes = scenes.to(device)
        targeted = target is not None
        if targeted:
            if isinstance(target, bool) or not isinstance(target, int) or target < 0:
                raise ConfigError(f"target must be a class index >= 0, got {target!r}")
            if labels is not None:
                raise ConfigError("pass either target= (targeted) or labels= (untargeted), not both")
        elif labels is None:
            raise ConfigError("an untargeted patch needs labels= (the scenes' true classes)")
        else:
            labels = torch.as_tensor(labels, dtype=torch.int64, device=device)
            if labels.shape != (scenes.shape[0],):
                raise ConfigError(f"labels must have shape ({scenes.shape[0]},), got {tuple(labels.shape)}")
        mask = make_mask(self.shape, self.patch_size).to(device)
        return PatchContext(model=model, device=device, mask=mask, transform=EOTTransform(self.eot),
                            palette=resolve_palette(self.palette).to(device), targeted=targeted, scenes=scenes,
                            labels=labels, target=target, fill=float(mask.mean()))

    def evaluate(
        self, model: nn.Module, scenes: Tensor, patch: Tensor, *, target: int | None = None, labels: Any = None
    ) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
        """(success, predictions, draws) of a given patch (1, 3, S, S) over this attack's fresh evaluation draws."""
        ctx = self.context(model, scenes, target=target, labels=labels)
        if patch.shape != (1, 3, self.patch_size, self.patch_size):
            raise ConfigError(f"patch must have shape (1, 3, {self.patch_size}, {self.patch_size}), got {tuple(patch.shape)}")
        scores, draws = self._evaluate(ctx, {"final": patch.to(ctx.device).float()})
        s = scores["final"]
        return s["success"], s.get("predictions", torch.zeros(0, dtype=torch.int64)), draws

    def _sample(self, ctx: PatchContext, n: int, generator: torch.Generator) -> Draw:
        device = ctx.device
        scenes = ctx.scenes
        h, w = scenes.shape[-2:]
        pc: PlacementConfig = self.placement
        u = torch.rand(n, 4, generator=generator)
        scene_index = torch.randint(0, scenes.shape[0], (n,), generator=generator)
        eot = ctx.transform.sample(n, generator, device)
        area = pc.area[0] + (pc.area[1] - pc.area[0]) * u[:, 0]
        angle = (2 * u[:, 1] - 1) * pc.rotation
        side = torch.sqrt(area * h * w / ctx.fill)  # patch side in scene pixels
        if pc.inside:
            r = side * math.sqrt(2) / 2  # circumradius of the rotated square
            lo_x, hi_x = r, (w - 1) - r
            lo_y, hi_y = r, (h - 1) - r
            cx = torch.where(hi_x > lo_x, lo_x + (hi_x - lo_x) * u[:, 2], torch.full_like(r, (w - 1) / 2))
            cy = torch.where(hi_y > lo_y, lo_y + (hi_y - lo_y) * u[:, 3], torch.full_like(r, (h - 1) / 2))
        else:
            cx, cy = u[:, 2] * (w - 1), u[:, 3] * (h - 1)
        return Draw(
            eot=eot,
            scene_index=scene_index.to(device),
            area=area.to(device),
            angle=angle.to(device),
            center=torch.stack([cx, cy], dim=1).to(device),
        )

    def composite(self, colours: Tensor, draw: Draw, scenes: Tensor, mask: Tensor, transform: EOTTransform) -> Tensor:
        """Paste the (printed) patch into the drawn scenes at the drawn place, size and rotation."""
        b = draw.eot.batch_size
        s = colours.shape[-1]
        h, w = scenes.shape[-2:]
        printed = transform.apply_print(colours.expand(b, -1, -1, -1), draw.eot)
        fill = float(mask.mean())
        side = torch.sqrt(draw.area * h * w / fill)
        k = side / s  # scene pixels per patch pixel
        th = torch.deg2rad(draw.angle)
        cos, sin = torch.cos(th) * k, torch.sin(th) * k
        c0 = (s - 1) / 2
        tx = draw.center[:, 0] - (cos * c0 - sin * c0)
        ty = draw.center[:, 1] - (sin * c0 + cos * c0)
        m = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).float()
        stack = torch.cat([printed * mask, mask.expand(b, -1, -1, -1).to(printed.dtype)], dim=1)
        warped = warp_pixels(stack, m, (h, w), "zeros", affine=True)
        with torch.no_grad():  # the scene and the mask's footprint are constants: no backward through them
            background = scenes[draw.scene_index] * (1 - warped[:, 3:4])
        return background + warped[:, :3]

    def _render(self, ctx: PatchContext, colours: Tensor | None, draw: Draw) -> Tensor:
        """The drawn scenes with the printed patch at the drawn place (``colours=None``: without the patch),
        photographed through the EOT draw."""
        t = ctx.transform
        if colours is None:
            x = ctx.scenes[draw.scene_index]
        else:
            x = self.composite(colours, draw, ctx.scenes, ctx.mask, t)
        return t.apply(x, draw.eot, print_stage=False)

    def _goal(self, ctx: PatchContext, draw: Draw) -> Tensor:
        if ctx.target is not None:
            return torch.full((draw.eot.batch_size,), ctx.target, dtype=torch.int64, device=draw.scene_index.device)
        return ctx.labels[draw.scene_index]

    def _result(self, ctx: PatchContext, run: LoopOutcome) -> PhysicalResult:
        patch = run.colours
        return self._physical_result(ctx, run, perturbation=patch, adversarial=patch, target=ctx.target)


@dataclass(kw_only=True)
class PatchContext(AttackContext):
    """One call of ``UniversalPatch``: the scenes and the goal (target class, or the scenes' labels)."""

    scenes: Tensor  # (N, 3, H, W) on ``device``
    labels: Tensor | None = None  # (N,) untargeted: the scenes' true classes
    target: int | None = None
    fill: float = 1.0  # mean of the patch mask over its square


# ------------------------------------------------------------------------------------------------ sticker
@dataclass(frozen=True, kw_only=True)
class SignSticker(_EOTAttack):
    """RP2 (Eykholt et al. 2018): a perturbation confined to a mask on a sign, optimised over EOT."""

    name: ClassVar[str] = "sticker"
    default_eot: ClassVar[str] = "rp2"

    norm: Literal["l1", "l2"] = "l2"
    lambda_norm: float = 0.0  # weight of ||mask * (sticker - sign)||_p (per image, in [0, 1] units)
    init: Literal["random", "gray", "source"] = "random"
    # The model's input size (H, W). When the sign image is larger (rendered at print resolution), each draw is
    # warped at that resolution and then area-resampled (antialiased) down to input_size, as a camera would
    # image the physical sticker; light, blur (in input pixels), noise and JPEG then act on the camera image.
    # None: the sign image is already the model's input size.
    input_size: Any = None
    # Sticker budget: the largest allowed fraction of the sign's own area (its alpha, passed as alpha=) that
    # the mask may cover (without alpha=, of the whole image). None: no budget.
    max_mask_fraction: float | None = None

    def __post_init__(self) -> None:
        size = self.input_size
        if size is not None:
            if isinstance(size, int) and not isinstance(size, bool):
                size = (size, size)
            if not (isinstance(size, (tuple, list)) and len(size) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
                raise ConfigError(f"input_size must be an int or (H, W) of positive ints, got {self.input_size!r}")
            object.__setattr__(self, "input_size", (int(size[0]), int(size[1])))
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if self.norm not in ("l1", "l2"):
            raise ConfigError(f"norm must be l1 or l2, got {self.norm!r}")
        _check_nonneg("lambda_norm", self.lambda_norm)
        m = self.max_mask_fraction
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1):
            raise ConfigError(f"max_mask_fraction must be a fraction in (0, 1] or None, got {m!r}")

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["input_size"] = None if self.input_size is None else list(self.input_size)
        return out

    def __call__(
        self,
        model: nn.Module,
        sign: Tensor,
        mask: Tensor,
        *,
        target: int | None = None,
        label: int | None = None,
        alpha: Tensor | None = None,
        source_label: int | None = None,
        signs: Tensor | None = None,
        eval_signs: Tensor | None = None,
        **run: Unpack[RunOptions],
    ) -> PhysicalResult:
        """Optimise stickers (colours inside ``mask``, (1, 1, H, W) in [0, 1]) on ``sign`` (1, 3, H, W).

        ``signs`` (K, 3, H, W): other drawings of the same sign (its artwork varied, ``sign_artwork_pool``; the
        outline, hence the mask, unchanged): each draw puts the sticker on one of them, picked uniformly (the
        artwork is part of the EOT distribution). ``eval_signs`` (M, 3, H, W): the drawings the fresh-draw
        evaluation uses instead (a held-out artwork split: drawings the optimisation never saw); default: ``signs``.
        Targeted: ``target`` class; untargeted: ``label``, the sign's true class.

        ``alpha`` (1, 1, H, W): the sign's shape mask; the sticker's fraction of the sign is measured against
        it (``extras["mask_fraction_of_sign"]``) and checked against ``max_mask_fraction``. ``source_label``
        (targeted runs): the sign's true class; the clean sign is then scored on the same evaluation draws
        (``extras["clean_accuracy"]``) and the success rate is also reported over the draws where the clean
        sign is classified correctly (``extras["success_rate_given_clean_correct"]``)."""
        sign = _check_model_batch(sign, "sign")
        if sign.shape[0] != 1:
            raise ConfigError(f"sign must be a single image (1, 3, H, W), got {tuple(sign.shape)}")
        if not isinstance(mask, Tensor) or mask.shape != (1, 1, *sign.shape[-2:]):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ConfigError(f"mask must have shape (1, 1, {sign.shape[-2]}, {sign.shape[-1]}), got {shape}")
        if float(mask.min()) < 0 or float(mask.max()) > 1 or float(mask.max()) == 0:
            raise ConfigError("mask values must lie in [0, 1] and not all be 0")
        if alpha is not None:
            if not isinstance(alpha, Tensor) or alpha.shape != mask.shape:
                shape = tuple(alpha.shape) if isinstance(alpha, Tensor) else type(alpha).__name__
                raise ConfigError(f"alpha must have the mask's shape {tuple(mask.shape)}, got {shape}")
            alpha = alpha.detach().float().cpu()
        fraction = mask_fraction_of_sign(mask.detach().float().cpu(), alpha)
        if self.max_mask_fraction is not None and fraction > self.max_mask_fraction + 1e-9:
            of = "the sign's area (its alpha)" if alpha is not None else "the image"
            raise ConfigError(f"sticker mask covers {fraction:.2%} of {of}, over the budget of "
                              f"{self.max_mask_fraction:.2%} (max_mask_fraction); use a smaller mask")
        device = device_of(model, sign.device)
        sign, mask = sign.to(device), mask.float().to(device)
        targeted = target is not None
        if targeted == (label is not None):
            raise ConfigError("pass exactly one of target= (targeted) or label= (untargeted)")
        goal = target if targeted else label
        if isinstance(goal, bool) or not isinstance(goal, int) or goal < 0:
            raise ConfigError(f"target/label must be a class index >= 0, got {goal!r}")
        if source_label is not None and (isinstance(source_label, bool) or not isinstance(source_label, int)
                                         or source_label < 0):
            raise ConfigError(f"source_label must be a class index >= 0, got {source_label!r}")
        if not targeted and source_label is None:
            source_label = label
        signs, eval_signs = (_check_pool(v, n, sign) for v, n in ((signs, "signs"), (eval_signs, "eval_signs")))
        if eval_signs is not None and signs is None:
            raise ConfigError("eval_signs needs signs (the drawings the sticker is optimised over)")
        ctx = StickerContext(model=model, device=device, mask=mask, transform=EOTTransform(self.eot),
                             palette=resolve_palette(self.palette).to(device), targeted=targeted, sign=sign,
                             goal=goal, source_label=source_label, fraction_of_sign=fraction,
                             signs=None if signs is None else signs.to(device),
                             eval_signs=None if eval_signs is None else eval_signs.to(device))
        if self.init == "random":
            colours0 = torch.rand(sign.shape, generator=torch.Generator().manual_seed(self.seed + 7)).to(device)
        elif self.init == "gray":
            colours0 = torch.full_like(sign, 0.5)
        else:
            colours0 = sign.clone()
        extra = {"sign_shape": list(sign.shape), "mask_fraction": float(mask.mean()),
                 "mask_fraction_of_sign": fraction, "target": target, "label": label,
                 "source_label": source_label, **(run.pop("run_extra", None) or {})}
        if signs is not None:
            extra.update(artwork_pool=int(signs.shape[0]),
                         eval_artwork_pool=None if eval_signs is None else int(eval_signs.shape[0]))
        # with a source label, the clean sign is scored on the same evaluation draws (the denominator)
        return self._attack(ctx, logit(colours0), run_extra=extra, score_clean=source_label is not None, **run)

    def saliency(self, model: nn.Module, sign: Tensor, *, target: int, samples: int = 128,
                 alpha: Tensor | None = None) -> Tensor:
        """RP2's first stage: where on ``sign`` (1, 3, H, W) the targeted loss is most sensitive, as
        sum over ``samples`` EOT draws (training generator, seed ``seed + 11``) of |d loss / d sign| summed over
        channels; (1, 1, H, W) on CPU, times ``alpha`` when given. Feed it to ``saliency_mask``."""
        sign = _check_model_batch(sign, "sign")
        device = device_of(model, sign.device)
        sign = sign.to(device)
        _check_pos_int("samples", samples)
        ones = torch.ones(1, 1, *sign.shape[-2:], device=device)
        ctx = StickerContext(model=model, device=device, mask=ones, transform=EOTTransform(self.eot), sign=sign,
                             goal=target)
        gen = torch.Generator().manual_seed(self.seed + 11)
        acc = torch.zeros(1, 1, *sign.shape[-2:], device=device)
        left = samples
        with prepared_model(model, channels_last=False, compile=False) as net:  # eval, state restored
            while left > 0:
                n = min(self.batch_size, left)
                x = sign.clone().requires_grad_(True)
                draw = self._sample(ctx, n, gen)
                logits = net(self._render(replace_context(ctx, sign=x), None, draw))
                goal = torch.full((n,), target, dtype=torch.int64, device=device)
                loss = classification_loss(logits, goal, targeted=True, kind=self.loss, kappa=self.kappa)
                (grad,) = torch.autograd.grad(loss, x)
                acc += grad.abs().sum(1, keepdim=True)
                left -= n
        acc = acc.cpu()
        return acc * alpha.cpu().float() if alpha is not None else acc

    @staticmethod
    def stickered(sign: Tensor, mask: Tensor, colours: Tensor) -> Tensor:
        """The sign with the sticker colours inside the mask."""
        return sign * (1 - mask) + mask * colours

    def _sample(self, ctx: StickerContext, n: int, generator: torch.Generator) -> Draw:
        eot = ctx.transform.sample(n, generator, ctx.device)
        if ctx.signs is None:
            return Draw(eot=eot)
        # which drawing of the sign each draw shows (the artwork stage of the distribution)
        return Draw(eot=eot, scene_index=torch.randint(ctx.signs.shape[0], (n,), generator=generator).to(ctx.device))

    def _eval_context(self, ctx: StickerContext) -> StickerContext:
        return ctx if ctx.eval_signs is None else replace_context(ctx, signs=ctx.eval_signs)

    def _render(self, ctx: StickerContext, colours: Tensor | None, draw: Draw) -> Tensor:
        """Print the sticker, put it on the sign, photograph the scene (``colours=None``: the clean sign)."""
        t: EOTTransform = ctx.transform
        b = draw.eot.batch_size
        sign = ctx.sign.expand(b, -1, -1, -1) if ctx.signs is None else ctx.signs[draw.scene_index]
        if colours is None:
            x = sign
        else:
            printed = t.apply_print(colours.expand(b, -1, -1, -1), draw.eot)
            x = sign * (1 - ctx.mask) + ctx.mask * printed
        if self.input_size is None or tuple(x.shape[-2:]) == tuple(self.input_size):
            return t.apply(x, draw.eot, print_stage=False)
        return self.photograph(x, draw.eot, t)

    def photograph(self, x: Tensor, params: EOTParams, transform: EOTTransform) -> Tensor:
        """The EOT stages with the camera's resampling among them: ``transform``'s stage list with a ``resize``
        stage to ``input_size`` after ``geometry`` (geometry at the print resolution; light, optics and sensor on the
        camera image). The print stage is left out: the sticker was printed before it was stuck on the sign."""
        camera = transform.with_stage(ResizeStage({"resize_to": tuple(self.input_size)}), after="geometry")
        return camera.apply(x, params, print_stage=False)

    def _regularise(self, ctx: StickerContext, colours: Tensor) -> Tensor:
        out = colours.new_zeros(())
        if self.lambda_norm > 0:
            delta = ctx.mask * (colours - ctx.sign)
            out = out + self.lambda_norm * lp_norm(delta, 1 if self.norm == "l1" else 2, reduction="mean")
        return out + super()._regularise(ctx, colours)

    def _goal(self, ctx: StickerContext, draw: Draw) -> Tensor:
        return torch.full((draw.eot.batch_size,), ctx.goal, dtype=torch.int64, device=ctx.device)

    def _result(self, ctx: StickerContext, run: LoopOutcome) -> PhysicalResult:
        adv = self.stickered(ctx.sign, ctx.mask, run.colours).detach()
        result = self._physical_result(
            ctx, run, perturbation=adv - ctx.sign, adversarial=adv, target=ctx.goal if ctx.targeted else None,
            extras={"mask_fraction": float(ctx.mask.mean()), "mask_fraction_of_sign": ctx.fraction_of_sign})
        if ctx.source_label is not None:  # the clean sign on the same evaluation draws
            clean_preds = result.scores.get("clean_predictions", torch.zeros(0, dtype=torch.int64))
            cc = clean_preds == ctx.source_label
            n = int(cc.sum())
            result.extras.update(
                clean_predictions=clean_preds, clean_correct=cc, source_label=ctx.source_label,
                clean_accuracy=float(cc.float().mean()) if cc.numel() else float("nan"), clean_correct_count=n,
                success_rate_given_clean_correct=float(result.success[cc].float().mean()) if n else float("nan"))
        return result

    def _save_scores(self, run: RunDir, result: PhysicalResult) -> None:
        super()._save_scores(run, result)
        run.save_image("colours", result.colours)  # the sticker colours (put on any drawing of the sign)
        if "clean_correct" in result.extras:
            run.save_tensors("clean_eval", {"predictions": result.extras["clean_predictions"],
                                            "correct": result.extras["clean_correct"]})


@dataclass(kw_only=True)
class StickerContext(AttackContext):
    """One call of ``SignSticker``: the sign, the goal class and (for the denominator) the sign's true class."""

    sign: Tensor  # (1, 3, H, W) on ``device``
    goal: int  # the target class (targeted) or the sign's label (untargeted)
    source_label: int | None = None
    fraction_of_sign: float | None = None  # the mask's share of the sign's own area
    signs: Tensor | None = None  # (K, 3, H, W) drawings of the sign the draws pick from (None: ``sign`` only)
    eval_signs: Tensor | None = None  # (M, 3, H, W) drawings for the evaluation (held-out artwork)


def _check_pool(pool: Tensor | None, name: str, sign: Tensor) -> Tensor | None:
    """A (K, 3, H, W) pool of sign drawings of ``sign``'s size in [0, 1], or None."""
    if pool is None:
        return None
    if not isinstance(pool, Tensor) or pool.ndim != 4 or pool.shape[0] < 1 or pool.shape[1:] != sign.shape[1:]:
        shape = tuple(pool.shape) if isinstance(pool, Tensor) else type(pool).__name__
        raise ConfigError(f"{name} must be (K, {sign.shape[1]}, {sign.shape[2]}, {sign.shape[3]}) drawings of the "
                          f"sign, got {shape}")
    if not torch.isfinite(pool).all() or float(pool.min()) < 0 or float(pool.max()) > 1:
        raise ConfigError(f"{name} must lie in [0, 1]")
    return pool.detach().float()


def sign_artwork_pool(sign: str, size: int, n: int, *, split: str = "train", seed: int = 0,
                      background: Any = 0.5) -> tuple[Tensor, list[dict[str, Any]]]:
    """``n`` drawings of sign class ``sign`` from artwork split ``split`` (``worlds.signs.render.sample_artwork``:
    fonts, legend size and weight, rim, paints, arrows, wear, dirt), rendered at ``size`` px and composited on
    ``background`` (a grey level or a (1, 3, size, size) image): ((n, 3, size, size), the artworks as dicts).
    Drawing ``i`` comes from ``numpy.random.default_rng([seed, i])``: the same seed gives the same pool."""
    import numpy as np

    from worlds.signs.render import composite, render_sign, sample_artwork

    _check_pos_int("n", n)
    out, arts = [], []
    for i in range(n):
        art = sample_artwork(sign, np.random.default_rng([int(seed), i]), split=split)
        out.append(composite(render_sign(sign, size, artwork=art), background).clamp(0, 1))
        arts.append(art.to_dict())
    return torch.cat(out), arts
