"""Attack campaigns: a grid of ordinary attack runs declared in YAML, run on any executor, resumable, one report.

A campaign file (``experiments/campaign_*.yaml``; docs/campaigns.md)::

    name: patch-targets
    attack: patch                 # patch | sticker | eyeglass | digital, or a list (a grid axis)
    grid:                         # option -> list of values; the cells are the product, in this order
      target: [toaster, banana]
      seed: [0, 1]
      eot: [athalye-eot-2d, print-aware]
    options:                      # every cell: options of the single command (long names, - or _)
      model: mobilenet_v2
      steps: 300
      batch_size: 8
    options_by_attack: {}         # e.g. {sticker: {sign: stop}}: options of one attack kind only
    evaluation:
      eot_draws: 500              # fresh EOT draws for the success rate (the command's --eval-samples)
      eval_seed: null             # their seed (default: the command's, seed + 1000003)
      print_photo: {photos: 50, preset: default, seed: 2026}   # optional: simulated print -> photo, in situ
    resources: {num_cpus: 1, num_gpus: 0}   # what each cell declares to the executor (Ray schedules by it)
    torch_threads: 1              # torch threads per cell, the same on every executor (null: the executor's choice)

Every cell is an ordinary run directory, ``DIR/cells/<key>/``, written by the same code as the single command
(``testbed patch`` / ``sticker`` / ``eyeglass`` / ``attack digital``: the cell's options are parsed by that
command's own argument parser and run by its own handler), so a cell resumes from its checkpoints like a single
run, and ``testbed print``, ``testbed survival`` accept it. The campaign folder is a ``testbed.runs.RunDir`` of
kind ``campaign`` (``config.json``: the resolved campaign; a different campaign is refused naming the keys), with
``status/<key>.json`` (done / failed, the error, seconds, where it ran, the cell's result), ``running/<key>.json``
(which process is running a cell now), ``report.md``/``.html``/``.json`` and ``plots/``.

The whole config is validated when it is parsed -- every cell's argument list goes through its command's parser,
models, targets and EOT presets are looked up -- so a bad grid fails before any cell runs (exit 2, one line);
``CampaignConfig.to_dict()`` parses back to an equal config.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import math
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.executors import Executor, Outcome, SerialExecutor, Task
from testbed import runs
from testbed.errors import ConfigError
from testbed.inputs import load_json, load_yaml
from testbed.runs import write_atomic

KIND = "campaign"
ATTACKS = ("patch", "sticker", "eyeglass", "digital")
#: options the campaign sets itself (never in a campaign file)
RESERVED = ("out", "progress", "allocator", "help", "eval", "eval_samples", "eval_seed")
STATUS_DIR, RUNNING_DIR, CELLS_DIR = "status", "running", "cells"
_TOP_KEYS = ("name", "attack", "grid", "options", "options_by_attack", "evaluation", "resources", "torch_threads")


class CampaignError(ConfigError):
    """A campaign file or folder that cannot be used (the message names the key, the cell or the folder)."""


# ------------------------------------------------------------------------------------------------ the cells' parser
class _CellParser(argparse.ArgumentParser):
    """The single commands' own parsers, raising CampaignError instead of exiting."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise CampaignError(" ".join(message.split()))


def cell_parser() -> argparse.ArgumentParser:
    """``patch``, ``sticker``, ``eyeglass`` and ``attack digital`` exactly as ``testbed`` defines them."""
    import physical.cli
    import physical.cli_eot
    import physical.cli_eyeglass

    p = _CellParser(prog="testbed", add_help=False)
    sub = p.add_subparsers(dest="command", required=True)
    physical.cli.add_parser(sub)
    physical.cli_eot.add_parser(sub)
    physical.cli_eyeglass.add_parser(sub)
    return p


def _command(attack: str) -> list[str]:
    return ["attack", "digital"] if attack == "digital" else [attack]


def _subparser(parser: argparse.ArgumentParser, attack: str) -> argparse.ArgumentParser:
    p = parser
    for name in _command(attack):
        action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = action.choices[name]
    return p


def _option_actions(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    out = {}
    for a in sub._actions:
        for s in a.option_strings:
            if s.startswith("--") and not s.startswith("--no-"):
                out[s[2:].replace("-", "_")] = a
    return out


def _argv_value(name: str, value: Any, action: argparse.Action) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise CampaignError(f"option {name} is a switch: give true or false, got {value!r}")
        return [flag] if value else []
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise CampaignError(f"option {name} is a switch: give true or false, got {value!r}")
        return [flag if value else "--no-" + name.replace("_", "-")]
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        if action.nargs in ("+", "*"):
            return [flag, *[_scalar(name, v) for v in value]]
        return [flag, ",".join(_scalar(name, v) for v in value)]  # e.g. scenes: [chelsea, coffee]
    return [flag, _scalar(name, value)]


def _scalar(name: str, v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise CampaignError(f"option {name}: expected a name or a number, got {v!r}")
    return v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class Cell:
    """One run of the campaign: its key (the folder name under ``cells/``), its attack, the grid values that made
    it and the command line (without ``--out``) of the single command that runs it."""

    key: str
    attack: str
    values: dict[str, Any]
    argv: tuple[str, ...]


@dataclass(frozen=True)
class CampaignConfig:
    name: str
    attack: tuple[str, ...]
    grid: dict[str, tuple[Any, ...]]
    options: dict[str, Any] = field(default_factory=dict)
    options_by_attack: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1.0, "num_gpus": 0.0})
    torch_threads: int | None = 1  # the same count on every executor: bit-identical cells; None: executor's

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attack"] = list(self.attack)
        d["grid"] = [{k: list(v)} for k, v in self.grid.items()]  # a list: the axis order survives sorted keys
        return json.loads(json.dumps(d))

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def cells(self, check: bool = True) -> list[Cell]:
        """Every cell, in grid order (the attack axis first). ``check``: also look up models, targets and EOT
        presets (a report of a stored campaign skips it; the argument parsers always run)."""
        parser = cell_parser()
        out: list[Cell] = []
        axes = list(self.grid)
        for attack in self.attack:
            for combo in itertools.product(*(self.grid[a] for a in axes)):
                values = dict(zip(axes, combo))
                out.append(_make_cell(parser, self, attack, values, check))
        keys = [c.key for c in out]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise CampaignError(f"grid gives several cells the same key {dup[0]!r}: remove repeated values")
        return out


def _key_part(v: Any) -> str:
    text = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return re.sub(r"[^A-Za-z0-9.=,+-]+", "_", text).strip("_") or "_"


def _cell_key(attack: str, values: dict[str, Any]) -> str:
    key = "_".join([attack] + [f"{k}={_key_part(v)}" for k, v in values.items()])
    if len(key) > 120:
        key = key[:100] + "_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return key


def _make_cell(parser: argparse.ArgumentParser, cfg: CampaignConfig, attack: str, values: dict[str, Any],
               check: bool = True) -> Cell:
    sub = _subparser(parser, attack)
    actions = _option_actions(sub)
    opts = {**cfg.options, **cfg.options_by_attack.get(attack, {}), **values}
    ev = cfg.evaluation
    if attack != "digital":
        draws_opt = "eval_samples"  # the one name of every attack command (docs/harness.md, option vocabulary)
        if ev.get("eot_draws") is not None:
            opts[draws_opt] = ev["eot_draws"]
        if ev.get("eval_seed") is not None:
            opts["eval_seed"] = ev["eval_seed"]
    argv = list(_command(attack))
    for name, value in opts.items():
        if name not in actions:
            known = ", ".join(sorted(k for k in actions if k not in RESERVED))
            raise CampaignError(f"cell {_cell_key(attack, values)}: `testbed {' '.join(_command(attack))}` has no "
                                f"option {name!r}; its options: {known}")
        argv += _argv_value(name, value, actions[name])
    key = _cell_key(attack, values)
    try:
        args = parser.parse_args(argv + ["--out", "cell"])
    except CampaignError as exc:
        raise CampaignError(f"cell {key}: {exc}") from None
    try:
        if check:
            _check_cell(attack, args)
    except ConfigError as exc:
        raise CampaignError(f"cell {key}: {exc}") from None
    return Cell(key, attack, values, tuple(argv))


def _check_cell(attack: str, args: argparse.Namespace) -> None:
    """What the command checks before loading a model, as far as it needs no model: model, target, EOT preset."""
    from testbed.models.registry import get_entry

    entry = get_entry(args.model)  # ModelNotFoundError (a ConfigError) lists the known models
    if attack in ("patch", "sticker", "digital") and entry.task != "classification":
        raise CampaignError(f"model {args.model!r} is a {entry.task} model, not a classifier")
    if attack in ("patch", "sticker") and getattr(args, "target", None) is not None:
        from physical.cli_eot import resolve_class

        resolve_class(str(args.target), entry.labels)
    if attack in ("patch", "sticker") and args.untargeted == (args.target is not None):
        raise CampaignError("give exactly one of target or untargeted: true")
    if attack == "digital":  # what `testbed attack digital` builds before it loads the model
        from physical.attacks.registry import build_attack_in_units
        from physical.cli import _parse_params

        hp = _parse_params(args.param)
        if args.steps is not None:
            hp["steps"] = args.steps
        hp.setdefault("seed", args.seed)
        build_attack_in_units(args.attack, eps=args.eps, alpha=args.alpha, **hp)
    eot = getattr(args, "eot", None)
    if isinstance(eot, str) and Path(eot).suffix.lower() not in (".json", ".yaml", ".yml"):
        from physical.eot import resolve_config

        resolve_config(eot)  # an unknown preset names the known ones


def _mapping(where: str, v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise CampaignError(f"campaign {where} must be a mapping of option names, got {v!r}")
    return {k.replace("-", "_"): x for k, x in v.items()}


def _reserved(where: str, opts: dict[str, Any]) -> None:
    bad = sorted(set(opts) & set(RESERVED))
    if bad:
        raise CampaignError(f"campaign {where}: {', '.join(bad)} is set by the campaign (out: cells/<key>; the "
                            "evaluation draws: evaluation.eot_draws / eval_seed)")


def parse_campaign(data: Any, *, check_names: bool = True) -> CampaignConfig:
    """Validate a campaign mapping (from YAML); CampaignError names the bad key, value or cell."""
    if not isinstance(data, dict):
        raise CampaignError(f"campaign must be a YAML mapping, got {type(data).__name__}")
    bad = [k for k in data if k not in _TOP_KEYS]
    if bad:
        raise CampaignError(f"campaign: unknown key(s) {bad}; allowed keys: {', '.join(_TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise CampaignError("campaign name must be a non-empty string (at most 100 characters)")
    attack = data.get("attack", "patch")
    attack = [attack] if isinstance(attack, str) else attack
    if not isinstance(attack, list) or not attack or any(a not in ATTACKS for a in attack) \
            or len(set(attack)) != len(attack):
        raise CampaignError(f"campaign attack must be one of {', '.join(ATTACKS)} or a list of distinct ones, "
                            f"got {data.get('attack')!r}")
    raw_grid = data.get("grid")
    if isinstance(raw_grid, list):  # the stored form: a list of one-axis mappings (keeps the axis order)
        if not all(isinstance(g, dict) and len(g) == 1 for g in raw_grid):
            raise CampaignError(f"campaign grid must be a mapping (axis: [values]) or a list of one-axis mappings, "
                                f"got {raw_grid!r}")
        pairs = [next(iter(g.items())) for g in raw_grid]
        if len({k for k, _ in pairs}) != len(pairs):
            raise CampaignError("campaign grid names an axis twice")
        raw_grid = dict(pairs)
    grid_in = _mapping("grid", raw_grid)
    grid: dict[str, tuple[Any, ...]] = {}
    for k, v in grid_in.items():
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise CampaignError(f"campaign grid.{k} is an empty list (no cell would run)")
        grid[k] = tuple(vals)
    options = _mapping("options", data.get("options"))
    by_attack_in = _mapping("options_by_attack", data.get("options_by_attack"))
    by_attack = {}
    for a, opts in by_attack_in.items():
        if a not in attack:
            raise CampaignError(f"campaign options_by_attack.{a}: {a!r} is not one of the campaign's attacks {attack}")
        by_attack[a] = _mapping(f"options_by_attack.{a}", opts)
        _reserved(f"options_by_attack.{a}", by_attack[a])
    both = sorted(set(grid) & (set(options) | {k for o in by_attack.values() for k in o}))
    if both:
        raise CampaignError(f"campaign: {', '.join(both)} is both a grid axis and a fixed option")
    _reserved("grid", grid)
    _reserved("options", options)
    ev = _mapping("evaluation", data.get("evaluation"))
    unknown = sorted(set(ev) - {"eot_draws", "eval_seed", "print_photo"})
    if unknown:
        raise CampaignError(f"campaign evaluation: unknown key(s) {unknown}; allowed: eot_draws, eval_seed, print_photo")
    for k in ("eot_draws", "eval_seed"):
        v = ev.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "eot_draws" else 0)):
            raise CampaignError(f"campaign evaluation.{k} must be a {'positive' if k == 'eot_draws' else 'non-negative'}"
                                f" integer, got {v!r}")
    if ev.get("print_photo") is not None:
        ev["print_photo"] = _print_photo_config(ev["print_photo"], attack)
    res = _mapping("resources", data.get("resources"))
    unknown = sorted(set(res) - {"num_cpus", "num_gpus"})
    if unknown:
        raise CampaignError(f"campaign resources: unknown key(s) {unknown}; allowed: num_cpus, num_gpus")
    resources = {}
    for k, default in (("num_cpus", 1.0), ("num_gpus", 0.0)):
        v = res.get(k, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1024 or (k == "num_cpus" and v <= 0):
            raise CampaignError(f"campaign resources.{k} must be a number in {'(0' if k == 'num_cpus' else '[0'}, "
                                f"1024], got {v!r}")
        resources[k] = float(v)
    threads = data.get("torch_threads", 1)  # absent: 1, so every executor computes the same bits; null: executor's
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256):
        raise CampaignError(f"campaign torch_threads must be an integer in [1, 256] or null, got {threads!r}")
    cfg = CampaignConfig(name=name.strip(), attack=tuple(attack), grid=grid, options=options,
                         options_by_attack=by_attack, evaluation=ev, resources=resources, torch_threads=threads)
    cfg.cells(check_names)  # every cell's command line through its command's parser and checks: a bad grid fails now
    return cfg


def _print_photo_config(v: Any, attacks: list[str]) -> dict[str, Any]:
    from pipelines.survival import SurvivalConfig

    if "digital" in attacks:
        raise CampaignError("campaign evaluation.print_photo is for patch, sticker and eyeglass cells, not digital")
    m = _mapping("evaluation.print_photo", v)
    allowed = set(SurvivalConfig.__dataclass_fields__)
    unknown = sorted(set(m) - allowed)
    if unknown:
        raise CampaignError(f"campaign evaluation.print_photo: unknown key(s) {unknown}; allowed: "
                            f"{', '.join(sorted(allowed))}")
    try:
        return asdict(SurvivalConfig(**m).validate())
    except ConfigError as exc:
        raise CampaignError(f"campaign evaluation.print_photo: {exc}") from None


def load_campaign(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign YAML file (size, UTF-8, nesting checked by ``testbed.inputs``)."""
    p = Path(path)
    data = load_yaml(p, what="campaign file")
    try:
        return parse_campaign(data)
    except ConfigError as exc:
        raise CampaignError(f"{p}: {exc}") from None


# ------------------------------------------------------------------------------------------------ one cell (in a worker)
def _latest_step(cell_dir: Path) -> int:
    steps = [int(m.group(1)) for p in (cell_dir / runs.CHECKPOINT_DIR).glob("step_*.pt")
             if (m := re.fullmatch(r"step_([0-9]+)\.pt", p.name))]
    return max(steps, default=0)


def _rate_dict(rate: float | None, n: int) -> dict[str, Any] | None:
    from testbed.stats import wilson

    if rate is None or math.isnan(rate) or not n:
        return None
    return wilson(round(rate * n), n).as_dict()


def run_cell(campaign_dir: str, key: str, attack: str, argv: list[str],
             print_photo: dict[str, Any] | None) -> dict[str, Any]:
    """Run one cell where this function runs (the driver, a worker process, a Ray worker): the single command's
    handler on ``DIR/cells/<key>`` (resuming from its checkpoints), then the in-situ print-photo evaluation when
    asked. Returns the cell's result (success with its Wilson interval, the run's key metrics)."""
    root = Path(campaign_dir)
    try:
        found = runs.run_dir_kind(root) if root.is_dir() else None
    except ConfigError:
        found = None
    if found != KIND:
        raise CampaignError(f"campaign folder {root} is not visible from {socket.gethostname()}: every node that runs "
                            "cells must mount the campaign folder at the same path (a shared file system)")
    import os

    cell_dir = root / CELLS_DIR / key
    resumed_from = _latest_step(cell_dir)
    write_atomic(root / RUNNING_DIR / f"{key}.json",
                 json.dumps({"key": key, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "resumed_from_step": resumed_from}))
    extra = ["--out", str(cell_dir)]
    if attack == "digital":
        if cell_dir.is_dir() and not (cell_dir / "result.json").is_file():
            import shutil

            shutil.rmtree(cell_dir)  # a digital run killed before its result: not resumable, run again
    else:
        extra += ["--no-progress", "--allocator", "glibc"]  # the process is already started: no re-exec
    args = cell_parser().parse_args(list(argv) + extra)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the command's printed summary; its files are the record
        rc = int(args.func(args) or 0)
    if rc != 0:
        raise CampaignError(f"`testbed {' '.join(argv)}` exited with status {rc}")
    out: dict[str, Any] = {"attack": attack, "resumed_from_step": resumed_from,
                           "run_seconds": round(time.perf_counter() - started, 3)}
    if attack == "digital":
        res = load_json(cell_dir / "result.json", what="digital attack result")
        success = [bool(s) for s in res.get("success", [])]
        out["success"] = _rate_dict(sum(success) / len(success) if success else None, len(success))
        out["metrics"] = {k: res.get(k) for k in ("model", "seconds", "device", "l2", "linf")}
    else:
        m = load_json(cell_dir / runs.METRICS_FILE, what="run metrics file")
        n = int(m.get("eval_samples") or 0)
        out["success"] = _rate_dict(m.get("success_rate"), n)
        out["initial_success"] = _rate_dict(m.get("initial_success_rate"), n)
        out["metrics"] = {k: m.get(k) for k in ("model", "target", "target_name", "seed", "eval_seed", "steps",
                                                 "final_loss", "success_rate", "eval_samples", "optimise_seconds",
                                                 "eval_seconds", "eot") if k in m}
    if print_photo:
        from pipelines.survival import SURVIVAL_FUNCTIONS, SurvivalConfig

        row = SURVIVAL_FUNCTIONS[attack](cell_dir, SurvivalConfig(**print_photo))
        out["print_photo"] = row.as_dict()
    return out


# ------------------------------------------------------------------------------------------------ the campaign
@dataclass
class CampaignSummary:
    run_dir: Path
    computed: list[str]
    skipped: list[str]
    failed: dict[str, str]  # key -> error (this invocation's failures and earlier ones not retried)
    seconds: float


class CampaignDir(runs.RunDir):
    """The campaign folder: a ``testbed.runs.RunDir`` of kind ``campaign`` bound to the resolved campaign, with the
    cells' status files (written by the driver only)."""

    def __init__(self, path: str | Path, config: CampaignConfig) -> None:
        super().__init__(path, config.to_dict(), kind=KIND, error=CampaignError)

    def status_path(self, key: str) -> Path:
        return self.path / STATUS_DIR / f"{key}.json"

    def status(self, key: str) -> dict[str, Any] | None:
        return read_status(self.path).get(key)

    def record(self, outcome: Outcome, cell: Cell) -> None:
        data = {"key": cell.key, "attack": cell.attack, "values": cell.values, "argv": list(cell.argv),
                "state": "done" if outcome.ok else "failed", "error": outcome.error, "seconds": outcome.seconds,
                "worker": outcome.worker, "result": outcome.result, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_atomic(self.status_path(cell.key), json.dumps(data, indent=1))
        (self.path / RUNNING_DIR / f"{cell.key}.json").unlink(missing_ok=True)


def read_status(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The status file of every cell that has finished or failed, by key."""
    out = {}
    for p in sorted((Path(run_dir) / STATUS_DIR).glob("*.json")):
        try:
            d = load_json(p, what="campaign cell status")
        except ConfigError:
            continue  # an unreadable status file: the cell runs again
        if isinstance(d, dict) and isinstance(d.get("key"), str):
            out[d["key"]] = d
    return out


def run_campaign(config: CampaignConfig | str | Path, out: str | Path, executor: Executor | None = None, *,
                 retry_failed: bool = False, log: Callable[[str], None] | None = None) -> CampaignSummary:
    """Run (or resume) a campaign into ``out``: cells already done are skipped; cells that failed before are
    skipped too unless ``retry_failed``; the others go to ``executor`` (serial by default). Writes the report."""
    if not isinstance(config, CampaignConfig):
        config = load_campaign(config)
    executor = executor or SerialExecutor(config.torch_threads)
    if config.torch_threads:
        executor.threads = config.torch_threads  # the campaign's count wins: the same bits on every executor
    cells = config.cells()
    executor.start()  # e.g. no Ray cluster: refused before the folder is written
    run = CampaignDir(out, config)
    status = read_status(run.path)
    todo, skipped, failed = [], [], {}
    for c in cells:
        st = status.get(c.key, {}).get("state")
        if st == "done":
            skipped.append(c.key)
        elif st == "failed" and not retry_failed:
            failed[c.key] = status[c.key].get("error") or "failed"
        else:
            todo.append(c)
    by_key = {c.key: c for c in todo}
    pp = config.evaluation.get("print_photo")
    tasks = [Task(c.key, run_cell, (str(run.path.resolve()), c.key, c.attack, list(c.argv), pp),
                  num_cpus=config.resources["num_cpus"], num_gpus=config.resources["num_gpus"]) for c in todo]
    computed: list[str] = []
    finished: list[str] = []
    started = time.time()
    if log:
        log(f"campaign {config.name}: {len(cells)} cell(s), {len(skipped)} done before, {len(failed)} failed before"
            f"{' (not retried: --retry-failed)' if failed else ''}, {len(todo)} to run on {executor.describe()}")

    def on_done(outcome: Outcome) -> None:
        run.record(outcome, by_key[outcome.key])
        if outcome.ok:
            computed.append(outcome.key)
            failed.pop(outcome.key, None)
        else:
            failed[outcome.key] = outcome.error or "failed"
        if log:
            res = outcome.result or {}
            what = _fmt_rate(res.get("success")) if outcome.ok else f"FAILED: {outcome.error}"
            finished.append(outcome.key)
            log(f"  [{len(finished)}/{len(todo)}] "
                f"{outcome.key}: {what} ({outcome.seconds:.1f} s, {outcome.worker.get('host')} "
                f"pid {outcome.worker.get('pid')})")

    executor.run(tasks, on_done)
    seconds = time.time() - started
    from testbed.machine import machine_info

    write_atomic(run.path / "run.json", json.dumps({
        "machine": machine_info(), "executor": executor.describe(), "seconds_this_invocation": round(seconds, 2),
        "computed": computed, "skipped": skipped, "failed": failed, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2))
    write_campaign_report(run.path)
    return CampaignSummary(run.path, computed, skipped, failed, seconds)


# ------------------------------------------------------------------------------------------------ report
def _fmt_rate(r: dict[str, Any] | None) -> str:
    if not r or not r.get("n"):
        return "n/a"
    return f"{r['k']}/{r['n']} = {100 * r['value']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


def write_campaign_report(run_dir: str | Path) -> Path:
    """(Re)write ``report.md``/``.html``/``.json`` and ``plots/success.png`` of a campaign folder from its status
    files: one row per cell (success on fresh EOT draws with its Wilson 95% interval, print-photo success when
    evaluated, time, where it ran). Returns report.md."""
    from pipelines.report import md_table, md_to_html

    run_dir = Path(run_dir)
    cfg_data = runs.read_json_file(run_dir / runs.CONFIG_FILE, "campaign configuration")
    try:
        cfg = parse_campaign(cfg_data, check_names=False)
    except ConfigError as exc:
        raise CampaignError(f"{run_dir}: its campaign configuration is not usable ({exc})") from None
    status = read_status(run_dir)
    meta = load_json(run_dir / "run.json", what="run file") if (run_dir / "run.json").is_file() else {}
    cells = cfg.cells(check=False)
    axes = list(cfg.grid)
    has_pp = cfg.evaluation.get("print_photo") is not None
    header = ["cell", "kind", *axes, "success [95% CI] (fresh EOT draws; digital: the image)"]
    header += ["print-photo success [95% CI]"] if has_pp else []
    header += ["time (s)", "ran on", "state"]
    rows, data_rows = [], []
    for c in cells:
        st = status.get(c.key)
        res = (st or {}).get("result") or {}
        w = (st or {}).get("worker") or {}
        where = (f"{w.get('executor')} {w.get('host')} pid {w.get('pid')}, {w.get('torch_threads')} thr"
                 if w.get("host") else "")
        state = "not run" if st is None else st["state"] if st["state"] == "done" else f"failed: {st.get('error')}"
        if res.get("resumed_from_step"):
            state += f" (resumed from step {res['resumed_from_step']})"
        pp = (res.get("print_photo") or {}).get("printed")
        row = [c.key, c.attack, *[_key_part(c.values[a]) for a in axes], _fmt_rate(res.get("success"))]
        row += [_fmt_rate(pp)] if has_pp else []
        row += [f"{st['seconds']:.1f}" if st else "", where, state.replace("|", "/")]
        rows.append(row)
        data_rows.append({"key": c.key, "attack": c.attack, "values": c.values, "state": (st or {}).get("state"),
                          "error": (st or {}).get("error"), "seconds": (st or {}).get("seconds"), "worker": w,
                          "success": res.get("success"), "print_photo": pp, "machine": w.get("machine")})
    done = sum(1 for r in data_rows if r["state"] == "done")
    failed = sum(1 for r in data_rows if r["state"] == "failed")
    machines = sorted({r["machine"] for r in data_rows if r.get("machine")})
    lines = [f"# Campaign report: {cfg.name}", "",
             f"{len(cells)} cell(s): {done} done, {failed} failed, {len(cells) - done - failed} not run. Attack "
             f"{', '.join(cfg.attack)}; grid {', '.join(f'{k} ({len(v)})' for k, v in cfg.grid.items()) or 'none'}; "
             f"evaluation: {cfg.evaluation.get('eot_draws') or 'the command default'} fresh EOT draws per cell"
             + (f", print-photo {cfg.evaluation['print_photo']['photos']} simulated photos "
                f"(preset {cfg.evaluation['print_photo']['preset']})" if has_pp else "") + ".", ""]
    if meta:
        lines += [(f"Last invocation: {meta.get('executor')}, {meta.get('seconds_this_invocation')} s, finished "
                   f"{meta.get('finished')}."), ""]
    if machines:
        lines += ["Machines: " + "; ".join(machines) + ".", ""]
    lines += md_table(header, rows) + [""]
    plot = _plot_success(run_dir, data_rows)
    if plot is not None:
        lines += [f"![success per cell]({plot.relative_to(run_dir)})", ""]
    lines += [("Success: the cell's own held-out evaluation (fresh EOT draws from its eval seed, never the training "
               "draws), Wilson 95% interval; each cell is an ordinary run directory under `cells/`."), ""]
    md = "\n".join(lines) + "\n"
    write_atomic(run_dir / "report.md", md)
    write_atomic(run_dir / "report.html", md_to_html(md, cfg.name))
    write_atomic(run_dir / "report.json", json.dumps({"config": cfg.to_dict(), "run": meta, "cells": data_rows},
                                                     indent=1))
    return run_dir / "report.md"


def _plot_success(run_dir: Path, rows: list[dict[str, Any]]) -> Path | None:
    done = [r for r in rows if r.get("success") and r["success"].get("n")]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(done) + 1.2))
    ys = list(range(len(done)))[::-1]
    vals = [100 * r["success"]["value"] for r in done]
    lo = [v - 100 * r["success"]["low"] for v, r in zip(vals, done)]
    hi = [100 * r["success"]["high"] - v for v, r in zip(vals, done)]
    ax.barh(ys, vals, xerr=[lo, hi], color="#4878a8", capsize=3, label="fresh EOT draws")
    pp = [(y, r["print_photo"]) for y, r in zip(ys, done) if r.get("print_photo") and r["print_photo"].get("n")]
    if pp:
        ax.plot([100 * p["value"] for _, p in pp], [y for y, _ in pp], "o", color="#c44e52", label="print-photo")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_yticks(ys, [r["key"] for r in done], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("success (%), Wilson 95% interval")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return write_atomic(run_dir / "plots" / "success.png", buf.getvalue())


# ------------------------------------------------------------------------------------------------ CLI
def add_parser(subparsers: Any) -> None:
    """Add ``testbed campaign run CAMPAIGN.yaml --out DIR`` (report: ``testbed report DIR``)."""
    from pipelines.executors import add_executor_options
    from testbed import cli_types

    p = subparsers.add_parser("campaign", help="a grid of attack runs from a YAML campaign (docs/campaigns.md)")
    sub = p.add_subparsers(dest="campaign_command", metavar="ACTION", required=True)
    r = sub.add_parser("run", help="run or resume every cell of a campaign (finished cells are skipped)")
    r.add_argument("campaign", help="campaign YAML file (experiments/campaign_*.yaml)")
    r.add_argument("--out", required=True, type=cli_types.output_dir, help="campaign folder (resumed if it exists)")
    r.add_argument("--retry-failed", action="store_true", help="run the cells that failed before again")
    add_executor_options(r)
    r.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.executors import executor_from_args

    executor = executor_from_args(args)  # options that do not belong to the executor are refused first
    config = load_campaign(args.campaign)
    summary = run_campaign(config, args.out, executor, retry_failed=args.retry_failed,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"{len(summary.computed)} cell(s) computed, {len(summary.skipped)} resumed from {args.out}, "
          f"{len(summary.failed)} failed; {summary.seconds:.1f} s\nreport: {Path(args.out) / 'report.md'}")
    if summary.failed:
        print(f"testbed campaign run: error: {len(summary.failed)} cell(s) failed (errors in the report; rerun "
              "with --retry-failed to run them again)", file=sys.stderr)
        return 2
    return 0
