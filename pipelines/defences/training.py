"""Training of defended sign classifiers: FGSM / PGD adversarial training, TRADES, DOA, noise, dropout, distillation.

Every defended model is a ``sign-cnn`` (same architecture as :mod:`testbed.models.signs`), by default fine-tuned
from the shipped weights on a rendered training set (:mod:`worlds.signs.dataset`, generated once and cached), so
that each run fits a few minutes of a shared 2-core CPU. One function, :func:`train_defence`, one config
(:class:`DefenceTrainConfig`); same config + same machine → same weights (seeded ``torch.Generator`` for
initialisation, shuffling, attack starts and noise; deterministic algorithms on; fixed thread count). The loop is
the sign model's (``worlds.signs.train.fit``: AdamW, warm-up + cosine, seeded shuffling); what a method trains on
is its ``batch_loss`` hook (:func:`_step_loss`: clean CE, or the adversarial examples it crafts first).

Methods (``method=``):

* ``clean``     — plain training (CE), used for extra ensemble members (``init="scratch"``, other seeds);
* ``fgsm_at``   — Goodfellow et al. 2015 / Kurakin et al. 2017: loss ½·CE(x) + ½·CE(FGSM(x)), a per-sample ε drawn
  uniformly in [eps_min, eps] (Kurakin draw ε per image);
* ``pgd_at``    — Madry et al. 2018: CE on PGD(x) (ε = ``eps``, ``steps`` steps of ``alpha``, random start);
* ``trades``    — Zhang et al. 2019: CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' maximising the KL by PGD;
* ``doa``       — Wu et al. 2020 (defense against occlusion attacks): CE on ROA(x), a ``rect``×``rect`` rectangle
  placed where the input gradient is largest, its content optimised by PGD inside [0, 1] (no ε);
* ``noise``     — Gaussian data augmentation x + N(0, σ²) (the base classifier of randomized smoothing);
* ``dropout``   — clean fine-tuning of a variant with dropout on the hidden layer (for MC-dropout uncertainty);
* ``distill_teacher`` / ``distill_student`` — Papernot et al. 2016: teacher trained with softmax(Z/T), student
  trained on the teacher's softmax(Z_t/T) at the same T, then deployed at T = 1 (see :mod:`.distillation`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physical.attacks.variants import MadryPGD, MaskedPGD, TradesPGD, trades_kl
from physical.losses import margin
from pipelines.defences import DefenceError
from testbed.assets import cache_subdir
from testbed.device import default_device
from testbed.runs import save_checked
from worlds.signs.train import deterministic, fit

METHODS = ("clean", "fgsm_at", "pgd_at", "trades", "doa", "noise", "dropout", "distill_teacher", "distill_student")
#: the trained defences' cache: ``$TESTBED_DEFENCES_CACHE`` if set, else ``defences/`` in the one cache root
#: (``testbed.assets.cache_dir``; the earlier ``~/.cache/testbed/defences`` is read while it is the only one)
DEFAULT_CACHE = (Path(os.environ["TESTBED_DEFENCES_CACHE"]).expanduser() if os.environ.get("TESTBED_DEFENCES_CACHE")
                 else cache_subdir("defences", legacy=Path("~/.cache/testbed/defences").expanduser()))


# ------------------------------------------------------------------------------------------------ models
class GeneratorDropout(nn.Module):
    """Dropout whose masks come from an explicit ``torch.Generator`` (no global RNG).

    Active when the module is training, or when ``mc`` is true (MC dropout at test time). ``generator`` must be set
    (``reseed``) before an active forward pass."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise DefenceError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.mc = False
        self.generator: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training or self.mc) or self.p == 0.0:
            return x
        if self.generator is None:
            raise DefenceError("GeneratorDropout is active but has no generator; call reseed(seed) first")
        keep = torch.rand(x.shape, generator=self.generator).to(x.device) >= self.p
        return x * keep / (1.0 - self.p)


class DropoutHead(nn.Module):
    """sign-cnn with dropout between the hidden layer and the output layer (Feinman et al.'s MC-dropout model)."""

    def __init__(self, net: nn.Module, p: float) -> None:
        super().__init__()
        self.net = net
        self.dropout = GeneratorDropout(p)

    def forward(self, x: Tensor) -> Tensor:
        c = self.net.classifier
        h = c[2](c[1](c[0](self.net.features(x))))
        return c[3](self.dropout(h))


def build_model(method: str, dropout: float = 0.3) -> nn.Module:
    """An untrained sign-cnn (NormalizedModel), with a dropout head for ``method == "dropout"``."""
    from testbed.models.signs import build_sign_cnn
    from worlds.signs.render import class_names

    model = build_sign_cnn(len(class_names()))
    if method == "dropout":
        model.net = DropoutHead(model.net, dropout)
    return model


def base_net(model: nn.Module) -> nn.Module:
    """The SignCNN inside a NormalizedModel (through a DropoutHead when there is one)."""
    net = model.net
    return net.net if isinstance(net, DropoutHead) else net


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class DefenceTrainConfig:
    """One training run (JSON-serialisable; stored with the weights)."""

    method: str
    seed: int = 0
    init: str = "sign-cnn"  # "sign-cnn": fine-tune the shipped weights; "scratch": fresh Kaiming init from seed
    n_train: int = 8000
    data_seed: int = 0
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    eps: float = 8 / 255
    eps_min: float = 2 / 255  # fgsm_at: per-sample ε ~ U[eps_min, eps]
    steps: int = 3
    alpha: float | None = None  # default 2.5 * eps / steps
    beta: float = 6.0  # TRADES
    rect: int = 8  # DOA rectangle side (pixels of the 32 x 32 input)
    rect_stride: int = 2
    doa_steps: int = 5
    doa_alpha: float = 64 / 255
    sigma: float = 0.25  # noise
    dropout: float = 0.3
    temperature: float = 50.0  # distillation
    teacher: str = ""  # distill_student: cache name of the teacher checkpoint
    threads: int = 2

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DefenceError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.init not in ("sign-cnn", "scratch"):
            raise DefenceError(f"init must be 'sign-cnn' or 'scratch', got {self.init!r}")
        for name in ("n_train", "epochs", "batch_size", "steps", "rect", "rect_stride", "doa_steps", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DefenceError(f"DefenceTrainConfig.{name} must be a positive integer, got {v!r}")
        for name in ("lr", "eps", "sigma", "temperature", "doa_alpha"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise DefenceError(f"DefenceTrainConfig.{name} must be a positive number, got {v!r}")
        if not 0 <= self.eps_min <= self.eps:
            raise DefenceError(f"eps_min must be in [0, eps={self.eps}], got {self.eps_min!r}")
        if self.method == "distill_student" and not self.teacher:
            raise DefenceError("method distill_student needs teacher= (the cache name of a distill_teacher run)")

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """A short hash of the config: the cache file name's suffix."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class TrainedDefence:
    """A trained model and its record."""

    name: str
    model: nn.Module
    config: DefenceTrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    path: Path | None = None
    cached: bool = False


# ------------------------------------------------------------------------------------------------ data
def rendered_data(split: str, n: int, seed: int, cache_dir: Path = DEFAULT_CACHE) -> tuple[Tensor, Tensor]:
    """The rendered ``split`` ("train", or "heldout": other photos, other per-sample seeds), generated once and
    cached as ``data_{split}_n{n}_s{seed}.pt``."""
    from worlds.signs.dataset import DatasetConfig, generate_dataset

    path = Path(cache_dir) / f"data_{split}_n{n}_s{seed}.pt"
    if path.is_file():
        d = _load_cache(path, f"defence {'training' if split == 'train' else 'held-out'}-data cache")
        return d["images"], d["labels"]
    ds = generate_dataset(DatasetConfig(n=n, split=split, seed=seed))
    save_checked({"images": ds.images, "labels": ds.labels}, path)
    return ds.images, ds.labels


def training_data(n: int, seed: int, cache_dir: Path = DEFAULT_CACHE) -> tuple[Tensor, Tensor]:
    """The training set the defences train on (``rendered_data("train", ...)``)."""
    return rendered_data("train", n, seed, cache_dir)


def heldout_data(n: int, seed: int, cache_dir: Path = DEFAULT_CACHE) -> tuple[Tensor, Tensor]:
    """A fresh held-out set the defences are evaluated on (``rendered_data("heldout", ...)``)."""
    return rendered_data("heldout", n, seed, cache_dir)


def _load_cache(path: Path, what: str) -> dict[str, Any]:
    """A cache file written by :func:`testbed.runs.save_checked`: checksum checked before unpickling, then loaded with
    ``weights_only=True``; IntegrityError naming the file (and saying to delete it) otherwise."""
    from testbed.runs import load_checked
    from testbed.errors import IntegrityError

    try:
        return load_checked(path, what=what, expect=dict)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc}. Delete it to rebuild the cache", path=exc.path, damaged=exc.damaged) from None


# ------------------------------------------------------------------------------------------------ inner attacks
def _input_grad(model: nn.Module, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(model(x)), x)
    return g


def fgsm_examples(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | float) -> Tensor:
    """x + ε·sign(∇CE) (ε scalar or per-sample (B,)), clipped to [0, 1]."""
    g = _input_grad(model, x, lambda z: F.cross_entropy(z, y))
    e = eps.view(-1, 1, 1, 1) if isinstance(eps, Tensor) else eps
    return (x + e * g.sign()).clamp(0, 1).detach()


def _negative_margin(model: nn.Module, x_adv: Tensor, labels: Tensor) -> Tensor:
    """Per-sample ``−(Z_y − max_{i≠y} Z_i)``: the C&W margin as a loss the attack increases."""
    return -margin(model(x_adv), labels)


def pgd_examples(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int,
                 generator: torch.Generator, loss: str = "ce") -> Tensor:
    """L∞ PGD with a uniform random start (Madry et al.), maximising CE (or the C&W margin, ``loss="cw"``):
    ``physical.attacks.MadryPGD`` (the iterative base, Madry's clipping), random start from ``generator``."""
    attack = MadryPGD(eps=eps, alpha=alpha, steps=steps, random_start=True,
                      loss_fn=None if loss == "ce" else _negative_margin)
    return attack(model, x, y, generator=generator).adversarial


def trades_examples(model: nn.Module, x: Tensor, eps: float, alpha: float, steps: int,
                    generator: torch.Generator) -> Tensor:
    """TRADES' inner maximisation: x' in the ε-ball maximising KL(f(x) ‖ f(x')), start x + 0.001·N(0, 1)
    (``physical.attacks.TradesPGD`` with the ``trades_kl`` loss hook)."""
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    attack = TradesPGD(eps=eps, alpha=alpha, steps=steps, random_start=True, loss_fn=trades_kl(p_clean))
    return attack(model, x, p_clean.argmax(dim=1), generator=generator).adversarial


def trades_loss(logits_clean: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """CE(f(x), y) + β · mean_i KL(f(x_i) ‖ f(x'_i)) (Zhang et al. 2019, eq. 5)."""
    ce = F.cross_entropy(logits_clean, y)
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1), reduction="batchmean")
    return ce + beta * kl


def rect_positions(size: int, rect: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of every ``rect``×``rect`` window at ``stride`` inside a ``size`` image."""
    return [(r, c) for r in range(0, size - rect + 1, stride) for c in range(0, size - rect + 1, stride)]


def roa_mask(model: nn.Module, x: Tensor, y: Tensor, rect: int, stride: int) -> Tensor:
    """(B, 1, H, W) float mask of the ``rect``×``rect`` window (stride ``stride``) where the summed |∇CE| is largest:
    the gradient-guided placement of the rectangular occlusion attack (Wu et al. 2020)."""
    g = _input_grad(model, x, lambda z: F.cross_entropy(z, y)).abs().sum(1, keepdim=True)
    score = F.avg_pool2d(g, rect, stride=stride)  # (B, 1, R, C): mean |grad| of each window
    b, _, nr, nc = score.shape
    idx = score.view(b, -1).argmax(1)
    rows, cols = (idx // nc) * stride, (idx % nc) * stride
    h, w = x.shape[-2:]
    ar = torch.arange(h, device=x.device).view(1, h, 1)
    ac = torch.arange(w, device=x.device).view(1, 1, w)
    return ((ar >= rows.view(-1, 1, 1)) & (ar < rows.view(-1, 1, 1) + rect)
            & (ac >= cols.view(-1, 1, 1)) & (ac < cols.view(-1, 1, 1) + rect)).unsqueeze(1).float()


def roa_examples(model: nn.Module, x: Tensor, y: Tensor, rect: int, stride: int, steps: int, alpha: float,
                 generator: torch.Generator) -> Tensor:
    """Rectangular occlusion attack (Wu et al. 2020, gradient-guided placement): put a ``rect``×``rect`` square
    where the summed |∇CE| is largest (``roa_mask``), start it at random colours and run ``steps`` PGD steps of
    ``alpha`` on its content (unbounded within [0, 1]): ``physical.attacks.MaskedPGD`` with the square as mask."""
    attack = MaskedPGD(eps=1.0, alpha=alpha, steps=steps, random_start=True)
    return attack(model, x, y, generator=generator, grad_mask=roa_mask(model, x, y, rect, stride)).adversarial


# ------------------------------------------------------------------------------------------------ training
def _init_model(config: DefenceTrainConfig, gen: torch.Generator) -> nn.Module:
    from testbed.models.signs import SIGN_CNN_WEIGHTS

    model = build_model(config.method, config.dropout)
    net = base_net(model)
    if config.init == "scratch":
        net.reset_parameters(gen)
    else:
        ckpt = torch.load(SIGN_CNN_WEIGHTS, map_location="cpu", weights_only=True)
        sd = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        net.load_state_dict(sd)
    if config.method in ("distill_teacher", "distill_student") and config.init == "sign-cnn":
        # temperature warm start: scale the output layer by T so that softmax(Z/T) starts as the shipped model's
        # softmax (training at T from the shipped weights would otherwise first have to grow the logits T-fold)
        with torch.no_grad():
            net.classifier[-1].weight.mul_(config.temperature)
            net.classifier[-1].bias.mul_(config.temperature)
    if isinstance(model.net, DropoutHead):
        model.net.dropout.reseed(config.seed + 101)
    return model


def _teacher_logits(config: DefenceTrainConfig, x: Tensor, cache_dir: Path) -> Tensor:
    teacher = load_defence(config.teacher, cache_dir).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            out.append(teacher(x[i:i + 1000]))
    return torch.cat(out)


def train_defence(name: str, config: DefenceTrainConfig, *, cache_dir: Path = DEFAULT_CACHE, force: bool = False,
                  log: Callable[[str], None] | None = None) -> TrainedDefence:
    """Train (or load from ``cache_dir/<name>.pt`` when its config matches) the defended model ``name``."""
    log = log or (lambda s: None)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{name}.pt"
    if path.is_file() and not force:
        ckpt = _load_cache(path, "defence model cache")
        if ckpt.get("config") == config.to_dict():
            model = _model_from_ckpt(ckpt)
            return TrainedDefence(name, model, config, ckpt.get("history", []), ckpt.get("train_seconds", 0.0),
                                  path, cached=True)
        log(f"{name}: cached config differs, retraining")
    t0 = time.time()
    with deterministic(config.threads):
        xtr, ytr = training_data(config.n_train, config.data_seed, cache_dir)
        soft = None
        if config.method == "distill_student":
            soft = F.softmax(_teacher_logits(config, xtr, cache_dir) / config.temperature, dim=1)
        gen = torch.Generator().manual_seed(config.seed)
        model = _init_model(config, gen).to(default_device())

        def batch_loss(model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            return _step_loss(model, config, x, y, None if soft is None else soft[idx].to(x.device), gen)

        history = fit(model, xtr, ytr, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                      weight_decay=config.weight_decay, generator=gen, batch_loss=batch_loss,
                      end_epoch=lambda r: {"epoch": r["epoch"], "loss": r["loss"],
                                           "train_top1_on_trained_inputs": r["top1"], "seconds": r["seconds"]},
                      log=lambda line: log(f"{name}: {line}"), started=t0)
    model = model.cpu().eval()
    seconds = time.time() - t0
    save_checked({"state_dict": model.state_dict(), "config": config.to_dict(), "history": history,
                  "train_seconds": seconds, "torch": str(torch.__version__)}, path)
    return TrainedDefence(name, model, config, history, seconds, path)


def _step_loss(model: nn.Module, c: DefenceTrainConfig, x: Tensor, y: Tensor, soft: Tensor | None,
               gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The training loss of one batch and the logits it was computed on (for the running accuracy)."""
    m = c.method
    if m in ("clean", "dropout"):
        model.train()
        z = model(x)
        return F.cross_entropy(z, y), z
    if m == "noise":
        model.train()
        z = model((x + c.sigma * torch.randn(x.shape, generator=gen).to(x.device)))  # no clipping (Cohen et al.)
        return F.cross_entropy(z, y), z
    if m == "distill_teacher":
        model.train()
        z = model(x)
        return F.cross_entropy(z / c.temperature, y), z
    if m == "distill_student":
        model.train()
        z = model(x)
        return -(soft * F.log_softmax(z / c.temperature, 1)).sum(1).mean(), z
    # adversarial methods: craft in eval mode (BN running stats), update in train mode
    model.eval()
    if m == "fgsm_at":
        eps = c.eps_min + (c.eps - c.eps_min) * torch.rand(len(y), generator=gen).to(x.device)
        xa = fgsm_examples(model, x, y, eps)
        model.train()
        z = model(torch.cat([x, xa]))
        return F.cross_entropy(z, torch.cat([y, y])), z[len(y):]
    if m == "pgd_at":
        xa = pgd_examples(model, x, y, c.eps, c.step_size, c.steps, gen)
        model.train()
        z = model(xa)
        return F.cross_entropy(z, y), z
    if m == "trades":
        xa = trades_examples(model, x, c.eps, c.step_size, c.steps, gen)
        model.train()
        z = model(torch.cat([x, xa]))
        zc, za = z[:len(y)], z[len(y):]
        return trades_loss(zc, za, y, c.beta), za
    if m == "doa":
        xa = roa_examples(model, x, y, c.rect, c.rect_stride, c.doa_steps, c.doa_alpha, gen)
        model.train()
        z = model(xa)
        return F.cross_entropy(z, y), z
    raise DefenceError(f"unknown method {m!r}")


def _model_from_ckpt(ckpt: dict[str, Any]) -> nn.Module:
    cfg = ckpt["config"]
    model = build_model(cfg["method"], cfg.get("dropout", 0.3))
    model.load_state_dict(ckpt["state_dict"])
    if isinstance(model.net, DropoutHead):
        model.net.dropout.reseed(cfg.get("seed", 0) + 101)
    return model.eval()


def load_defence(name: str, cache_dir: Path = DEFAULT_CACHE) -> nn.Module:
    """A trained defended model from ``cache_dir/<name>.pt`` (eval mode, parameters frozen)."""
    path = Path(cache_dir) / f"{name}.pt"
    if not path.is_file():
        raise DefenceError(f"defended model {name!r} not found at {path}; train it with `testbed defences train`")
    model = _model_from_ckpt(_load_cache(path, "defence model cache"))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ------------------------------------------------------------------------------------------------ the suite
def default_suite(fast: bool = False) -> dict[str, DefenceTrainConfig]:
    """The models the report trains (name -> config). ``fast``: tiny runs for smoke tests."""
    kw: dict[str, Any] = {"n_train": 512, "epochs": 1} if fast else {}

    def c(method: str, epochs: int, **extra: Any) -> DefenceTrainConfig:
        return DefenceTrainConfig(method, **({"epochs": epochs} | extra | kw))

    # Budgets sized for a shared 2-core CPU (a few minutes each under load); see docs/defences.md.
    return {
        "fgsm_at": c("fgsm_at", 3, eps=16 / 255),
        "pgd_at": c("pgd_at", 1, steps=3),
        "trades": c("trades", 1, steps=3),
        "doa": c("doa", 1, doa_steps=2),
        "noise": c("noise", 1, sigma=0.25),
        "dropout": c("dropout", 1),
        "distill_teacher": c("distill_teacher", 1, temperature=50.0),
        "distill_student": c("distill_student", 1, temperature=50.0, teacher="distill_teacher"),
        "member1": c("clean", 2, seed=1, init="scratch", lr=3e-3),
        "member2": c("clean", 2, seed=2, init="scratch", lr=3e-3),
    }


def train_suite(names: list[str] | None = None, *, cache_dir: Path = DEFAULT_CACHE, fast: bool = False,
                force: bool = False, log: Callable[[str], None] | None = None) -> dict[str, TrainedDefence]:
    """Train every model of :func:`default_suite` (or ``names``), in order (the teacher before the student)."""
    suite = default_suite(fast)
    names = names or list(suite)
    bad = sorted(set(names) - set(suite))
    if bad:
        raise DefenceError(f"unknown defended model(s) {bad}; known: {', '.join(suite)}")
    out = {}
    for n in suite:
        if n in names:
            out[n] = train_defence(n, suite[n], cache_dir=cache_dir, force=force, log=log)
            if log:
                log(f"{n}: {'cached' if out[n].cached else 'trained'} in {out[n].train_seconds:.0f} s -> {out[n].path}")
    return out
