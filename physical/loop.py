"""The one optimisation loop of the physical attacks (patch, sign sticker, eyeglass frame) and their result.

An attack is a frozen dataclass of hyper-parameters (a subclass of ``PhysicalAttack``); what one call works on —
the model's device, the scenes / sign / face chips, the goal, the mask, the EOT transform — travels in an explicit
``AttackContext`` built per call and passed to every hook, so nothing is ever stored on the attack. A variant
supplies five hooks (foolbox-3 style, a small subclass each):

* ``_sample(ctx, n, generator)`` — ``n`` draws (EOT parameters, placement, which scene/chip): an object with
  ``to_dict()``;
* ``_render(ctx, colours, draw)`` — how the perturbation enters the scene: the model's input batch for these draws
  (``colours`` = ``sigmoid(w)``; ``None`` = the scene without the perturbation, "clean");
* ``_goal(ctx, draw)`` — a per-draw goal tensor (class indices), or None;
* ``_attack_loss(ctx, outputs, goal)`` — the loss minimised, averaged over the draws (a scalar);
* ``_score(ctx, outputs, goal)`` — per-draw values on evaluation draws, with at least ``"success"`` (bool);

and may override ``_regularise(ctx, colours)`` (default ``lambda_nps * NPS + lambda_tv * TV`` over ``ctx.mask``),
``_result`` and ``_save``. The loop owns, once for every attack:

* Adam on the logits ``w`` of the colours (sigmoid parametrisation), at ``lr`` or, with ``lr_schedule="cosine"``,
  annealed from ``lr`` towards 0 over ``steps`` (``lr_at``); ``batch_size`` draws per step from a CPU generator
  seeded ``seed`` (the same draws on any device);
* the speed settings: weights frozen for the call (flags restored), ``channels_last`` (NHWC model and input),
  ``precision="bf16"`` (bfloat16 autocast of the optimisation's forward/backward; evaluation stays fp32),
  ``compile`` (``torch.compile`` of the optimisation's model), and ``eot_batch`` (micro-batching: the step's
  ``batch_size`` draws are drawn and rendered once, the model runs on ``eot_batch`` of them at a time and the
  input gradients are summed, so the gradient equals one pass up to float rounding at a fraction of the
  activation memory);
* no host synchronisation per step (losses are copied to the host every 10 steps, at checkpoints and for the
  callback);
* checkpoint / exact resume through ``testbed.runs.RunDir`` (``w``, the Adam state, the generator state, the
  history and the draws, every ``checkpoint_every`` steps; a run resumes bit for bit on CPU);
* a progress bar;
* iterate selection and early stopping (``select_every`` > 0): every ``select_every`` steps the current colours
  are scored on ``select_samples`` fixed VALIDATION draws (their own generator, seeded ``seed +
  VALIDATION_SEED_OFFSET``: neither the optimisation's nor the evaluation's draws); the result is the best iterate
  on them (the last of equals), and the run stops once validation success reaches ``stop_at``; ``select_from``
  skips the checks before that step (the early ones, which cannot reach ``stop_at``, cost as much as the late
  ones; the last step is always checked);
* evaluation on ``eval_samples`` FRESH draws from a separate generator (``eval_seed``), scoring the optimised
  colours, the initial colours and (when asked) the clean scene on the same draws.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, TypedDict

import torch
from torch import Tensor, nn

from physical.attacks.base import outcome_summary
from physical.eot import EOTTransform, resolve_config
from physical.hyper import RunHyperParams, check_int, check_nonneg
from physical.regularizers import nps, total_variation
from testbed.runs import RunDir
from physical.speed import PRECISIONS, model_outputs, prepared_model
from testbed.errors import ConfigError
from testbed.palette import resolve_palette

Callback = Callable[[int, float], None]
#: the validation draws' generator is seeded ``seed + VALIDATION_SEED_OFFSET`` (the evaluation's is ``seed + 1_000_003``)
VALIDATION_SEED_OFFSET = 2_000_029
#: Adam learning-rate schedules of the loop (``PhysicalAttack.lr_at``)
LR_SCHEDULES = ("constant", "cosine")
#: loop keys left out of EVERY attack's config at these values (whatever its own ``CONFIG_OMIT_DEFAULTS``), so run
#: directories written before the key existed resume
LOOP_OMIT_DEFAULTS: dict[str, Any] = {"lr_schedule": "constant", "select_from": 0, "fold_bn": False}


class RunOptions(TypedDict, total=False):
    """The per-call options every physical attack takes (``attack(model, ..., **run)``) and hands to the loop:
    ``run_dir`` (config, checkpoints, resume, artefacts), ``run_extra`` (more values recorded in the run's config),
    ``progress`` (a bar) and ``callback(step, loss)``."""

    run_dir: str | Path | None
    run_extra: dict[str, Any] | None
    progress: bool
    callback: Callback | None


# ------------------------------------------------------------------------------------------------ result
def _rate(x: Tensor | None) -> float:
    return float(x.float().mean()) if x is not None and x.numel() else float("nan")


def _json_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, list, type(None)))


@dataclass
class PhysicalResult:
    """What every physical attack returns (tensors on CPU, detached); E = number of fresh evaluation draws.

    Shares ``AttackResult``'s success API (``success``, ``success_rate``, ``targeted``, ``loss_history``,
    ``config``, ``extras``, ``summary()``); ``metrics()`` is the flat JSON written to a run's ``metrics.json``.
    """

    attack: str  # "patch" | "sticker" | "eyeglass" (the attack's ``name``)
    perturbation: Tensor  # patch: its colours; sticker: mask * (sticker - sign); eyeglass: the frame texture
    adversarial: Tensor  # patch: the patch; sticker: the stickered sign; eyeglass: the chips wearing the frame
    mask: Tensor  # (1, 1, H, W) in [0, 1]: where the colours go
    colours: Tensor  # (1, 3, H, W): the optimised colours, sigmoid(w)
    loss_history: list[float]  # total loss per step
    success: Tensor  # (E,) bool: the optimised perturbation on the fresh evaluation draws
    initial_success: Tensor  # (E,) bool: the initial perturbation on the same draws
    seed: int
    eval_seed: int
    config: dict[str, Any]
    targeted: bool = False
    target: int | None = None  # the target class of a targeted classifier attack
    clean_success: Tensor | None = None  # (E,) bool: no perturbation on the same draws (when scored)
    # every other per-draw value of each scored variant: "predictions" (classifiers), "enrolled" / "target"
    # (face distances); with "initial_" / "clean_" prefixes for the initial perturbation and the clean scene
    scores: dict[str, Tensor] = field(default_factory=dict)
    train_draws: list[dict[str, Any]] = field(default_factory=list)  # draw.to_dict() per step
    eval_draws: list[dict[str, Any]] = field(default_factory=list)  # draw.to_dict() per evaluation chunk
    extras: dict[str, Any] = field(default_factory=dict)  # timings and attack-specific values

    @property
    def success_rate(self) -> float:
        return _rate(self.success)

    @property
    def initial_success_rate(self) -> float:
        return _rate(self.initial_success)

    @property
    def clean_success_rate(self) -> float:
        return _rate(self.clean_success)

    @property
    def predictions(self) -> Tensor | None:
        """(E,) predicted class per evaluation draw (classifier attacks), else None."""
        return self.scores.get("predictions")

    @property
    def distances(self) -> dict[str, Tensor]:
        """The floating-point per-draw scores (face-descriptor distances: ``enrolled``, ``target``,
        ``initial_enrolled``, ``clean_target``, ...)."""
        return {k: v for k, v in self.scores.items() if v.is_floating_point()}

    @property
    def texture(self) -> Tensor:
        """The optimised colours (the eyeglass frame's name for them)."""
        return self.colours

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attack": self.attack,
            "success_rate": self.success_rate,
            "initial_success_rate": self.initial_success_rate,
            "eval_samples": int(self.success.numel()),
            "target": self.target,
            "seed": self.seed,
            "eval_seed": self.eval_seed,
            "mask_fill": float(self.mask.float().mean()),  # of the mask's own canvas
            "final_loss": self.loss_history[-1] if self.loss_history else None,
            "steps": len(self.loss_history),
        }
        if self.clean_success is not None:
            out["clean_success_rate"] = self.clean_success_rate
        for k, v in self.distances.items():
            if v.numel():
                out[f"distance_{k}_mean"] = float(v.mean())
                out[f"distance_{k}_min"] = float(v.min())
                out[f"distance_{k}_max"] = float(v.max())
        out.update({k: v for k, v in self.extras.items() if _json_scalar(v)})
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (no image tensors), with the same keys as ``AttackResult.summary()``
        where they apply, plus the metrics."""
        preds = self.predictions
        return {
            **outcome_summary(self),
            "target": self.target,
            "predictions": None if preds is None else preds.tolist(),
            "loss_history": list(self.loss_history),
            "metrics": self.metrics(),
            "extras": {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in self.extras.items()
                       if isinstance(v, Tensor) or _json_scalar(v)},
        }


# ------------------------------------------------------------------------------------------------ context
@dataclass(kw_only=True)
class AttackContext:
    """What one call of a physical attack works on (built per call, passed to every hook). Subclasses add the
    attack's data: scenes and labels, the sign, the face chips and descriptors."""

    model: nn.Module  # as the caller gave it (the loop prepares its own frozen / NHWC / compiled view of it)
    device: torch.device
    mask: Tensor  # (1, 1, H, W) where the colours go (on ``device``)
    transform: EOTTransform
    palette: Tensor | None = None  # (K, 3) printable colours for NPS (on ``device``)
    targeted: bool = True


# ------------------------------------------------------------------------------------------------ helpers
def logit(p: Tensor) -> Tensor:
    """The inverse of the sigmoid parametrisation (colours clamped to [1e-4, 1 - 1e-4])."""
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


def device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    """The device of the model's parameters (``fallback`` for a parameter-less model)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else fallback


def _rows(goal: Any, rows: slice) -> Any:
    return None if goal is None else goal[rows]


# ------------------------------------------------------------------------------------------------ the loop
@dataclass(frozen=True, kw_only=True)
class PhysicalAttack(RunHyperParams):
    """Shared hyper-parameters and the optimisation loop of the physical attacks (see the module docstring)."""

    name: ClassVar[str] = "physical"
    default_eot: ClassVar[str] = "athalye-eot-2d"
    #: config keys that do not change the optimisation's arithmetic beyond rounding: a run may be resumed with
    #: other values of them
    SPEED_KEYS: ClassVar[tuple[str, ...]] = ("checkpoint_every", "channels_last", "compile", "eot_batch", "fold_bn")
    #: how many fresh draws score the result, and in what batches: a finished or killed run directory can be
    #: re-evaluated with other values (the optimisation does not depend on them; the evaluation seed does stay)
    EVAL_KEYS: ClassVar[tuple[str, ...]] = ("eval_samples", "eval_batch_size")
    #: keys left out of ``config()`` at these values, so run directories written before the key existed resume
    CONFIG_OMIT_DEFAULTS: ClassVar[dict[str, Any]] = {"precision": "fp32", "eot_batch": None, "tv_kind": "l1",
                                                      "select_every": 0, "select_samples": 200, "stop_at": None}

    eot: Any = None  # EOTConfig, preset name, dict; None: the class's default preset
    steps: int = 200
    batch_size: int = 16  # EOT draws per step
    lr: float = 0.1  # Adam, on the logits of the colours
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: lr annealed to 0 over ``steps`` (lr_at)
    lambda_nps: float = 0.0
    lambda_tv: float = 0.0
    nps_kind: Literal["min", "product"] = "min"
    tv_kind: Literal["l1", "l2", "isotropic"] = "l1"
    palette: str | None = None  # palette JSON path; None: the default palette
    eval_samples: int = 1000
    eval_batch_size: int = 100
    seed: int = 0
    eval_seed: int | None = None  # default: seed + 1_000_003 (a different generator)
    checkpoint_every: int = 50
    keep_draws: bool = True  # keep every training draw's parameters in the result
    # speed settings (see docs/performance.md)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of the optimisation's model forward/backward
    channels_last: bool = True  # run the model in NHWC memory layout
    compile: bool = False  # torch.compile the model for the optimisation loop (slow first step)
    fold_bn: bool = False  # optimisation and validation on a copy with BatchNorm folded into the convolutions
    eot_batch: int | None = None  # draws per model pass in a step (None: all batch_size draws in one pass)
    # iterate selection on validation draws (0: off, the result is the last iterate) and early stopping
    select_every: int = 0  # score the current colours every this many steps (and after the last step)
    select_samples: int = 200  # fixed validation draws (own generator: seed + VALIDATION_SEED_OFFSET)
    select_from: int = 0  # no check before this step (then every select_every steps; the last step always)
    stop_at: float | None = None  # stop once validation success >= this (needs select_every > 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eot", resolve_config(self.eot if self.eot is not None else self.default_eot))
        self.validate()

    def validate(self) -> None:
        check_int("steps", self.steps, 0)
        check_int("batch_size", self.batch_size)
        check_nonneg("lr", self.lr)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        for n in ("lambda_nps", "lambda_tv"):
            check_nonneg(n, getattr(self, n))
        if self.nps_kind not in ("min", "product"):
            raise ConfigError(f"nps_kind must be min or product, got {self.nps_kind!r}")
        if self.tv_kind not in ("l1", "l2", "isotropic"):
            raise ConfigError(f"tv_kind must be l1, l2 or isotropic, got {self.tv_kind!r}")
        check_int("eval_samples", self.eval_samples, 0)
        check_int("eval_batch_size", self.eval_batch_size)
        self.validate_run()
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for n in ("channels_last", "compile", "fold_bn", "keep_draws"):
            if not isinstance(getattr(self, n), bool):
                raise ConfigError(f"{n} must be a bool, got {getattr(self, n)!r}")
        if self.eot_batch is not None:
            check_int("eot_batch", self.eot_batch)
        check_int("select_every", self.select_every, 0)
        check_int("select_samples", self.select_samples)
        check_int("select_from", self.select_from, 0)
        if self.select_from > 0 and self.select_every == 0:
            raise ConfigError("select_from needs select_every > 0 (it delays the validation checks)")
        if self.stop_at is not None:
            if isinstance(self.stop_at, bool) or not isinstance(self.stop_at, (int, float)) or not 0 < self.stop_at <= 1:
                raise ConfigError(f"stop_at must be a success rate in (0, 1], got {self.stop_at!r}")
            if self.select_every == 0:
                raise ConfigError("stop_at needs select_every > 0 (early stopping checks the validation draws)")
        if self.palette is not None:
            resolve_palette(self.palette)

    def lr_at(self, step: int) -> float:
        """Adam's learning rate for step ``step`` (0-based): ``lr``, or with ``lr_schedule="cosine"``
        ``lr * (1 + cos(pi * step / steps)) / 2`` (from ``lr`` at the first step towards 0 at ``steps``). A function
        of the step alone, so a resumed run takes exactly the rates of an uninterrupted one."""
        if self.lr_schedule == "cosine" and self.steps > 0:
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))
        return self.lr

    def config(self) -> dict[str, Any]:
        out = super().config()
        for k, default in {**LOOP_OMIT_DEFAULTS, **self.CONFIG_OMIT_DEFAULTS}.items():
            if k in out and out[k] == default:
                out.pop(k)
        return out

    # -- hooks (see the module docstring)
    def _sample(self, ctx: AttackContext, n: int, generator: torch.Generator) -> Any:
        raise NotImplementedError

    def _render(self, ctx: AttackContext, colours: Tensor | None, draw: Any) -> Tensor:
        raise NotImplementedError

    def _goal(self, ctx: AttackContext, draw: Any) -> Tensor | None:
        return None

    def _attack_loss(self, ctx: AttackContext, outputs: Tensor, goal: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _score(self, ctx: AttackContext, outputs: Tensor, goal: Tensor | None) -> dict[str, Tensor]:
        raise NotImplementedError

    def _regularise(self, ctx: AttackContext, colours: Tensor) -> Tensor:
        """``lambda_nps * NPS`` (against ``ctx.palette``) + ``lambda_tv * TV``, both over ``ctx.mask``."""
        out = colours.new_zeros(())
        if self.lambda_nps > 0:
            out = out + self.lambda_nps * nps(colours, ctx.palette, mask=ctx.mask, kind=self.nps_kind)
        if self.lambda_tv > 0:
            out = out + self.lambda_tv * total_variation(colours, mask=ctx.mask, kind=self.tv_kind)
        return out

    def _result(self, ctx: AttackContext, run: "LoopOutcome") -> PhysicalResult:
        raise NotImplementedError

    def _eval_context(self, ctx: AttackContext) -> AttackContext:
        """The context the fresh-draw evaluation samples from (default: the optimisation's; the sticker swaps in
        held-out sign drawings)."""
        return ctx

    def _save(self, run: RunDir, result: PhysicalResult) -> None:
        """Write the perturbation, the adversarial example, the mask, the draws and the metrics."""
        run.save_image("perturbation", result.perturbation)
        run.save_image("adversarial", result.adversarial)
        run.save_image("mask", result.mask)
        run.save_tensors("eval_draws", result.eval_draws)
        if result.train_draws:
            run.save_tensors("train_draws", result.train_draws)
        self._save_scores(run, result)
        run.save_metrics(result.metrics())  # last: metrics.json marks a finished run

    def _save_scores(self, run: RunDir, result: PhysicalResult) -> None:
        """The per-draw evaluation scores (``eval_scores.pt``)."""
        run.save_tensors("eval_scores", {"success": result.success, "initial_success": result.initial_success,
                                         "clean_success": result.clean_success, "scores": result.scores})

    # -- one step
    def _forward(self, net: Callable[[Tensor], Tensor], x: Tensor, *, train: bool) -> Tensor:
        """The model's float32 outputs for ``x`` with this attack's speed settings (bf16 only when training)."""
        return model_outputs(net, x, channels_last=self.channels_last, bf16=train and self.precision == "bf16")

    def loss_and_grad(self, net: Callable[[Tensor], Tensor], ctx: AttackContext, w: Tensor, draw: Any
                      ) -> tuple[Tensor, Tensor]:
        """(total loss, d loss / d w) of one step on ``draw``: attack loss averaged over the draws + regulariser.

        With ``eot_batch`` smaller than the draw, the batch is rendered once, the model runs on ``eot_batch`` rows
        at a time (each part weighted by its share of the rows) and the input gradients are summed before one
        backward pass through the rendering: the same gradient as one pass, up to float rounding."""
        w = w if w.requires_grad else w.detach().requires_grad_(True)
        colours = torch.sigmoid(w)
        x = self._render(ctx, colours, draw)
        goal = self._goal(ctx, draw)
        b = x.shape[0]
        k = self.eot_batch or b
        if k >= b:
            loss = self._attack_loss(ctx, self._forward(net, x, train=True), goal) + self._regularise(ctx, colours)
            (grad,) = torch.autograd.grad(loss, [w])
            return loss.detach(), grad
        grad_x = torch.empty_like(x)
        total = x.new_zeros((), dtype=torch.float32)
        for start in range(0, b, k):
            rows = slice(start, min(start + k, b))
            part_x = x[rows].detach().requires_grad_(True)
            part = self._attack_loss(ctx, self._forward(net, part_x, train=True), _rows(goal, rows))
            part = part * ((rows.stop - rows.start) / b)
            (g,) = torch.autograd.grad(part, [part_x])
            grad_x[rows] = g
            total = total + part.detach()
        reg = self._regularise(ctx, colours)
        outputs, grads = [x], [grad_x]
        if reg.requires_grad:
            outputs.append(reg)
            grads.append(torch.ones_like(reg))
        (grad,) = torch.autograd.grad(outputs, [w], grad_outputs=grads)
        return total + reg.detach(), grad

    # -- the loop
    def _optimise(
        self,
        ctx: AttackContext,
        w0: Tensor,
        *,
        run_dir: str | Path | None,
        run_extra: dict[str, Any] | None,
        progress: bool,
        callback: Callback | None,
    ) -> tuple[Tensor, list[float], list[dict[str, Any]], RunDir | None, "Selection"]:
        gen = torch.Generator().manual_seed(self.seed)  # CPU generator: the same draws on any device
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        history: list[float] = []
        draws: list[dict[str, Any]] = []
        sel = Selection()
        start, run = 0, None
        if run_dir is not None:
            # ``steps`` is where the run ends, not how it runs: a run directory continues with more steps (extended
            # from its newest checkpoint, bit for bit what a run of that many steps from the start gives on CPU)
            run = RunDir(run_dir, {**self.config(), **(run_extra or {})},
                         ignore=self.SPEED_KEYS + self.EVAL_KEYS + ("steps",))
            ckpt = run.latest_checkpoint()
            if ckpt is not None and int(ckpt["step"]) > self.steps:
                raise ConfigError(f"run directory {run.path} has {int(ckpt['step'])} steps done, more than steps="
                                  f"{self.steps}; give at least {int(ckpt['step'])} steps to resume or extend it, "
                                  "or a new --out folder")
            stored_steps = (run.read_config() or {}).get("steps")
            if ckpt is not None and self.lr_schedule != "constant" and stored_steps != self.steps:
                raise ConfigError(f"run directory {run.path} decays its learning rate over its steps (lr_schedule="
                                  f"{self.lr_schedule}): it resumes with the same steps but cannot be extended; "
                                  "use a new --out folder")
            stored = run.read_config() or {}
            if stored_steps != self.steps or any(stored.get(k) != run.config.get(k) for k in self.EVAL_KEYS):
                run.write_config()  # the new end / evaluation is the run's configuration from now on
            if ckpt is not None:
                with torch.no_grad():
                    w.copy_(ckpt["w"].to(w.device))
                opt.load_state_dict(ckpt["optimizer"])
                gen.set_state(ckpt["generator"])
                history, draws, start = list(ckpt["history"]), list(ckpt.get("draws", [])), int(ckpt["step"])
                sel = Selection.from_state(ckpt.get("selection"), w.device)
        validation = self._validation_draws(ctx) if self.select_every > 0 else []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=self.steps, initial=start, desc=self.name, unit="step")
        pending: list[Tensor] = []  # losses not yet copied to the host (no device sync per step)

        def flush() -> None:
            if pending:
                history.extend(torch.stack(pending).float().cpu().tolist())
                pending.clear()

        with prepared_model(ctx.model, channels_last=self.channels_last, compile=self.compile,
                            fold_bn=self.fold_bn) as net:
            for step in range(start, self.steps):
                if sel.stopped:
                    break
                draw = self._sample(ctx, self.batch_size, gen)
                loss, grad = self.loss_and_grad(net, ctx, w, draw)
                if self.lr_schedule != "constant":
                    for group in opt.param_groups:
                        group["lr"] = self.lr_at(step)
                w.grad = grad  # only the perturbation's gradient: no weight gradients, whatever the model's flags
                opt.step()
                pending.append(loss)
                if self.keep_draws:
                    draws.append(draw.to_dict())
                done = step + 1
                if validation and (done == self.steps or (done % self.select_every == 0
                                                          and done >= self.select_from)):
                    rate = self._validation_rate(net, ctx, torch.sigmoid(w.detach()), validation)
                    sel.record(done, rate, w.detach(), self.stop_at)
                stop = sel.stopped
                checkpoint = run is not None and (done % self.checkpoint_every == 0 or done == self.steps or stop)
                if callback is not None or checkpoint or (bar is not None and (done % 10 == 0 or done == self.steps)):
                    flush()
                if bar is not None:
                    bar.update(1)
                    if not pending:
                        bar.set_postfix(loss=f"{history[-1]:.4f}")
                if checkpoint:
                    run.save_checkpoint({"w": w.detach().cpu(), "optimizer": opt.state_dict(),
                                         "generator": gen.get_state(), "history": history, "draws": draws,
                                         **({"selection": sel.state()} if validation else {})}, done)
                if callback is not None:
                    callback(done, history[-1])
        flush()
        if bar is not None:
            bar.close()
        return w.detach(), history, draws, run, sel

    # -- iterate selection / early stopping on validation draws
    def _validation_draws(self, ctx: AttackContext) -> list[Any]:
        """``select_samples`` fixed draws from their own generator (``seed + VALIDATION_SEED_OFFSET``)."""
        gen = torch.Generator().manual_seed(self.seed + VALIDATION_SEED_OFFSET)
        out, left = [], self.select_samples
        while left > 0:
            n = min(self.eval_batch_size, left)
            out.append(self._sample(ctx, n, gen))
            left -= n
        return out

    @torch.no_grad()
    def _validation_rate(self, net: Callable[[Tensor], Tensor], ctx: AttackContext, colours: Tensor,
                         validation: list[Any]) -> float:
        hits = [self._score(ctx, self._forward(net, self._render(ctx, colours, d), train=False),
                            self._goal(ctx, d))["success"].float() for d in validation]
        return float(torch.cat(hits).mean())

    @torch.no_grad()
    def _evaluate(self, ctx: AttackContext, variants: dict[str, Tensor | None], *, progress: bool = False
                  ) -> tuple[dict[str, dict[str, Tensor]], list[dict[str, Any]]]:
        """Score each variant (name -> colours; None = the clean scene) on the same ``eval_samples`` fresh draws
        from the evaluation generator: ({variant: {score: (E,) tensor}}, the draws per chunk). ``progress``: a bar
        on stderr counting the scored draws (draws x variants)."""
        gen = torch.Generator().manual_seed(self.resolved_eval_seed)
        ctx = self._eval_context(ctx)
        parts: dict[str, dict[str, list[Tensor]]] = {v: {} for v in variants}
        draws: list[dict[str, Any]] = []
        left = self.eval_samples
        from tqdm import tqdm

        bar = tqdm(total=self.eval_samples * len(variants), desc=f"{self.name} evaluation", unit="draw",
                   disable=not progress)
        # the caller's model as given (never the folded copy of ``fold_bn``): the reported success is the model's own
        with prepared_model(ctx.model, channels_last=self.channels_last, compile=False) as net:
            while left > 0:
                n = min(self.eval_batch_size, left)
                draw = self._sample(ctx, n, gen)
                goal = self._goal(ctx, draw)
                for name, colours in variants.items():
                    out = self._forward(net, self._render(ctx, colours, draw), train=False)
                    for k, v in self._score(ctx, out, goal).items():
                        parts[name].setdefault(k, []).append(v.cpu())
                    bar.update(n)
                draws.append(draw.to_dict())
                left -= n
        bar.close()
        scores = {name: {k: torch.cat(v) for k, v in p.items()} for name, p in parts.items()}
        for s in scores.values():
            s.setdefault("success", torch.zeros(0, dtype=torch.bool))
        return scores, draws

    def _attack(
        self,
        ctx: AttackContext,
        w0: Tensor,
        *,
        run_dir: str | Path | None = None,
        run_extra: dict[str, Any] | None = None,
        progress: bool = False,
        callback: Callback | None = None,
        score_clean: bool = False,
    ) -> PhysicalResult:
        """Optimise from the logits ``w0``, evaluate on fresh draws, build the result and write the run."""
        t0 = time.perf_counter()
        w, history, draws, run, sel = self._optimise(ctx, w0, run_dir=run_dir, run_extra=run_extra,
                                                     progress=progress, callback=callback)
        t1 = time.perf_counter()
        if sel.best_w is not None:
            w = sel.best_w
        colours, initial = torch.sigmoid(w), torch.sigmoid(w0)
        variants: dict[str, Tensor | None] = {"final": colours, "initial": initial}
        if score_clean:
            variants["clean"] = None
        scores, eval_draws = self._evaluate(ctx, variants, progress=progress)
        outcome = LoopOutcome(colours=colours, initial=initial, history=history, train_draws=draws,
                              scores=scores, eval_draws=eval_draws,
                              extras={"optimise_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1,
                                      **sel.extras()})
        result = self._result(ctx, outcome)
        if run is not None:
            self._save(run, result)
        return result

    def _physical_result(self, ctx: AttackContext, run: "LoopOutcome", *, perturbation: Tensor,
                         adversarial: Tensor, target: int | None = None, extras: dict[str, Any] | None = None
                         ) -> PhysicalResult:
        """The result from the loop's outcome: success of each variant, every other per-draw score (prefixed
        ``initial_`` / ``clean_`` for those variants), the draws and the extras."""
        scores: dict[str, Tensor] = {}
        for variant, prefix in (("final", ""), ("initial", "initial_"), ("clean", "clean_")):
            for k, v in run.scores.get(variant, {}).items():
                if k != "success":
                    scores[prefix + k] = v
        clean = run.scores.get("clean")
        return PhysicalResult(
            attack=self.name,
            perturbation=perturbation.detach().cpu(),
            adversarial=adversarial.detach().cpu(),
            mask=ctx.mask.detach().cpu(),
            colours=run.colours.detach().cpu(),
            loss_history=run.history,
            success=run.scores["final"]["success"],
            initial_success=run.scores["initial"]["success"],
            clean_success=None if clean is None else clean["success"],
            seed=self.seed,
            eval_seed=self.resolved_eval_seed,
            config=self.config(),
            targeted=ctx.targeted,
            target=target,
            scores=scores,
            train_draws=run.train_draws,
            eval_draws=run.eval_draws,
            extras={**run.extras, **(extras or {})},
        )


@dataclass
class Selection:
    """Iterate selection on the validation draws: the best iterate so far (the later of equals), every check's
    ``(step, validation success)``, and whether ``stop_at`` was reached."""

    best_w: Tensor | None = None
    best_rate: float = -1.0
    best_step: int = 0
    checks: list[tuple[int, float]] = field(default_factory=list)
    stopped: bool = False

    def record(self, step: int, rate: float, w: Tensor, stop_at: float | None) -> None:
        self.checks.append((step, rate))
        if rate >= self.best_rate:
            self.best_w, self.best_rate, self.best_step = w.clone(), rate, step
        self.stopped = stop_at is not None and rate >= stop_at

    def state(self) -> dict[str, Any]:
        return {"best_w": None if self.best_w is None else self.best_w.cpu(), "best_rate": self.best_rate,
                "best_step": self.best_step, "checks": [list(c) for c in self.checks], "stopped": self.stopped}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device) -> "Selection":
        if not state:
            return cls()
        w = state["best_w"]
        return cls(None if w is None else w.to(device), float(state["best_rate"]), int(state["best_step"]),
                   [(int(a), float(b)) for a, b in state["checks"]], bool(state["stopped"]))

    def extras(self) -> dict[str, Any]:
        """Result extras (empty when selection was off)."""
        if not self.checks:
            return {}
        return {"selected_step": self.best_step, "validation_success": self.best_rate,
                "validation_checks": [list(c) for c in self.checks], "stopped_early": self.stopped}


@dataclass
class LoopOutcome:
    """What the loop hands to an attack's ``_result`` hook."""

    colours: Tensor  # sigmoid(w) of the result: after the last step, or the selected iterate (select_every > 0)
    initial: Tensor  # sigmoid(w0)
    history: list[float]
    train_draws: list[dict[str, Any]]
    scores: dict[str, dict[str, Tensor]]  # variant ("final", "initial", "clean") -> score name -> (E,)
    eval_draws: list[dict[str, Any]]
    extras: dict[str, Any]


def replace_context(ctx: AttackContext, **changes: Any) -> AttackContext:
    """A copy of ``ctx`` with some fields changed (contexts are per call; never mutate a shared one)."""
    return dataclasses.replace(ctx, **changes)


__all__ = ["AttackContext", "LR_SCHEDULES", "LoopOutcome", "PhysicalAttack", "PhysicalResult", "Selection",
           "VALIDATION_SEED_OFFSET", "device_of", "logit", "replace_context"]
