"""Model registry: ``get_model`` / ``list_models``, one entry per name, duplicates refused.

Each entry carries what a user needs to trust the model: its input size, its preprocessing
(normalisation is a layer *inside* the returned module, so every model takes BCHW RGB float
in [0, 1]), its labels, and the accuracy measured on a stated set.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
from torch import nn

from testbed.device import default_device
from testbed.errors import ConfigError, ModelNotFoundError
from testbed.models.base import (  # noqa: F401  re-exported: the registry's public API
    _REGISTRY,
    Accuracy,
    ModelEntry,
    Normalize,
    NormalizedModel,
    Task,
    register_model,
)


def _ensure_loaded() -> None:
    """Import the modules that register models (on first registry use, so importing the registry stays cheap).

    An import error is raised, never skipped: a model module that cannot be imported is a broken install.
    """
    import testbed.models.imagenet  # noqa: F401  the ImageNet classifiers
    import testbed.models.signs  # noqa: F401  sign-cnn
    import testbed.models.faces  # noqa: F401  face-descriptor-dlib, mtcnn
    import testbed.models.coco_detector  # noqa: F401  centernet-coco


def list_models(task: Task | None = None) -> list[str]:
    """Names of the registered models (optionally only those of one task), sorted."""
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)


RESIZED_MIN, RESIZED_MAX = 32, 1024
_RESIZED = re.compile(r"^(?P<base>[^@]+)@(?P<size>[0-9]+)$")


def _resized_entry(name: str) -> ModelEntry | None:
    """``NAME@SIZE``: the registry model ``NAME`` (a resizable one) with its weights at a square input of ``SIZE``
    pixels, e.g. ``efficientnet_lite2@299`` (Kurakin et al.'s Inception v3 input). Its published accuracy holds at
    the native size only, so the derived entry carries none; ``None`` when ``name`` is not a registry name, ``@``
    and a size."""
    m = _RESIZED.match(name)
    if m is None:
        return None
    base, size = m["base"], int(m["size"])
    if base not in _REGISTRY:
        return None  # perhaps a user model or a file whose name has an '@'
    entry = _REGISTRY[base]
    if not entry.resizable:
        raise ConfigError(f"{name!r}: {base} takes only its own input size {entry.input_size[0]}x"
                          f"{entry.input_size[1]} (it is not fully convolutional)")
    if not RESIZED_MIN <= size <= RESIZED_MAX:
        raise ConfigError(f"{name!r}: input size {size} outside [{RESIZED_MIN}, {RESIZED_MAX}]")
    return dataclasses.replace(
        entry, name=name, input_size=(size, size), accuracy=(),
        description=f"{entry.description}; its weights at {size} px (published accuracy is at "
                    f"{entry.input_size[0]} px, not at this size)")


def get_entry(name: str) -> ModelEntry:
    """The entry for ``name``: a registry model, ``NAME@SIZE`` (a resizable registry model at another input size),
    else (``testbed.models.external.entry_for_name``) this process's ``--model`` spec, a user model (``testbed models
    add``), a model card file or ``torchvision:ARCH``; an unknown name lists the known ones."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    resized = _resized_entry(str(name))
    if resized is not None:
        return resized
    from testbed.models.external import entry_for_name, user_models

    entry = entry_for_name(str(name))
    if entry is not None:
        return entry
    known = ", ".join([*list_models(), *user_models()]) or "(none)"
    raise ModelNotFoundError(f"unknown model {name!r}; known models: {known} (or NAME@SIZE, torchvision:ARCH, a "
                             "TorchScript or ONNX file, a model card, module.path:callable: docs/models.md)")


def get_model(name: str, device: torch.device | str | None = None, **options: Any) -> nn.Module:
    """Build the model ``name`` with its weights, in eval mode, with parameters frozen.

    ``name`` is a registry name or anything :func:`get_entry` takes; a model outside the registry may come with
    its ``options`` (``weights``, ``input_size``, ``mean``, ``std``, ``labels``: see
    ``testbed.models.external.external_entry``), e.g. ``get_model("net.onnx", input_size=(32, 32),
    mean=(0.5,) * 3, std=(0.25,) * 3, labels="labels.txt")``.
    Classification models take BCHW RGB float in [0, 1] and return logits.
    """
    if any(v is not None for v in options.values()):
        from testbed.models.external import external_entry

        _ensure_loaded()
        if name in _REGISTRY:
            raise ConfigError(f"{name} is a registry model: it takes no weights/input_size/mean/std/labels")
        entry = external_entry(name, **options)
    else:
        entry = get_entry(name)
    model = entry.builder()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device if device is not None else default_device())
