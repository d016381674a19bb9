"""MTCNN face detector with 5 landmarks (Zhang et al. 2016), written in PyTorch.

Loads facenet-pytorch 2.6.0's P-, R- and O-Net state dicts (assets ``mtcnn_pnet``, ``mtcnn_rnet``,
``mtcnn_onet``). Two implementations of the cascade (``MTCNNConfig.cascade``), both differentiable with respect to
the pixels through the crops:

* ``"reference"``: facenet-pytorch 2.6.0's ``MTCNN.detect`` reproduced (its 1-based integer P-Net windows, crops
  = the part of the box inside the image in whole pixels resized with area interpolation, ``+1`` box widths in the
  regression and the last NMS, boxes not clipped); checked against its stored outputs on fixed images
  (tests/test_mtcnn_reference.py, tools/mtcnn_reference/).
* ``"roi_align"`` (the default, below): ours and batched; boxes differ from facenet-pytorch's by up to ~7 px.
  It stays the default because on face chips whose face reaches the image border (the eyeglass attacks' inputs)
  the reference's clipped crops stretch the face and mislocate it.

The roi_align cascade:

1. P-Net, fully convolutional, on an image pyramid built with ``F.interpolate(mode="area")`` on the whole
   batch; candidate windows per (image, scale) are reduced with ``batched_nms`` (IoU 0.5), then per image
   (IoU 0.7), regressed and squared.
2. R-Net on 24x24 crops cut with ``torchvision.ops.roi_align`` (all candidates of all images at once; outside
   the image is black, as in the original zero padding); score threshold, NMS (IoU 0.7), regression, square.
3. O-Net on 48x48 crops: score, 5 landmarks, regression, NMS with intersection-over-minimum 0.7.

MTCNN is a registry detector (task ``detector``, ``testbed.models.detection.Detector``): ``detect`` returns one
:class:`Detections` (a ``DetectionSet`` with landmarks; label 0 = ``face``) per image, and ``candidate_scores`` is the
O-Net face probability of each final-stage candidate window, differentiable with respect to the pixels.

Conventions: input BCHW RGB float in [0, 1] (scaled inside to the networks' ``(x*255 - 127.5) / 128``).
Coordinates are continuous pixel coordinates: the image's top-left corner is (0, 0) and pixel (row i, col j)
covers [j, j+1) x [i, i+1) (its centre is (j + 0.5, i + 0.5)). Landmark order (image left/right, i.e. "left
eye" is the one with the smaller x in a frontal face, the subject's right eye): left eye, right eye, nose tip,
mouth left corner, mouth right corner.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from testbed.errors import AssetError, ConfigError, ImageError
from testbed.models.base import Accuracy, ModelEntry
from testbed.models.detection import DetectionSet, Detector

#: Landmark names, in the order of ``Detections.landmarks[:, k]``.
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
#: The networks' own normalisation for [0, 1] input: (x*255 - 127.5) / 128  ==  (x - MEAN) / STD.
MTCNN_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
MTCNN_STD: tuple[float, float, float] = (128.0 / 255,) * 3


# ----------------------------------------------------------------------------------------------------------------
# Networks (parameter names match facenet-pytorch's state dicts)
# ----------------------------------------------------------------------------------------------------------------


def _caffe_flatten(x: torch.Tensor) -> torch.Tensor:
    """Flatten as the original Caffe models did (their dense layers were trained on W-major order)."""
    n, c, h, w = x.shape
    return x.permute(0, 3, 2, 1).reshape(n, c * h * w)


class PNet(nn.Module):
    """Proposal network: fully convolutional, one 12x12 window per output cell (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (regression B x 4 x h x w, face probability B x h x w)."""
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (regression N x 4, face probability N)."""
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_caffe_flatten(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), self.dense5_1(x).softmax(dim=1)[:, 1]


class ONet(nn.Module):
    """Output network on 48x48 crops: score, box regression and 5 landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # x1..x5, y1..y5 relative to the crop

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (regression N x 4, landmarks N x 5 x 2 in crop units [0, 1], face probability N)."""
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_caffe_flatten(self.prelu4(self.conv4(x)))))
        pts = self.dense6_3(x).view(-1, 2, 5).transpose(1, 2)
        return self.dense6_2(x), pts, self.dense6_1(x).softmax(dim=1)[:, 1]


# ----------------------------------------------------------------------------------------------------------------
# Results and configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections(DetectionSet):
    """Faces found in one image, sorted by decreasing probability: a ``DetectionSet`` (boxes, scores, labels: all
    0 = ``face``) with landmarks.

    boxes: N x 4 (x1, y1, x2, y2) pixels, clipped to the image; scores (also ``probs``): N; landmarks: N x 5 x 2
    (x, y) pixels in the order of ``LANDMARK_NAMES``.
    """

    landmarks: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 5, 2))

    @classmethod
    def of(cls, boxes: torch.Tensor, probs: torch.Tensor, landmarks: torch.Tensor) -> "Detections":
        """Faces from boxes, probabilities and landmarks (labels all 0)."""
        labels = torch.zeros(len(probs), dtype=torch.long, device=probs.device)
        return cls(boxes, probs, labels, landmarks)

    @property
    def probs(self) -> torch.Tensor:
        """The face probabilities (the same tensor as ``scores``)."""
        return self.scores

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to(self, device: torch.device | str) -> "Detections":
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device),
                          self.landmarks.to(device))

    def of_label(self, label: int) -> "Detections":
        keep = self.labels == label
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.landmarks[keep])

    def best(self) -> "Detections":
        """Only the most probable face (empty if there is none)."""
        return Detections(self.boxes[:1], self.scores[:1], self.labels[:1], self.landmarks[:1])

    def as_dict(self) -> dict:
        """JSON-serialisable lists."""
        return {
            "boxes": self.boxes.tolist(),
            "probs": self.probs.tolist(),
            "landmarks": self.landmarks.tolist(),
            "landmark_names": list(LANDMARK_NAMES),
        }


#: The two implementations of the cascade (``MTCNNConfig.cascade``).
CASCADES: tuple[str, ...] = ("reference", "roi_align")


@dataclass(frozen=True)
class MTCNNConfig:
    """Detector hyper-parameters (facenet-pytorch's defaults)."""

    min_face_size: float = 20.0  # smallest face side searched for, in input pixels
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # P-, R-, O-Net probability thresholds
    factor: float = 0.709  # pyramid scale step
    nms_scale: float = 0.5  # IoU within one (image, scale) after P-Net
    nms_pnet: float = 0.7  # IoU across scales after P-Net
    nms_rnet: float = 0.7  # IoU after R-Net
    nms_onet: float = 0.7  # intersection over the smaller box, after O-Net
    batch_size: int = 512  # crops per R-/O-Net forward pass
    #: "roi_align" (default): our batched cascade (roi_align crops, black outside the image, continuous
    #: coordinates, boxes clipped to the image). "reference": facenet-pytorch 2.6.0's ``MTCNN.detect`` reproduced
    #: (measured: within 3.1e-5 px, same probabilities): crops = the part of the box inside the image, in whole
    #: pixels, resized with area interpolation; its integer P-Net windows, +1 box widths; boxes not clipped. The
    #: default stays roi_align: on face chips whose face reaches the border (the eyeglass attacks') the reference
    #: crops stretch the face and mislocate it (docs/detectors.md, "Verified against facenet-pytorch").
    cascade: str = "roi_align"

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if len(self.thresholds) != 3:
            raise ConfigError(f"MTCNN thresholds must be 3 numbers (P-, R-, O-Net), got {self.thresholds}")
        for name, t in zip(("P-Net", "R-Net", "O-Net"), self.thresholds):
            if not 0.0 <= t < 1.0:
                raise ConfigError(f"MTCNN {name} threshold must be in [0, 1), got {t}")
        if not self.min_face_size >= 12:
            raise ConfigError(f"MTCNN min_face_size must be >= 12 pixels (the P-Net window), got {self.min_face_size}")
        if not 0.1 <= self.factor < 1.0:
            raise ConfigError(f"MTCNN factor (pyramid step) must be in [0.1, 1), got {self.factor}")
        for key in ("nms_scale", "nms_pnet", "nms_rnet", "nms_onet"):
            value = getattr(self, key)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"MTCNN {key} must be in (0, 1], got {value}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"MTCNN batch_size must be a positive int, got {self.batch_size!r}")
        if self.cascade not in CASCADES:
            raise ConfigError(f"MTCNN cascade must be one of {', '.join(CASCADES)}, got {self.cascade!r}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = list(self.thresholds)
        return d


# ----------------------------------------------------------------------------------------------------------------
# Box helpers (all boxes are float tensors N x 4, x1 y1 x2 y2)
# ----------------------------------------------------------------------------------------------------------------


def _regress(boxes: torch.Tensor, reg: torch.Tensor, plus_one: bool = False) -> torch.Tensor:
    """Apply MTCNN's box regression (offsets in units of the box size; ``plus_one``: the size is
    ``x2 - x1 + 1``, as facenet-pytorch's ``bbreg`` after R- and O-Net)."""
    wh = (boxes[:, 2:] - boxes[:, :2] + (1.0 if plus_one else 0.0)).repeat(1, 2)
    return boxes + reg * wh


def _rerec(boxes: torch.Tensor) -> torch.Tensor:
    """``_square`` with facenet-pytorch's arithmetic (``x1 + w/2 - l/2``, then ``x2 = x1 + l``), bit for bit."""
    wh = boxes[:, 2:] - boxes[:, :2]
    side = wh.max(dim=1, keepdim=True).values
    top_left = boxes[:, :2] + wh * 0.5 - side * 0.5
    return torch.cat([top_left, top_left + side], dim=1)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """The square of side max(w, h) with the same centre."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], dim=1)


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float,
             plus_one: bool = False) -> torch.Tensor:
    """Greedy NMS with intersection over the *smaller* area (MTCNN's last stage), per group; returns kept indices
    (most probable first within each group). ``plus_one``: widths and heights are ``x2 - x1 + 1`` (facenet-pytorch's
    ``nms_numpy``)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    one = 1.0 if plus_one else 0.0
    # Separate groups by offsetting them far apart (the same trick as torchvision's batched_nms).
    offset = groups.to(boxes) * (boxes.max() - boxes.min() + 2)
    b = boxes + offset[:, None]
    area = (b[:, 2:] - b[:, :2] + one).clamp(min=0).prod(dim=1)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt + one).clamp(min=0).prod(dim=2)
    overlap = inter / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-9)
    order = scores.argsort(descending=True)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlap[i] > threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


# ----------------------------------------------------------------------------------------------------------------
# Detector
# ----------------------------------------------------------------------------------------------------------------


class MTCNN(Detector):
    """The three-stage cascade. ``detect(images)`` → one ``Detections`` per image.

    Hyper-parameters live in ``config`` (an ``MTCNNConfig``); images are given at call time.
    """

    labels = ("face",)

    @property
    def score_threshold(self) -> float:  # type: ignore[override]
        """``detect``'s default score threshold: the O-Net threshold of ``config``."""
        return self.config.thresholds[2]

    @property
    def nms_iou(self) -> float:  # type: ignore[override]
        """The last stage's NMS overlap (intersection over the smaller box) of ``config``."""
        return self.config.nms_onet

    def __init__(self, config: MTCNNConfig | None = None, *, load_weights: bool = True) -> None:
        super().__init__()
        self.config = config or MTCNNConfig()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        if load_weights:
            from testbed.assets import asset_path

            for asset, net in (("mtcnn_pnet", self.pnet), ("mtcnn_rnet", self.rnet), ("mtcnn_onet", self.onet)):
                _load_state(net, asset_path(asset))
        self.eval()

    # -- public API ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def detect(self, images: torch.Tensor, score_threshold: float | None = None) -> list[Detections]:
        """Detect faces in a batch of images (B x 3 x H x W, RGB float in [0, 1]).

        ``score_threshold`` replaces the O-Net threshold (``config.thresholds[2]``) for this call; the P- and R-Net
        thresholds stay. Returns one ``Detections`` per image, on the input's device, sorted by decreasing
        probability.
        """
        images = _validate_images(images)
        out_device = images.device
        x = images.to(device=next(self.parameters()).device, dtype=torch.float32)
        batch, _, height, width = x.shape
        boxes, img_idx = self._stage1(x)
        if len(boxes):
            boxes, img_idx = self._stage2(x, boxes, img_idx)
        if len(boxes):
            boxes, probs, points, img_idx = self._stage3(x, boxes, img_idx, score_threshold)
        else:
            probs = boxes.new_zeros(0)
            points = boxes.new_zeros(0, 5, 2)

        if not self._reference:  # facenet-pytorch does not clip its boxes to the image
            limits = boxes.new_tensor([width, height, width, height])
            boxes = torch.minimum(boxes.clamp(min=0), limits)
        results = []
        for b in range(batch):
            sel = (img_idx == b).nonzero().flatten()
            sel = sel[probs[sel].argsort(descending=True)]
            results.append(Detections.of(boxes[sel], probs[sel], points[sel]).to(out_device))
        return results

    def _onet_candidates(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The O-Net face probability (with gradients) and regressed box of every stage-3 candidate window (the
        R-Net survivors, found without gradients), their image indices and the largest count per image."""
        x = _validate_images(images).to(device=next(self.parameters()).device, dtype=torch.float32)
        with torch.no_grad():
            boxes, img_idx = self._stage1(x.detach())
            if len(boxes):
                boxes, img_idx = self._stage2(x.detach(), boxes, img_idx)
            ok = self._valid(boxes, *x.shape[-2:])
            boxes, img_idx = boxes[ok], img_idx[ok]
        if not len(boxes):
            return x.new_zeros(0), x.new_zeros(0, 4), img_idx, 0
        reg, _, prob = self._batched(self.onet, self._crops(x, boxes, img_idx, 48))
        width = int(torch.bincount(img_idx, minlength=len(x)).max())
        return prob, _regress(boxes, reg.detach(), plus_one=self._reference), img_idx, width

    @staticmethod
    def _per_image(values: torch.Tensor, img_idx: torch.Tensor, batch: int, width: int) -> torch.Tensor:
        """Scatter per-candidate rows into a (B, width, ...) tensor of zeros, candidates in their cascade order."""
        out = values.new_zeros((batch, width, *values.shape[1:]))
        for b in range(batch):
            rows = values[img_idx == b]
            out[b, : len(rows)] = rows
        return out

    def candidates(self, images: torch.Tensor, label: int | str = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One cascade pass: ``(candidate_scores, candidate_boxes)`` (below)."""
        self.label_index(label)
        prob, boxes, img_idx, width = self._onet_candidates(images)
        return (self._per_image(prob, img_idx, len(images), width),
                self._per_image(boxes.detach(), img_idx, len(images), width))

    def candidate_scores(self, images: torch.Tensor, label: int | str = 0) -> torch.Tensor:
        """``(B, K)``: the O-Net face probability of each final-stage candidate window, differentiable with respect
        to the pixels (through the crops and their resize; the windows themselves come from P- and R-Net without
        gradients);
        K is the largest count in the batch, the other images padded with probability 0."""
        return self.candidates(images, label)[0]

    def candidate_boxes(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, K, 4)``: each candidate's O-Net-regressed box in input pixels, aligned with ``candidate_scores``
        (padding boxes are all zero)."""
        with torch.no_grad():
            return self.candidates(images)[1]

    # -- stages ----------------------------------------------------------------------------------------------------

    @property
    def _reference(self) -> bool:
        """True when the cascade follows facenet-pytorch's arithmetic (``config.cascade == "reference"``)."""
        return self.config.cascade == "reference"

    @staticmethod
    def _net_input(pixels: torch.Tensor) -> torch.Tensor:
        """The networks' input from 0..255 pixels: ``(p - 127.5) / 128``."""
        return (pixels - 127.5) * 0.0078125

    @classmethod
    def _normalise(cls, x: torch.Tensor) -> torch.Tensor:
        return cls._net_input(x * 255.0)

    def _scales(self, height: int, width: int) -> list[float]:
        cfg = self.config
        scale = 12.0 / cfg.min_face_size
        side = min(height, width) * scale
        scales = []
        while side >= 12:
            scales.append(scale)
            scale *= cfg.factor
            side *= cfg.factor
        return scales

    def _pyramid(self, x: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
        """``(scale, P-Net input)`` for every level of the image pyramid (differentiable in ``x``): the image resized
        to ``(int(H * scale + 1), int(W * scale + 1))`` with area interpolation (reference: on 0..255 pixels, then
        normalised, as facenet-pytorch; roi_align: normalised first, the same up to rounding)."""
        height, width = x.shape[-2:]
        levels = []
        for scale in self._scales(height, width):
            size = (int(height * scale + 1), int(width * scale + 1))
            if self._reference:
                levels.append((scale, self._net_input(F.interpolate(x * 255.0, size=size, mode="area"))))
            else:
                levels.append((scale, F.interpolate(self._normalise(x), size=size, mode="area")))
        return levels

    def _stage1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        height, width = x.shape[-2:]
        all_boxes, all_scores, all_reg, all_img, all_group = [], [], [], [], []
        for s_idx, (scale, level) in enumerate(self._pyramid(x)):
            reg, prob = self.pnet(level)
            b, r, c = (prob >= cfg.thresholds[0]).nonzero(as_tuple=True)
            if len(b) == 0:
                continue
            cells = torch.stack([c, r], dim=1).to(x.dtype) * 2  # window top-left in the resized image
            if self._reference:  # facenet-pytorch's generateBoundingBox: 1-based integer windows at the nominal scale
                all_boxes.append(torch.cat([((cells + 1) / scale).floor(), ((cells + 12) / scale).floor()], dim=1))
            else:
                h, w = level.shape[-2:]
                per_axis = cells.new_tensor([w / width, h / height])  # actual per-axis scale of the resized image
                all_boxes.append(torch.cat([cells / per_axis, (cells + 12) / per_axis], dim=1))
            all_scores.append(prob[b, r, c])
            all_reg.append(reg[b, :, r, c])
            all_img.append(b)
            all_group.append(b * 1000 + s_idx)
        if not all_boxes:
            return x.new_zeros(0, 4), torch.zeros(0, dtype=torch.long, device=x.device)
        boxes, scores, reg = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_reg)
        img_idx, group = torch.cat(all_img), torch.cat(all_group)
        keep = batched_nms(boxes, scores, group, cfg.nms_scale)  # within each (image, scale)
        boxes, scores, reg, img_idx = boxes[keep], scores[keep], reg[keep], img_idx[keep]
        keep = batched_nms(boxes, scores, img_idx, cfg.nms_pnet)  # across scales, per image
        boxes, reg, img_idx = boxes[keep], reg[keep], img_idx[keep]
        return self._square(_regress(boxes, reg)), img_idx

    def _square(self, boxes: torch.Tensor) -> torch.Tensor:
        return _rerec(boxes) if self._reference else _square(boxes)

    def _pixel_windows(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Reference crops: facenet-pytorch's ``pad``: (x1, y1, x2, y2) as ints, truncated, x1, y1 >= 1, x2 <= W,
        y2 <= H; the crop is rows ``y1 - 1 .. y2 - 1`` and columns ``x1 - 1 .. x2 - 1`` (0-based, inclusive)."""
        t = boxes.trunc()
        return torch.stack([t[:, 0].clamp(min=1), t[:, 1].clamp(min=1), t[:, 2].clamp(max=width),
                            t[:, 3].clamp(max=height)], dim=1).long()

    def _crops(self, x: torch.Tensor, boxes: torch.Tensor, img_idx: torch.Tensor, size: int) -> torch.Tensor:
        """size x size crops of ``boxes``, normalised for the networks, differentiable in ``x``. Reference:
        facenet-pytorch's crop (the part of the box inside the image, integer pixels) resized with area
        interpolation; roi_align: bilinear samples of the whole box, black outside the image."""
        if not self._reference:
            rois = torch.cat([img_idx[:, None].to(boxes), boxes], dim=1)
            crops = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
            return self._normalise(crops)
        if not len(boxes):
            return x.new_zeros(0, 3, size, size)
        pixels = x * 255.0
        windows = self._pixel_windows(boxes, x.shape[-2], x.shape[-1]).tolist()
        crops = [F.interpolate(pixels[b : b + 1, :, y1 - 1 : y2, x1 - 1 : x2], size=(size, size), mode="area")
                 for b, (x1, y1, x2, y2) in zip(img_idx.tolist(), windows)]
        return self._net_input(torch.cat(crops))

    def _batched(self, net: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        step = self.config.batch_size
        outs = [net(crops[i : i + step]) for i in range(0, max(len(crops), 1), step)]
        return tuple(torch.cat(parts) for parts in zip(*outs))

    def _valid(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Boxes that give a crop: finite, positive size (roi_align) / a non-empty pixel window (reference;
        facenet-pytorch would skip such a crop and misalign its outputs, so they never reach its outputs)."""
        finite = torch.isfinite(boxes).all(dim=1)
        if not self._reference:
            return finite & ((boxes[:, 2:] - boxes[:, :2]) > 1e-3).all(dim=1)
        safe = torch.where(finite[:, None], boxes, torch.zeros_like(boxes))
        win = self._pixel_windows(safe, height, width)
        return finite & (win[:, 3] > win[:, 1] - 1) & (win[:, 2] > win[:, 0] - 1)

    def _refine(self, boxes: torch.Tensor, reg: torch.Tensor, prob: torch.Tensor,
                img_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rest of stage 2 on R-Net's outputs (no gradients needed): threshold, NMS, regression, square."""
        ok = prob > self.config.thresholds[1]
        boxes, reg, prob, img_idx = boxes[ok], reg[ok], prob[ok], img_idx[ok]
        keep = batched_nms(boxes, prob, img_idx, self.config.nms_rnet)
        return self._square(_regress(boxes[keep], reg[keep], plus_one=self._reference)), img_idx[keep]

    def _stage2(self, x, boxes, img_idx):
        ok = self._valid(boxes, *x.shape[-2:])
        boxes, img_idx = boxes[ok], img_idx[ok]
        reg, prob = self._batched(self.rnet, self._crops(x, boxes, img_idx, 24))
        return self._refine(boxes, reg, prob, img_idx)

    def _stage3(self, x, boxes, img_idx, threshold: float | None = None):
        ok = self._valid(boxes, *x.shape[-2:])
        boxes, img_idx = boxes[ok], img_idx[ok]
        reg, pts, prob = self._batched(self.onet, self._crops(x, boxes, img_idx, 48))
        ok = prob > (self.config.thresholds[2] if threshold is None else threshold)
        boxes, reg, pts, prob, img_idx = boxes[ok], reg[ok], pts[ok], prob[ok], img_idx[ok]
        if self._reference:  # facenet-pytorch: x1 + p * (x2 - x1 + 1) - 1
            points = boxes[:, None, :2] + pts * (boxes[:, 2:] - boxes[:, :2] + 1)[:, None, :] - 1
        else:
            points = boxes[:, None, :2] + pts * (boxes[:, 2:] - boxes[:, :2])[:, None, :]
        boxes = _regress(boxes, reg, plus_one=self._reference)
        keep = _nms_min(boxes, prob, img_idx, self.config.nms_onet, plus_one=self._reference)
        return boxes[keep], prob[keep], points[keep], img_idx[keep]


# ----------------------------------------------------------------------------------------------------------------
# Loading, validation, registry entry
# ----------------------------------------------------------------------------------------------------------------


def _load_state(net: nn.Module, path) -> None:
    """Load a facenet-pytorch state dict, requiring every key and shape to match."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AssetError(f"cannot read MTCNN weights {path}: {exc}. Fix: run `testbed assets fetch --force`") from exc
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise AssetError(
            f"MTCNN weights {path} do not match {type(net).__name__}: missing {missing}, unexpected {unexpected}, "
            f"shape mismatch {mismatched}"
        )
    net.load_state_dict(state, strict=True)


def _validate_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ImageError(f"MTCNN.detect expects a torch.Tensor B x 3 x H x W, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ImageError(
            "MTCNN.detect expects a B x 3 x H x W RGB tensor (add a batch dimension with .unsqueeze(0) for one "
            f"image), got shape {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ImageError("MTCNN.detect got an empty batch (B = 0)")
    if min(images.shape[-2:]) < 12:
        raise ImageError(f"MTCNN needs images of at least 12 x 12 pixels, got {tuple(images.shape[-2:])}")
    if not images.is_floating_point():
        raise ImageError(f"MTCNN.detect expects float pixels in [0, 1], got dtype {images.dtype}")
    lo, hi = float(images.detach().min()), float(images.detach().max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ImageError(
            f"MTCNN.detect expects pixel values in [0, 1], got range [{lo:.3g}, {hi:.3g}] (divide 0..255 images by 255)"
        )
    return images


def build_mtcnn(config: MTCNNConfig | None = None) -> MTCNN:
    """An MTCNN detector with its pretrained weights (CPU, eval mode)."""
    return MTCNN(config)


#: Registry entry, registered by ``testbed/models/faces.py``.
#: The detector takes images of any size >= 12 x 12; ``input_size`` records that minimum.
#: ``get_model("mtcnn")(images)`` returns ``list[Detections]`` (a registry detector, task ``detector``).
MTCNN_ENTRY = ModelEntry(
    name="mtcnn",
    task="detector",
    builder=build_mtcnn,
    input_size=(12, 12),
    mean=MTCNN_MEAN,
    std=MTCNN_STD,
    labels=("face",),
    accuracy=(
        Accuracy(
            "shipped photos: astronaut, grace_hopper, camera (one face each) + chelsea, coffee, rocket, "
            "motorcycle_left/right, brick, grass, gravel, coins, moon, page (no face)",
            14,
            100.0,
            None,
            "top1 = % of images with the correct outcome at probability 0.9: exactly one face on the face photos, "
            "none on the others (motorcycle_left has 3 false candidates at 0.72-0.83). Published (MTCNN paper): "
            "FDDB 95.04% recall at 1,000 false positives.",
            measure="photos with the right face count at p >= 0.9 (one face on a face photo, none elsewhere)",
        ),
    ),
    assets=("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"),
    description="MTCNN P/R/O-Net cascade (facenet-pytorch 2.6.0 weights): boxes, probabilities, 5 landmarks",
)


def build_mtcnn_facenet() -> MTCNN:
    """MTCNN with the ``"reference"`` cascade: facenet-pytorch 2.6.0's ``MTCNN.detect``, reproduced."""
    return MTCNN(MTCNNConfig(cascade="reference"))


#: Registry entry of the reference cascade, registered by ``testbed/models/faces.py`` beside ``mtcnn``: the same
#: entry with its own builder, measured figure and description.
MTCNN_FACENET_ENTRY = replace(
    MTCNN_ENTRY,
    name="mtcnn-facenet",
    builder=build_mtcnn_facenet,
    accuracy=(
        replace(
            MTCNN_ENTRY.accuracy[0],
            top1=13 / 14 * 100,
            note="top1 = % of images with the correct outcome at probability 0.9 (as mtcnn's figure): motorcycle_left "
            "has a false face at 0.93 (facenet-pytorch's own detect gives the same). Matches facenet-pytorch 2.6.0's "
            "MTCNN.detect within 3.1e-5 px on 8 fixed images (tests/test_mtcnn_reference.py).",
        ),
    ),
    description="MTCNN with facenet-pytorch 2.6.0's exact cascade (its crops and box arithmetic; boxes not clipped): "
    "boxes, probabilities, 5 landmarks",
)

__all__: Sequence[str] = (
    "Detections",
    "LANDMARK_NAMES",
    "MTCNN",
    "MTCNNConfig",
    "MTCNN_ENTRY",
    "MTCNN_FACENET_ENTRY",
    "MTCNN_MEAN",
    "MTCNN_STD",
    "ONet",
    "PNet",
    "RNet",
    "build_mtcnn",
    "build_mtcnn_facenet",
)
