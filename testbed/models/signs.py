"""``sign-cnn``: a small GTSRB-CNN-like traffic-sign classifier (32x32 RGB input, as RP2's GTSRB-CNN) trained on rendered signs.

Weights: ``testbed/models/weights/sign_cnn.pt`` (committed, < 5 MB); model card with the training command,
data config and measured accuracy: ``testbed/models/weights/sign_cnn.card.json``. Retrain with
``testbed signs train`` (see docs/signs.md).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from testbed.errors import AssetError
from testbed.models.base import Accuracy, ModelEntry, NormalizedModel, register_model

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SIGN_CNN_WEIGHTS = WEIGHTS_DIR / "sign_cnn.pt"
SIGN_CNN_CARD = WEIGHTS_DIR / "sign_cnn.card.json"
SIGN_INPUT_SIZE = 32
#: The classifier's label order: the rendered sign classes of ``worlds.signs.render`` (which imports this tuple and
#: checks at import that its ``SIGN_CLASSES`` follow it), so the registry entry needs nothing above ``testbed``.
SIGN_CLASS_NAMES: tuple[str, ...] = (
    "speed_limit_20", "speed_limit_30", "speed_limit_50", "speed_limit_60", "speed_limit_70", "speed_limit_80",
    "end_speed_limit_80", "speed_limit_100", "speed_limit_120", "no_overtaking", "right_of_way_next_intersection",
    "priority_road", "yield", "stop", "no_vehicles", "no_entry", "general_caution", "traffic_signals", "pedestrians",
    "end_all_limits", "turn_right_ahead", "turn_left_ahead", "ahead_only", "straight_or_right", "straight_or_left",
    "keep_right", "keep_left", "roundabout", "end_no_overtaking", "pedestrian_crossing",
)
# Channel statistics of rendered-sign training data, rounded; fixed so they never depend on a data draw.
SIGN_MEAN = (0.45, 0.45, 0.45)
SIGN_STD = (0.25, 0.25, 0.25)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SignCNN(nn.Module):
    """GTSRB-CNN-like: three conv stages (widths ``widths``) with max-pooling, then a two-layer head."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (16, 32, 64), input_size: int = SIGN_INPUT_SIZE,
                 hidden: int = 128) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            *_block(3, w1), *_block(w1, w1), nn.MaxPool2d(2),
            *_block(w1, w2), *_block(w2, w2), nn.MaxPool2d(2),
            *_block(w2, w3), nn.MaxPool2d(2),
        )
        side = input_size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(w3 * side * side, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes),
        )
        self.num_classes = num_classes
        self.widths = tuple(widths)
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise all weights from ``generator`` (Kaiming-uniform, as PyTorch's defaults; no global RNG)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=generator)
                if m.bias is not None:
                    bound = 1 / m.weight[0].numel() ** 0.5
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()


def build_sign_cnn(num_classes: int, widths: Sequence[int] = (16, 32, 64), input_size: int = SIGN_INPUT_SIZE
                   ) -> NormalizedModel:
    """An untrained sign-cnn, with normalisation as its first layer (input: BCHW RGB in [0, 1])."""
    return NormalizedModel(SignCNN(num_classes, widths, input_size), SIGN_MEAN, SIGN_STD, name="sign-cnn")


def load_sign_cnn(path: str | Path = SIGN_CNN_WEIGHTS) -> NormalizedModel:
    """A sign-cnn with weights from ``path`` (a checkpoint written by ``testbed signs train``)."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"sign-cnn weights {path} are missing; retrain with "
                         "`testbed signs train --out testbed/models/weights/sign_cnn.pt --seed 0`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = build_sign_cnn(len(ckpt["labels"]), ckpt["widths"], ckpt["input_size"])
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
    except (RuntimeError, KeyError, EOFError, ValueError) as exc:
        raise AssetError(f"sign-cnn weights {path} could not be loaded ({exc}); retrain with "
                         "`testbed signs train --out testbed/models/weights/sign_cnn.pt --seed 0`") from None
    return model


@lru_cache(maxsize=1)
def _card() -> dict:
    try:
        return json.loads(SIGN_CNN_CARD.read_text())
    except (OSError, ValueError):
        return {}


def _accuracy_from_card(card: dict) -> tuple[Accuracy, ...]:
    """The card's measured accuracies: the independent held-out set first (drawn by another method than the
    training renderer, never used in training or model selection), then the renderer's own held-out split."""
    out = []
    ind = card.get("independent_eval")
    if ind:
        worst = ind.get("lowest_class")
        note = (f"top-1 Wilson 95% [{ind['top1_low']:.2f}, {ind['top1_high']:.2f}] (k={ind['k']}); lowest class "
                f"{worst} {ind['per_class'][worst]['top1']:.1f}%; {ind.get('note', '')}") if worst else ind.get("note", "")
        out.append(Accuracy(ind["dataset"], int(ind["n"]), float(ind["top1"]), float(ind["top5"]), note))
    ev = card.get("heldout_eval")
    if ev:
        out.append(Accuracy(ev["dataset"], int(ev["n"]), float(ev["top1"]), float(ev["top5"]), ev.get("note", "")))
    return tuple(out)


def _labels() -> tuple[str, ...]:
    return tuple(_card().get("labels") or SIGN_CLASS_NAMES)


register_model(
    ModelEntry(
        name="sign-cnn",
        task="classification",
        builder=load_sign_cnn,
        input_size=(SIGN_INPUT_SIZE, SIGN_INPUT_SIZE),
        mean=SIGN_MEAN,
        std=SIGN_STD,
        labels=_labels(),
        accuracy=_accuracy_from_card(_card()),
        description="GTSRB-CNN-like sign classifier (32x32) trained on rendered German signs; "
                    "card: testbed/models/weights/sign_cnn.card.json",
    )
)
