"""Transferability: a source x target matrix, and a black-box attack through a surrogate (Papernot et al. 2017).

White-box sources: adversarial images are crafted on each source model (FGSM, BIM, Iter-LL at each ε) and every
target model classifies them (optionally after the channel). Labels are per target: its top-1 on the photo's
canonical view (see ``pipelines.kurakin``), so "accuracy" means "agrees with what the target said on the clean
photo". A random-sign baseline (±ε uniform sign noise) shows what transfer adds over noise of the same size.

Black box: for each target, a small CNN surrogate is trained only on the target's top-1 answers (queries):
initial set = the experiment's images plus flips; then ``rounds`` of Jacobian-based dataset augmentation
(x + λ·sign ∇_x F_surrogate[oracle(x)]), each new point labelled by querying the target. The surrogate's classes are
the target classes it has seen. The attacks are then run on the surrogate and evaluated on the target. The number of
queries is reported. Kept small on purpose (a 2-core CPU): the point is the method, measured honestly.

This module is the experiment kind ``transfer`` (cells, metrics, report section, the ``random_sign`` baseline),
registered with ``pipelines.experiment.register_kind`` at its end.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.channels import derive_seed, make_channel
from pipelines.experiment import Cell, ExperimentConfig, RunDir, register_kind
from pipelines.kurakin import build_image_set, predict, resolve_labels
from pipelines.metrics import rate
from pipelines.report import ci, plot_transfer_heatmap, scores_section
from testbed.device import default_device
from testbed.errors import ConfigError


@dataclass(frozen=True)
class SurrogateConfig:
    enabled: bool = True
    rounds: int = 2  # Jacobian augmentation rounds (each doubles the set)
    lam: float = 0.1  # augmentation step λ (on the [0, 1] scale)
    epochs: int = 12
    input_size: int = 64  # the surrogate looks at a downscaled image
    width: int = 32
    lr: float = 3e-3

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> "SurrogateConfig":
        d = dict(d or {})
        known = set(SurrogateConfig.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"config surrogate: unknown key(s) {bad}; allowed: {', '.join(sorted(known))}")
        cfg = SurrogateConfig(**d)
        for name, lo, hi in (("rounds", 0, 6), ("epochs", 1, 500), ("input_size", 16, 512), ("width", 4, 512)):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"config surrogate.{name} must be an integer in [{lo}, {hi}], got {v!r}")
        for name in ("lam", "lr"):
            v = getattr(cfg, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ConfigError(f"config surrogate.{name} must be in (0, 1), got {v!r}")
        return cfg


class Surrogate(nn.Module):
    """A small CNN on a downscaled input; input BCHW RGB [0, 1] at any size, logits over ``classes``."""

    def __init__(self, n_classes: int, input_size: int, width: int, generator: torch.Generator) -> None:
        super().__init__()
        w = width
        self.input_size = input_size
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, n_classes))
        with torch.no_grad():  # explicit, seeded initialisation (no global RNG)
            for m in self.net:
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * math.sqrt(2 / fan_in))
                    m.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                          align_corners=False)
        return self.net((x - 0.5) / 0.25)


@torch.no_grad()
def _oracle(target: nn.Module, x: Tensor, bs: int) -> Tensor:
    dev = next(target.parameters()).device
    return torch.cat([target(x[i:i + bs].to(dev)).argmax(1).cpu() for i in range(0, len(x), bs)])


def _train(model: Surrogate, x: Tensor, y: Tensor, cfg: SurrogateConfig, g: torch.Generator) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            idx = perm[i:i + 32]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_surrogate(target: nn.Module, images: Tensor, cfg: SurrogateConfig, seed: int, bs: int = 16
                    ) -> tuple[Surrogate, list[int], dict[str, Any]]:
    """Papernot et al.'s substitute training against ``target`` (top-1 answers only); returns the surrogate,
    its class list (target class indices) and statistics (queries, agreement)."""
    g = torch.Generator().manual_seed(seed % (2**62))
    x = torch.cat([images, images.flip(-1)])
    answers = _oracle(target, x, bs)
    queries = len(x)
    classes = sorted(set(answers.tolist()))
    for r in range(cfg.rounds + 1):
        index = {c: i for i, c in enumerate(classes)}
        model = Surrogate(len(classes), cfg.input_size, cfg.width, g)
        train_acc = _train(model, x, torch.tensor([index[a] for a in answers.tolist()]), cfg, g)
        if r == cfg.rounds:
            break
        xr = x.clone().requires_grad_(True)
        logits = model(xr)
        sel = logits.gather(1, torch.tensor([index[a] for a in answers.tolist()]).view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(sel, xr)
        new = (x + cfg.lam * grad.sign()).clamp(0, 1).detach()
        new_answers = _oracle(target, new, bs)
        queries += len(new)
        x, answers = torch.cat([x, new]), torch.cat([answers, new_answers])
        classes = sorted(set(classes) | set(new_answers.tolist()))
    stats = {"queries": queries, "training_set": len(x), "classes": len(classes), "train_agreement": train_acc}
    return model, classes, stats


class _Lifted(nn.Module):
    """A surrogate over a subset of target classes, as logits over all target classes (others: very low)."""

    def __init__(self, surrogate: Surrogate, classes: list[int], n_total: int) -> None:
        super().__init__()
        self.surrogate = surrogate
        self.register_buffer("index", torch.tensor(classes))
        self.n_total = n_total

    def forward(self, x: Tensor) -> Tensor:
        z = self.surrogate(x)
        out = torch.full((x.shape[0], self.n_total), -1e4, dtype=z.dtype, device=z.device)
        return out.index_copy(1, self.index.to(z.device), z)


# ------------------------------------------------------------------------------------------------ cells
def build_cells(config: ExperimentConfig, run: RunDir) -> list[Cell]:
    from testbed.models.registry import get_entry, get_model

    targets = list(config.targets or config.models)
    sources = list(config.models)
    sizes = {tuple(get_entry(m).input_size) for m in set(sources) | set(targets)}
    if len(sizes) != 1:
        raise ConfigError(f"transfer needs models with one input size; got {sorted(sizes)} for {sources + targets}")
    nclasses = {len(get_entry(m).labels) for m in set(sources) | set(targets)}
    if len(nclasses) != 1:
        raise ConfigError("transfer needs models over one label set (e.g. all ImageNet); got "
                          + ", ".join(f"{m}: {len(get_entry(m).labels)} classes" for m in sources + targets))
    size = sizes.pop()
    bs, reps = config.batch_size, config.channel.repetitions
    state: dict[str, Any] = {}
    sur_cfg = SurrogateConfig.from_dict(config.surrogate) if config.surrogate is not None else None

    def images():
        if "images" not in state:
            state["images"] = build_image_set(config.images, size)
            state["channel"] = make_channel(config.channel.__dict__, config.seed)
        return state["images"], state["channel"]

    def model(name: str):
        key = f"model:{name}"
        if key not in state:
            state[key] = get_model(name, device=default_device())
        return state[key]

    def evaluate(adv: Tensor, tag: str) -> dict[str, Any]:
        imgs, channel = images()
        out = {}
        for t in targets:
            preds = {"digital": predict(model(t), adv, bs)}
            if channel.kind != "none":
                preds["photo"] = [predict(model(t), channel.transmit(adv, imgs.ids, rep=r, tag=tag).images, bs)
                                  for r in range(reps)]
            out[t] = preds
        return out

    def clean_cell():
        imgs, _ = images()
        labels = {t: resolve_labels(t, model(t), imgs).tolist() for t in targets}
        return {"kind": "transfer-clean", "ids": imgs.ids, "labels": labels, "targets": evaluate(imgs.images, "clean")}

    def source_cell(src: str, spec, eps: float):
        def compute():
            imgs, _ = images()
            m = model(src)
            y = resolve_labels(src, m, imgs)
            if spec.name == "random_sign":
                g = torch.Generator().manual_seed(derive_seed(config.seed, "noise", eps) % (2**62))
                sign = torch.randint(0, 2, imgs.images.shape, generator=g).float() * 2 - 1
                adv = (imgs.images + eps / 255 * sign).clamp(0, 1)
            else:
                adv = _attack_batches(spec.build(eps), m, imgs.images, y, bs,
                                      derive_seed(config.seed, src, spec.label, eps))
            return {"kind": "transfer", "source": src, "attack": spec.label, "eps": eps,
                    "targets": evaluate(adv, f"{src}/{spec.label}/eps{eps:g}")}
        return compute

    def surrogate_cell(tgt: str, eps_list: list[float]):
        def compute():
            imgs, _ = images()
            t = model(tgt)
            sur, classes, stats = train_surrogate(t, imgs.images, sur_cfg, derive_seed(config.seed, "surrogate", tgt),
                                                  bs)
            lifted = _Lifted(sur, classes, len(get_entry(tgt).labels)).eval()
            for p in lifted.parameters():
                p.requires_grad_(False)
            y_sur = predict(lifted, imgs.images, bs)
            y = torch.tensor([row[0] for row in y_sur["top5"]])  # attack the surrogate's own answer
            out = {"kind": "surrogate", "target": tgt, "stats": stats,
                   "agreement_on_images": float((y == _oracle(t, imgs.images, bs)).float().mean()), "attacks": {}}
            for spec in config.attacks:
                if spec.name == "random_sign":
                    continue
                for eps in eps_list:
                    adv = _attack_batches(spec.build(eps), lifted, imgs.images, y, bs,
                                          derive_seed(config.seed, "sur", tgt, spec.label, eps))
                    out["attacks"][f"{spec.label}/eps{eps:g}"] = {
                        "attack": spec.label, "eps": eps, "digital": predict(t, adv, bs)}
            return out
        return compute

    cells = [Cell("transfer/clean", clean_cell)]
    for src in sources:
        for spec in config.attacks:
            for eps in config.eps:
                cells.append(Cell(f"transfer/{src}/{spec.label}/eps{eps:g}", source_cell(src, spec, eps)))
    if sur_cfg is not None and sur_cfg.enabled:
        for t in targets:
            cells.append(Cell(f"surrogate/{t}", surrogate_cell(t, list(config.eps))))
    return cells


def _attack_batches(attack, model, images: Tensor, labels: Tensor, bs: int, seed: int) -> Tensor:
    dev = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    out = []
    for i in range(0, len(images), bs):
        g = torch.Generator().manual_seed((seed + i) % (2**62))
        out.append(attack(model, images[i:i + bs].to(dev), labels[i:i + bs].to(dev), generator=g).adversarial.cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ report
def _acc(pred: dict, labels: list[int], k: int):
    top = torch.tensor(pred["top5"])[:, :k]
    return rate((top == torch.tensor(labels).view(-1, 1)).any(1))


def summarise(cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    clean = cells.get("transfer/clean")
    if clean is None:
        return {}
    labels = clean["labels"]
    targets = list(labels)
    res: dict[str, Any] = {"targets": targets, "clean": {}, "matrix": [], "surrogate": []}
    for t in targets:
        res["clean"][t] = {"top1": _acc(clean["targets"][t]["digital"], labels[t], 1).as_dict(),
                           "top5": _acc(clean["targets"][t]["digital"], labels[t], 5).as_dict()}
    for c in cells.values():
        if c.get("kind") == "transfer":
            for t in targets:
                p = c["targets"][t]
                row = {"source": c["source"], "attack": c["attack"], "eps": c["eps"], "target": t,
                       "top1": _acc(p["digital"], labels[t], 1).as_dict(),
                       "top5": _acc(p["digital"], labels[t], 5).as_dict()}
                if "photo" in p:
                    photos = {k: rate(torch.cat([torch.as_tensor([_hit(r, labels[t], i, k) for i in range(len(labels[t]))])
                                                 for r in p["photo"]])).as_dict() for k in (1, 5)}
                    row["photo_top1"], row["photo_top5"] = photos[1], photos[5]
                res["matrix"].append(row)
        if c.get("kind") == "surrogate":
            t = c["target"]
            clean_ok = torch.tensor(clean["targets"][t]["digital"]["top5"])[:, 0] == torch.tensor(labels[t])
            noise = next((x for x in cells.values() if x.get("kind") == "transfer" and x["attack"] == "random_sign"),
                         None)
            for key, a in c["attacks"].items():
                wrong = torch.tensor(a["digital"]["top5"])[:, 0] != torch.tensor(labels[t])
                extra = {"success_clean_ok": rate(wrong[clean_ok]).as_dict()}
                if noise is not None and noise["eps"] == a["eps"]:
                    nw = torch.tensor(noise["targets"][t]["digital"]["top5"])[:, 0] != torch.tensor(labels[t])
                    extra["noise_success_clean_ok"] = rate(nw[clean_ok]).as_dict()
                res["surrogate"].append({"target": t, "attack": a["attack"], "eps": a["eps"], **c["stats"],
                                         "agreement_on_images": c["agreement_on_images"],
                                         "top1": _acc(a["digital"], labels[t], 1).as_dict(),
                                         "top5": _acc(a["digital"], labels[t], 5).as_dict(), **extra})
    return res


def _hit(pred: dict, labels: list[int], i: int, k: int) -> bool:
    return labels[i] in pred["top5"][i][:k]


def summarise_run(config: dict[str, Any], cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The kind's summary (registry hook): :func:`summarise` of the stored cells."""
    return summarise(cells)


def render_report(run_dir: Path, config: dict[str, Any], cells: dict[str, dict[str, Any]],
                  s: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The transfer report section (registry hook): clean accuracy per target, one source x target table and
    heatmap per ε, the black-box surrogate results and their CVSS / ATLAS scores. (Markdown lines, JSON data.)"""
    if not s:
        return ["(no cells yet)"], {}
    targets = s["targets"]
    n = next(iter(s["clean"].values()))["top1"]["n"]
    f = lambda r: f"{100 * r['value']:.1f}"  # noqa: E731
    lines = [f"Images: **n = {n}** per cell. Entries: target top-1 / top-5 accuracy (%) on adversarial images "
             "crafted on the source (lower = the attack transfers). Labels: each target's top-1 on the clean "
             "canonical view.", "", "## Clean accuracy per target", "",
             "| target | top-1 | top-5 |", "|---|---|---|"]
    for t in targets:
        lines.append(f"| {t} | {f(s['clean'][t]['top1'])} | {f(s['clean'][t]['top5'])} |")
    plots = []
    for eps in sorted({r["eps"] for r in s["matrix"]}):
        rows = [r for r in s["matrix"] if r["eps"] == eps]
        attacks = list(dict.fromkeys(r["attack"] for r in rows))
        sources = list(dict.fromkeys(r["source"] for r in rows))
        lines += ["", f"## Source × target, ε = {eps:g} (top-1 / top-5 %, Wilson 95% CI of top-1 in brackets)", "",
                  "| attack | source \\ target | " + " | ".join(targets) + " |", "|---" * (len(targets) + 2) + "|"]
        for a in attacks:
            for src in sources:
                cells_ = []
                for t in targets:
                    r = next(x for x in rows if x["attack"] == a and x["source"] == src and x["target"] == t)
                    cells_.append(f"{f(r['top1'])} / {f(r['top5'])} [{100 * r['top1']['low']:.0f}–"
                                  f"{100 * r['top1']['high']:.0f}]" + (" (white box)" if src == t and a != "random_sign" else ""))
                lines.append(f"| {a} | {src} | " + " | ".join(cells_) + " |")
        matrix = {"eps": eps, "attacks": attacks, "sources": sources, "targets": targets,
                  "top1": {a: {src: {t: next(x["top1"] for x in rows if x["attack"] == a and x["source"] == src
                                               and x["target"] == t) for t in targets} for src in sources}
                           for a in attacks}}
        p = plot_transfer_heatmap(matrix, run_dir / "plots" / f"transfer_eps{eps:g}.png")
        plots.append(p)
        lines += ["", f"![transfer heatmap eps {eps:g}](plots/{p.name})"]
    if s["surrogate"]:
        lines += ["", "## Black box through a surrogate trained on the target's answers (Papernot et al.)", "",
                  "| target | attack | ε | queries | surrogate classes | surrogate agrees with target (clean images) "
                  "| target top-1 | target top-5 |", "|---" * 8 + "|"]
        for r in s["surrogate"]:
            lines.append(f"| {r['target']} | {r['attack']} | {r['eps']:g} | {r['queries']} | {r['classes']} | "
                         f"{100 * r['agreement_on_images']:.0f}% | {ci(r['top1'])} | {ci(r['top5'])} |")
    from pipelines.scoring import Finding

    findings = [Finding(title=f"black-box {r['attack']} ε={r['eps']:g} via a surrogate of {r['target']} "
                              f"({r['queries']} queries), digital input: top-1 wrong among clean-correct images"
                              + (f" (random ±ε noise: {100 * r['noise_success_clean_ok']['value']:.0f}%)"
                                 if "noise_success_clean_ok" in r else ""), surface="network",
                        success_rate=r["success_clean_ok"]["value"], n=r["success_clean_ok"]["n"], white_box=False,
                        atlas=("AML.T0005", "AML.T0043.002", "AML.T0015"))
                for r in s["surrogate"]]
    score_lines, score_data = scores_section(findings)
    return lines + score_lines, {"transfer": s, "scores": score_data}


# ------------------------------------------------------------------------------------------------ registry
BASELINES = ("random_sign",)  # uniform ±ε random-sign noise: what transfer adds over noise of the same size


def check_config(config: ExperimentConfig) -> None:
    """Registry hook: the surrogate settings are checked at parse time (unknown keys, ranges)."""
    if config.surrogate is not None:
        SurrogateConfig.from_dict(config.surrogate)


register_kind("transfer", sys.modules[__name__])
