"""Model registry: ``get_model`` / ``list_models``, one entry per name, duplicates refused.

Each entry carries what a user needs to trust the model: its input size, its preprocessing
(normalisation is a layer *inside* the returned module, so every model takes BCHW RGB float
in [0, 1]), its labels, and the accuracy measured on a stated set.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from testbed.device import default_device
from testbed.errors import ConfigError, ModelNotFoundError

Task = Literal["classification", "face-descriptor", "face-detector"]

# Modules that register models when imported; imported lazily on first registry use.
_REGISTRATION_MODULES = (
    "testbed.models.imagenet",
    "testbed.models.signs",
    "testbed.models.faces",
)


@dataclass(frozen=True)
class Accuracy:
    """Accuracy measured on a stated evaluation set (``n`` samples)."""

    dataset: str
    n: int
    top1: float
    top5: float | None = None
    note: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it and what it expects."""

    name: str
    task: Task
    builder: Callable[[], nn.Module]
    input_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    labels: Sequence[str] = field(default_factory=tuple)
    accuracy: tuple[Accuracy, ...] = ()
    assets: tuple[str, ...] = ()  # asset names (see testbed.assets) the builder needs
    description: str = ""

    def summary(self) -> dict:
        """A JSON-serialisable description (no builder, no label list)."""
        return {
            "name": self.name,
            "task": self.task,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "num_labels": len(self.labels),
            "accuracy": [asdict(a) for a in self.accuracy],
            "assets": list(self.assets),
            "description": self.description,
        }


class Normalize(nn.Module):
    """Per-channel normalisation as a model layer: ``(x - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """Wraps a network so it takes RGB [0, 1] BCHW input; validates the input shape."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], name: str = "") -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.model_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(
                f"model {self.model_name or type(self.net).__name__} expects a BCHW RGB tensor "
                f"with 3 channels, got shape {tuple(x.shape)}"
            )
        return self.net(self.normalize(x))


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to the registry; a second entry with the same name is refused."""
    if entry.name in _REGISTRY:
        raise ConfigError(f"a model named {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _REGISTRATION_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a part not built yet must not break the rest
            if exc.name != module:
                raise


def list_models(task: Task | None = None) -> list[str]:
    """Names of the registered models (optionally only those of one task), sorted."""
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; an unknown name lists the known ones."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models()) or "(none)"
        raise ModelNotFoundError(f"unknown model {name!r}; known models: {known}") from None


def get_model(name: str, device: torch.device | str | None = None) -> nn.Module:
    """Build the model ``name`` with its weights, in eval mode, with parameters frozen.

    Classification models take BCHW RGB float in [0, 1] and return logits.
    """
    entry = get_entry(name)
    model = entry.builder()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device if device is not None else default_device())
