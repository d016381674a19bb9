"""Face-detector evasion with an eyeglass frame against MTCNN (issue 19): the eyeglass attack of
``physical/eyeglass.py`` on the one physical loop (``physical/loop.py``), with a Thys-style objectness loss.

The frame, its mask, the chips, the EOT draws and the rendering are ``EyeglassFrame``'s (the frame is printed and
worn on the aligned 150 x 150 face chip, which is then photographed through the EOT draw). What changes:

* the model is ``MTCNNFaceScores``, a wrapper of ``testbed.models.mtcnn.MTCNN`` whose output is one row per image
  (see ``unpack``): three differentiable face scores — P-Net (every window of the pyramid), R-Net (the P-Net
  candidates), O-Net (the R-Net candidates), each reduced over the candidate windows by ``max`` or by the mean of
  the top ``k`` (Thys et al. 2019's "max objectness") — and, when gradients are off (evaluation), the detector's
  own detections (``MTCNN.detect``, unchanged: boxes and probabilities, the ``max_detections`` most probable);
  the candidate windows of R- and O-Net come from the real cascade (run without gradients), the scores on them are
  computed with gradients through the detector's crops (``MTCNN._crops``);
* the loss is the mean over the draws of ``s_P + s_R + s_O`` (a face is found only if all three stages pass);
* success on an evaluation draw = the face is NOT detected: no detection with probability ``>= score_threshold``
  at IoU ``>= iou_threshold`` with the ground-truth box. The ground-truth box of a chip is MTCNN's most probable
  detection on the clean, untransformed chip (the EOT draw moves the face by at most a few % of the chip and
  rotates it by at most 5 degrees, so the clean detections still match it: the clean recall is measured on the
  same draws and reported beside);
* evaluation runs on HELD-OUT chips (``eval_chips``: faces the frame was not optimised on), on fresh draws from
  the evaluation generator, for the optimised frame, the initial (brown) frame and no frame; ``evaluate`` scores
  any textures — e.g. the random-colour control — on the same draws.

Per-draw detections are kept in the result's ``scores`` (``detections``: (E, 5 * max_detections), ``gt_box``:
(E, 4)), so ``pipelines.detection_metrics`` computes recall and AP from them (``detection_images``).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from physical.eot import EOTTransform
from physical.eyeglass import (
    EyeglassFrame,
    FrameDraw,
    _check_chips,
    frame_mask,
    save_result,
)
from physical.hyper import check_int, check_nonneg
from physical.loop import (
    AttackContext,
    LoopOutcome,
    PhysicalResult,
    RunOptions,
    device_of,
    logit,
    replace_context,
)
from testbed.errors import ConfigError, ImageError
from testbed.models.mtcnn import MTCNN
from testbed.palette import resolve_palette

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only the annotations need it
    from typing import Unpack

#: the three stage scores come first in each output row, then ``max_detections`` x (x1, y1, x2, y2, prob)
N_SCORES = 3


#: the log-odds given to a stage with no candidate window in an image (the face is already lost there)
NO_CANDIDATE = -10.0


@contextmanager
def _captured(module: nn.Module) -> Iterator[list[Tensor]]:
    """The outputs of ``module`` during the block (a forward hook, removed on exit)."""
    outs: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: outs.append(out))
    try:
        yield outs
    finally:
        handle.remove()


def _reduce(values: Tensor, how: str, k: int) -> Tensor:
    """max, or the mean of the top ``k``, of a 1-d tensor (``NO_CANDIDATE`` when empty)."""
    if values.numel() == 0:
        return values.new_full((), NO_CANDIDATE)
    if how == "max":
        return values.max()
    return values.topk(min(k, values.numel())).values.mean()


class MTCNNFaceScores(nn.Module):
    """MTCNN as the loop's model: ``forward(x)`` → (B, 3 + 5 * max_detections) float rows (see ``unpack``).

    Holds the detector as a submodule (its weights and buffers are the detector's; nothing is trained)."""

    def __init__(self, detector: MTCNN, *, reduce: Literal["max", "topk"] = "max", k: int = 5,
                 max_detections: int = 5) -> None:
        super().__init__()
        if reduce not in ("max", "topk"):
            raise ConfigError(f"reduce must be 'max' or 'topk', got {reduce!r}")
        check_int("k", k)
        check_int("max_detections", max_detections)
        self.detector, self.reduce, self.k, self.max_detections = detector, reduce, k, max_detections

    def stage_scores(self, x: Tensor) -> Tensor:
        """(B, 3): the P-, R- and O-Net face log-odds of each image (``logit(p)``, taken from the networks' raw
        face / not-face outputs, so they never saturate), reduced over its candidate windows (``-inf``-free: an
        image without candidates at a stage scores ``NO_CANDIDATE``)."""
        m = self.detector
        batch, _, height, width = x.shape
        with _captured(m.pnet.conv4_1) as plog:
            for _scale, level in m._pyramid(x):
                m.pnet(level)
        pnet = (torch.cat([(z[:, 1] - z[:, 0]).flatten(1) for z in plog], dim=1) if plog
                else x.new_zeros(batch, 0))
        with torch.no_grad():  # the cascade's own stage-1 candidate windows
            boxes1, idx1 = m._stage1(x.detach())
            ok = m._valid(boxes1, height, width)
            boxes1, idx1 = boxes1[ok], idx1[ok]
        rlogit = oprob_logit = x.new_zeros(0)
        idx2 = idx1[:0]
        if len(boxes1):
            with _captured(m.rnet.dense5_1) as rlog:
                reg1, rprob = m._batched(m.rnet, m._crops(x, boxes1, idx1, 24))
            rlogit = torch.cat([z[:, 1] - z[:, 0] for z in rlog])
            with torch.no_grad():  # the rest of MTCNN._stage2 on these outputs: its stage-2 candidates
                boxes2, idx2 = m._refine(boxes1, reg1.detach(), rprob.detach(), idx1)
                ok = m._valid(boxes2, height, width)
                boxes2, idx2 = boxes2[ok], idx2[ok]
            if len(boxes2):
                with _captured(m.onet.dense6_1) as olog:
                    m._batched(m.onet, m._crops(x, boxes2, idx2, 48))
                oprob_logit = torch.cat([z[:, 1] - z[:, 0] for z in olog])
        rows = []
        for b in range(batch):
            rows.append(torch.stack([_reduce(pnet[b], self.reduce, self.k),
                                     _reduce(rlogit[idx1 == b], self.reduce, self.k),
                                     _reduce(oprob_logit[idx2 == b], self.reduce, self.k)]))
        return torch.stack(rows)

    def detections(self, x: Tensor) -> Tensor:
        """(B, 5 * max_detections): MTCNN's detections (x1, y1, x2, y2, prob), most probable first, padded with
        probability -1."""
        out = x.new_full((len(x), self.max_detections, 5), -1.0)
        for b, d in enumerate(self.detector.detect(x.detach().clamp(0, 1))):
            n = min(len(d), self.max_detections)
            out[b, :n, :4] = d.boxes[:n].to(out)
            out[b, :n, 4] = d.probs[:n].to(out)
        return out.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """With gradients (optimisation): the stage scores, detections NaN; without (evaluation): the detections,
        stage scores NaN (each half costs a cascade pass; only the one the caller uses is computed)."""
        if torch.is_grad_enabled():
            dets = x.new_full((len(x), 5 * self.max_detections), float("nan"))
            return torch.cat([self.stage_scores(x), dets], dim=1)
        return torch.cat([x.new_full((len(x), N_SCORES), float("nan")), self.detections(x)], dim=1)


def unpack(outputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(stage scores (B, 3), detection boxes (B, M, 4), detection probabilities (B, M); -1 = no detection)."""
    dets = outputs[:, N_SCORES:].reshape(len(outputs), -1, 5)
    return outputs[:, :N_SCORES], dets[..., :4], dets[..., 4]


def detection_images(detections: Tensor, gt_boxes: Tensor) -> list[Any]:
    """Per-draw ``pipelines``-free records for ``pipelines.detection_metrics.ImageDetections``:
    [(gt (1, 4), boxes (D, 4), probs (D,))], from the result's ``detections`` (E, 5M) and ``gt_box`` (E, 4)."""
    dets = detections.reshape(len(detections), -1, 5)
    out = []
    for d, g in zip(dets, gt_boxes):
        keep = d[:, 4] >= 0
        out.append((g.reshape(1, 4), d[keep, :4], d[keep, 4]))
    return out


@dataclass(kw_only=True)
class DetectorFrameContext(AttackContext):
    """One call of ``FaceDetectorFrame``: chips and their ground-truth face boxes, for optimisation and for the
    held-out evaluation."""

    chips: Tensor  # (N, 3, S, S)
    boxes: Tensor  # (N, 4)
    eval_chips: Tensor  # (M, 3, S, S): faces not optimised on
    eval_boxes: Tensor  # (M, 4)


@dataclass(frozen=True, kw_only=True)
class FaceDetectorFrame(EyeglassFrame):
    """An eyeglass frame that hides the face from MTCNN (see the module docstring). ``mode`` / ``loss`` /
    ``margin`` / ``threshold`` / ``lambda_own`` of the eyeglass are unused."""

    name: ClassVar[str] = "eyeglass-evade-detector"
    CONFIG_OMIT_DEFAULTS: ClassVar[dict[str, Any]] = {"precision": "fp32", "eot_batch": None, "select_every": 0,
                                                      "select_samples": 200, "stop_at": None,
                                                      "stage_loss": "sum"}

    reduce: Literal["max", "topk"] = "max"
    top_k: int = 5
    iou_threshold: float = 0.5
    score_threshold: float = 0.7  # MTCNN's own O-Net threshold: every detection it returns counts
    max_detections: int = 5
    logit_margin: float = 1.0  # how far below each stage's threshold the face log-odds are pushed
    # how the three stages' hinges make a draw's loss: "sum" pushes every stage below its threshold; "min" only
    # the stage nearest to failing (a face is reported only if ALL stages pass, so one failing stage hides it)
    stage_loss: Literal["sum", "min"] = "sum"

    def validate(self) -> None:
        if self.reduce not in ("max", "topk"):
            raise ConfigError(f"reduce must be 'max' or 'topk', got {self.reduce!r}")
        if self.stage_loss not in ("sum", "min"):
            raise ConfigError(f"stage_loss must be 'sum' or 'min', got {self.stage_loss!r}")
        check_int("top_k", self.top_k)
        check_int("max_detections", self.max_detections)
        check_nonneg("logit_margin", self.logit_margin)
        for n in ("iou_threshold", "score_threshold"):
            check_nonneg(n, getattr(self, n))
            if getattr(self, n) > 1:
                raise ConfigError(f"{n} must be in [0, 1], got {getattr(self, n)}")
        super().validate()

    def scorer(self, detector: MTCNN) -> MTCNNFaceScores:
        return MTCNNFaceScores(detector, reduce=self.reduce, k=self.top_k, max_detections=self.max_detections)

    @staticmethod
    @torch.no_grad()
    def ground_truth(detector: MTCNN, chips: Tensor) -> Tensor:
        """(N, 4): MTCNN's most probable face box on each clean chip (ImageError when a chip has none)."""
        boxes = []
        for i, d in enumerate(detector.detect(chips)):
            if len(d) == 0:
                raise ImageError(f"MTCNN finds no face on chip {i}: it cannot be a face-detector evasion target")
            boxes.append(d.boxes[0].float().cpu())
        return torch.stack(boxes)

    def detector_context(self, detector: MTCNN, chips: Tensor, eval_chips: Tensor, *,
                         mask: Tensor | None = None) -> DetectorFrameContext:
        chips = _check_chips(chips, "chips")
        eval_chips = _check_chips(eval_chips, "eval_chips")
        if chips.shape[-1] != eval_chips.shape[-1]:
            raise ImageError(f"chips and eval_chips must have the same size, got {tuple(chips.shape)} and "
                             f"{tuple(eval_chips.shape)}")
        scorer = self.scorer(detector)
        device = device_of(detector, chips.device)
        if mask is None:
            mask = frame_mask(int(chips.shape[-1]), geometry=self.geometry)
        return DetectorFrameContext(
            model=scorer, device=device, mask=mask.float().to(device), transform=EOTTransform(self.eot),
            palette=resolve_palette(self.palette).to(device), targeted=False, chips=chips.to(device),
            boxes=self.ground_truth(detector, chips).to(device), eval_chips=eval_chips.to(device),
            eval_boxes=self.ground_truth(detector, eval_chips).to(device))

    # -- the loop's hooks (sampling and rendering are the eyeglass's)
    def _goal(self, ctx: DetectorFrameContext, draw: FrameDraw) -> Tensor:
        return ctx.boxes[draw.chip_index]

    def _eval_context(self, ctx: DetectorFrameContext) -> DetectorFrameContext:
        return replace_context(ctx, chips=ctx.eval_chips, boxes=ctx.eval_boxes)

    def _attack_loss(self, ctx: DetectorFrameContext, outputs: Tensor, goal: Tensor | None) -> Tensor:
        """Mean over the draws of the sum (``stage_loss="sum"``) or the min (``"min"``) over the stages of
        ``relu(z_s - logit(t_s) + logit_margin)``: each stage's (max / top-k) face log-odds pushed ``logit_margin``
        below the stage's own threshold ``t_s``."""
        thresholds = torch.tensor(ctx.model.detector.config.thresholds, device=outputs.device)
        limits = torch.log(thresholds) - torch.log1p(-thresholds) - self.logit_margin
        hinges = F.relu(outputs[:, :N_SCORES] - limits)
        per_draw = hinges.sum(dim=1) if self.stage_loss == "sum" else hinges.min(dim=1).values
        return per_draw.mean()

    def _score(self, ctx: DetectorFrameContext, outputs: Tensor, goal: Tensor | None) -> dict[str, Tensor]:
        assert goal is not None
        _, boxes, probs = unpack(outputs)
        detected = torch.zeros(len(outputs), dtype=torch.bool, device=outputs.device)
        for i in range(len(outputs)):
            keep = probs[i] >= self.score_threshold
            if keep.any():
                detected[i] = bool((box_iou(boxes[i][keep], goal[i : i + 1]) >= self.iou_threshold).any())
        best = probs.max(dim=1).values.clamp(min=0)  # the most probable detection (0: none)
        return {"success": ~detected, "detected": detected, "best_probability": best,
                "detections": outputs[:, N_SCORES:], "gt_box": goal.float()}

    def _result(self, ctx: DetectorFrameContext, run: LoopOutcome) -> PhysicalResult:
        texture = run.colours
        adversarial = ctx.mask * texture + (1 - ctx.mask) * ctx.eval_chips
        extras: dict[str, Any] = {"mask_fraction": float(ctx.mask.mean()), "train_chips": len(ctx.chips),
                                  "held_out_chips": len(ctx.eval_chips), "iou_threshold": self.iou_threshold,
                                  "score_threshold": self.score_threshold}
        for variant in ("final", "initial", "clean"):
            det = run.scores.get(variant, {}).get("detected")
            if det is not None:
                extras[f"{variant}_recall"] = float(det.float().mean())
        return self._physical_result(ctx, run, perturbation=texture, adversarial=adversarial, extras=extras)

    def _save(self, run: Any, result: PhysicalResult) -> None:
        self._save_scores(run, result)
        save_result(run, result)  # writes metrics.json last (the mark of a finished run)

    # -- the attack
    def __call__(self, detector: MTCNN, chips: Tensor, *, eval_chips: Tensor,  # type: ignore[override]
                 **run: Unpack[RunOptions]) -> PhysicalResult:
        """Optimise the frame on ``chips`` (N, 3, S, S) against ``detector`` (an ``MTCNN``); evaluate on fresh draws
        of ``eval_chips`` (faces not optimised on)."""
        ctx = self.detector_context(detector, chips, eval_chips)
        w0 = logit(self.initial_texture(int(ctx.chips.shape[-1]))).to(ctx.device)
        extra = {"chips_shape": list(ctx.chips.shape), "eval_chips_shape": list(ctx.eval_chips.shape),
                 **(run.pop("run_extra", None) or {})}
        return self._attack(ctx, w0, run_extra=extra, score_clean=True, **run)

    def evaluate(self, detector: MTCNN, textures: dict[str, Tensor | None], chips: Tensor,  # type: ignore[override]
                 *, mask: Tensor | None = None, progress: bool = False) -> dict[str, dict[str, Tensor]]:
        """Score each texture (name → (1, 3, S, S) colours; None = no frame) on the SAME ``eval_samples`` fresh
        draws (generator ``eval_seed``) of ``chips``: {name: {"detected", "detections", "gt_box", ...}};
        ``progress``: the loop's evaluation bar on stderr."""
        ctx = self.detector_context(detector, chips, chips, mask=mask)
        variants = {k: (None if v is None else v.to(ctx.device)) for k, v in textures.items()}
        scores, _ = self._evaluate(ctx, variants, progress=progress)
        return scores


@torch.no_grad()
def align_all_faces(image: Tensor, detector: MTCNN, *, size: int = 150, padding: float = 0.25,
                    min_prob: float = 0.9) -> Tensor:
    """Every face MTCNN finds in one photo (1 x 3 x H x W) with probability ``>= min_prob``, each aligned on its
    landmarks exactly as ``physical.eyeglass.align_wearer`` aligns the one most probable face: (K, 3, S, S), most
    probable first (a group photo gives several wearers; ImageError when it has none)."""
    from worlds.faces import align_face

    if not 0.0 <= min_prob < 1.0:
        raise ConfigError(f"min_prob must be in [0, 1), got {min_prob}")
    found = detector.detect(image)[0]
    keep = found.probs >= min_prob
    if not bool(keep.any()):
        best = f"best probability {float(found.probs[0]):.3f}" if len(found) else "no candidate at all"
        raise ImageError(f"no face with probability >= {min_prob} in the photo ({best})")
    landmarks = found.landmarks[keep].to(image)
    return align_face(image.expand(len(landmarks), -1, -1, -1), landmarks, size, padding).clamp(0, 1)


def random_texture(size: int, seed: int) -> Tensor:
    """The random-colour control: i.i.d. uniform colours per pixel (1, 3, size, size), seeded."""
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


__all__ = [
    "N_SCORES",
    "DetectorFrameContext",
    "FaceDetectorFrame",
    "MTCNNFaceScores",
    "align_all_faces",
    "detection_images",
    "random_texture",
    "unpack",
]
