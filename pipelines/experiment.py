"""Experiments declared in YAML, run cell by cell, resumable: the runner and the layer every kind builds on.

An experiment config (see ``experiments/*.yaml``)::

    name: kurakin-mobilenet_v2
    kind: kurakin            # a registered experiment kind: kurakin (accuracy through a channel) | transfer
    seed: 0
    models: [mobilenet_v2]   # kurakin: the attacked models; transfer: sources and targets
    attacks:                 # names from physical.attacks.list_attacks(), with hyper-parameters
      - fgsm
      - {name: bim, alpha: 0.00392156862745098}
    eps: [2, 4, 8, 16]       # budgets in each attack's units: 0-255 scale for L-inf attacks, absolute L2 radii
    images: {source: photos, kind: photo, crops_per_photo: 3}   # or {source: folder, folder: path/}, or
    #         {source: imagenet-samples}: 20 ImageNet validation images with true labels (pinned assets)
    channel: {kind: simulated, preset: default, repetitions: 1} # none | simulated (camera.simulated) | folder | live | transform
    batch_size: 16
    prefilter_confidence: 0.8
    examples: 4              # images per cell saved for the report (before/after the channel)
    torch_threads: null      # set 1 on a shared CPU (oversubscription makes 2 threads slower than 1)

Unknown keys and bad values raise ConfigError naming them. ``run_experiment(config, run_dir)`` writes the
resolved config (``config.resolved.yaml``, with its sha256) into the run directory, then one JSON file per cell
under ``cells/``, each written atomically (``testbed.runs.write_atomic``), so a killed run leaves only whole cells
and resumes from them. A run directory made from a different config is refused.

Kinds. What a kind does (its cells, its metrics, its report section) lives with the kind: a kind registers itself
where it is defined (``register_kind("kurakin", module)`` at the end of ``pipelines/kurakin.py``), and this module
dispatches through the registry without importing any kind. ``pipelines/kinds.py`` imports the built-in kinds
(the CLI imports it); a program that runs configs by kind name imports it too, or registers its own kind.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

import torch
import yaml

from physical.attacks.registry import build_attack_in_units, get_attack_spec
from pipelines.report import md_to_html
from testbed import runs
from testbed.errors import ConfigError
from testbed.inputs import load_json, load_yaml
from testbed.machine import machine_info, machine_line
from testbed.runs import write_atomic

IMAGE_SOURCES = ("photos", "folder", "imagenet-samples")  # imagenet-samples: testbed.assets.imagenet_sample_labels


class RunDirError(ConfigError):
    """The run directory belongs to a different experiment config (or is not an experiment run directory)."""


# ------------------------------------------------------------------------------------------------ kinds
@runtime_checkable
class ExperimentKind(Protocol):
    """What an experiment kind provides. A kind is usually its own module (``pipelines.kurakin``), registered at
    its end with ``register_kind(name, sys.modules[__name__])``; any object with these attributes will do. Every
    attribute is looked up when it is used, so a replaced module function is the one that runs.

    ``BASELINES``: names a config may list under ``attacks`` that are not attacks of the attack registry and take
    no hyper-parameters (the transfer kind's ``random_sign`` noise of size ε).
    """

    BASELINES: tuple[str, ...]

    def check_config(self, config: "ExperimentConfig") -> None:
        """Kind-specific checks at parse time (ConfigError naming the key): what a cell would refuse fails here."""

    def build_cells(self, config: "ExperimentConfig", run: "RunDir") -> list["Cell"]:
        """The cells of a run, in the order they are computed (lazy: nothing heavy before a cell runs)."""

    def summarise_run(self, config: dict[str, Any], cells: dict[str, dict[str, Any]]) -> Any:
        """The kind's metrics from the stored cells (``config``: the resolved config as stored in the run)."""

    def render_report(self, run_dir: Path, config: dict[str, Any], cells: dict[str, dict[str, Any]],
                      summary: Any) -> tuple[list[str], dict[str, Any]]:
        """The kind's report section: Markdown lines (plots written under ``run_dir/plots``) and its JSON data."""


_KIND_ATTRIBUTES = ("BASELINES", "check_config", "build_cells", "summarise_run", "render_report")
_KINDS: dict[str, ExperimentKind] = {}


def register_kind(name: str, kind: Any) -> Any:
    """Register ``kind`` (a module or object with the :class:`ExperimentKind` attributes) under ``name``, the value
    of a config's ``kind:``. Registering the same object again is a no-op; another object under a taken name, or
    one that lacks an attribute, is a programming error (ValueError / TypeError). Returns ``kind``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"experiment kind name must be an identifier, got {name!r}")
    missing = [a for a in _KIND_ATTRIBUTES if not hasattr(kind, a)]
    if missing:
        raise TypeError(f"experiment kind {name!r} lacks {', '.join(missing)} (see pipelines.experiment.ExperimentKind)")
    if name in _KINDS and _KINDS[name] is not kind:
        raise ValueError(f"experiment kind {name!r} is already registered ({_KINDS[name]!r})")
    _KINDS[name] = kind
    return kind


def list_kinds() -> list[str]:
    """The registered experiment kinds, sorted."""
    return sorted(_KINDS)


def get_kind(name: Any) -> ExperimentKind:
    """The kind registered as ``name``; ConfigError listing the registered ones otherwise."""
    if isinstance(name, str) and name in _KINDS:
        return _KINDS[name]
    hint = "" if _KINDS else " (none registered: `import pipelines.kinds` registers the built-in kurakin and transfer)"
    raise ConfigError(f"config kind must be one of {tuple(list_kinds())}{hint}, got {name!r}")


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class AttackSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name if not self.params else self.name + "(" + ",".join(f"{k}={v}" for k, v in
                                                                        sorted(self.params.items())) + ")"

    def build(self, eps: float) -> Any:
        """The attack a cell runs at budget ``eps``, given in the attack's budget units (``pixel/255`` for L∞
        attacks: 8 means 8/255; ``absolute`` for L2: never divided by 255). ``parse_config`` calls this too, so
        what a cell would refuse is refused at parse time."""
        return build_attack_in_units(self.name, eps=eps, **self.params)


@dataclass(frozen=True)
class ImageSetConfig:
    source: str = "photos"
    kind: str = "photo"  # testbed.photos kind
    names: tuple[str, ...] | None = None  # a subset of the shipped photos
    crops_per_photo: int = 1
    folder: str | None = None
    labels: str | None = None  # JSON file {image file name: class index or label} for a folder
    limit: int | None = None


@dataclass(frozen=True)
class ChannelConfig:
    kind: str = "simulated"
    preset: str = "default"  # simulated: camera.simulated preset (default | mild | harsh)
    repetitions: int = 1
    simulator: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None
    source: str | None = None
    transform: dict[str, Any] | None = None  # kind transform: {kind: jpeg, quality: 75} (pipelines.channels.TRANSFORMS)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    kind: str = "kurakin"
    seed: int = 0
    models: tuple[str, ...] = ("mobilenet_v2",)
    targets: tuple[str, ...] | None = None  # transfer: target models (default: ``models``)
    attacks: tuple[AttackSpec, ...] = (AttackSpec("fgsm"), AttackSpec("bim"), AttackSpec("iter_ll"))
    eps: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    images: ImageSetConfig = field(default_factory=ImageSetConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    batch_size: int = 16
    prefilter_confidence: float = 0.8
    examples: int = 4
    torch_threads: int | None = None
    surrogate: dict[str, Any] | None = None  # transfer: black-box surrogate settings (see pipelines.transfer)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attacks"] = [{"name": a.name, **a.params} for a in self.attacks]
        return _plain(d)

    def sha256(self) -> str:
        return config_digest(self.to_dict())


def config_digest(config: dict[str, Any]) -> str:
    """The sha256 an experiment records for its resolved config (``ExperimentConfig.to_dict``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _keys(section: str, data: Any, allowed: Iterable[str]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {section} must be a mapping, got {type(data).__name__}: {data!r}")
    allowed = list(allowed)
    bad = [k for k in data if k not in allowed]
    if bad:
        raise ConfigError(f"config {section}: unknown key(s) {bad}; allowed keys: {', '.join(allowed)}")
    return dict(data)


def _int(where: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"config {where} must be an integer {rng}, got {v!r}")
    return v


def _str_list(where: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v or not all(isinstance(s, str) and s for s in v):
        raise ConfigError(f"config {where} must be a non-empty list of names, got {v!r}")
    return tuple(v)


def parse_config(data: dict[str, Any], *, check_names: bool = True) -> ExperimentConfig:
    """Validate a config mapping (from YAML) into an ExperimentConfig; ConfigError names the bad key or value."""
    top = _keys("(top level)", data, [f for f in ExperimentConfig.__dataclass_fields__])
    if "name" not in top or not isinstance(top["name"], str) or not top["name"].strip():
        raise ConfigError("config name must be a non-empty string (it names the run)")
    kind = top.get("kind", "kurakin")
    experiment_kind = get_kind(kind)
    seed = _int("seed", top.get("seed", 0), 0)
    models = _str_list("models", top.get("models", ["mobilenet_v2"]))
    targets = _str_list("targets", top["targets"]) if top.get("targets") is not None else None
    if check_names:
        from testbed.models.registry import get_entry

        for m in models + (targets or ()):
            entry = get_entry(m)  # ModelNotFoundError lists the known models
            if entry.task != "classification":
                raise ConfigError(f"config models: {m!r} is a {entry.task} model, not a classifier")

    raw_attacks = top.get("attacks", ["fgsm", "bim", "iter_ll"])
    if not isinstance(raw_attacks, list) or not raw_attacks:
        raise ConfigError(f"config attacks must be a non-empty list, got {raw_attacks!r}")
    attacks = []
    for i, a in enumerate(raw_attacks):
        if isinstance(a, str):
            a = {"name": a}
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            raise ConfigError(f"config attacks[{i}] must be a name or a mapping with 'name', got {a!r}")
        params = {k: v for k, v in a.items() if k != "name"}
        if "eps" in params:
            raise ConfigError(f"config attacks[{i}] ({a['name']}): give budgets in the top-level 'eps' list, "
                              "not per attack")
        owners = [k for k in list_kinds() if a["name"] in get_kind(k).BASELINES]
        if owners:  # a kind's baseline (e.g. transfer's random_sign noise), not an attack of the registry
            if a["name"] not in experiment_kind.BASELINES or params:
                raise ConfigError(f"config attacks[{i}]: {a['name']!r} is a baseline of kind {' / '.join(owners)} "
                                  "(no hyper-parameters)")
        else:
            try:
                get_attack_spec(a["name"])  # an unknown attack lists the known ones
            except ConfigError as exc:
                raise ConfigError(f"config attacks[{i}]: {exc}") from None
        attacks.append(AttackSpec(a["name"], params))

    eps = top.get("eps", [2, 4, 8, 16])
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        eps = [eps]
    if not isinstance(eps, list) or not eps:
        raise ConfigError(f"config eps must be a non-empty list of budgets on the 0-255 scale, got {eps!r}")
    for e in eps:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or not 0 < e <= 255:
            raise ConfigError(f"config eps: {e!r} is out of range; each eps must be in (0, 255] "
                              "(the 0-255 pixel scale, e.g. 8 for 8/255)")
    for i, spec in enumerate(attacks):  # build exactly what each cell will build: bad parameters fail now
        for e in ([] if spec.name in experiment_kind.BASELINES else eps):
            try:
                spec.build(e)
            except ConfigError as exc:
                raise ConfigError(f"config attacks[{i}] at eps {e:g}: {exc}") from None
    img = _keys("images", top.get("images"), ImageSetConfig.__dataclass_fields__)
    src = img.get("source", "photos")
    if src not in IMAGE_SOURCES:
        raise ConfigError(f"config images.source must be one of {IMAGE_SOURCES}, got {src!r}")
    if src == "folder" and not img.get("folder"):
        raise ConfigError("config images.folder is required when images.source is 'folder'")
    if "names" in img and img["names"] is not None:
        img["names"] = _str_list("images.names", img["names"])
        if src == "imagenet-samples":  # a subset of the labelled samples, by asset name
            from testbed.assets import imagenet_sample_labels

            unknown = [n for n in img["names"] if n not in imagenet_sample_labels()]
            if unknown:
                raise ConfigError(f"config images.names {unknown} are not ImageNet samples (known: "
                                  f"{', '.join(imagenet_sample_labels())})")
        elif check_names:  # shipped photo names, image files, folders or globs: the one resolver of every command
            from testbed.errors import ImageError
            from testbed.photos import resolve_images

            try:
                resolve_images(img["names"], what="config images.names")
            except ImageError as exc:
                raise ConfigError(str(exc)) from None
    _int("images.crops_per_photo", img.get("crops_per_photo", 1), 1, 64)
    if img.get("limit") is not None:
        _int("images.limit", img["limit"], 1)
    images = ImageSetConfig(**img)

    ch = _keys("channel", top.get("channel"), ChannelConfig.__dataclass_fields__)
    ckind = ch.get("kind", "simulated")
    from pipelines.channels import CHANNEL_KINDS, SIMULATOR_KEYS

    if ckind not in CHANNEL_KINDS:
        raise ConfigError(f"config channel.kind must be one of {CHANNEL_KINDS}, got {ckind!r}")
    _int("channel.repetitions", ch.get("repetitions", 1), 1, 100)
    if ckind == "simulated":  # camera.simulated: validate the preset and every simulator value now
        from pipelines.channels import SimulatedChannel

        ch["simulator"] = _keys("channel.simulator", ch.get("simulator") or {}, SIMULATOR_KEYS)
        SimulatedChannel(0, ch.get("preset", "default"), **dict(ch["simulator"]))
    if ckind == "transform":  # validate the transformation and its parameter now
        from pipelines.channels import TransformChannel

        TransformChannel(0, ch.get("transform"))
    if ckind == "folder" and not ch.get("folder"):
        raise ConfigError("config channel.folder is required when channel.kind is 'folder'")
    if ckind == "live" and ch.get("source") is None:
        raise ConfigError("config channel.source (webcam index, video file or stream URL) is required for 'live'")
    if ch.get("source") is not None:
        ch["source"] = str(ch["source"])
    channel = ChannelConfig(**ch)

    conf = top.get("prefilter_confidence", 0.8)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 <= conf <= 1:
        raise ConfigError(f"config prefilter_confidence must be in [0, 1], got {conf!r}")
    threads = top.get("torch_threads")
    if threads is not None:
        _int("torch_threads", threads, 1, 256)
    surrogate = top.get("surrogate")
    if surrogate is not None and not isinstance(surrogate, dict):
        raise ConfigError(f"config surrogate must be a mapping, got {surrogate!r}")
    config = ExperimentConfig(
        name=top["name"].strip(), kind=kind, seed=seed, models=models, targets=targets, attacks=tuple(attacks),
        eps=tuple(float(e) for e in eps), images=images, channel=channel,
        batch_size=_int("batch_size", top.get("batch_size", 16), 1, 4096), prefilter_confidence=float(conf),
        examples=_int("examples", top.get("examples", 4), 0, 64), torch_threads=threads, surrogate=surrogate,
    )
    experiment_kind.check_config(config)
    return config


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    from testbed.inputs import load_yaml

    p = Path(path)
    data = load_yaml(p, what="experiment config")  # size, UTF-8, nesting, aliases, parse errors: ConfigError
    if not isinstance(data, dict):
        raise ConfigError(f"experiment config {p} must be a YAML mapping, got {type(data).__name__}")
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise type(exc)(f"{p}: {exc}") from None


# ------------------------------------------------------------------------------------------------ run directory
class RunDir(runs.RunDir):
    """An experiment's run directory: ``testbed.runs.RunDir`` (``--out`` rule, marker of kind ``experiment``,
    config comparison, atomic writes) with its own config file, ``config.resolved.yaml`` (the resolved config and
    its sha256), and a cell store: ``cells/*.json``, one whole file per cell. Examples and reports live beside them.

    Refused with RunDirError naming the folder, nothing written: a non-empty folder that is not a run directory, a
    run directory of another kind (patch, sticker, eyeglass...), a path whose parent is a file or that cannot be
    written, and a run directory of a different config (the differing keys are named)."""

    CONFIG = runs.EXPERIMENT_CONFIG_FILE
    KIND = "experiment"

    def __init__(self, path: str | Path, config: "ExperimentConfig") -> None:
        self.experiment = config
        super().__init__(path, config, kind=self.KIND, error=RunDirError)

    def resolve(self, config: "ExperimentConfig") -> dict[str, Any]:
        return config.to_dict()

    def read_config(self) -> dict[str, Any] | None:
        cfg_file = self.path / self.CONFIG
        if not cfg_file.exists():
            return None
        try:
            old = load_yaml(cfg_file, what="run configuration") or {}
        except ConfigError as exc:
            raise RunDirError(f"run directory {self.path}: its {self.CONFIG} is unreadable ({exc}); "
                              "use a new run directory") from None
        if not isinstance(old, dict) or not isinstance(old.get("config", {}), dict):
            raise RunDirError(f"run directory {self.path}: its {self.CONFIG} is not a mapping with a 'config' "
                              "mapping; use a new run directory")
        self._stored_sha256 = old.get("sha256")
        return old.get("config", {})

    def write_config(self) -> None:
        text = yaml.safe_dump({"sha256": self.experiment.sha256(), "config": self.config}, sort_keys=False)
        write_atomic(self.path / self.CONFIG, text)

    def differences(self, stored: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
        diff = super().differences(stored, ignore)
        if not diff and self._stored_sha256 != config_digest(stored):
            diff = ["sha256"]  # the stored config does not match its own digest: the file was edited by hand
        return diff

    # -- cells
    def cell_path(self, key: str) -> Path:
        from pipelines.channels import tag_dirname

        return self.path / "cells" / f"{tag_dirname(key)}.json"

    def has_cell(self, key: str) -> bool:
        p = self.cell_path(key)
        if not p.is_file():
            return False
        try:
            d = load_json(p, what="result cell")
        except ConfigError:
            return False  # an unreadable cell is recomputed
        return isinstance(d, dict) and d.get("key") == key

    def load_cell(self, key: str) -> dict[str, Any]:
        d = load_json(self.cell_path(key), what="result cell")
        if not isinstance(d, dict):
            raise RunDirError(f"result cell {self.cell_path(key)} is not a JSON object; delete it to recompute")
        return d

    def save_cell(self, key: str, data: dict[str, Any]) -> Path:
        return write_atomic(self.cell_path(key), json.dumps({"key": key, **data}))

    def cells(self) -> dict[str, dict[str, Any]]:
        return read_cells(self.path)


def read_cells(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every stored cell of a run directory, by key (RunDirError for a cell without one)."""
    out = {}
    for p in sorted((Path(run_dir) / "cells").glob("*.json")):
        d = load_json(p, what="result cell")
        if not isinstance(d, dict) or not isinstance(d.get("key"), str):
            raise RunDirError(f"result cell {p} has no 'key'; delete it to recompute")
        out[d["key"]] = d
    return out


# ------------------------------------------------------------------------------------------------ running
@dataclass
class Cell:
    """One unit of work: its key, and a function computing its JSON-serialisable result."""

    key: str
    compute: Callable[[], dict[str, Any]]


@dataclass
class RunSummary:
    run_dir: Path
    computed: list[str]
    skipped: list[str]
    seconds: float
    cells: dict[str, dict[str, Any]]


def execute_cells(run: RunDir, cells: list[Cell], *, progress: bool = True,
                  stop_after: int | None = None) -> tuple[list[str], list[str]]:
    """Compute the cells not already saved (in order), saving each as soon as it is done."""
    from tqdm.auto import tqdm

    computed, skipped = [], []
    bar = tqdm(cells, desc=run.experiment.name, unit="cell", disable=not progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(cell.key)
        if run.has_cell(cell.key):
            skipped.append(cell.key)
            continue
        if stop_after is not None and len(computed) >= stop_after:
            raise KeyboardInterrupt(f"stopped after {stop_after} cell(s) (stop_after)")
        started = time.time()
        result = cell.compute()
        result["seconds"] = round(time.time() - started, 3)
        run.save_cell(cell.key, result)
        computed.append(cell.key)
    return computed, skipped


def run_experiment_cell(kind_module: str, config: dict[str, Any], run_dir: str, key: str) -> dict[str, Any]:
    """One experiment cell as a task of ``pipelines.executors`` (a worker process or a Ray worker): import the
    kind's module (which registers it), reopen the run directory (same config, nothing rewritten), build the
    cells lazily, compute the one named ``key`` and save it into the run directory. Returns its key and time."""
    import importlib

    importlib.import_module(kind_module)
    cfg = parse_config(config, check_names=False)
    run = RunDir(run_dir, cfg)
    cell = next((c for c in get_kind(cfg.kind).build_cells(cfg, run) if c.key == key), None)
    if cell is None:
        raise RunDirError(f"experiment {cfg.name}: no cell {key!r} in {run_dir}")
    started = time.time()
    result = cell.compute()
    result["seconds"] = round(time.time() - started, 3)
    run.save_cell(key, result)
    return {"key": key, "seconds": result["seconds"]}


def execute_cells_on(executor: Any, run: RunDir, cells: list[Cell], *, progress: bool = True) -> tuple[list[str], list[str]]:
    """Compute the cells not already saved as tasks of ``executor`` (``pipelines.executors``: local worker
    processes, Ray): each task rebuilds its cell where it runs (``run_experiment_cell``) and writes it into the run
    directory, which therefore has to be on a file system every worker sees. A failed cell raises its error
    after the others finished (the saved cells are kept; rerunning resumes)."""
    from pipelines.executors import Task
    from tqdm.auto import tqdm

    config = run.experiment
    kind = get_kind(config.kind)
    module = getattr(kind, "__name__", None)
    if not isinstance(module, str) or module not in sys.modules:
        raise ConfigError(f"experiment kind {config.kind!r} is not a module; only the serial executor can run it")
    skipped = [c.key for c in cells if run.has_cell(c.key)]
    todo = [c for c in cells if c.key not in skipped]
    tasks = [Task(c.key, run_experiment_cell, (module, config.to_dict(), str(run.path.resolve()), c.key)) for c in todo]
    computed, errors = [], []
    bar = tqdm(total=len(todo), desc=config.name, unit="cell", disable=not progress, dynamic_ncols=True)

    def on_done(outcome: Any) -> None:
        bar.update(1)
        (computed.append(outcome.key) if outcome.ok else errors.append(f"{outcome.key}: {outcome.error}"))

    executor.run(tasks, on_done)
    bar.close()
    if errors:
        raise ConfigError(f"{len(errors)} experiment cell(s) failed ({'; '.join(errors)[:400]}); the other cells "
                          "are saved, rerun to resume")
    return [c.key for c in todo if c.key in computed], skipped


def run_experiment(config: ExperimentConfig | str | Path | dict, run_dir: str | Path, *, progress: bool = True,
                   stop_after: int | None = None, executor: Any = None) -> RunSummary:
    """Run (or resume) an experiment into ``run_dir`` and write its reports; returns what was computed.

    ``executor``: a ``pipelines.executors`` executor. None or a ``SerialExecutor`` computes the cells here, one
    after another (they share the loaded models); a local or Ray executor runs each cell as a task
    (:func:`execute_cells_on`) with the config's ``torch_threads`` per task when set."""
    from pipelines.executors import SerialExecutor

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    kind = get_kind(config.kind)
    if executor is not None:
        executor.start()  # e.g. no Ray cluster: refused before the run directory is written
    run = RunDir(run_dir, config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    started = time.time()
    cells = kind.build_cells(config, run)
    if executor is None or isinstance(executor, SerialExecutor):
        computed, skipped = execute_cells(run, cells, progress=progress, stop_after=stop_after)
    else:
        if config.torch_threads and getattr(executor, "threads", None) is None:
            executor.threads = config.torch_threads
        computed, skipped = execute_cells_on(executor, run, cells, progress=progress)
    seconds = time.time() - started
    meta = {"machine": machine_info(), "seconds_this_invocation": round(seconds, 1), "computed": computed,
            "skipped": skipped, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "executor": "serial" if executor is None else executor.describe()}
    write_atomic(run.path / "run.json", json.dumps(meta, indent=2))
    write_report(run.path)
    return RunSummary(run.path, computed, skipped, seconds, run.cells())


# ------------------------------------------------------------------------------------------------ report
def write_report(run_dir: str | Path) -> Path:
    """(Re)write report.md / report.html / report.json (and plots) of a run directory from its stored cells: the
    common header here, the kind's section from its ``render_report``. Returns report.md."""
    run_dir = Path(run_dir)
    cfg_file = run_dir / RunDir.CONFIG
    if not cfg_file.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {RunDir.CONFIG})")
    resolved = load_yaml(cfg_file, what="run configuration")
    if not isinstance(resolved, dict) or not isinstance(resolved.get("config"), dict):
        raise ConfigError(f"run configuration {cfg_file} has no 'config' mapping; is {run_dir} a run directory?")
    cfg = resolved["config"]
    kind = get_kind(cfg.get("kind"))
    cells = read_cells(run_dir)
    meta = load_json(run_dir / "run.json", what="run file") if (run_dir / "run.json").is_file() else {}
    if not isinstance(meta, dict):
        raise ConfigError(f"run file {run_dir / 'run.json'} must hold a JSON object")
    lines = [f"# Experiment report: {cfg['name']}", "",
             f"Kind: {cfg['kind']}; seed {cfg['seed']}; models {', '.join(cfg['models'])}; "
             f"attacks {', '.join(a['name'] for a in cfg['attacks'])}; ε {', '.join(f'{e:g}' for e in cfg['eps'])} "
             f"(0–255 scale); channel {cfg['channel']['kind']}"
             + (f" (preset {cfg['channel']['preset']}, {cfg['channel']['repetitions']} repetition(s))"
                if cfg['channel']['kind'] == 'simulated' else "") + ".", ""]
    if meta:
        m = meta.get("machine") if isinstance(meta.get("machine"), dict) else {}
        if "cpu" in m:  # testbed.machine.machine_info()
            described, threads = machine_line(m), m.get("torch_threads")
        else:  # a run.json written before the one machine description
            described = f"{m.get('machine')}, {m.get('cpus')} CPU cores, CUDA {m.get('cuda')}, torch {m.get('torch')}"
            threads = m.get("threads")
        lines += [f"Machine: {described}, {threads} torch thread(s); last "
                  f"invocation {meta.get('seconds_this_invocation')} s, finished {meta.get('finished')}; cells "
                  f"computed then: {len(meta.get('computed', []))}, resumed from disk: {len(meta.get('skipped', []))}.",
                  ""]
    lines += [f"Config sha256 `{str(resolved.get('sha256'))[:16]}…` (full resolved config in `{RunDir.CONFIG}`).", ""]
    body, data = kind.render_report(run_dir, cfg, cells, kind.summarise_run(cfg, cells))
    md = "\n".join(lines + body) + "\n"
    write_atomic(run_dir / "report.md", md)
    write_atomic(run_dir / "report.html", md_to_html(md, cfg["name"]))
    write_atomic(run_dir / "report.json", json.dumps({"config": cfg, "sha256": resolved.get("sha256"), "run": meta,
                                                      **data}, indent=1))
    return run_dir / "report.md"
