"""What a model entry is, and the table entries register into.

The modules that define models (``imagenet``, ``signs``, ``faces``, ``mtcnn``) import this module and call
:func:`register_model`; :mod:`testbed.models.registry` imports those modules (on first use) and looks entries up.
Keeping the entry types here, below both, means no module of ``testbed.models`` imports one that imports it back.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import torch
from torch import nn

from testbed.errors import ConfigError

Task = Literal["classification", "face-descriptor", "detector"]

@dataclass(frozen=True)
class Accuracy:
    """An accuracy figure on a stated evaluation set (``n`` samples): published by the weights' authors or measured
    here, as ``dataset`` / ``note`` say (``testbed models list`` marks which). ``measure`` names what ``top1`` is
    when it is not the task's usual measure (a detector's figure, e.g.); ``testbed models list`` prints it."""

    dataset: str
    n: int
    top1: float
    top5: float | None = None
    note: str = ""
    measure: str = ""


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
    # fully convolutional up to a global pooling: the same weights take any input size (``NAME@SIZE``, see
    # ``testbed.models.registry.get_entry``); the accuracy figures hold at ``input_size`` only
    resizable: bool = False

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
            "resizable": self.resizable,
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


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add ``entry`` to the registry; a second entry with the same name is refused."""
    if entry.name in _REGISTRY:
        raise ConfigError(f"a model named {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


@contextlib.contextmanager
def model_state_guard(model: nn.Module) -> Iterator[nn.Module]:
    """The one guard of a model's state during an attack (used by ``physical.speed.prepared_model``, so by every
    digital attack and the physical loop): the model is put in eval mode for the call (BatchNorm uses its running
    statistics and never updates them, dropout is off) and every module's train/eval flag is restored on exit;
    its buffers (BatchNorm running mean/var, ``num_batches_tracked``, any other) are put back bit for bit should
    anything have written them. Parameters are never written by an attack (gradients are taken w.r.t. inputs)."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for n, b in model.named_buffers():  # by name: a layout change may have replaced the tensor objects
                saved = buffers.get(n)
                if saved is not None and b.shape == saved.shape and not torch.equal(b, saved.to(b.device)):
                    b.copy_(saved)
