"""ImageNet classifiers: MobileNetV2 (torchvision weights) and EfficientNet-Lite0."""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

from torch import nn

from testbed.models.efficientnet_lite import EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD, build_efficientnet_lite0
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


def _efficientnet_lite0() -> nn.Module:
    return NormalizedModel(
        build_efficientnet_lite0(), EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD, name="efficientnet_lite0"
    )


def _register_imagenet_classifier(name: str, builder: Callable[[], nn.Module], mean: tuple[float, float, float],
                                  std: tuple[float, float, float], accuracy: Accuracy, description: str) -> None:
    """Register a 224 x 224 ImageNet-1k classifier whose weights are the asset of the same name."""
    register_model(ModelEntry(name=name, task="classification", builder=builder, input_size=(224, 224), mean=mean,
                              std=std, labels=imagenet_labels(), accuracy=(accuracy,), assets=(name,),
                              description=description))


_register_imagenet_classifier(
    "mobilenet_v2", _mobilenet_v2, IMAGENET_MEAN, IMAGENET_STD,
    Accuracy("ImageNet-1k val (torchvision's published measurement)", 50_000, 71.878, 90.286),
    "torchvision MobileNetV2, IMAGENET1K_V1 weights",
)
_register_imagenet_classifier(
    "efficientnet_lite0", _efficientnet_lite0, EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD,
    Accuracy("ImageNet-1k val (TensorFlow EfficientNet-Lite README, FP32; not re-measured here)", 50_000, 75.1),
    "EfficientNet-Lite0 (RangiLyu's PyTorch port of the TF-Lite model), for transfer experiments",
)
