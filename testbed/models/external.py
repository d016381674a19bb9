"""Bring your own model: a classifier from outside the registry, wrapped like a registry model.

``--model`` (CLI) and :func:`testbed.models.registry.get_model` (API) take, besides a registry name:

* ``torchvision:ARCH`` — a torchvision architecture (``resnet18``, ``mobilenet_v3_small``, ...) with ``weights``:
  a state-dict file (read with ``torch.load(weights_only=True)``: tensors only, no code) or the name of one of
  torchvision's own weights (``IMAGENET1K_V1``, ``DEFAULT``) whose file is already in torch hub's cache
  (nothing is downloaded). Without options it is an ImageNet-1k classifier (224 x 224, ImageNet mean/std and
  labels); with ``labels`` it is built with that many classes;
* a TorchScript file (``.pt`` / ``.pth`` / ``.ts``, ``torch.jit.load``: TorchScript code and tensors, no Python
  pickle);
* an ONNX file (``.onnx``), converted to a differentiable ``torch.fx`` module by ``onnx2torch`` (docs/models.md,
  "Bring your own model", says why that converter);
* ``module.path:callable`` — the user's own Python: the module is imported and ``callable()`` must return an
  ``nn.Module``. This runs the user's code, deliberately: it is their module, named by them on the command line
  or in a card they added with ``testbed models add``; nothing read from a run directory or an experiment config
  ever imports one (:func:`entry_for_name` refuses it there);
* a model card (``.yaml`` / ``.yml``) that names one of the above and states its input size, mean, std and
  labels; ``testbed models add CARD`` keeps it in the user models file so later commands take its name.

Everything outside the registry states its input size, mean and std (on the [0, 1] scale) and labels (a text
file, one label a line, or a JSON list / ``{"0": "cat", ...}`` object). Normalisation becomes a layer of the
returned module (:class:`~testbed.models.base.NormalizedModel`), exactly as for the registry's models, and the
built model is checked once on a zero batch: its output must be (batch, number of labels) logits.
Every user mistake is a :class:`~testbed.errors.ConfigError` with a one-line message (exit 2 on the CLI).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from testbed.errors import ConfigError, ModelNotFoundError
from testbed.models.base import ModelEntry, NormalizedModel

#: files read as TorchScript / ONNX / model cards (by suffix, any case)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")
ONNX_SUFFIXES = (".onnx",)
CARD_SUFFIXES = (".yaml", ".yml")
#: largest model / weights file read (4 GiB) and labels file (16 MiB)
MAX_MODEL_BYTES = 4 * 2**30
MAX_LABELS_BYTES = 16 * 2**20
#: the user models file, under the testbed's cache/config root (``testbed.assets.cache_dir()``)
USER_MODELS_FILE = "user_models.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CALLABLE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
#: the option names a model outside the registry is described with (CLI ``--input-size`` etc., card keys)
OPTION_KEYS = ("weights", "input_size", "mean", "std", "labels")


# ------------------------------------------------------------------------------------------------ what a spec is
def source_kind(spec: str) -> str | None:
    """``torchvision``, ``torchscript``, ``onnx``, ``card`` or ``callable`` for a spec outside the registry
    (decided by its form, before any file is read); None for a plain name (a registry or user-model name)."""
    s = str(spec)
    if s.startswith("torchvision:"):
        return "torchvision"
    suffix = Path(s).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in CARD_SUFFIXES:
        return "card"
    if suffix in TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    if _CALLABLE.match(s):
        return "callable"
    if os.sep in s or "/" in s:
        return "file"  # a path with another suffix: refused with a message naming the forms
    return None


# ------------------------------------------------------------------------------------------------ options
def _triple(value: Any, what: str, *, positive: bool) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"{what} must be three numbers R G B (on the [0, 1] scale), got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ConfigError(f"{what} must be three finite numbers, got {value!r}")
        if positive and float(v) <= 0:
            raise ConfigError(f"{what} values must be > 0, got {value!r}")
        if abs(float(v)) > 1e3:
            raise ConfigError(f"{what} values are given on the [0, 1] pixel scale; {v!r} is far outside it "
                              "(divide values given on the 0-255 scale by 255)")
        out.append(float(v))
    return out[0], out[1], out[2]


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 16_384 for v in value)):
        raise ConfigError(f"input size must be two whole numbers H W in [1, 16384], got {value!r}")
    return int(value[0]), int(value[1])


def load_labels(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Class names from a text file (one label a line, UTF-8) or a JSON file (a list, or an object mapping the
    indices "0".."N-1" to names)."""
    from testbed.inputs import load_json, read_text

    p = Path(path)
    if p.suffix.lower() == ".json":
        data = load_json(p, what="labels file")
        if isinstance(data, dict):
            try:
                index = {int(k): v for k, v in data.items()}
            except ValueError:
                raise ConfigError(f"labels file {p}: a JSON object must map class indices (\"0\", \"1\", ...) "
                                  "to names") from None
            if sorted(index) != list(range(len(index))):
                raise ConfigError(f"labels file {p}: the indices must be 0..{len(index) - 1} with none missing")
            data = [index[i] for i in range(len(index))]
        if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
            raise ConfigError(f"labels file {p} must hold a JSON list of names or an object of index -> name")
        labels = [v.strip() for v in data]
    else:
        text = read_text(p, what="labels file", max_bytes=MAX_LABELS_BYTES)
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
    if not labels:
        raise ConfigError(f"labels file {p} holds no labels")
    empty = [i for i, v in enumerate(labels) if not v]
    if empty:
        raise ConfigError(f"labels file {p}: label {empty[0]} (line {empty[0] + 1}) is empty")
    return tuple(labels)


def _labels(value: Any, where: Path | None = None) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError("labels must be a non-empty list of non-empty names")
        return tuple(v.strip() for v in value)
    if isinstance(value, (str, os.PathLike)):
        return load_labels(_relative(value, where))
    raise ConfigError(f"labels must be a file path or a list of names, got {type(value).__name__}")


def _relative(path: Any, where: Path | None) -> Path:
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() or where is None else where / p


# ------------------------------------------------------------------------------------------------ loaders
def _check_file(path: Path, what: str) -> Path:
    from testbed.inputs import check_input_file

    return check_input_file(path, what=what, max_bytes=MAX_MODEL_BYTES)


def _torchvision_builder(arch: str) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    try:
        return tvm.get_model_builder(arch)
    except ValueError:
        known = ", ".join(n for n in tvm.list_models(module=tvm))
        raise ConfigError(f"unknown torchvision architecture {arch!r}; known classifiers: {known}") from None


def _weights_enum(arch: str, name: str) -> Any:
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(arch)[name] if name != "DEFAULT" else tvm.get_model_weights(arch).DEFAULT
    except KeyError:
        options = ", ".join(w.name for w in tvm.get_model_weights(arch))
        raise ConfigError(f"--weights {name!r} is neither a file nor one of torchvision's weights for {arch} "
                          f"({options}, DEFAULT)") from None


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict (or ``{"state_dict": ...}``) read with ``weights_only=True``: tensors and plain data only."""
    p = _check_file(Path(path), "weights file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read the user's file is their file's problem
        text = " ".join(str(exc).split())[:200]
        raise ConfigError(f"weights file {p} could not be read as a state dict with weights_only=True (a file "
                          f"holding pickled Python objects is refused: it could run code): {text}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {p} must hold a state dict (parameter name -> tensor)")
    return obj


def _load_torchvision(arch: str, weights: str | None, num_classes: int) -> nn.Module:
    build = _torchvision_builder(arch)
    if weights is not None and (os.sep in weights or "/" in weights or Path(weights).is_file()):
        state = read_state_dict(weights)
        net = build(weights=None, num_classes=num_classes)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]
            raise ConfigError(f"weights file {weights} does not fit torchvision:{arch} with {num_classes} classes: "
                              f"{first}") from None
        return net
    from testbed.assets import torch_hub_checkpoints

    enum = _weights_enum(arch, weights or "DEFAULT")
    cached = torch_hub_checkpoints() / Path(enum.url).name
    if weights is None and not cached.is_file():  # no --weights: DEFAULT, else any of its weights that is cached
        import torchvision.models as tvm

        enum = next((w for w in tvm.get_model_weights(arch)
                     if (torch_hub_checkpoints() / Path(w.url).name).is_file()), enum)
        cached = torch_hub_checkpoints() / Path(enum.url).name
    if not cached.is_file():
        raise ConfigError(f"torchvision:{arch} weights {enum} are not in torch hub's cache ({cached}); nothing is "
                          "downloaded: give --weights FILE (a state dict), or place the file there with "
                          "testbed.assets.install_torchvision_weights")
    if num_classes != len(enum.meta["categories"]):
        raise ConfigError(f"torchvision weights {enum} have {len(enum.meta['categories'])} classes, the labels "
                          f"{num_classes}")
    net = build(weights=None, num_classes=num_classes)
    net.load_state_dict(read_state_dict(cached), strict=True)
    return net


def _load_torchscript(path: Path) -> nn.Module:
    p = _check_file(path, "TorchScript model")
    try:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's business
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        text = " ".join(str(exc).split())[:160]
        raise ConfigError(f"TorchScript model {p} could not be loaded with torch.jit.load ({text}); a whole-model "
                          "pickle from torch.save(model) is refused (it would run code): save it with "
                          "torch.jit.save(torch.jit.script(model)), or give torchvision:ARCH --weights STATE_DICT") \
            from None


def _load_onnx(path: Path) -> nn.Module:
    p = _check_file(path, "ONNX model")
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:  # pragma: no cover - both are dependencies
        raise ConfigError("ONNX models need the onnx and onnx2torch packages (pip install onnx onnx2torch)") from None
    try:
        proto = onnx.load(str(p))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"ONNX model {p} could not be read: {' '.join(str(exc).split())[:160]}") from None
    _inline_identity_initializers(proto)
    try:
        return convert(proto)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"ONNX model {p} could not be converted to PyTorch by onnx2torch (an operator it does "
                          f"not support?): {type(exc).__name__}: {' '.join(str(exc).split())[:160]}") from None


def _inline_identity_initializers(proto: Any) -> None:
    """Replace each ``Identity`` node whose input is a weight (an initializer) by a copy of that weight under the
    node's output name. PyTorch's exporter writes one such node for every weight equal to another (e.g. zero
    biases); onnx2torch reads a Conv's bias only from the initializers, so it would not find it."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in inits:
            copy = type(inits[node.input[0]])()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _load_callable(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--model {spec}: module {module_name!r} cannot be imported ({exc}); is its folder on "
                          "PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--model {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--model {spec}: {attr} is not callable")
    net = obj()
    if not isinstance(net, nn.Module):
        raise ConfigError(f"--model {spec}: {attr}() returned {type(net).__name__}, not a torch.nn.Module")
    return net


# ------------------------------------------------------------------------------------------------ entries
def _check_output(model: nn.Module, name: str, input_size: tuple[int, int], num_labels: int) -> None:
    x = torch.zeros(2, 3, *input_size)
    try:
        with torch.no_grad():
            out = model(x)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's network failed on a batch of its stated size
        raise ConfigError(f"model {name} fails on a (2, 3, {input_size[0]}, {input_size[1]}) batch (is the input "
                          f"size right, and the batch dimension dynamic?): {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:160]}") from None
    if not isinstance(out, torch.Tensor) or out.shape != (2, num_labels) or not out.is_floating_point():
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {name} must return (batch, {num_labels}) logits for its {num_labels} labels, "
                          f"returned {shape} for a batch of 2")


def external_entry(spec: str, *, weights: str | None = None, input_size: Any = None, mean: Any = None,
                   std: Any = None, labels: Any = None, name: str | None = None, description: str = "",
                   where: Path | None = None) -> ModelEntry:
    """The registry-style entry of a model outside the registry (see the module docstring); every option and
    file is checked here, before anything is built. ``where``: the folder relative paths are read from."""
    kind = source_kind(spec)
    name = name or str(spec)
    if kind is None:
        raise ModelNotFoundError(f"unknown model {spec!r}: not a registry or user model name, and not "
                                 "torchvision:ARCH, a .pt/.pth TorchScript file, an .onnx file, a .yaml model card "
                                 "or module.path:callable")
    if kind == "file":
        raise ConfigError(f"--model {spec}: give a TorchScript file ({'/'.join(TORCHSCRIPT_SUFFIXES)}), an ONNX "
                          "file (.onnx) or a model card (.yaml)")
    if kind == "card":
        raise ConfigError(f"model card {spec} takes no other model options; state them in the card")
    if weights is not None and kind != "torchvision":
        raise ConfigError(f"--weights is for torchvision:ARCH models; {spec} holds its own weights")
    if kind == "torchvision":
        arch = str(spec).split(":", 1)[1]
        _torchvision_builder(arch)  # an unknown architecture is refused now
        input_size = _size(input_size if input_size is not None else 224)
        mean = _triple(mean if mean is not None else IMAGENET_MEAN, "mean", positive=False)
        std = _triple(std if std is not None else IMAGENET_STD, "std", positive=True)
        if labels is None:
            from testbed.models.imagenet import imagenet_labels

            label_list = imagenet_labels()
        else:
            label_list = _labels(labels, where)
        if weights is not None and (os.sep in str(weights) or "/" in str(weights) or Path(weights).is_file()):
            weights = str(_relative(weights, where))
            _check_file(Path(weights), "weights file")
        elif weights is not None:
            _weights_enum(arch, str(weights))

        def net() -> nn.Module:
            return _load_torchvision(arch, weights, len(label_list))
    else:
        missing = [opt for opt, v in (("--input-size", input_size), ("--mean", mean), ("--std", std),
                                      ("--labels", labels)) if v is None]
        if missing:
            raise ConfigError(f"model {spec} is outside the registry: state {' '.join(missing)} (input size H W, "
                              "mean and std on the [0, 1] scale, a labels file), or use a model card")
        input_size = _size(input_size)
        mean = _triple(mean, "mean", positive=False)
        std = _triple(std, "std", positive=True)
        label_list = _labels(labels, where)
        if kind in ("torchscript", "onnx"):
            path = _relative(spec, where)
            _check_file(path, "TorchScript model" if kind == "torchscript" else "ONNX model")

            def net() -> nn.Module:
                return _load_torchscript(path) if kind == "torchscript" else _load_onnx(path)
        else:
            def net() -> nn.Module:
                return _load_callable(str(spec))

    def build() -> nn.Module:
        model = NormalizedModel(net(), mean, std, name=name)
        model.eval()
        _check_output(model, name, input_size, len(label_list))
        return model

    return ModelEntry(name=name, task="classification", builder=build, input_size=input_size, mean=mean, std=std,
                      labels=label_list, description=description or f"{kind} model {spec} (outside the registry)")


# ------------------------------------------------------------------------------------------------ cards
def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A model card (YAML): ``model`` (any spec above but a card) and ``input_size``, ``mean``, ``std``,
    ``labels``; optional ``name``, ``weights``, ``description``. Returned with its relative paths resolved."""
    from testbed.inputs import load_yaml, require_mapping

    p = Path(path)
    card = require_mapping(load_yaml(p, what="model card"), what="model card", source=str(p), keys=("model",))
    unknown = sorted(set(card) - {"name", "model", "description", *OPTION_KEYS})
    if unknown:
        raise ConfigError(f"model card {p}: unknown key(s) {', '.join(unknown)} (known: name, model, description, "
                          f"{', '.join(OPTION_KEYS)})")
    model = card["model"]
    if not isinstance(model, str) or source_kind(model) in (None, "card", "file"):
        raise ConfigError(f"model card {p}: 'model' must be torchvision:ARCH, a TorchScript or ONNX file or "
                          f"module.path:callable, got {model!r}")
    where = p.resolve().parent
    out = dict(card)
    out["name"] = str(card.get("name") or p.stem)
    if source_kind(model) in ("torchscript", "onnx"):
        out["model"] = str(_relative(model, where))
    for key in ("weights", "labels"):
        value = card.get(key)
        if isinstance(value, str) and (key == "labels" or "/" in value or (where / value).is_file()):
            out[key] = str(_relative(value, where))
    return out


def card_entry(card: dict[str, Any]) -> ModelEntry:
    """The entry of a card read by :func:`read_card` (or kept in the user models file)."""
    return external_entry(card["model"], name=card["name"], description=str(card.get("description") or ""),
                          **{k: card.get(k) for k in OPTION_KEYS})


def user_models_path() -> Path:
    """The user models file: ``<cache root>/user_models.json`` (``$TESTBED_CACHE`` or ~/.cache/physical-testbed)."""
    from testbed.assets import cache_dir

    return cache_dir() / USER_MODELS_FILE


def user_models() -> dict[str, dict[str, Any]]:
    """The cards added with ``testbed models add`` (name -> card), none when the file does not exist."""
    from testbed.inputs import load_json, require_mapping

    p = user_models_path()
    if not p.exists():
        return {}
    data = require_mapping(load_json(p, what="user models file"), what="user models file", source=str(p))
    for name, card in data.items():
        if not isinstance(card, dict) or not isinstance(card.get("model"), str):
            raise ConfigError(f"user models file {p}: entry {name!r} is not a model card; fix or delete the file")
    return data


def add_user_model(card_path: str | os.PathLike[str], *, registry_names: Sequence[str] = (),
                   replace: bool = False) -> ModelEntry:
    """Check a card (the model is built once and its output checked) and keep it in the user models file."""
    from testbed.runs import atomic_write_json

    card = read_card(card_path)
    name = card["name"]
    if name in registry_names or source_kind(name) is not None:
        raise ConfigError(f"model card {card_path}: name {name!r} is a registry model or looks like a model spec; "
                          "give the card another 'name'")
    models = user_models()
    if name in models and not replace and models[name] != card:
        raise ConfigError(f"a user model named {name!r} already exists (in {user_models_path()}); pass --replace "
                          "or give the card another 'name'")
    entry = card_entry(card)
    entry.builder()  # built once: a card whose model does not load or has the wrong output is refused now
    models[name] = card
    user_models_path().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(user_models_path(), models)
    return entry


def remove_user_model(name: str) -> None:
    """Drop a user model from the user models file."""
    from testbed.runs import atomic_write_json

    models = user_models()
    if name not in models:
        raise ModelNotFoundError(f"no user model named {name!r} (user models: {', '.join(models) or 'none'})")
    del models[name]
    atomic_write_json(user_models_path(), models)


# ------------------------------------------------------------------------------------------------ this process
#: models named on this process's command line (``--model SPEC`` with its options), by their spec
_SESSION: dict[str, ModelEntry] = {}


def use_model(spec: str, **options: Any) -> ModelEntry:
    """Make ``spec`` (with ``weights``/``input_size``/``mean``/``std``/``labels``) a model name for the rest of
    this process, so every ``get_entry(spec)`` / ``get_model(spec)`` of the command finds it."""
    given = {k: v for k, v in options.items() if v is not None}
    kind = source_kind(spec)
    if kind == "card":
        if given:
            raise ConfigError(f"model card {spec} takes no other model options; state them in the card")
        entry = card_entry(read_card(spec))
        _SESSION[str(spec)] = entry
        return entry
    entry = external_entry(spec, **given)
    _SESSION[str(spec)] = entry
    return entry


def entry_for_name(name: str) -> ModelEntry | None:
    """The entry for a name outside the registry: this process's ``--model``, a user model, a model card file or
    ``torchvision:ARCH`` (ImageNet defaults); None when the name is none of these. ``module:callable`` and model
    files need their options stated on the command line (or a card), so a config file naming one is refused."""
    if name in _SESSION:
        return _SESSION[name]
    models = user_models()
    if name in models:
        return card_entry(models[name])
    kind = source_kind(name)
    if kind == "card":
        card = read_card(name)
        if source_kind(card["model"]) == "callable":  # a card path read from a config or run: no code imported
            raise ConfigError(f"model card {name} names Python code ({card['model']}); give the card as --model on "
                              "the command line, or add it with `testbed models add` and use its name")
        return card_entry(card)
    if kind == "torchvision":
        return external_entry(name)
    if kind in ("torchscript", "onnx", "callable"):
        raise ConfigError(f"model {name} is outside the registry: give it on the command line with --input-size, "
                          "--mean, --std and --labels, or as a model card (testbed models add CARD.yaml)")
    return None


def describe_user_models() -> list[str]:
    """One line per user model for ``testbed models list``."""
    lines = []
    for name, card in user_models().items():
        size = card.get("input_size")
        size_s = f"{size[0]}x{size[1]}" if isinstance(size, list) and len(size) == 2 else "?"
        lines.append(f"{name:24s} {'user model':16s} {size_s:<8s} {card['model']}")
    return lines


def card_json(card: dict[str, Any]) -> str:
    """A card as JSON text (for ``testbed models show``)."""
    return json.dumps(card, indent=2)
