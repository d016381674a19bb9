"""Kurakin, Goodfellow & Bengio 2016 ("Adversarial examples in the physical world"), reproduced.

Per attacked model: a ``clean`` cell (clean images, digital and through the channel) and one cell per
(attack, eps) (adversarial images, digital and through the channel). Each cell stores per image the top-5 class
indices and the top-1 probability, so every metric (accuracy, destruction rate, prefiltering) is computed from
the stored cells at report time (``summarise``), with its n and a Wilson 95% interval.

Labels. Kurakin et al. used ImageNet validation labels. ``images.source: imagenet-samples`` takes 20 ImageNet
validation images with their true labels (pinned assets from Foolbox's samples, ``testbed.assets``). The testbed
also ships ~10 real colour photos without ground truth; for those an image's label is the attacked model's top-1 on
the photo's canonical view (resize 256 / centre crop 224). Several crops per photo (``crops_per_photo``; crop 0
*is* the canonical view, the others are smaller and off-centre) give more images; the crops inherit their photo's
label, so the clean accuracy of the other crops is not 100% by construction. A folder of images may bring its own labels (JSON ``{file name: index or label}``).

This module is the experiment kind ``kurakin``: its cells, metrics and report section (``render_report``) live
here, and it registers itself with ``pipelines.experiment.register_kind`` at the end (``pipelines/kinds.py``
imports it). The image set and prediction helpers are shared with ``pipelines.transfer``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipelines.channels import Channel, derive_seed, make_channel, tag_dirname
from pipelines.experiment import Cell, ExperimentConfig, ImageSetConfig, RunDir, register_kind
from pipelines.metrics import Rate, destruction_rate, prefilter, rate
from pipelines.report import (ci, md_table, pair, paper, plot_accuracy_vs_eps, plot_destruction, plot_examples,
                              scores_section)
from testbed.device import default_device
from testbed.errors import ConfigError, ImageError
from testbed.runs import write_atomic

# Kurakin et al. 2016, Inception v3, 102 images per cell (../shared/reference/kurakin2016.md):
# (method, eps) -> clean photo, adversarial photo, adversarial digital (top-1, top-5 in %), and destruction rates
PAPER_ACCURACY: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("fgsm", 16): {"clean_photo": (79.8, 91.9), "adv_photo": (36.4, 67.7), "adv_digital": (36.3, 58.8)},
    ("fgsm", 8): {"clean_photo": (70.6, 93.1), "adv_photo": (49.0, 73.5), "adv_digital": (30.4, 57.8)},
    ("bim", 16): {"clean_photo": (72.9, 89.6), "adv_photo": (49.0, 75.0), "adv_digital": (28.4, 31.4)},
    ("bim", 8): {"clean_photo": (72.5, 93.1), "adv_photo": (51.0, 87.3), "adv_digital": (26.5, 31.4)},
    ("iter_ll", 16): {"clean_photo": (71.1, 90.0), "adv_photo": (60.0, 83.3), "adv_digital": (1.0, 1.0)},
    ("iter_ll", 8): {"clean_photo": (76.5, 94.1), "adv_photo": (69.6, 92.2), "adv_digital": (0.0, 6.9)},
}
PAPER_DESTRUCTION: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("fgsm", 16): {"average": (12.5, 40.0), "prefiltered": (5.1, 39.4)},
    ("fgsm", 8): {"average": (33.3, 40.0), "prefiltered": (14.6, 70.8)},
    ("bim", 16): {"average": (40.4, 69.4), "prefiltered": (60.0, 87.8)},
    ("bim", 8): {"average": (52.1, 90.5), "prefiltered": (64.7, 91.2)},
    ("iter_ll", 16): {"average": (72.2, 85.1), "prefiltered": (87.5, 97.9)},
    ("iter_ll", 8): {"average": (86.3, 94.6), "prefiltered": (88.9, 97.0)},
}
PAPER_N = 102


# ------------------------------------------------------------------------------------------------ images
@dataclass
class ImageSet:
    images: Tensor  # N x 3 x H x W in [0, 1]
    ids: list[str]
    groups: list[str]  # the photo / file each image came from
    canonical: dict[str, Tensor]  # group -> its canonical view (1x3xHxW), for labelling
    given_labels: dict[str, int] | None = None  # id -> class index, when the set has ground truth


_OFFSETS = [(0, 0), (-1, -1), (1, 1), (-1, 1), (1, -1), (0, -1), (0, 1), (-1, 0), (1, 0)]


def crop_views(photo: Tensor, k: int, size: tuple[int, int]) -> list[Tensor]:
    """``k`` square crops of ``photo`` resized to ``size``: crop 0 is the canonical 224/256 centre crop, the
    others smaller (down to ~57% of the short side) and shifted towards the corners."""
    from testbed.photos import imagenet_preprocess, resize

    h, w = photo.shape[-2:]
    out = [imagenet_preprocess(photo, size[0]) if size[0] == size[1] else resize(photo, size)]
    for j in range(1, k):
        frac = 0.875 * (1 - 0.35 * j / max(k - 1, 1))
        side = max(8, int(round(min(h, w) * frac)))
        dy, dx = _OFFSETS[j % len(_OFFSETS)]
        cy = (h - side) / 2 * (1 + 0.8 * dy)
        cx = (w - side) / 2 * (1 + 0.8 * dx)
        top, left = int(round(min(max(cy, 0), h - side))), int(round(min(max(cx, 0), w - side)))
        out.append(resize(photo[..., top:top + side, left:left + side], size))
    return out


def build_image_set(cfg: ImageSetConfig, size: tuple[int, int]) -> ImageSet:
    """The experiment's images at the model input ``size``."""
    images, ids, groups, canonical = [], [], [], {}
    given: dict[str, int] | None = None
    if cfg.source == "photos":
        from testbed.photos import list_photos, load_images, resolve_images

        # names: shipped photos, image files, folders or globs (the one resolver); files are known by their stem
        names = resolve_images(cfg.names, what="images.names") if cfg.names else list_photos(cfg.kind)
        if not names:
            raise ImageError(f"no shipped photos of kind {cfg.kind!r}")
        for item in names:
            name = item if item in list_photos() else Path(item).stem
            views = crop_views(load_images([item])[0], cfg.crops_per_photo, size)
            canonical[name] = views[0]
            for j, v in enumerate(views):
                images.append(v); ids.append(f"{name}-{j}"); groups.append(name)
    elif cfg.source == "imagenet-samples":
        from testbed.assets import asset_path, imagenet_sample_labels
        from testbed.imageio import load_image

        truth = imagenet_sample_labels()
        given = {}
        for name in cfg.names or list(truth):
            # a missing or corrupt sample is an AssetError naming it and `testbed assets fetch`
            views = crop_views(load_image(asset_path(name)), cfg.crops_per_photo, size)
            canonical[name] = views[0]
            for j, v in enumerate(views):  # every crop keeps its image's true label
                images.append(v); ids.append(f"{name}-{j}"); groups.append(name); given[ids[-1]] = truth[name]
    else:
        from testbed.imageio import load_image
        from testbed.inputs import list_images

        files = list_images(cfg.folder or "")  # the one image-folder reader: extensions, natural order, errors
        for p in files:
            x = load_image(p)  # corrupt / grayscale / RGBA / 16-bit: ImageError naming the file and mode
            v = crop_views(x, 1, size)[0]
            images.append(v); ids.append(p.stem); groups.append(p.stem); canonical[p.stem] = v
        if cfg.labels:
            given = _read_labels(Path(cfg.labels), files)
    if cfg.limit is not None:
        images, ids, groups = images[: cfg.limit], ids[: cfg.limit], groups[: cfg.limit]
    return ImageSet(torch.cat(images), ids, groups, canonical, given)


def _read_labels(path: Path, files: list[Path]) -> dict[str, int]:
    from testbed.inputs import load_json

    raw = load_json(path, what="labels file")
    if not isinstance(raw, dict):
        raise ConfigError(f"labels file {path} must hold a JSON object mapping image names to labels")
    out = {}
    for p in files:
        v = raw.get(p.name, raw.get(p.stem))
        if v is None:
            raise ConfigError(f"labels file {path} has no label for image {p.name}")
        out[p.stem] = v
    return out


def resolve_labels(model_name: str, model: torch.nn.Module, images: ImageSet) -> Tensor:
    """Class index per image: the given label, else the model's top-1 on the image's canonical view."""
    from testbed.models.registry import get_entry

    labels_list = list(get_entry(model_name).labels)
    if images.given_labels is not None:
        out = []
        for iid in images.ids:
            v = images.given_labels[iid]
            if isinstance(v, str):
                if v not in labels_list:
                    raise ConfigError(f"label {v!r} of image {iid} is not a class of {model_name}")
                v = labels_list.index(v)
            if not (isinstance(v, int) and 0 <= v < len(labels_list)):
                raise ConfigError(f"label {v!r} of image {iid} is not a class index of {model_name} "
                                  f"(0..{len(labels_list) - 1})")
            out.append(v)
        return torch.tensor(out)
    groups = sorted(images.canonical)
    dev = next(model.parameters()).device
    with torch.no_grad():
        top1 = model(torch.cat([images.canonical[g] for g in groups]).to(dev)).argmax(1).cpu()
    by_group = dict(zip(groups, top1.tolist()))
    return torch.tensor([by_group[g] for g in images.groups])


# ------------------------------------------------------------------------------------------------ cells
@torch.no_grad()
def predict(model: torch.nn.Module, x: Tensor, batch_size: int) -> dict[str, list]:
    """Top-5 class indices and the top-1 probability per image."""
    dev = next(model.parameters()).device
    top5, conf = [], []
    for i in range(0, x.shape[0], batch_size):
        p = model(x[i:i + batch_size].to(dev)).softmax(1).cpu()
        v, idx = p.topk(min(5, p.shape[1]), dim=1)
        top5 += idx.tolist(); conf += v[:, 0].tolist()
    return {"top5": top5, "conf": [round(c, 6) for c in conf]}


def save_examples(run: RunDir, tag: str, ids: list[str], tensors: dict[str, Tensor], k: int) -> list[dict[str, str]]:
    """The first ``k`` images of each named tensor as PNGs under ``examples/<tag>/``; returns their paths."""
    from testbed.imageio import tensor_to_uint8
    from PIL import Image
    import io

    out = []
    step = max(1, len(ids) // max(k, 1))
    for i in list(range(0, len(ids), step))[:k]:  # spread over the set (different photos)
        rec = {"id": ids[i]}
        for name, t in tensors.items():
            rel = Path("examples") / tag_dirname(tag) / f"{ids[i]}_{name}.png"
            buf = io.BytesIO()
            Image.fromarray(tensor_to_uint8(t[i:i + 1].cpu())).save(buf, format="PNG")
            write_atomic(run.path / rel, buf.getvalue())
            rec[name] = str(rel)
        out.append(rec)
    return out


def _through_channel(channel: Channel, x: Tensor, ids: list[str], reps: int, tag: str, model, bs: int,
                     run: RunDir | None = None) -> tuple[list[dict], Tensor]:
    photos, first = [], None
    for r in range(reps):
        out = channel.transmit(x, ids, rep=r, tag=tag)
        photos.append(predict(model, out.images, bs))
        if first is None:
            first = out.images
    return photos, first


def build_cells(config: ExperimentConfig, run: RunDir) -> list[Cell]:
    """Cells of a Kurakin experiment (lazy: models and images are loaded on the first cell computed)."""
    from testbed.models.registry import get_entry, get_model

    state: dict[str, Any] = {}

    def setup(model_name: str) -> tuple[torch.nn.Module, ImageSet, Tensor, Channel]:
        if state.get("model_name") != model_name:
            model = get_model(model_name, device=default_device())
            images = build_image_set(config.images, tuple(get_entry(model_name).input_size))
            labels = resolve_labels(model_name, model, images)
            state.update(model_name=model_name, model=model, images=images, labels=labels)
        if "channel" not in state:
            state["channel"] = make_channel(config.channel.__dict__, config.seed)
        return state["model"], state["images"], state["labels"], state["channel"]

    reps, bs = config.channel.repetitions, config.batch_size
    to_print = config.channel.kind in ("folder", "live")

    def clean_cell(m: str):
        def compute() -> dict[str, Any]:
            model, imgs, labels, channel = setup(m)
            if to_print:
                _export_to_print(run, f"{m}/clean", imgs.ids, imgs.images, reps)
            photos, first = _through_channel(channel, imgs.images, imgs.ids, reps, "clean", model, bs)
            ex = save_examples(run, f"{m}/clean", imgs.ids, {"digital": imgs.images, "photo": first},
                               config.examples)
            return {"kind": "clean", "model": m, "ids": imgs.ids, "labels": labels.tolist(),
                    "digital": predict(model, imgs.images, bs), "photo": photos, "examples": ex,
                    "channel": channel.describe()}
        return compute

    def attack_cell(m: str, spec, eps: float):
        def compute() -> dict[str, Any]:
            model, imgs, labels, channel = setup(m)
            attack = spec.build(eps)  # eps in the attack's budget units (pixel/255 for L∞, absolute for L2)
            dev = next(model.parameters()).device
            advs, targets = [], []
            for i in range(0, len(imgs.ids), bs):
                g = torch.Generator().manual_seed(derive_seed(config.seed, m, spec.label, eps, i) % (2**62))
                res = attack(model, imgs.images[i:i + bs].to(dev), labels[i:i + bs].to(dev), generator=g)
                advs.append(res.adversarial.cpu())
                if res.target is not None:
                    targets += res.target.cpu().tolist()
            adv = torch.cat(advs)
            tag = f"{m}/{spec.label}/eps{eps:g}"
            if to_print:
                _export_to_print(run, tag, imgs.ids, adv, reps)
            photos, first = _through_channel(channel, adv, imgs.ids, reps, tag, model, bs)
            n_ex = config.examples if eps == max(config.eps) else 0  # examples at the largest budget only
            ex = save_examples(run, tag, imgs.ids, {"adversarial": adv, "photo": first}, n_ex)
            return {"kind": "attack", "model": m, "attack": spec.name, "attack_label": spec.label,
                    "attack_config": attack.config(), "eps": eps, "ids": imgs.ids, "labels": labels.tolist(),
                    "target": targets or None, "digital": predict(model, adv, bs), "photo": photos,
                    "linf_255": [round(float(v) * 255, 3) for v in (adv - imgs.images).abs().flatten(1).amax(1)],
                    "examples": ex}
        return compute

    cells = []
    for m in config.models:
        cells.append(Cell(f"{m}/clean", clean_cell(m)))
        for spec in config.attacks:
            for eps in config.eps:
                cells.append(Cell(f"{m}/{spec.label}/eps{eps:g}", attack_cell(m, spec, eps)))
    return cells


def _export_to_print(run: RunDir, tag: str, ids: list[str], images: Tensor, reps: int) -> None:
    """Lossless PNGs of the images to print (the folder channel expects their photos with the same layout)."""
    from testbed.runs import save_image

    for iid, x in zip(ids, images):
        p = run.path / "to_print" / tag_dirname(tag) / f"{iid}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        save_image(x[None], p)


# ------------------------------------------------------------------------------------------------ metrics
def _ok(pred: dict[str, list], labels: Tensor, k: int) -> Tensor:
    top = torch.tensor(pred["top5"])[:, :k]
    return (top == labels.view(-1, 1)).any(1)


@dataclass
class KurakinRow:
    model: str
    attack: str
    eps: float
    n: int
    reps: int
    clean_digital: tuple[Rate, Rate]
    clean_photo: tuple[Rate, Rate]
    adv_digital: tuple[Rate, Rate]
    adv_photo: tuple[Rate, Rate]
    destruction_average: tuple[Rate, Rate]
    destruction_prefiltered: tuple[Rate, Rate]
    destruction_clean_photo_ok: tuple[Rate, Rate]  # Eq. 1 restricted to images whose clean photo is right
    targeted_digital: Rate | None
    targeted_photo: Rate | None
    seconds: float
    attack_success_photo: Rate | None = None  # adversarial photo top-1 wrong, among images whose clean photo is right

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"model": self.model, "attack": self.attack, "eps": self.eps, "n": self.n,
                             "reps": self.reps, "seconds": self.seconds}
        for f in ("clean_digital", "clean_photo", "adv_digital", "adv_photo", "destruction_average",
                  "destruction_prefiltered", "destruction_clean_photo_ok"):
            d[f] = {"top1": getattr(self, f)[0].as_dict(), "top5": getattr(self, f)[1].as_dict()}
        for f in ("targeted_digital", "targeted_photo", "attack_success_photo"):
            d[f] = getattr(self, f).as_dict() if getattr(self, f) is not None else None
        return d


def summarise(cells: dict[str, dict[str, Any]], threshold: float = 0.8) -> list[KurakinRow]:
    """Kurakin metrics per (model, attack, eps) from the stored cells (photo metrics pooled over repetitions)."""
    rows = []
    for key, c in cells.items():
        if c.get("kind") != "attack":
            continue
        clean = cells.get(f"{c['model']}/clean")
        if clean is None:
            continue
        labels = torch.tensor(c["labels"])
        reps = len(c["photo"])
        cd = [_ok(clean["digital"], labels, k) for k in (1, 5)]
        ad = [_ok(c["digital"], labels, k) for k in (1, 5)]
        conf = torch.tensor(c["digital"]["conf"])
        cp = [torch.cat([_ok(p, labels, k) for p in clean["photo"]]) for k in (1, 5)]
        ap = [torch.cat([_ok(p, labels, k) for p in c["photo"]]) for k in (1, 5)]
        rep = lambda t: t.repeat(reps)  # noqa: E731  (digital outcomes paired with each repetition's photo)
        dest_avg = tuple(destruction_rate(rep(cd[i]), rep(ad[i]), ap[i]) for i in range(2))
        dest_pre = []
        for i in range(2):
            mask = rep(prefilter(cd[i], ad[i], conf, threshold))
            dest_pre.append(destruction_rate(rep(cd[i])[mask], rep(ad[i])[mask], ap[i][mask]))
        # the channel alone breaks some clean images; among those it does not, how often does it undo the attack?
        dest_cp = tuple(destruction_rate(rep(cd[i])[cp[i]], rep(ad[i])[cp[i]], ap[i][cp[i]]) for i in range(2))
        tgt_d = tgt_p = None
        if c.get("target"):
            t = torch.tensor(c["target"])
            tgt_d = rate(torch.tensor(c["digital"]["top5"])[:, 0] == t)
            tgt_p = rate(torch.cat([torch.tensor(p["top5"])[:, 0] == t for p in c["photo"]]))
        rows.append(KurakinRow(c["model"], c["attack_label"], c["eps"], len(labels), reps,
                               tuple(rate(x) for x in cd), tuple(rate(x) for x in cp),
                               tuple(rate(x) for x in ad), tuple(rate(x) for x in ap),
                               dest_avg, tuple(dest_pre), dest_cp, tgt_d, tgt_p, c.get("seconds", 0.0),
                               rate(~ap[0][cp[0]])))
    return rows


# ------------------------------------------------------------------------------------------------ report
def summarise_run(config: dict[str, Any], cells: dict[str, dict[str, Any]]) -> list[KurakinRow]:
    """The kind's summary (registry hook): :func:`summarise` at the config's prefilter confidence, sorted by model,
    attack and decreasing ε."""
    rows = summarise(cells, config.get("prefilter_confidence", 0.8))
    return sorted(rows, key=lambda r: (r.model, r.attack, -r.eps))


def render_report(run_dir: Path, config: dict[str, Any], cells: dict[str, dict[str, Any]],
                  rows: list[KurakinRow]) -> tuple[list[str], dict[str, Any]]:
    """The Kurakin report section (registry hook): ours against the paper's tables, every metric with its Wilson
    interval, plots, example images and CVSS / ATLAS scores. Returns (Markdown lines, JSON data)."""
    lines: list[str] = []
    plots = run_dir / "plots"
    if rows:
        n = rows[0].n
        reps = rows[0].reps
        lines += [f"Images per cell: **n = {n}** ({n * reps} photos per cell over {reps} repetition(s) of the "
                  f"channel); the paper used {PAPER_N}. Every number is a percentage; brackets are Wilson 95% "
                  "intervals.", ""]
        def key(r: KurakinRow) -> list[str]:  # the columns every table starts with
            return [r.model, r.attack, f"{r.eps:g}"]

        def accuracy(r: KurakinRow, p: dict[str, Any] | None) -> list[str]:
            return key(r) + [pair(r.clean_digital), pair(r.clean_photo), paper(p and p["clean_photo"]),
                             pair(r.adv_photo), paper(p and p["adv_photo"]), pair(r.adv_digital),
                             paper(p and p["adv_digital"])]

        def destruction(r: KurakinRow, p: dict[str, Any] | None) -> list[str]:
            avg, pre = r.destruction_average, r.destruction_prefiltered
            return key(r) + [pair(avg), f"{avg[0].n} / {avg[1].n}", paper(p and p["average"]), pair(pre),
                             f"{pre[0].n} / {pre[1].n}", paper(p and p["prefiltered"]),
                             pair(r.destruction_clean_photo_ok)]

        def metrics(r: KurakinRow) -> list[list[str]]:
            out = [key(r) + [f.replace("_", " "), ci(getattr(r, f)[0]), ci(getattr(r, f)[1])]
                   for f in ("clean_digital", "clean_photo", "adv_digital", "adv_photo", "destruction_average",
                             "destruction_prefiltered", "destruction_clean_photo_ok")]
            if r.targeted_digital is not None:
                out.append(key(r) + ["targeted success (l.l. class is top-1), digital / photo",
                                     ci(r.targeted_digital), ci(r.targeted_photo)])
            return out

        lines += ["## Accuracy: ours (MobileNetV2 unless stated) vs Kurakin et al. 2016 (Inception v3), top-1 / top-5", ""]
        lines += md_table(["model", "method", "ε", "clean digital", "clean photo (ours)", "clean photo (paper)",
                           "adv. photo (ours)", "adv. photo (paper)", "adv. digital (ours)", "adv. digital (paper)"],
                          [accuracy(r, PAPER_ACCURACY.get((r.attack, int(r.eps)))) for r in rows])
        lines += ["", "## Destruction rate (Eq. 1): ours vs paper, top-1 / top-5", ""]
        lines += md_table(["model", "method", "ε", "average (ours)", "n avg (top-1 / top-5)", "average (paper)",
                           "prefiltered (ours)", "n pre (top-1 / top-5)", "prefiltered (paper)",
                           "ours, clean photo right"],
                          [destruction(r, PAPER_DESTRUCTION.get((r.attack, int(r.eps)))) for r in rows])
        lines += ["", "The last column restricts Eq. 1 to images whose *clean* photo is classified correctly: the channel "
                  "alone misclassifies some clean images, and those can hardly be 'destroyed' back to the right class.",
                  "", "## All metrics with Wilson 95% intervals", ""]
        lines += md_table(["model", "method", "ε", "metric", "top-1", "top-5"], [m for r in rows for m in metrics(r)])
        plot_accuracy_vs_eps(rows, plots / "accuracy_vs_eps.png")
        plot_destruction(rows, plots / "destruction.png")
        lines += ["", "## Plots", "", "![accuracy vs eps](plots/accuracy_vs_eps.png)", "",
                  "![destruction rates](plots/destruction.png)", ""]
        if plot_examples(run_dir, cells, plots / "examples.png"):
            lines += ["Examples (largest ε per attack): before and after the channel", "",
                      "![examples](plots/examples.png)", ""]
        from pipelines.scoring import Finding

        findings = []
        for r in rows:
            if r.eps == max(x.eps for x in rows if x.attack == r.attack and x.model == r.model):
                findings.append(Finding(
                    title=f"printed {r.attack} ε={r.eps:g} image, photographed: {r.model} top-1 wrong (among images "
                          "whose clean photo it gets right)",
                    surface="physical", success_rate=r.attack_success_photo.value, n=r.attack_success_photo.n))
        score_lines, score_data = scores_section(findings)
        lines += score_lines + [""]
        secs = sum(c.get("seconds", 0) for c in cells.values())
        lines += [f"Compute time summed over cells: {secs:.0f} s."]
        return lines, {"rows": [r.as_dict() for r in rows], "scores": score_data}
    return lines, {"rows": []}


def check_config(config: ExperimentConfig) -> None:
    """Registry hook: the keys that belong to other kinds are refused rather than ignored."""
    for key in ("targets", "surrogate"):
        if getattr(config, key) is not None:
            raise ConfigError(f"config {key} is used by kind transfer only; remove it (kind: kurakin attacks and "
                              "evaluates each model in models)")


BASELINES: tuple[str, ...] = ()  # no non-attack baselines (registry hook)

register_kind("kurakin", sys.modules[__name__])
