"""The one interface every object / face detector in the registry implements (task ``detector``).

A detector is an ``nn.Module`` with two faces:

* **evaluation** — ``detect(images)`` (also ``forward``): BCHW RGB float in [0, 1] of any size in, one
  :class:`DetectionSet` per image out (boxes in the input image's pixel coordinates, ``(x1, y1, x2, y2)``; scores in
  [0, 1]; label indices into ``labels``), after the detector's own decoding, score threshold and NMS; no gradients.
* **attack** — ``candidate_scores(images, label)``: a ``(B, K)`` tensor, differentiable with respect to the pixels,
  of the per-candidate confidence that ``label`` is present (before any threshold or NMS): for a one-stage detector
  objectness x class probability (Thys et al. 2019) or the class heat-map, for a cascade the candidates' scores.
  Losses reduce it over candidates (max, top-k mean); ``candidate_boxes`` optionally gives each candidate's box, so a
  loss can keep only the candidates that overlap a target box.

Coordinates are continuous pixel coordinates: the image's top-left corner is (0, 0), pixel (row i, col j) covers
[j, j + 1) x [i, i + 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torchvision.ops import batched_nms

from testbed.errors import ConfigError, ImageError


@dataclass(frozen=True)
class DetectionSet:
    """One image's detections, sorted by decreasing score."""

    boxes: torch.Tensor  # (N, 4) x1, y1, x2, y2 in input pixels
    scores: torch.Tensor  # (N,) in [0, 1]
    labels: torch.Tensor  # (N,) int64 indices into the detector's labels

    def to(self, device: torch.device | str) -> "DetectionSet":
        return DetectionSet(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    def of_label(self, label: int) -> "DetectionSet":
        """Only the detections of one class."""
        keep = self.labels == label
        return DetectionSet(self.boxes[keep], self.scores[keep], self.labels[keep])

    def as_rows(self, label_names: Sequence[str], digits: int = 4) -> list[dict]:
        """JSON rows ``{"label", "score", "box"}`` (for logs and reports)."""
        return [{"label": label_names[int(c)], "score": round(float(s), digits),
                 "box": [round(float(v), 1) for v in b]}
                for b, s, c in zip(self.boxes, self.scores, self.labels)]


class Detector(nn.Module):
    """Base class of the registry's detectors (see the module docstring for the contract)."""

    #: class names, indexed by ``DetectionSet.labels``
    labels: tuple[str, ...] = ()
    #: the detector's own defaults, used by ``detect`` when not given
    score_threshold: float = 0.5
    nms_iou: float = 0.5

    def label_index(self, label: str | int) -> int:
        """A class name (or index) as an index; unknown names are a ``ConfigError`` naming the known ones."""
        if isinstance(label, int):
            if not 0 <= label < len(self.labels):
                raise ConfigError(f"label index {label} is out of range 0..{len(self.labels) - 1}")
            return label
        try:
            return self.labels.index(label)
        except ValueError:
            raise ConfigError(f"unknown label {label!r} for this detector (its {len(self.labels)} labels: "
                              f"{', '.join(self.labels)})") from None

    def detect(self, images: torch.Tensor, score_threshold: float | None = None) -> list[DetectionSet]:
        raise NotImplementedError

    def label_boxes(self, images: torch.Tensor, label: int, score_threshold: float | None = None
                    ) -> list[torch.Tensor]:
        """Each image's boxes ``(N_i, 4)`` (float, CPU) of the class ``label`` at ``score_threshold`` or more (default:
        the detector's own), one image at a time (large scenes, bounded memory)."""
        return [self.detect(images[i : i + 1], score_threshold)[0].of_label(label).boxes.float().cpu().reshape(-1, 4)
                for i in range(len(images))]

    def candidate_scores(self, images: torch.Tensor, label: int) -> torch.Tensor:
        raise NotImplementedError

    def candidate_boxes(self, images: torch.Tensor) -> torch.Tensor | None:
        """Each candidate's box ``(B, K, 4)`` in input pixels, aligned with ``candidate_scores``; None if unknown."""
        return None

    def forward(self, images: torch.Tensor) -> list[DetectionSet]:
        with torch.no_grad():
            return self.detect(images)


def check_images(images: torch.Tensor) -> torch.Tensor:
    """BCHW RGB float in [0, 1], or an ``ImageError`` naming what is wrong."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ImageError(f"a detector takes a B x 3 x H x W RGB batch, got {shape}")
    if not images.is_floating_point():
        raise ImageError(f"a detector takes float images in [0, 1], got {images.dtype}")
    return images


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, score_threshold: float,
                      nms_iou: float, max_detections: int = 100) -> DetectionSet:
    """Threshold, per-class NMS and sort one image's decoded candidates (boxes ``(K, 4)``, scores/labels ``(K,)``)."""
    keep = scores >= score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    kept = batched_nms(boxes.float(), scores.float(), labels, nms_iou)[:max_detections]
    return DetectionSet(boxes[kept], scores[kept], labels[kept].long())
