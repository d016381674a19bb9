"""Training and evaluation of ``sign-cnn`` on rendered signs (default) or on GTSRB (``data="gtsrb"``).

One reproducible command (see docs/signs.md)::

    testbed signs train --out testbed/models/weights/sign_cnn.pt --seed 0

Determinism: the training set is generated from ``seed`` (see :mod:`worlds.signs.dataset`), weights are
initialised and batches shuffled from ``torch.Generator`` objects seeded from ``seed``, the model has no dropout,
``torch.use_deterministic_algorithms`` is on during training and the thread count is fixed (``threads``), so the
same command on the same machine and library versions gives the same weights.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from testbed.device import default_device
from testbed.errors import ConfigError
from testbed.machine import machine_line
from testbed.runs import write_atomic
from worlds.signs.dataset import AugmentConfig, DatasetConfig, SignDataset, generate_dataset
from worlds.signs.render import GTSRB_CLASS_NAMES, SIGN_CLASSES, class_names

DEFAULT_COMMAND = "testbed signs train --out testbed/models/weights/sign_cnn.pt --seed 0"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (JSON-serialisable; stored in the checkpoint and the card)."""

    data: str = "rendered"  # "rendered" | "gtsrb"
    seed: int = 0
    n_train: int = 20000
    size: int = 32
    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    warmup_fraction: float = 0.05
    widths: tuple[int, int, int] = (16, 32, 64)
    threads: int = 1
    n_heldout: int = 2000
    heldout_seed: int = 1
    gtsrb_root: str = "~/.cache/physical-testbed/gtsrb"
    download: bool = False
    artwork_prob: float = 0.85  # share of samples drawn with a random artwork (render.sample_artwork), per split
    pole_prob: float = 0.3  # share of samples with a pole below the sign

    def __post_init__(self) -> None:
        if self.data not in ("rendered", "gtsrb"):
            raise ConfigError(f"TrainConfig.data must be 'rendered' or 'gtsrb', got {self.data!r}")
        for name in ("n_train", "epochs", "batch_size", "threads", "n_heldout", "size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 <= self.label_smoothing < 1):
            raise ConfigError(f"invalid optimiser settings lr={self.lr}, weight_decay={self.weight_decay}, "
                              f"label_smoothing={self.label_smoothing}")

    def augment(self) -> AugmentConfig:
        return AugmentConfig(artwork_prob=self.artwork_prob, pole_prob=self.pole_prob)

    def train_data_config(self) -> DatasetConfig:
        return DatasetConfig(n=self.n_train, size=self.size, split="train", seed=self.seed, augment=self.augment())

    def heldout_data_config(self) -> DatasetConfig:
        return DatasetConfig(n=self.n_heldout, size=self.size, split="heldout", seed=self.heldout_seed,
                             augment=self.augment())


@dataclass(frozen=True)
class EvalResult:
    """Top-1 / top-5 accuracy (percent) on ``n`` samples, with per-class top-1."""

    n: int
    top1: float
    top5: float
    per_class_top1: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    model: nn.Module
    labels: tuple[str, ...]
    history: list[dict]
    heldout: EvalResult
    train_seconds: float
    total_seconds: float
    card: dict


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...],
             batch_size: int = 500) -> EvalResult:
    """Top-1 / top-5 of ``model`` (BCHW RGB [0, 1] in, logits out) on ``images``/``labels``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, top5_hits = [], []
    for i in range(0, len(labels), batch_size):
        logits = model(images[i : i + batch_size].to(device)).cpu()
        y = labels[i : i + batch_size]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        preds.append(top[:, 0])
        top5_hits.append((top == y[:, None]).any(1))
    model.train(was_training)
    pred = torch.cat(preds)
    hit1 = pred == labels
    per_class = {}
    for c, name in enumerate(names):
        m = labels == c
        if m.any():
            per_class[name] = round(100.0 * hit1[m].float().mean().item(), 2)
    return EvalResult(len(labels), 100.0 * hit1.float().mean().item(), 100.0 * torch.cat(top5_hits).float().mean().item(),
                      per_class)


def load_gtsrb(root: str | Path, split: str, size: int, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GTSRB (torchvision) resized to ``size`` x ``size``: images N x 3 x S x S in [0, 1], labels = GTSRB ids.

    Downloads only when ``download`` is true; offline or without the files it raises ConfigError saying so.
    """
    from torchvision import datasets

    root = Path(root).expanduser()
    try:
        ds = datasets.GTSRB(str(root), split=split, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True to download it"
        raise ConfigError(f"GTSRB {split} split not found under {root} ({exc}). Run with --download "
                          "(needs internet, ~350 MB) or point --gtsrb-root at an existing copy") from None
    except OSError as exc:  # network errors during download
        raise ConfigError(f"could not download GTSRB to {root}: {exc}. GTSRB needs internet access; "
                          "download it elsewhere and point --gtsrb-root at it") from None
    images = torch.empty(len(ds), 3, size, size)
    labels = torch.empty(len(ds), dtype=torch.int64)
    from PIL import Image

    for i in range(len(ds)):
        img, y = ds[i]
        img = img.convert("RGB").resize((size, size), Image.BILINEAR)
        images[i] = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1) / 255.0
        labels[i] = int(y)
    return images, labels


def cached_dataset(config: DatasetConfig, cache_dir: str | Path | None, *, progress: bool = False) -> SignDataset:
    """``generate_dataset(config)``, kept in ``cache_dir`` (checked save/load, keyed by the config's hash) so a
    second training run on the same data does not render it again; ``cache_dir`` None: always generated."""
    if cache_dir is None:
        return generate_dataset(config, progress=progress)
    from testbed.runs import load_checked, save_checked

    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir).expanduser() / f"signs-{config.split}-{key}.pt"
    if path.is_file():
        d = load_checked(path, what="sign dataset cache", expect=dict)
        return SignDataset(d["images"], d["labels"], class_names(), config)
    ds = generate_dataset(config, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checked({"images": ds.images, "labels": ds.labels}, path)
    return ds


def _data(config: TrainConfig, progress: bool, cache_dir: str | Path | None = None):
    if config.data == "gtsrb":
        xtr, ytr = load_gtsrb(config.gtsrb_root, "train", config.size, config.download)
        xte, yte = load_gtsrb(config.gtsrb_root, "test", config.size, config.download)
        return xtr, ytr, xte, yte, GTSRB_CLASS_NAMES, f"GTSRB test (torchvision, resized to {config.size}px)"
    tr = cached_dataset(config.train_data_config(), cache_dir, progress=progress)
    hcfg = config.heldout_data_config()
    te = cached_dataset(hcfg, cache_dir, progress=progress)
    desc = (f"rendered signs, held-out split: background photos, legend fonts and seeds disjoint from training, "
            f"artwork split heldout-artwork for {hcfg.augment.artwork_prob:.0%} of signs, seed={hcfg.seed}, "
            f"n={hcfg.n}")
    return tr.images, tr.labels, te.images, te.labels, class_names(), desc


#: ``batch_loss(model, x, y, idx) -> (loss, logits)``: one batch's training loss and the logits the running accuracy
#: is counted on; ``idx`` are the batch's indices in the training set (for per-sample side data, e.g. soft labels).
BatchLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """``threads`` torch CPU threads and deterministic algorithms for the block (both restored after it): with the
    seeded generators, what makes a training run reproducible on one machine."""
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def cross_entropy_loss(label_smoothing: float = 0.0) -> BatchLoss:
    """Plain training: the model in train mode, CE (with label smoothing) on the clean batch."""

    def batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        model.train()
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return batch_loss


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
        weight_decay: float, generator: torch.Generator, warmup_fraction: float = 0.05,
        batch_loss: BatchLoss | None = None, end_epoch: Callable[[dict], dict] | None = None,
        log: Callable[[str], None] | None = None, started: float | None = None) -> list[dict]:
    """The one training loop of the sign models (``train`` here, the defences' ``train_defence``).

    AdamW (weight decay on weights, none on biases and norms); per step a linear warm-up over ``warmup_fraction`` of
    the steps, then a cosine decay to 0; each epoch shuffles the training set with ``generator`` (which
    ``batch_loss`` may also draw from: attack starts, noise). ``batch_loss`` is the hook for what one step trains
    on (default: CE on the clean batch; adversarial training crafts its examples there). After each epoch
    ``{"epoch", "loss", "top1", "seconds"}`` (mean loss and accuracy over the epoch's batches, seconds since
    ``started``) goes through ``end_epoch`` (e.g. to add a held-out accuracy or rename keys) into the returned
    history, and is logged as JSON.
    """
    batch_loss = batch_loss or cross_entropy_loss()
    log = log or (lambda s: None)
    started = time.time() if started is None else started
    device = next(model.parameters()).device
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total = steps_per_epoch * epochs
    warm = max(1, int(warmup_fraction * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    history = []
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(len(labels), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            x, y = images[idx].to(device), labels[idx].to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss, logits = batch_loss(model, x, y, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        rec = {"epoch": epoch + 1, "loss": round(loss_sum / seen, 4), "top1": round(100.0 * correct / seen, 2),
               "seconds": round(time.time() - started, 1)}
        rec = end_epoch(rec) if end_epoch is not None else rec
        history.append(rec)
        log(json.dumps(rec))
    return history


def train(config: TrainConfig, *, progress: bool = False, log: Callable[[str], None] | None = None,
          cache_dir: str | Path | None = None) -> TrainResult:
    """Train sign-cnn from scratch as ``config`` says; returns the model, history and held-out accuracy.
    ``cache_dir``: keep the rendered datasets there (see :func:`cached_dataset`)."""
    from testbed.models.signs import build_sign_cnn

    log = log or (lambda s: None)
    t_start = time.time()
    with deterministic(config.threads):
        xtr, ytr, xte, yte, names, eval_desc = _data(config, progress, cache_dir)
        log(f"data: {len(ytr)} train / {len(yte)} held-out images in {time.time() - t_start:.1f} s")
        gen = torch.Generator().manual_seed(config.seed)
        model = build_sign_cnn(len(names), config.widths, config.size)
        model.net.reset_parameters(gen)
        model = model.to(default_device())

        def end_epoch(r: dict) -> dict:
            heldout_top1 = round(evaluate(model, xte, yte, names).top1, 2)
            return {"epoch": r["epoch"], "train_loss": r["loss"], "train_top1": r["top1"], "heldout_top1": heldout_top1,
                    "seconds": round(time.time() - t_start, 1)}

        t_train = time.time()
        history = fit(model, xtr, ytr, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                      weight_decay=config.weight_decay, generator=gen, warmup_fraction=config.warmup_fraction,
                      batch_loss=cross_entropy_loss(config.label_smoothing), end_epoch=end_epoch, log=log,
                      started=t_start)
        train_seconds = time.time() - t_train
        heldout = evaluate(model, xte, yte, names)
    model = model.cpu().eval()
    total_seconds = time.time() - t_start
    card = {
        "model": "sign-cnn",
        "labels": list(names),
        "gtsrb_ids": ([s.gtsrb_id for s in SIGN_CLASSES] if config.data == "rendered" else list(range(43))),
        "input_size": config.size,
        "widths": list(config.widths),
        "seed": config.seed,
        "train_config": asdict(config),
        "data_config": config.train_data_config().to_dict() if config.data == "rendered" else {"data": "gtsrb"},
        "heldout_config": config.heldout_data_config().to_dict() if config.data == "rendered" else {"data": "gtsrb"},
        "heldout_eval": {"dataset": eval_desc, "n": heldout.n, "top1": round(heldout.top1, 2),
                         "top5": round(heldout.top5, 2), "per_class_top1": heldout.per_class_top1},
        "history": history,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "machine": machine_line(),
        "torch": torch.__version__,
        "command": DEFAULT_COMMAND if config == TrainConfig() else None,
    }
    return TrainResult(model, tuple(names), history, heldout, train_seconds, total_seconds, card)


def save_checkpoint(result: TrainResult, out: str | Path, card_path: str | Path | None = None,
                    command: str | None = None) -> tuple[Path, Path]:
    """Write the weights (``out``) and the model card JSON (default: ``out`` with ``.card.json``), atomically."""
    out = Path(out)
    card_path = Path(card_path) if card_path else out.with_suffix(".card.json")
    net = result.model.net
    ckpt = {"state_dict": result.model.state_dict(), "labels": list(result.labels), "widths": list(net.widths),
            "input_size": net.input_size, "train_config": result.card["train_config"]}
    buf = io.BytesIO()  # saved via a buffer: the zip's inner folder name then does not depend on the file name
    torch.save(ckpt, buf)
    write_atomic(out, buf.getvalue())
    card = dict(result.card)
    if command:
        card["command"] = command
    card["weights_file"] = out.name
    card["weights_sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    card["weights_bytes"] = out.stat().st_size
    write_atomic(card_path, json.dumps(card, indent=2) + "\n")
    return out, card_path


def evaluate_checkpoint(weights: str | Path | None = None, *, data: str = "rendered", n: int = 2000, seed: int = 1,
                        size: int | None = None, gtsrb_root: str = TrainConfig.gtsrb_root, download: bool = False,
                        threads: int | None = None) -> EvalResult:
    """Top-1/top-5 of a sign-cnn checkpoint on a freshly rendered held-out set (or the GTSRB test split)."""
    from testbed.models.signs import SIGN_CNN_WEIGHTS, load_sign_cnn

    model = load_sign_cnn(weights or SIGN_CNN_WEIGHTS).eval()
    size = size or model.net.input_size
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if data == "gtsrb":
            x, y = load_gtsrb(gtsrb_root, "test", size, download)
            names = GTSRB_CLASS_NAMES
        elif data == "rendered":
            ds = generate_dataset(DatasetConfig(n=n, size=size, split="heldout", seed=seed,
                                                augment=TrainConfig().augment()))
            x, y, names = ds.images, ds.labels, ds.class_names
        elif data == "independent":
            from worlds.signs.independent import independent_set

            x, y = independent_set(n, seed, size)
            names = class_names()
        else:
            raise ConfigError(f"data must be 'rendered', 'independent' or 'gtsrb', got {data!r}")
        labels = tuple(getattr(model, "labels", ()) or names)
        if model.net.num_classes != len(names):
            raise ConfigError(f"checkpoint has {model.net.num_classes} classes but the {data} data has {len(names)}")
        return evaluate(model, x, y, labels)
    finally:
        torch.set_num_threads(prev)


#: The independent held-out set the card reports (``worlds.signs.independent``): its size and seed.
INDEPENDENT_N = 3000
INDEPENDENT_SEED = 0


def independent_record(ev: EvalResult, seed: int) -> dict:
    """The card's ``independent_eval``: top-1 / top-5 with n and Wilson 95 % intervals, per class too."""
    from testbed.stats import wilson

    per_class = {}
    n_c = ev.n // len(ev.per_class_top1) if ev.per_class_top1 else 0
    for name, pct in ev.per_class_top1.items():
        r = wilson(round(pct * n_c / 100), n_c)
        per_class[name] = {"k": r.k, "n": r.n, "top1": round(100 * r.value, 2), "low": round(100 * r.low, 2),
                           "high": round(100 * r.high, 2)}
    top1 = wilson(round(ev.top1 * ev.n / 100), ev.n)
    worst = min(per_class, key=lambda k: per_class[k]["top1"]) if per_class else None
    return {
        "dataset": (f"independent held-out signs (worlds.signs.independent: own vector designs, matplotlib Agg, "
                    f"unseen fonts and backgrounds), seed={seed}, n={ev.n}"),
        "seed": seed, "n": ev.n, "k": top1.k, "top1": round(100 * top1.value, 2),
        "top1_low": round(100 * top1.low, 2), "top1_high": round(100 * top1.high, 2), "top5": round(ev.top5, 2),
        "lowest_class": worst, "per_class": per_class,
        "note": "never used in training or model selection; measured after training",
    }


def record_independent_eval(card_path: str | Path, weights: str | Path, *, n: int = INDEPENDENT_N,
                            seed: int = INDEPENDENT_SEED, threads: int | None = 1) -> dict:
    """Measure ``weights`` on the independent held-out set and write the result into the model card (atomically).
    The card's ``weights_sha256`` must be that of ``weights`` (the record belongs to those weights)."""
    card_path, weights = Path(card_path), Path(weights)
    card = json.loads(card_path.read_text())
    if card.get("weights_sha256") != hashlib.sha256(weights.read_bytes()).hexdigest():
        raise ConfigError(f"{card_path} does not describe {weights} (sha256 differs); retrain or pass the right card")
    ev = evaluate_checkpoint(weights, data="independent", n=n, seed=seed, threads=threads)
    card["independent_eval"] = independent_record(ev, seed)
    write_atomic(card_path, json.dumps(card, indent=2) + "\n")
    return card["independent_eval"]
