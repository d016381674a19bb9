"""Detection metrics of the harness: recall at an IoU and a score threshold (counted per ground-truth box, with a
Wilson interval) and all-point interpolated average precision (AP), PASCAL VOC style.

Matching (VOC): the detections of an image are taken in decreasing score; each one is matched to the ground-truth
box it overlaps most; it is a true positive when that IoU is ``>= iou_threshold`` and the box is not yet matched,
otherwise a false positive (a second detection of the same face is a false positive). Boxes are ``(x1, y1, x2,
y2)`` in pixels.

* ``recall``: the ground-truth boxes matched by a detection whose score is ``>= score_threshold``, over all
  ground-truth boxes: a ``testbed.stats.Rate`` (k, n, 95% Wilson interval).
* ``average_precision``: all detections of all images sorted by score, the precision / recall curve, its
  monotone (non-increasing) envelope, summed over every recall step (VOC 2010+ "all-point" interpolation).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from testbed.errors import ConfigError
from testbed.stats import Rate, wilson


@dataclass(frozen=True)
class ImageDetections:
    """One image: its ground-truth boxes (G, 4) and the detector's boxes (D, 4) with scores (D,)."""

    gt: Tensor
    boxes: Tensor
    scores: Tensor

    def __post_init__(self) -> None:
        for name in ("gt", "boxes"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[1] != 4:
                raise ConfigError(f"{name} must be an N x 4 tensor of (x1, y1, x2, y2) boxes, got "
                                  f"{getattr(t, 'shape', type(t))}")
        if not isinstance(self.scores, Tensor) or self.scores.shape != (len(self.boxes),):
            raise ConfigError(f"scores must be a ({len(self.boxes)},) tensor, one per box, got "
                              f"{getattr(self.scores, 'shape', type(self.scores))}")


def _check_threshold(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


def match(image: ImageDetections, iou_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """VOC greedy matching of one image: (order of the detections by decreasing score (D,), true-positive flag of
    each detection in that order (D,) bool)."""
    _check_threshold("iou_threshold", iou_threshold)
    order = torch.argsort(image.scores.detach().float(), descending=True, stable=True)
    tp = torch.zeros(len(order), dtype=torch.bool)
    if len(order) == 0 or len(image.gt) == 0:
        return order, tp
    iou = box_iou(image.boxes.detach().float()[order], image.gt.detach().float())  # (D, G)
    taken = torch.zeros(len(image.gt), dtype=torch.bool)
    best_iou, best_gt = iou.max(dim=1)
    for i in range(len(order)):
        g = int(best_gt[i])
        if float(best_iou[i]) >= iou_threshold and not taken[g]:
            tp[i] = True
            taken[g] = True
    return order, tp


def recall(images: Sequence[ImageDetections], *, iou_threshold: float = 0.5, score_threshold: float = 0.0) -> Rate:
    """Ground-truth boxes found (a detection with score >= ``score_threshold`` at IoU >= ``iou_threshold``), k of
    n ground-truth boxes, with a Wilson interval."""
    _check_threshold("score_threshold", score_threshold)
    found = total = 0
    for im in images:
        keep = im.scores >= score_threshold
        _, tp = match(ImageDetections(im.gt, im.boxes[keep], im.scores[keep]), iou_threshold)
        found += int(tp.sum())
        total += len(im.gt)
    return wilson(found, total)


def average_precision(images: Sequence[ImageDetections], *, iou_threshold: float = 0.5) -> float:
    """All-point interpolated AP over ``images`` (nan when there is no ground-truth box)."""
    scores, flags = [], []
    n_gt = 0
    for im in images:
        order, tp = match(im, iou_threshold)
        scores.append(im.scores.detach().float()[order])
        flags.append(tp)
        n_gt += len(im.gt)
    if n_gt == 0:
        return float("nan")
    if not scores or sum(len(s) for s in scores) == 0:
        return 0.0
    s, tp = torch.cat(scores), torch.cat(flags)
    order = torch.argsort(s, descending=True, stable=True)
    tp = tp[order].double()
    tp_cum, fp_cum = tp.cumsum(0), (1 - tp).cumsum(0)
    rec = tp_cum / n_gt
    prec = tp_cum / (tp_cum + fp_cum)
    # the envelope: precision at recall r = the best precision at any recall >= r
    env = torch.flip(torch.cummax(torch.flip(prec, [0]), 0).values, [0])
    prev = torch.cat([rec.new_zeros(1), rec[:-1]])
    return float(((rec - prev) * env).sum())


@dataclass(frozen=True)
class DetectionSummary:
    """Recall (per ground-truth box, Wilson interval) and AP of one set of images, with the thresholds used."""

    recall: Rate
    average_precision: float
    iou_threshold: float
    score_threshold: float
    images: int
    detections: int

    def as_dict(self) -> dict[str, Any]:
        return {"recall": self.recall.as_dict(), "recall_text": str(self.recall),
                "average_precision": self.average_precision, "iou_threshold": self.iou_threshold,
                "score_threshold": self.score_threshold, "images": self.images, "detections": self.detections}


def summarise(images: Sequence[ImageDetections], *, iou_threshold: float = 0.5,
              score_threshold: float = 0.0) -> DetectionSummary:
    """Recall at (``iou_threshold``, ``score_threshold``) and AP at ``iou_threshold``."""
    return DetectionSummary(recall(images, iou_threshold=iou_threshold, score_threshold=score_threshold),
                            average_precision(images, iou_threshold=iou_threshold), float(iou_threshold),
                            float(score_threshold), len(images), sum(len(im.boxes) for im in images))


__all__ = ["DetectionSummary", "ImageDetections", "average_precision", "match", "recall", "summarise"]
