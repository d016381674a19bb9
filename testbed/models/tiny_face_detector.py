"""face-api's Tiny Face Detector (a tiny YOLOv2 with depthwise-separable convolutions), ported to PyTorch.

The network is ``TinyFaceDetector`` of ``@vladmandic/face-api@1.7.15`` (``src/tinyFaceDetector/`` on
``src/tinyYolov2/TinyYolov2Base.ts``), weights from its ``model/tiny_face_detector_model*`` (assets
``tiny_face_detector_manifest`` / ``tiny_face_detector_weights``). Read from face-api's source and reimplemented:

* **input** (``NetInput.toBatchTensor(inputSize, isCenterInputs=false)``): the RGB image in 0..255 is padded with
  zeros at the bottom or the right to a square (side = the longer side), then, unless that square is already
  ``input_size``, resized with tfjs ``resizeBilinear`` (``alignCorners=false``, ``halfPixelCenters=false``:
  source coordinate ``dst * in / out``, not the half-pixel convention of ``F.interpolate``), then
  ``(x - [117.001, 114.697, 97.404]) / 255``;
* **network** (``runMobilenet``, ``isFirstLayerConv2d``): ``conv0`` 3x3 conv + bias, ``valid`` padding, leaky
  ReLU (slope 0.1); then five times 2x2 max-pool stride 2 ``same`` and a separable block (pad 1, 3x3 depthwise,
  1x1 pointwise, + bias, leaky ReLU: ``conv1`` .. ``conv5``, 16 -> 512 channels); a 2x2 max-pool stride 1
  ``same``; ``conv8`` 1x1 conv + bias to 5 anchors x 5 numbers. For input 416: 414 -> 207 -> 104 -> 52 -> 26 ->
  13 cells. tfjs ``same`` pooling pads at the bottom/right only, which ``ceil_mode`` (stride 2) and a one-pixel
  ``-inf`` pad (stride 1) reproduce;
* **decoding** (``extractBoxes``): per cell (row, col) and anchor ``a`` with ``(tx, ty, tw, th, to)``: score
  ``sigmoid(to)``; centre ``((col + sigmoid(tx)) / n, (row + sigmoid(ty)) / n)``; size
  ``(exp(tw) * anchor_w / n, exp(th) * anchor_h / n)`` in units of the padded square, then scaled to the image by
  ``input_size / round(side * input_size / max(H, W))`` per axis (face-api's ``computeReshapedDimensions``) and to
  pixels by the image's width / height. Boxes are not clipped to the image (as in face-api);
* **selection**: score ``> score_threshold`` (face-api's default 0.5), greedy NMS at IoU 0.4 (a box is suppressed
  when its IoU with a kept one is ``> 0.4``).

There is one class (``face``) and no class scores (face-api's ``boxEncodingSize`` is 5), so the per-candidate
confidence of :meth:`candidate_scores` is ``sigmoid(objectness) x 1``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from testbed.device import default_device
from testbed.errors import AssetError, ConfigError
from testbed.models.base import Accuracy, ModelEntry
from testbed.models.detection import (
    DetectionSet,
    Detector,
    check_images,
    select_detections,
)
from testbed.models.tfjs_graph import tf_resize_bilinear  # the one tfjs resizeBilinear (legacy convention)
from testbed.models.tfjs_weights import read_single_shard_weights

#: face-api's default input size (``TinyYolov2Options``); any multiple of 32 works
DEFAULT_INPUT_SIZE = 416
MEAN_RGB_255 = (117.001, 114.697, 97.404)
#: anchor (width, height) in cells (face-api's ``tinyFaceDetector/const.ts``)
ANCHORS: tuple[tuple[float, float], ...] = (
    (1.603231, 2.094468),
    (6.041143, 7.080126),
    (2.882459, 3.518061),
    (4.266906, 5.178857),
    (9.041765, 10.66308),
)
IOU_THRESHOLD = 0.4
SCORE_THRESHOLD = 0.5
_CHANNELS = (16, 32, 64, 128, 256, 512)


class SeparableConv(nn.Module):
    """face-api's ``depthwiseSeparableConv``: zero pad 1, 3x3 depthwise, 1x1 pointwise + bias, leaky ReLU 0.1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.pointwise(self.depthwise(x)), 0.1)


class TinyFaceDetector(Detector):
    """The Tiny Face Detector: BCHW RGB float in [0, 1] of any size -> face boxes in input pixels.

    ``input_size`` (a multiple of 32, face-api's ``inputSize``) is the side of the square the image is padded and
    resized to; 416 (face-api's default) gives 13 x 13 cells x 5 anchors = 845 candidates.
    """

    labels = ("face",)
    score_threshold = SCORE_THRESHOLD
    nms_iou = IOU_THRESHOLD

    def __init__(self, input_size: int = DEFAULT_INPUT_SIZE) -> None:
        super().__init__()
        if not (isinstance(input_size, int) and input_size >= 32 and input_size % 32 == 0):
            raise ConfigError(f"tiny face detector input_size must be a positive multiple of 32, got {input_size!r}")
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(MEAN_RGB_255, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32))
        self.conv0 = nn.Conv2d(3, _CHANNELS[0], 3, bias=True)
        for i, (cin, cout) in enumerate(itertools.pairwise(_CHANNELS), start=1):
            self.add_module(f"conv{i}", SeparableConv(cin, cout))
        self.conv8 = nn.Conv2d(_CHANNELS[-1], 5 * len(ANCHORS), 1, bias=True)

    # -- the network -------------------------------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Pad to a square at the bottom / right, resize to ``input_size`` (tfjs bilinear), subtract the mean."""
        x = images * 255.0
        h, w = x.shape[-2:]
        side = max(h, w)
        if (h, w) != (side, side):
            x = F.pad(x, (0, side - w, 0, side - h))
        if side != self.input_size:
            x = tf_resize_bilinear(x, (self.input_size, self.input_size))
        return (x - self.mean) / 255.0

    def raw_output(self, images: torch.Tensor) -> torch.Tensor:
        """The network's output for ``images``: ``(B, anchors, 5, n, n)`` — tx, ty, tw, th, objectness logits."""
        x = self.preprocess(check_images(images).to(self.mean.device, torch.float32))
        x = F.leaky_relu(self.conv0(x), 0.1)
        for i in range(1, 6):
            x = getattr(self, f"conv{i}")(F.max_pool2d(x, 2, 2, ceil_mode=True))
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 1)
        out = self.conv8(x)
        n = out.shape[-1]
        return out.view(out.shape[0], len(ANCHORS), 5, n, n)

    def decode(self, raw: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate boxes ``(B, K, 4)`` in pixels of a ``height`` x ``width`` image and scores ``(B, K)``;
        K runs over (row, col, anchor), anchor fastest, as face-api iterates."""
        batch, _, _, n, _ = raw.shape
        t = raw.permute(0, 3, 4, 1, 2)  # B, row, col, anchor, 5
        rows = torch.arange(n, device=raw.device, dtype=raw.dtype).view(1, n, 1, 1)
        cols = torch.arange(n, device=raw.device, dtype=raw.dtype).view(1, 1, n, 1)
        # face-api: scale by inputSize / reshaped size (rounded half up, as JS Math.round), then by the image size
        longest = max(height, width)
        reshaped_w = math.floor(width * self.input_size / longest + 0.5)
        reshaped_h = math.floor(height * self.input_size / longest + 0.5)
        fx, fy = self.input_size / reshaped_w, self.input_size / reshaped_h
        cx = (cols + torch.sigmoid(t[..., 0])) / n * fx
        cy = (rows + torch.sigmoid(t[..., 1])) / n * fy
        bw = torch.exp(t[..., 2]) * self.anchors[:, 0] / n * fx
        bh = torch.exp(t[..., 3]) * self.anchors[:, 1] / n * fy
        x1, y1 = cx - bw / 2, cy - bh / 2
        boxes = torch.stack([x1 * width, y1 * height, (x1 + bw) * width, (y1 + bh) * height], dim=-1)
        return boxes.reshape(batch, -1, 4), torch.sigmoid(t[..., 4]).reshape(batch, -1)

    # -- the Detector contract ---------------------------------------------------------------------------------

    def detect(self, images: torch.Tensor, score_threshold: float | None = None) -> list[DetectionSet]:
        """Faces in each image: boxes ``(x1, y1, x2, y2)`` in input pixels, scores, label 0 (``face``)."""
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        with torch.no_grad():
            boxes, scores = self.decode(self.raw_output(images), *images.shape[-2:])
        results = []
        for b, s in zip(boxes, scores):
            keep = s > threshold  # face-api keeps score > threshold (strictly)
            b, s = b[keep], s[keep]
            found = select_detections(b, s, torch.zeros_like(s, dtype=torch.long), threshold, self.nms_iou,
                                      max_detections=len(s))
            results.append(found.to(images.device))
        return results

    def candidates(self, images: torch.Tensor, label: int | str = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: ``(scores (B, n * n * 5), boxes (B, n * n * 5, 4))``, the face confidence
        ``sigmoid(objectness)`` per cell and anchor (differentiable in the pixels) and each candidate's box in
        input pixels."""
        self.label_index(label)
        boxes, scores = self.decode(self.raw_output(images), *images.shape[-2:])
        return scores, boxes

    def candidate_scores(self, images: torch.Tensor, label: int | str = 0) -> torch.Tensor:
        """``(B, n * n * 5)`` face confidence per cell and anchor, ``sigmoid(objectness)``, differentiable."""
        return self.candidates(images, label)[0]

    def candidate_boxes(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, n * n * 5, 4)`` each candidate's box in input pixels, aligned with ``candidate_scores``."""
        return self.candidates(images)[1]

    # -- weights -----------------------------------------------------------------------------------------------

    def load_tfjs_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy face-api's named tfjs tensors into this module (HWIO -> OIHW; depthwise HWC1 -> C1HW)."""
        state: dict[str, torch.Tensor] = {}
        for tf_name, value in weights.items():
            layer, _, leaf = tf_name.partition("/")
            t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
            if leaf == "filters":
                state[f"{layer}.weight"] = t.permute(3, 2, 0, 1)
            elif leaf == "depthwise_filter":
                state[f"{layer}.depthwise.weight"] = t.permute(2, 3, 0, 1)
            elif leaf == "pointwise_filter":
                state[f"{layer}.pointwise.weight"] = t.permute(3, 2, 0, 1)
            elif leaf == "bias":
                state[f"{layer}.pointwise.bias" if layer not in ("conv0", "conv8") else f"{layer}.bias"] = t
            else:
                raise AssetError(f"unexpected tensor {tf_name!r} in the tiny face detector manifest")
        own = self.state_dict()
        expected = set(own) - {"mean", "anchors"}
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        if missing or unexpected:
            raise AssetError(f"tiny face detector weights do not match the network: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for key, value in state.items():
            if tuple(own[key].shape) != tuple(value.shape):
                raise AssetError(f"tiny face detector weight {key!r} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(own[key].shape)}")
        self.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=False)


def build_tiny_face_detector(manifest_path: Path, weights_path: Path,
                             input_size: int = DEFAULT_INPUT_SIZE) -> TinyFaceDetector:
    """A TinyFaceDetector with weights read from face-api's manifest + ``.bin`` (CPU, eval mode)."""
    net = TinyFaceDetector(input_size)
    net.load_tfjs_weights(read_single_shard_weights(manifest_path, weights_path, "tiny face detector"))
    return net.eval()


def load_tiny_face_detector(device: torch.device | str | None = None,
                            input_size: int = DEFAULT_INPUT_SIZE) -> TinyFaceDetector:
    """The pretrained detector from the cached face-api assets, eval mode, parameters frozen.

    Raises AssetError naming the file and the fix (``testbed assets fetch``) when an asset is missing/corrupt.
    """
    from testbed.assets import asset_path

    net = build_tiny_face_detector(asset_path("tiny_face_detector_manifest"),
                                   asset_path("tiny_face_detector_weights"), input_size)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device if device is not None else default_device())


def _build_entry_model() -> nn.Module:
    return load_tiny_face_detector(device="cpu")  # get_model moves it to the requested device


#: Registry entry, registered by ``testbed/models/faces.py``. ``input_size`` is the network's square input (any
#: image size is accepted: it is padded and resized to it).
TINY_FACE_DETECTOR_ENTRY = ModelEntry(
    name="tiny-face-detector",
    task="detector",
    builder=_build_entry_model,
    input_size=(DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE),
    mean=tuple(m / 255.0 for m in MEAN_RGB_255),
    std=(1.0, 1.0, 1.0),
    labels=("face",),
    accuracy=(
        Accuracy(
            "shipped photos: astronaut, grace_hopper, camera (one face each) + chelsea, coffee, rocket, "
            "motorcycle_left/right, brick, grass, gravel, coins, moon, page (no face)",
            14,
            100.0,
            None,
            "top1 = % of images with the correct outcome at score > 0.5 (face-api's default), input 416: exactly one "
            "face on the face photos (0.975, 0.915, 0.669), none on the others (no candidate above 0.3). No published "
            "benchmark figure for these weights. The port matches face-api's tfjs output to < 1e-3 "
            "(tests/test_tiny_face_detector.py).",
            measure="photos with the right face count at score > 0.5 (one face on a face photo, none elsewhere)",
        ),
    ),
    assets=("tiny_face_detector_manifest", "tiny_face_detector_weights"),
    description="face-api 1.7.15 Tiny Face Detector (tiny YOLOv2, separable convs; MIT) ported to PyTorch; input "
    "any size, padded to a square and resized to 416; boxes + scores, NMS IoU 0.4, score > 0.5",
)
