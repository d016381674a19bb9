"""dlib's ResNet 128-d face descriptor, ported from face-api's tfjs weights to PyTorch.

The network is ``FaceRecognitionNet`` of ``@vladmandic/face-api@1.7.15`` (``src/faceRecognitionNet/``), itself a
port of dlib's ``dlib_face_recognition_resnet_model_v1``. Every layer mirrors the tfjs source:

* preprocessing: ``(rgb255 - [122.782, 117.001, 104.298]) / 255`` (tfjs divides by 255, not 256), i.e. for
  RGB input in [0, 1]: ``x - mean / 255`` — done by a :class:`Normalize` layer inside the module;
* ``conv32_down``: 7x7 conv, stride 2, ``valid`` padding, + bias, then a per-channel scale layer
  (``x * weights + biases``), ReLU; then 3x3 max-pool, stride 2, ``valid``;
* ``residual``: ``relu(convNoRelu(conv(x)) + x)`` with 3x3 stride-1 ``same`` convolutions;
* ``residualDown``: the first conv is 3x3 stride 2 ``valid``; the shortcut is a 2x2 stride-2 average pool,
  zero-padded in channels when the width doubles; where the two branches differ in size (8x8 -> 3x3 vs 4x4 and
  4x4 -> 1x1 vs 2x2 for a 150x150 input) the conv branch gets one zero row at the bottom and one zero column at
  the right, exactly as tfjs ``concat``s them;
* global average pool over H, W, then ``matMul`` with ``fc`` (256 x 128, no bias).

Weights come from the tfjs manifest + ``.bin`` (kernels HWIO, some tensors uint8-quantised); they are
dequantised like ``tf.io.decodeWeights`` (``q * scale + min`` in double precision, stored as float32).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from testbed.device import default_device
from testbed.errors import AssetError, ConfigError
from testbed.models.base import Normalize
from testbed.models.tfjs_weights import (  # noqa: F401  read_tfjs_weights re-exported
    read_single_shard_weights,
    read_tfjs_weights,
)

INPUT_SIZE = 150
DESCRIPTOR_DIM = 128
MEAN_RGB_255 = (122.782, 117.001, 104.298)
# In terms of RGB in [0, 1]: (255 x - m) / 255 = x - m / 255, std 1.
FACE_DESCRIPTOR_MEAN = tuple(m / 255.0 for m in MEAN_RGB_255)
FACE_DESCRIPTOR_STD = (1.0, 1.0, 1.0)
# dlib's published decision threshold: same person when the Euclidean distance is below 0.6.
MATCH_THRESHOLD = 0.6

# Layer names of FaceRecognitionNet, in forward order: (name, in_channels, out_channels, kind).
_RESIDUAL_LAYERS: tuple[tuple[str, int, int, str], ...] = (
    ("conv32_1", 32, 32, "residual"),
    ("conv32_2", 32, 32, "residual"),
    ("conv32_3", 32, 32, "residual"),
    ("conv64_down", 32, 64, "down"),
    ("conv64_1", 64, 64, "residual"),
    ("conv64_2", 64, 64, "residual"),
    ("conv64_3", 64, 64, "residual"),
    ("conv128_down", 64, 128, "down"),
    ("conv128_1", 128, 128, "residual"),
    ("conv128_2", 128, 128, "residual"),
    ("conv256_down", 128, 256, "down"),
    ("conv256_1", 256, 256, "residual"),
    ("conv256_2", 256, 256, "residual"),
    ("conv256_down_out", 256, 256, "down"),
)


class Scale(nn.Module):
    """face-api's scale layer: ``x * weight + bias`` per channel (dlib's affine layer)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConvLayer(nn.Module):
    """conv (+bias) -> scale -> optional ReLU; ``down`` = stride 2 ``valid``, else stride 1 ``same``."""

    def __init__(self, cin: int, cout: int, kernel: int, *, down: bool, relu: bool) -> None:
        super().__init__()
        padding = 0 if down else kernel // 2  # tfjs 'same' with odd kernel, stride 1: symmetric k // 2
        self.conv = nn.Conv2d(cin, cout, kernel, stride=2 if down else 1, padding=padding, bias=True)
        self.scale = Scale(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scale(self.conv(x))
        return F.relu(out) if self.relu else out


class Residual(nn.Module):
    """``relu(convNoRelu(conv(x)) + x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, down=False, relu=True)
        self.conv2 = ConvLayer(channels, channels, 3, down=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + x)


class ResidualDown(nn.Module):
    """Down-sampling residual block with an average-pool shortcut, as face-api's ``residualDown``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(cin, cout, 3, down=True, relu=True)
        self.conv2 = ConvLayer(cout, cout, 3, down=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        pooled = F.avg_pool2d(x, 2, 2)
        if pooled.shape[-2:] != out.shape[-2:]:
            # tfjs appends exactly one zero row (bottom) and one zero column (right) to the conv branch.
            out = F.pad(out, (0, 1, 0, 1))
        if pooled.shape[1] != out.shape[1]:
            pooled = torch.cat([pooled, torch.zeros_like(pooled)], dim=1)
        return F.relu(pooled + out)


class FaceDescriptorNet(nn.Module):
    """dlib ResNet face descriptor: BCHW RGB float in [0, 1], 150x150 -> B x 128 descriptors.

    Preprocessing (face-api's mean subtraction) is the ``normalize`` layer inside. Descriptors are not
    L2-normalised (as in dlib / face-api); compare them with :func:`face_distance` and ``MATCH_THRESHOLD``.
    The input should be a face chip aligned like dlib's (eyes level, face filling the chip).
    """

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize(FACE_DESCRIPTOR_MEAN, FACE_DESCRIPTOR_STD)
        self.conv32_down = ConvLayer(3, 32, 7, down=True, relu=True)
        for name, cin, cout, kind in _RESIDUAL_LAYERS:
            self.add_module(name, ResidualDown(cin, cout) if kind == "down" else Residual(cout))
        self.fc = nn.Linear(256, DESCRIPTOR_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_face_input(x)
        out = self.conv32_down(self.normalize(x))
        out = F.max_pool2d(out, 3, 2)
        for name, *_ in _RESIDUAL_LAYERS:
            out = getattr(self, name)(out)
        return self.fc(out.mean(dim=(2, 3)))

    def load_tfjs_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy face-api's named tfjs tensors (HWIO kernels, ``fc`` as in x @ fc) into this module."""
        state: dict[str, torch.Tensor] = {}
        for tf_name, value in weights.items():
            state[_torch_name(tf_name)] = _to_torch_layout(tf_name, value)
        expected = set(self.state_dict().keys()) - {"normalize.mean", "normalize.std"}
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        if missing or unexpected:
            raise AssetError(
                f"face descriptor weights do not match FaceRecognitionNet: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            )
        own = self.state_dict()
        for key, value in state.items():
            if tuple(own[key].shape) != tuple(value.shape):
                raise AssetError(
                    f"face descriptor weight {key!r} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}"
                )
        self.load_state_dict(state, strict=False)


def check_face_input(x: torch.Tensor) -> None:
    """Raise ConfigError unless ``x`` is a float BCHW RGB batch of 150x150 face chips."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"face descriptor expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
        raise ConfigError(
            f"face descriptor expects a BCHW RGB tensor of shape (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) "
            f"(an aligned face chip, values in [0, 1]), got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ConfigError(f"face descriptor expects float input in [0, 1], got dtype {x.dtype}")


def _torch_name(tf_name: str) -> str:
    if tf_name == "fc":
        return "fc.weight"
    parts = tf_name.split("/")
    leaf = {"filters": "weight", "bias": "bias", "weights": "weight", "biases": "bias"}.get(parts[-1])
    if leaf is None:
        raise AssetError(f"unexpected tensor {tf_name!r} in the face descriptor manifest")
    return ".".join(parts[:-1] + [leaf])


def _to_torch_layout(tf_name: str, value: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if tf_name == "fc":  # tfjs: x @ fc with fc (256, 128); nn.Linear stores (out, in)
        return t.t().contiguous()
    if t.ndim == 4:  # tfjs conv kernels are HWIO; torch wants OIHW
        return t.permute(3, 2, 0, 1).contiguous()
    return t


def build_face_descriptor(manifest_path: Path, weights_path: Path) -> FaceDescriptorNet:
    """A FaceDescriptorNet with weights read from a face-api manifest + ``.bin`` (on CPU, eval mode)."""
    net = FaceDescriptorNet()
    net.load_tfjs_weights(read_single_shard_weights(manifest_path, weights_path, "face descriptor"))
    return net.eval()


def load_face_descriptor(device: torch.device | str | None = None) -> FaceDescriptorNet:
    """The pretrained face descriptor from the cached face-api assets, eval mode, parameters frozen.

    Raises AssetError naming the file and the fix (``testbed assets fetch``) when an asset is missing/corrupt.
    """
    from testbed.assets import asset_path

    net = build_face_descriptor(asset_path("face_recognition_manifest"), asset_path("face_recognition_weights"))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device if device is not None else default_device())


def face_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between descriptors along the last dim (broadcasting); < 0.6 means same person."""
    if a.shape[-1] != DESCRIPTOR_DIM or b.shape[-1] != DESCRIPTOR_DIM:
        raise ConfigError(
            f"face_distance expects {DESCRIPTOR_DIM}-d descriptors, got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return torch.linalg.vector_norm(a - b, dim=-1)

