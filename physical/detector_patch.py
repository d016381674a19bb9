"""The person-evasion patch (Thys, Van Ranst & Goedeme 2019, "Fooling automated surveillance cameras"): one
printable square patch, worn on the torso of every person of a scene, that hides the people from an object
detector. It is one more configuration of the one physical loop (``physical.loop.PhysicalAttack``).

* **model** — any registry detector (``testbed.models.detection.Detector``, task ``detector``) wrapped in
  ``DetectorClassScores``: with gradients (optimisation) its output row is the detector's per-candidate confidence
  of the attacked class (``candidate_scores(x, label)``: objectness x class probability, or the class heat-map),
  followed by the candidates' boxes when the loss keeps only the candidates overlapping a person
  (``candidate_boxes``); without gradients (evaluation) the detector's own detections of that class
  (``detect``: its decoding and NMS, down to ``detect_threshold`` so AP sees the low scores), padded;
* **placement** — on each ground-truth person box of the drawn scene the patch is a square of side
  ``sqrt(patch_fraction * box area) * s`` (``s`` uniform in [``scale_min``, ``scale_max``], so its area is at most
  ``patch_fraction * scale_max**2`` of the box), centred ``centre_y`` of the way down the box (the torso) and
  shifted by up to ``jitter`` of the box's width / height, rotated by up to ``rotation`` degrees: one placement
  per person per draw (Thys's PatchTransformer: scale to the box, rotation, position noise). Given the faces of
  each scene (``faces=``: a face detector's boxes on the clean scene), a person whose face is found
  (``face_floors``) wears the patch no higher than just below that face: the rotated patch's top edge at the
  face's bottom edge, moved no lower than the box's bottom (a patch worn on the chest, never over the face);
* **EOT** — the printer's stages (``apply_print``: printer gain / offset, profile) act on the patch before it is
  placed; the rest of the preset (brightness, contrast, blur, noise: the camera) on the whole photographed scene.
  The default preset ``thys-person`` has no scene geometry (the ground-truth boxes stay where they are; the
  placement supplies the patch's geometry);
* **loss** (Thys's "max objectness x class") — per draw, the candidate confidences reduced by ``max`` (default),
  the mean of the top ``top_k``, the mean, or ``per-box`` (each person box's max over the candidates overlapping it,
  averaged over the boxes; with ``box_hinge`` h each box's max s enters as softplus(logit(s) - logit(h)));
  optionally only the candidates whose box overlaps a person box of
  the scene at IoU ``>= overlap_iou`` (``only_overlapping``); averaged over the draws; plus NPS and TV (the loop's
  regulariser, over the patch);
* **success** — on an evaluation draw a person box is *hidden* when no detection of the class with score
  ``>= score_threshold`` overlaps it at IoU ``>= iou_threshold``; a draw succeeds when every person of its scene is
  hidden. The per-box flags (``detected``), the detections (``detections``) and the boxes (``gt_boxes``) of every
  draw are kept, so ``pipelines.detection_metrics`` counts recall per box (Wilson interval) and AP;
* **ground truth** — the detector's own detections of the class at ``gt_score`` or more on the clean,
  untransformed scene (as Thys et al. took YOLOv2's detections), computed under the model-state guard;
* **held-out evaluation** — ``eval_scenes`` (other photos) are swapped in for the fresh-draw evaluation, whose
  generator is seeded ``eval_seed``; ``evaluate`` scores any textures on the same draws (the random-colour
  control).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import box_iou

from physical.eot import EOTParams, EOTTransform
from physical.face_detector_attack import random_texture as random_patch  # the one random-colour control
from physical.eot_stages import warp_pixels
from physical.hyper import check_int, check_nonneg
from physical.loop import (
    AttackContext,
    LoopOutcome,
    PhysicalAttack,
    PhysicalResult,
    RunOptions,
    device_of,
    logit,
    replace_context,
)
from testbed.errors import ConfigError, ImageError
from testbed.models.base import model_state_guard
from testbed.palette import resolve_palette

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only the annotations need it
    from typing import Unpack

#: the largest patch area allowed, as a fraction of the person box (the issue's budget)
MAX_PATCH_FRACTION = 0.2
#: a face belongs to a person box when its centre lies within this top fraction of the box's height (the head)
FACE_TOP = 0.6
#: a candidate score given to a draw none of whose candidates is kept (nothing left to push down)
NO_CANDIDATE = 0.0


# ------------------------------------------------------------------------------------------------ the model
class DetectorClassScores(nn.Module):
    """A detector as the loop's model: ``forward(x)`` → one float row per image.

    With gradients: ``(B, K)`` candidate confidences of class ``label`` (``candidate_scores``), then, when
    ``with_boxes``, the candidates' boxes ``(B, 4K)`` (``candidate_boxes``, detached). Without gradients:
    ``(B, 5 * max_detections)``: the detector's detections of the class (x1, y1, x2, y2, score), most confident
    first, padded with score -1. Holds the detector as a submodule (the model-state guard covers it)."""

    def __init__(self, detector: nn.Module, label: int, *, max_detections: int = 20, detect_threshold: float = 0.05,
                 with_boxes: bool = False) -> None:
        super().__init__()
        check_int("max_detections", max_detections)
        self.detector, self.label, self.max_detections = detector, int(label), max_detections
        self.detect_threshold, self.with_boxes = float(detect_threshold), with_boxes

    def detections(self, x: Tensor) -> Tensor:
        out = x.new_full((len(x), self.max_detections, 5), -1.0)
        for b, d in enumerate(self.detector.detect(x.detach().clamp(0, 1), score_threshold=self.detect_threshold)):
            d = d.of_label(self.label)
            n = min(len(d.scores), self.max_detections)
            out[b, :n, :4] = d.boxes[:n].to(out)
            out[b, :n, 4] = d.scores[:n].to(out)
        return out.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return self.detections(x)
        if not self.with_boxes:
            return self.detector.candidate_scores(x, self.label).float()
        both = getattr(self.detector, "candidates", None)  # one pass for both, where the detector offers it
        if callable(both):
            scores, boxes = both(x, self.label)
        else:
            scores, boxes = self.detector.candidate_scores(x, self.label), self.detector.candidate_boxes(x)
        if boxes is None:
            raise ConfigError("only_overlapping and reduce='per-box' need the detector's candidate_boxes, and this "
                              "detector has none")
        return torch.cat([scores.float(), boxes.detach().float().flatten(1)], dim=1)


def unpack_detections(outputs: Tensor) -> tuple[Tensor, Tensor]:
    """(boxes (B, M, 4), scores (B, M); -1 = no detection) from the evaluation rows of ``DetectorClassScores``."""
    dets = outputs.reshape(len(outputs), -1, 5)
    return dets[..., :4], dets[..., 4]


def detection_images(detections: Tensor, gt_boxes: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per-draw ``(gt (G, 4), boxes (D, 4), scores (D,))`` for ``pipelines.detection_metrics.ImageDetections``, from
    the result's ``detections`` (E, 5M) and ``gt_boxes`` (E, 4P, NaN-padded)."""
    boxes, scores = unpack_detections(detections)
    gts = gt_boxes.reshape(len(gt_boxes), -1, 4)
    out = []
    for b, s, g in zip(boxes, scores, gts):
        keep = s >= 0
        out.append((g[~torch.isnan(g).any(dim=1)], b[keep], s[keep]))
    return out


# ------------------------------------------------------------------------------------------------ draws / context
@dataclass
class PersonPatchDraw:
    """One batch of draws: the scene of each draw, one placement per person slot, and the EOT parameters."""

    eot: EOTParams
    scene_index: Tensor  # (B,) int64
    scale: Tensor  # (B, P) patch side multiplier
    angle: Tensor  # (B, P) degrees
    shift: Tensor  # (B, P, 2) centre shift in [-1, 1] x jitter, fractions of the box's width / height
    printed: bool = True  # the EOT's printer stages act on the patch (False: the patch's own colours, as printed
    # for real by the print-photo loop's printer)

    def to_dict(self) -> dict[str, Any]:
        return {"eot": self.eot.cpu().to_dict(), "scene_index": self.scene_index.cpu(), "scale": self.scale.cpu(),
                "angle": self.angle.cpu(), "shift": self.shift.cpu()}


@dataclass(kw_only=True)
class PersonPatchContext(AttackContext):
    """One call of ``PersonPatch``: the scenes and their person boxes, for optimisation and held-out evaluation."""

    scenes: Tensor  # (N, 3, H, W)
    boxes: Tensor  # (N, P, 4) person boxes, NaN-padded
    eval_scenes: Tensor  # (M, 3, H, W): photos not optimised on
    eval_boxes: Tensor  # (M, P', 4)
    label: int
    floors: Tensor | None = None  # (N, P): the bottom y of each person's face (pixels), NaN = none found / not given
    eval_floors: Tensor | None = None  # (M, P')


def pad_boxes(boxes: list[Tensor]) -> Tensor:
    """(N, P, 4): each scene's (P_i, 4) boxes, NaN-padded to the largest P_i."""
    p = max(len(b) for b in boxes)
    out = torch.full((len(boxes), p, 4), float("nan"))
    for i, b in enumerate(boxes):
        out[i, : len(b)] = b.float().cpu()
    return out


def face_floors(boxes: Tensor, faces: Tensor) -> Tensor:
    """(P,): for each person box (P, 4) the bottom y of its face among ``faces`` (F, 4) — the largest face whose
    centre lies inside the box horizontally and in the top ``FACE_TOP`` of its height — or NaN when none does."""
    out = torch.full((len(boxes),), float("nan"))
    if len(faces) == 0:
        return out
    faces = faces.float().cpu().reshape(-1, 4)
    fx, fy = (faces[:, 0] + faces[:, 2]) / 2, (faces[:, 1] + faces[:, 3]) / 2
    area = (faces[:, 2] - faces[:, 0]).clamp(min=0) * (faces[:, 3] - faces[:, 1]).clamp(min=0)
    for i, (x1, y1, x2, y2) in enumerate(boxes.float().cpu().tolist()):
        inside = (fx >= x1) & (fx <= x2) & (fy >= y1) & (fy <= y1 + FACE_TOP * (y2 - y1))
        if inside.any():
            out[i] = faces[int(torch.where(inside, area, -1.0).argmax()), 3]
    return out


def pad_floors(boxes: list[Tensor], faces: list[Tensor] | None) -> Tensor:
    """(N, P): ``face_floors`` of each scene, NaN-padded like ``pad_boxes`` (all NaN when ``faces`` is None)."""
    out = torch.full((len(boxes), max(len(b) for b in boxes)), float("nan"))
    if faces is not None:
        if len(faces) != len(boxes):
            raise ConfigError(f"faces are given for {len(faces)} scenes, boxes for {len(boxes)}")
        for i, (b, f) in enumerate(zip(boxes, faces)):
            out[i, : len(b)] = face_floors(b.reshape(-1, 4), f)
    return out


def _check_scenes(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point() or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ImageError(f"{name} must be a non-empty float N x 3 x H x W RGB batch in [0, 1], got {shape}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ImageError(f"{name} must lie in [0, 1]")
    return x.detach().float()


# ------------------------------------------------------------------------------------------------ the attack
@dataclass(frozen=True, kw_only=True)
class PersonPatch(PhysicalAttack):
    """The person-evasion patch (see the module docstring)."""

    name: ClassVar[str] = "person-patch"
    default_eot: ClassVar[str] = "thys-person"

    label: str | int = "person"
    patch_size: int = 64  # pixels per side of the patch's colours (the parameter's resolution)
    patch_fraction: float = 0.18  # patch area / person box area at scale 1
    scale_min: float = 0.9
    scale_max: float = 1.05
    rotation: float = 20.0  # degrees, uniform in [-rotation, rotation] (Thys: 20)
    jitter: float = 0.05  # centre shift, fraction of the box's width / height, uniform in [-jitter, jitter]
    centre_y: float = 0.5  # the patch's centre, this far down the person box (0.5: the box centre, as Thys et al.)
    reduce: Literal["max", "topk", "mean", "per-box"] = "max"
    top_k: int = 10
    box_hinge: float | None = None  # ``per-box`` only: score a box by softplus(logit(s) - logit(box_hinge)) (the loss)
    only_overlapping: bool = False  # the loss keeps only candidates overlapping a person box
    overlap_iou: float = 0.1
    iou_threshold: float = 0.5
    score_threshold: float = 0.5  # a detection counts at this score or more
    gt_score: float = 0.5  # ground truth: the clean detections of the class at this score or more
    detect_threshold: float = 0.05  # detections kept for AP
    max_detections: int = 20
    init: Literal["gray", "random"] = "gray"

    def validate(self) -> None:
        check_int("patch_size", self.patch_size, 2)
        check_int("top_k", self.top_k)
        check_int("max_detections", self.max_detections)
        for n in ("patch_fraction", "scale_min", "scale_max", "rotation", "jitter", "centre_y", "overlap_iou",
                  "iou_threshold", "score_threshold", "gt_score", "detect_threshold"):
            check_nonneg(n, getattr(self, n))
        if not 0 < self.patch_fraction <= MAX_PATCH_FRACTION:
            raise ConfigError(f"patch_fraction must be in (0, {MAX_PATCH_FRACTION}], got {self.patch_fraction}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        for n in ("centre_y", "overlap_iou", "iou_threshold", "score_threshold", "gt_score", "detect_threshold",
                  "jitter"):
            if getattr(self, n) > 1:
                raise ConfigError(f"{n} must be in [0, 1], got {getattr(self, n)}")
        if self.rotation > 180:
            raise ConfigError(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if self.reduce not in ("max", "topk", "mean", "per-box"):
            raise ConfigError(f"reduce must be max, topk, mean or per-box, got {self.reduce!r}")
        if self.box_hinge is not None and (self.reduce != "per-box" or not 0 < self.box_hinge < 1):
            raise ConfigError(f"box_hinge ({self.box_hinge}) needs reduce='per-box' and a score in (0, 1)")
        if self.init not in ("gray", "random"):
            raise ConfigError(f"init must be gray or random, got {self.init!r}")
        if self.detect_threshold > self.score_threshold:
            raise ConfigError(f"detect_threshold ({self.detect_threshold}) must not exceed score_threshold "
                              f"({self.score_threshold})")
        super().validate()

    @property
    def max_area_fraction(self) -> float:
        """The largest patch area any draw gives, as a fraction of its person box."""
        return self.patch_fraction * self.scale_max ** 2

    # -- data
    def label_index(self, detector: nn.Module) -> int:
        return int(detector.label_index(self.label))

    @torch.no_grad()
    def ground_truth(self, detector: nn.Module, scenes: Tensor, names: list[str] | None = None, *,
                     require: bool = True) -> list[Tensor]:
        """Each scene's person boxes: the detector's clean detections of the class at ``gt_score`` or more
        (ImageError naming the scene when it has none; with ``require=False`` an empty ``(0, 4)`` tensor instead).
        Run under the model-state guard."""
        with model_state_guard(detector):
            out = detector.label_boxes(scenes, self.label_index(detector), self.gt_score)
        for i, found in enumerate(out):
            if len(found) == 0 and require:
                what = names[i] if names else f"scene {i}"
                raise ImageError(f"no {self.label} detected at score >= {self.gt_score} in {what}: it cannot be a "
                                 "person-evasion scene")
        return out

    def context(self, detector: nn.Module, scenes: Tensor, eval_scenes: Tensor, *,
                boxes: list[Tensor] | None = None, eval_boxes: list[Tensor] | None = None,
                faces: list[Tensor] | None = None, eval_faces: list[Tensor] | None = None) -> PersonPatchContext:
        """The per-call context (ground-truth boxes computed when not given; ``faces`` / ``eval_faces``: each
        scene's face boxes (F, 4), which keep the patch below each person's face)."""
        scenes, eval_scenes = _check_scenes(scenes, "scenes"), _check_scenes(eval_scenes, "eval_scenes")
        if scenes.shape[-2:] != eval_scenes.shape[-2:]:
            raise ImageError(f"scenes and eval_scenes must have the same size, got {tuple(scenes.shape[-2:])} and "
                             f"{tuple(eval_scenes.shape[-2:])}")
        label = self.label_index(detector)
        boxes = self.ground_truth(detector, scenes) if boxes is None else boxes
        eval_boxes = self.ground_truth(detector, eval_scenes) if eval_boxes is None else eval_boxes
        device = device_of(detector, scenes.device)
        scorer = DetectorClassScores(detector, label, max_detections=self.max_detections,
                                     detect_threshold=self.detect_threshold,
                                     with_boxes=self.only_overlapping or self.reduce == "per-box")
        mask = torch.ones(1, 1, self.patch_size, self.patch_size, device=device)
        return PersonPatchContext(
            model=scorer, device=device, mask=mask, transform=EOTTransform(self.eot),
            palette=resolve_palette(self.palette).to(device), targeted=False, scenes=scenes.to(device),
            boxes=pad_boxes(boxes).to(device), eval_scenes=eval_scenes.to(device),
            eval_boxes=pad_boxes(eval_boxes).to(device), label=label,
            floors=pad_floors(boxes, faces).to(device), eval_floors=pad_floors(eval_boxes, eval_faces).to(device))

    # -- the loop's hooks
    def _sample(self, ctx: PersonPatchContext, n: int, generator: torch.Generator) -> PersonPatchDraw:
        p = ctx.boxes.shape[1]
        scene_index = torch.randint(0, len(ctx.scenes), (n,), generator=generator)
        u = torch.rand(n, p, 4, generator=generator)
        eot = ctx.transform.sample(n, generator, ctx.device)
        return PersonPatchDraw(
            eot=eot, scene_index=scene_index.to(ctx.device),
            scale=(self.scale_min + (self.scale_max - self.scale_min) * u[..., 0]).to(ctx.device),
            angle=((2 * u[..., 1] - 1) * self.rotation).to(ctx.device),
            shift=((2 * u[..., 2:] - 1) * self.jitter).to(ctx.device))

    def nominal_draw(self, ctx: PersonPatchContext, scene_index: Tensor) -> PersonPatchDraw:
        """Every scene of ``scene_index`` with the patch at its nominal placement (scale 1, upright, centred) and its
        own colours: no EOT printer stage (the printed / photographed versions are for the print-photo loop, whose
        simulated printer prints it). ``eot`` holds a draw only for its batch size; ``composite`` reads nothing
        else of it when ``printed`` is False."""
        n, p = len(scene_index), ctx.boxes.shape[1]
        eot = ctx.transform.sample(n, torch.Generator().manual_seed(0), ctx.device)
        dev = ctx.device
        return PersonPatchDraw(eot=eot, scene_index=scene_index.to(dev), scale=torch.ones(n, p, device=dev),
                               angle=torch.zeros(n, p, device=dev), shift=torch.zeros(n, p, 2, device=dev),
                               printed=False)

    def placements(self, boxes: Tensor, draw: PersonPatchDraw, floors: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(side (B, P) pixels, centre (B, P, 2) pixels, angle (B, P) degrees, valid (B, P) bool) of the patch on
        each person slot of each draw (``boxes``: (B, P, 4) NaN-padded). ``floors`` (B, P): the bottom y of each
        person's face (NaN: none): the rotated patch's top edge goes no higher than it, and its bottom edge no lower
        than the box's bottom (which wins when both cannot hold)."""
        valid = ~torch.isnan(boxes).any(dim=-1)
        b = torch.nan_to_num(boxes, nan=0.0)
        w, h = (b[..., 2] - b[..., 0]).clamp(min=1.0), (b[..., 3] - b[..., 1]).clamp(min=1.0)
        side = torch.sqrt(self.patch_fraction * w * h) * draw.scale
        cx = (b[..., 0] + b[..., 2]) / 2 + draw.shift[..., 0] * w
        cy = b[..., 1] + self.centre_y * h + draw.shift[..., 1] * h
        if floors is not None:
            th = torch.deg2rad(draw.angle)
            half = side / 2 * (torch.cos(th).abs() + torch.sin(th).abs())  # half the rotated square's height
            below = torch.minimum(torch.maximum(cy, floors + half), b[..., 3] - half)
            cy = torch.where(torch.isnan(floors), cy, below)
        return side, torch.stack([cx, cy], dim=-1), draw.angle, valid

    def composite(self, ctx: PersonPatchContext, colours: Tensor, draw: PersonPatchDraw, scenes: Tensor,
                  boxes: Tensor) -> Tensor:
        """The drawn scenes with the printed patch pasted on every person box (at each slot's placement)."""
        n = draw.eot.batch_size
        s = colours.shape[-1]
        height, width = scenes.shape[-2:]
        printed = colours.expand(n, -1, -1, -1)
        if draw.printed:
            printed = ctx.transform.apply_print(printed, draw.eot)
        stack = torch.cat([printed * ctx.mask, ctx.mask.expand(n, -1, -1, -1).to(printed.dtype)], dim=1)
        floors = None if ctx.floors is None else ctx.floors[draw.scene_index]
        side, centre, angle, valid = self.placements(boxes, draw, floors)
        with torch.no_grad():
            x = scenes[draw.scene_index]
        c0 = (s - 1) / 2
        for p in range(boxes.shape[1]):
            k = side[:, p] / s  # scene pixels per patch pixel
            th = torch.deg2rad(angle[:, p])
            cos, sin = torch.cos(th) * k, torch.sin(th) * k
            tx = centre[:, p, 0] - (cos * c0 - sin * c0)
            ty = centre[:, p, 1] - (sin * c0 + cos * c0)
            m = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).float()
            warped = warp_pixels(stack, m, (height, width), "zeros", affine=True)
            on = valid[:, p].to(warped.dtype).view(n, 1, 1, 1)
            cover = warped[:, 3:4] * on
            x = x * (1 - cover) + warped[:, :3] * on
        return x

    def _render(self, ctx: PersonPatchContext, colours: Tensor | None, draw: PersonPatchDraw) -> Tensor:
        """The drawn scenes (with the patch on every person unless ``colours`` is None), photographed through the
        EOT draw (the printer's stages act on the patch only)."""
        boxes = ctx.boxes[draw.scene_index]
        if colours is None:
            x = ctx.scenes[draw.scene_index]
        else:
            x = self.composite(ctx, colours, draw, ctx.scenes, boxes)
        return ctx.transform.apply(x, draw.eot, print_stage=False).clamp(0, 1)

    def _goal(self, ctx: PersonPatchContext, draw: PersonPatchDraw) -> Tensor:
        return ctx.boxes[draw.scene_index]

    def _eval_context(self, ctx: PersonPatchContext) -> PersonPatchContext:
        return replace_context(ctx, scenes=ctx.eval_scenes, boxes=ctx.eval_boxes, floors=ctx.eval_floors)

    def _attack_loss(self, ctx: PersonPatchContext, outputs: Tensor, goal: Tensor | None) -> Tensor:
        """Mean over the draws of the reduced candidate confidences (max / top-k mean / mean), optionally over the
        candidates overlapping a person box only; ``per-box``: for each person box the max over the candidates
        overlapping it at IoU ``>= overlap_iou``, averaged over the boxes (every person pushed down at each step,
        not only the most confident one). With ``box_hinge`` h a box's term is softplus(logit(s) - logit(h))
        instead of s: a box still found pulls with a gradient near 1 in logit space however confident it is (the
        sigmoid does not flatten it), a box already well below h pulls with nearly none — the effort goes to the
        people still detected rather than to pushing hidden ones further down."""
        if self.reduce == "per-box":
            assert goal is not None
            k = outputs.shape[1] // 5
            scores, cand = outputs[:, :k], outputs[:, k:].reshape(len(outputs), k, 4)
            per_draw = []
            for i in range(len(outputs)):
                g = goal[i][~torch.isnan(goal[i]).any(dim=1)]
                if len(g) == 0:
                    per_draw.append(scores.new_full((), NO_CANDIDATE))
                    continue
                near = box_iou(cand[i], g) >= self.overlap_iou  # (K, G)
                masked = torch.where(near, scores[i][:, None], torch.full_like(near, NO_CANDIDATE, dtype=scores.dtype))
                best = masked.max(dim=0).values
                if self.box_hinge is not None:
                    best = F.softplus(logit(best) - math.log(self.box_hinge / (1 - self.box_hinge)))
                per_draw.append(best.mean())
            return torch.stack(per_draw).mean()
        if self.only_overlapping:
            assert goal is not None
            k = outputs.shape[1] // 5
            scores, cand = outputs[:, :k], outputs[:, k:].reshape(len(outputs), k, 4)
            keep = torch.zeros_like(scores, dtype=torch.bool)
            for i in range(len(outputs)):
                g = goal[i][~torch.isnan(goal[i]).any(dim=1)]
                if len(g):
                    keep[i] = (box_iou(cand[i], g) >= self.overlap_iou).any(dim=1)
        else:
            scores, keep = outputs, torch.ones_like(outputs, dtype=torch.bool)
        rows = []
        for i in range(len(scores)):
            v = scores[i][keep[i]]
            if v.numel() == 0:
                rows.append(scores.new_full((), NO_CANDIDATE))
            elif self.reduce == "max":
                rows.append(v.max())
            elif self.reduce == "topk":
                rows.append(v.topk(min(self.top_k, v.numel())).values.mean())
            else:
                rows.append(v.mean())
        return torch.stack(rows).mean()

    def _score(self, ctx: Any, outputs: Tensor, goal: Tensor | None) -> dict[str, Tensor]:
        """Per draw: ``detected`` (B, P) per person slot (False on padding), ``success`` = every person hidden,
        the detections and the ground-truth boxes."""
        assert goal is not None
        boxes, scores = unpack_detections(outputs)
        valid = ~torch.isnan(goal).any(dim=-1)
        detected = torch.zeros(valid.shape, dtype=torch.bool, device=outputs.device)
        for i in range(len(outputs)):
            keep = scores[i] >= self.score_threshold
            if keep.any() and valid[i].any():
                iou = box_iou(boxes[i][keep], torch.nan_to_num(goal[i].float()))  # (D, P)
                detected[i] = (iou >= self.iou_threshold).any(dim=0) & valid[i]
        return {"success": ~detected.any(dim=1), "detected": detected, "valid": valid,
                "detections": outputs, "gt_boxes": goal.float().flatten(1)}

    def _result(self, ctx: PersonPatchContext, run: LoopOutcome) -> PhysicalResult:
        patch = run.colours
        ev = self._eval_context(ctx)
        with torch.no_grad():
            shown = self.composite(ev, patch, self.nominal_draw(ev, torch.arange(len(ev.scenes), device=ctx.device)),
                                   ev.scenes, ev.boxes)
        extras: dict[str, Any] = {"patch_fraction": self.patch_fraction, "max_area_fraction": self.max_area_fraction,
                                  "train_scenes": len(ctx.scenes), "held_out_scenes": len(ctx.eval_scenes),
                                  "train_persons": int((~torch.isnan(ctx.boxes).any(-1)).sum()),
                                  "held_out_persons": int((~torch.isnan(ctx.eval_boxes).any(-1)).sum()),
                                  "iou_threshold": self.iou_threshold, "score_threshold": self.score_threshold,
                                  "gt_score": self.gt_score}
        for variant in ("final", "initial", "clean"):
            s = run.scores.get(variant, {})
            if "detected" in s:
                extras[f"{variant}_recall"] = float(s["detected"].sum()) / max(1, int(s["valid"].sum()))
        return self._physical_result(ctx, run, perturbation=patch, adversarial=shown[:1], extras=extras)

    def _save(self, run: Any, result: PhysicalResult) -> None:
        run.save_image("texture", result.perturbation)
        super()._save(run, result)

    # -- the attack
    def initial_colours(self) -> Tensor:
        if self.init == "random":
            generator = torch.Generator().manual_seed(self.seed + 7)
            return torch.rand(1, 3, self.patch_size, self.patch_size, generator=generator)
        return torch.full((1, 3, self.patch_size, self.patch_size), 0.5)

    def __call__(self, detector: nn.Module, scenes: Tensor, *, eval_scenes: Tensor,  # type: ignore[override]
                 boxes: list[Tensor] | None = None, eval_boxes: list[Tensor] | None = None,
                 faces: list[Tensor] | None = None, eval_faces: list[Tensor] | None = None,
                 initial: Tensor | None = None, **run: Unpack[RunOptions]) -> PhysicalResult:
        """Optimise the patch on ``scenes`` (N, 3, H, W) against ``detector`` (a ``Detector``); evaluate on fresh
        draws of ``eval_scenes`` (photos not optimised on). ``boxes`` / ``eval_boxes``: the person boxes of each
        scene (default: ``ground_truth``). ``initial``: colours (1, 3, P, P) in [0, 1] to start from (e.g. another
        run's patch, to continue it under another EOT or patch fraction) instead of ``init``; the evaluation's
        ``initial`` variant is then that patch. ``faces`` / ``eval_faces``: each scene's face boxes, to keep the
        patch below each person's face (``placements``)."""
        ctx = self.context(detector, scenes, eval_scenes, boxes=boxes, eval_boxes=eval_boxes, faces=faces,
                           eval_faces=eval_faces)
        if initial is not None and tuple(initial.shape) != (1, 3, self.patch_size, self.patch_size):
            raise ConfigError(f"initial patch has shape {tuple(initial.shape)}, expected "
                              f"(1, 3, {self.patch_size}, {self.patch_size})")
        colours0 = self.initial_colours() if initial is None else initial.detach().float().cpu()
        w0 = logit(colours0).to(ctx.device)
        extra = {"scenes_shape": list(ctx.scenes.shape), "eval_scenes_shape": list(ctx.eval_scenes.shape),
                 **(run.pop("run_extra", None) or {})}
        return self._attack(ctx, w0, run_extra=extra, score_clean=True, **run)

    def evaluate(self, detector: nn.Module, textures: dict[str, Tensor | None], scenes: Tensor, *,
                 boxes: list[Tensor] | None = None, faces: list[Tensor] | None = None, progress: bool = False
                 ) -> tuple[dict[str, dict[str, Tensor]], list[dict[str, Any]]]:
        """Score each texture (name → (1, 3, S, S) colours; None = no patch) on the SAME ``eval_samples`` fresh
        draws (generator ``eval_seed``) of ``scenes``: ({name: {"detected", "valid", "detections", "gt_boxes",
        "success"}}, the draws); ``progress``: the loop's evaluation bar on stderr."""
        ctx = self.context(detector, scenes, scenes, boxes=boxes, eval_boxes=boxes, faces=faces, eval_faces=faces)
        variants = {k: (None if v is None else v.to(ctx.device).float()) for k, v in textures.items()}
        return self._evaluate(ctx, variants, progress=progress)


__all__ = ["FACE_TOP", "MAX_PATCH_FRACTION", "DetectorClassScores", "PersonPatch", "PersonPatchContext",
           "PersonPatchDraw", "detection_images", "face_floors", "pad_boxes", "pad_floors", "random_patch",
           "unpack_detections"]
