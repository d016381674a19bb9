"""Experiments declared in YAML, run cell by cell, resumable.

An experiment config (see ``experiments/*.yaml``)::

    name: kurakin-mobilenet_v2
    kind: kurakin            # kurakin (accuracy through a channel) | transfer (source x target matrix)
    seed: 0
    models: [mobilenet_v2]   # kurakin: the attacked models; transfer: sources and targets
    attacks:                 # names from physical.attacks.list_attacks(), with hyper-parameters
      - fgsm
      - {name: bim, alpha: 0.00392156862745098}
    eps: [2, 4, 8, 16]       # budgets in each attack's units: 0-255 scale for L-inf attacks, absolute L2 radii
    images: {source: photos, kind: photo, crops_per_photo: 3}   # or {source: folder, folder: path/}
    channel: {kind: simulated, preset: default, repetitions: 1} # none | simulated (camera.simulated) | folder | live
    batch_size: 16
    prefilter_confidence: 0.8
    examples: 4              # images per cell saved for the report (before/after the channel)
    torch_threads: null      # set 1 on a shared CPU (oversubscription makes 2 threads slower than 1)

Unknown keys and bad values raise ConfigError naming them. ``run_experiment(config, run_dir)`` writes the
resolved config (``config.resolved.yaml``, with its sha256) into the run directory, then one JSON file per cell
under ``cells/``, each written atomically (temp file + fsync + ``os.replace``), so a killed run leaves only whole
cells and resumes from them. A run directory made from a different config is refused.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml

from physical.attacks.registry import build_attack_in_units, get_attack_spec
from testbed.errors import ConfigError, TestbedError
from testbed.inputs import load_json
from testbed.machine import machine_info

EXPERIMENT_KINDS = ("kurakin", "transfer")
IMAGE_SOURCES = ("photos", "folder")


class RunDirError(ConfigError):
    """The run directory belongs to a different experiment config."""


class ResultsWriteError(TestbedError, OSError):
    """A result file could not be written (disk full, permission...); nothing half-written is left."""


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
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


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
    if kind not in EXPERIMENT_KINDS:
        raise ConfigError(f"config kind must be one of {EXPERIMENT_KINDS}, got {kind!r}")
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
        if a["name"] == "random_sign":  # the transfer baseline: uniform random-sign noise of size eps
            if kind != "transfer" or params:
                raise ConfigError(f"config attacks[{i}]: 'random_sign' is the transfer baseline (kind: transfer, "
                                  "no hyper-parameters)")
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
        for e in ([] if spec.name == "random_sign" else eps):
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
        if check_names:
            from testbed.photos import list_photos

            unknown = [n for n in img["names"] if n not in list_photos()]
            if unknown:
                raise ConfigError(f"config images.names: unknown photo(s) {unknown}; known: {', '.join(list_photos())}")
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
    if surrogate is not None and check_names:
        from pipelines.transfer import SurrogateConfig

        SurrogateConfig.from_dict(surrogate)
    return ExperimentConfig(
        name=top["name"].strip(), kind=kind, seed=seed, models=models, targets=targets, attacks=tuple(attacks),
        eps=tuple(float(e) for e in eps), images=images, channel=channel,
        batch_size=_int("batch_size", top.get("batch_size", 16), 1, 4096), prefilter_confidence=float(conf),
        examples=_int("examples", top.get("examples", 4), 0, 64), torch_threads=threads, surrogate=surrogate,
    )


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


# ------------------------------------------------------------------------------------------------ files
def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder + fsync + os.replace.

    On any OSError (disk full, permission, read-only) the temp file is removed, ``path`` is left as it was,
    and ResultsWriteError names the file and the reason.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        reason = {errno.ENOSPC: "disk full", errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
                  errno.EDQUOT: "disk quota exceeded", errno.EPERM: "operation not permitted"}.get(exc.errno,
                                                                                              exc.strerror or str(exc))
        raise ResultsWriteError(exc.errno or 0, f"could not write results file {path}: {reason}; nothing was "
                                                f"written there (the run can be resumed once this is fixed)") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


class RunDir:
    """A run directory: ``testbed-run.json`` (kind ``experiment``), ``config.resolved.yaml``, ``cells/*.json``,
    ``examples/``, reports.

    The ``--out`` rule is the one of every run directory (:func:`physical.runs.claim_run_dir`): a non-empty folder
    that is not a run directory, a run directory of another kind (patch, sticker, eyeglass...), a path whose parent
    is a file or that cannot be written: RunDirError naming the folder, nothing written."""

    CONFIG = "config.resolved.yaml"
    KIND = "experiment"

    def __init__(self, path: str | Path, config: ExperimentConfig) -> None:
        from physical.runs import claim_run_dir

        self.path = Path(path)
        self.config = config
        cfg_file = self.path / self.CONFIG
        claim_run_dir(self.path, self.KIND, error=RunDirError)
        digest = config.sha256()
        if cfg_file.exists():
            from testbed.inputs import load_yaml

            try:
                old = load_yaml(cfg_file, what="run configuration") or {}
            except ConfigError as exc:
                raise RunDirError(f"run directory {self.path}: its {self.CONFIG} is unreadable ({exc}); "
                                  "use a new run directory") from None
            if not isinstance(old, dict):
                raise RunDirError(f"run directory {self.path}: its {self.CONFIG} is not a mapping; "
                                  "use a new run directory")
            if old.get("sha256") != digest:
                changed = _diff(old.get("config", {}), config.to_dict())
                raise RunDirError(f"run directory {self.path} holds results of a different config "
                                  f"(differs in: {', '.join(changed) or 'hash'}); use a new --out folder, "
                                  "or delete it to start over")
        else:
            text = yaml.safe_dump({"sha256": digest, "config": config.to_dict()}, sort_keys=False)
            write_atomic(cfg_file, text)

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
        out = {}
        for p in sorted((self.path / "cells").glob("*.json")):
            d = load_json(p, what="result cell")
            if not isinstance(d, dict) or not isinstance(d.get("key"), str):
                raise RunDirError(f"result cell {p} has no 'key'; delete it to recompute")
            out[d["key"]] = d
        return out


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _diff(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(prefix + k)
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
    bar = tqdm(cells, desc=run.config.name, unit="cell", disable=not progress, dynamic_ncols=True)
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


def run_experiment(config: ExperimentConfig | str | Path | dict, run_dir: str | Path, *, progress: bool = True,
                   stop_after: int | None = None) -> RunSummary:
    """Run (or resume) an experiment into ``run_dir`` and write its reports; returns what was computed."""
    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = parse_config(config)
    run = RunDir(run_dir, config)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    started = time.time()
    if config.kind == "kurakin":
        from pipelines.kurakin import build_cells
    else:
        from pipelines.transfer import build_cells
    cells = build_cells(config, run)
    computed, skipped = execute_cells(run, cells, progress=progress, stop_after=stop_after)
    seconds = time.time() - started
    meta = {"machine": machine_info(), "seconds_this_invocation": round(seconds, 1), "computed": computed,
            "skipped": skipped, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_atomic(run.path / "run.json", json.dumps(meta, indent=2))
    from pipelines.report import write_report

    write_report(run.path)
    return RunSummary(run.path, computed, skipped, seconds, run.cells())
