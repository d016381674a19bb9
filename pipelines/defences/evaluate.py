"""The defences report for ``sign-cnn``: every defence under non-adaptive and adaptive attacks, masking checks,
smoothing certificates, detectors at a stated FPR, the print-photo loop and the RP2 sticker.

One command (see docs/defences.md)::

    testbed defences evaluate --out docs/reports/defences_sign

Results are written after every section (``report.json`` + ``report.md`` + plots), so an interrupted run keeps
what it finished. Every rate is ``testbed.stats.Rate`` (k, n, Wilson 95% interval).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from pipelines.defences import DefenceError
from pipelines.defences.adaptive import (AttackSpec, MaskingReport, batched_attack, detector_aware_pgd, fgsm,
                                         masking_checks, pgd)
from pipelines.defences.training import DEFAULT_CACHE, _load_cache, heldout_data, load_defence
from testbed.stats import wilson
from testbed.machine import machine_line

SECTIONS = ("table", "masking", "smoothing", "detectors", "channel", "sticker", "patchcleanser", "derandomized",
            "patch_sticker", "patch_detector", "patch_imagenet")
#: the patch sections (issue 20): run only when asked for by name (``--sections``), never by default
PATCH_SECTIONS = ("patchcleanser", "derandomized", "patch_sticker", "patch_detector", "patch_imagenet")


@dataclass(frozen=True)
class EvalConfig:
    """What the report measures (JSON-serialisable)."""

    n_clean: int = 1000
    n_attack: int = 100
    heldout_seed: int = 7
    eps: tuple[int, ...] = (2, 4, 8, 16)  # in /255
    steps: int = 10
    eot_samples: int = 4
    jpeg_quality: int = 75
    bits: int = 3
    median_k: int = 3
    resize_min: int = 26
    smooth_sigma: float = 0.25
    smooth_n: int = 50
    smooth_predict_alpha: float = 0.01
    smooth_clean_images: int = 200  # smoothing's clean column (n votes each)
    smooth_alpha: float = 0.001
    certify_images: int = 100
    certify_n0: int = 64
    certify_n: int = 500
    radii: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
    n_masking: int = 50
    masking_strong_steps: int = 20
    detector_fpr: float = 0.05
    n_detector_cal: int = 300
    n_detector_adaptive: int = 50
    fs_lambdas: tuple[float, ...] = (10.0,)
    mc_lambdas: tuple[float, ...] = (30.0,)
    detector_names: tuple[str, ...] = ("feature_squeezing", "mc_dropout")
    channel_images: int = 60
    channel_eps: int = 16
    channel_defences: tuple[str, ...] = ("undefended", "pgd_at", "doa", "distillation", "jpeg")
    sticker_models: tuple[str, ...] = ("undefended", "pgd_at", "doa")
    sticker_steps: int = 60
    sticker_batch: int = 16
    sticker_eval: int = 200
    # patches (issue 20): PatchCleanser, de-randomized smoothing, a feature-norm patch detector; sides from fractions
    patch_fractions: tuple[float, ...] = (0.01, 0.04, 0.10)  # of the 32 × 32 image: 3, 6, 10 px squares
    patch_images: int = 50  # the first held-out attack images certified and attacked
    pc_k: int = 6  # masks per axis
    pc_bases: tuple[str, ...] = ("masked", "shipped")  # base classifiers: masked fine-tune, shipped sign-cnn
    pc_attack_bases: tuple[str, ...] = ("masked",)
    pc_grid: int = 3  # patch positions per axis for the per-image attacks
    pc_steps: int = 10
    pc_eot: int = 4  # masks drawn per image and step (EOT over mask positions)
    pc_train_epochs: int = 3
    pc_train_fractions: tuple[float, ...] = (0.01, 0.04, 0.10)  # the masked fine-tune's mask sets (one model)
    drs: tuple[str, ...] = ("column4", "block12")  # <mode><band>
    drs_shipped: tuple[str, ...] = ("column4",)  # also evaluated on the shipped (not ablation-trained) sign-cnn
    drs_images: int = 100
    drs_block_images: int = 50
    drs_train_epochs: int = 3
    patch_sticker_fraction: float = 0.10
    patch_detector_fractions: tuple[float, ...] = (0.04, 0.10)
    patch_detector_lambdas: tuple[float, ...] = (0.3, 1.0, 3.0)
    imagenet_photos: tuple[str, ...] = ("chelsea", "coffee", "grace_hopper", "astronaut", "rocket",
                                        "motorcycle_left")
    imagenet_fraction: float = 0.02
    imagenet_size: int = 224
    imagenet_grid: int = 2
    imagenet_k: int = 6  # masks per axis at 224 px (the paper's k)
    imagenet_steps: int = 10
    seed: int = 0
    threads: int = 2
    sections: tuple[str, ...] = tuple(s for s in SECTIONS if s not in PATCH_SECTIONS)
    defences: tuple[str, ...] = ("undefended", "fgsm_at", "pgd_at", "trades", "doa", "distillation", "ensemble",
                                 "jpeg", "bit_depth", "median", "resize_pad", "smoothing")

    def __post_init__(self) -> None:
        bad = sorted(set(self.sections) - set(SECTIONS))
        if bad:
            raise DefenceError(f"unknown report section(s) {bad}; known: {', '.join(SECTIONS)}")
        if self.patch_images > self.n_attack or self.drs_images > self.n_attack:
            raise DefenceError(f"patch_images / drs_images must not exceed n_attack ({self.n_attack})")
        if self.n_attack > self.n_clean or self.n_attack + self.n_detector_cal > self.n_clean:
            raise DefenceError(f"n_attack + n_detector_cal ({self.n_attack} + {self.n_detector_cal}) must not exceed "
                               f"n_clean ({self.n_clean})")


# ------------------------------------------------------------------------------------------------ predictors
Predictor = Callable[[Tensor], tuple[Tensor, Tensor]]  # x -> (top-1 prediction (B,), top-5 classes (B, 5))


def logits_predictor(model: nn.Module, reseed: Callable[[], None] | None = None, batch: int = 500) -> Predictor:
    def predict(x: Tensor) -> tuple[Tensor, Tensor]:
        if reseed:
            reseed()
        p1, p5 = [], []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                z = model(x[i:i + batch])
                p1.append(z.argmax(1))
                p5.append(z.topk(5, 1).indices)
        return torch.cat(p1), torch.cat(p5)

    return predict


def smoothing_predictor(base: nn.Module, sigma: float, n: int, alpha: float, seed: int) -> Predictor:
    from scipy.stats import binomtest

    from pipelines.defences.smoothing import ABSTAIN, SmoothedClassifier

    sm = SmoothedClassifier(base, sigma, num_classes=30)

    def predict(x: Tensor) -> tuple[Tensor, Tensor]:
        counts = sm.sample_counts(x, n, torch.Generator().manual_seed(seed))
        top = counts.topk(5, 1)
        p1 = top.indices[:, 0].clone()
        for i in range(len(x)):
            na, nb = int(top.values[i, 0]), int(top.values[i, 1])
            if binomtest(na, na + nb, 0.5).pvalue > alpha:
                p1[i] = ABSTAIN
        p5 = torch.where(top.values > 0, top.indices, torch.full_like(top.indices, ABSTAIN))
        return p1, p5

    return predict


@dataclass
class Defence:
    """A defence as the report evaluates it."""

    name: str
    description: str
    predictor: Predictor
    naive_view: nn.Module  # the deployed model as a naive white-box attacker differentiates it
    naive: Callable[[float], list[AttackSpec]]
    adaptive: Callable[[float], list[AttackSpec]]
    channel_attack: str = "pgd_ce"  # the adaptive attack whose images go through the print-photo loop
    trained: str | None = None  # cache name of its trained model


DEFENCE_NAMES = ("undefended", "fgsm_at", "pgd_at", "trades", "doa", "distillation", "ensemble", "jpeg", "bit_depth",
                 "median", "resize_pad", "smoothing")


def build_defences(cfg: EvalConfig, cache_dir: Path = DEFAULT_CACHE,
                   names: tuple[str, ...] | None = None) -> dict[str, Defence]:
    """The defences ``names`` (default ``cfg.defences``), loading only the trained models they need."""
    from testbed.models.registry import get_model

    steps = cfg.steps
    undefended = get_model("sign-cnn", device="cpu")
    out: dict[str, Defence] = {}
    wanted = set(names if names is not None else cfg.defences)
    bad = sorted(wanted - set(DEFENCE_NAMES))
    if bad:
        raise DefenceError(f"unknown defence(s) {bad}; known: {', '.join(DEFENCE_NAMES)}")

    def standard(m: nn.Module) -> tuple[Callable, Callable]:
        return ((lambda e: [AttackSpec("fgsm", fgsm(e), m), AttackSpec("pgd_ce", pgd(e, steps), m)]),
                (lambda e: [AttackSpec("pgd_cw", pgd(e, steps, "cw"), m)]))

    n, a = standard(undefended)
    out["undefended"] = Defence("undefended", "shipped sign-cnn (no defence)", logits_predictor(undefended),
                                undefended, n, a)
    for name, desc in (("fgsm_at", "FGSM adversarial training (½ clean + ½ FGSM, ε~U[2,16]/255; Kurakin et al.)"),
                       ("pgd_at", "PGD adversarial training (ε=8/255, 3 steps; Madry et al.)"),
                       ("trades", "TRADES (β=6, ε=8/255, 3 steps; Zhang et al.)"),
                       ("doa", "DOA: rectangular-occlusion adversarial training (8×8 px ROA; Wu et al. 2020)")):
        if name not in wanted:
            continue
        m = load_defence(name, cache_dir)
        n, a = standard(m)
        out[name] = Defence(name, desc, logits_predictor(m), m, n, a, trained=name)

    if "distillation" in wanted:
        _distillation(out, cfg, cache_dir, standard)
    if "ensemble" in wanted:
        _ensemble(out, cfg, cache_dir, undefended)
    _transforms(out, cfg, undefended, wanted)
    if "smoothing" in wanted:
        _smoothing(out, cfg, cache_dir)
    return {k: out[k] for k in DEFENCE_NAMES if k in out and k in wanted}


def _distillation(out: dict[str, Defence], cfg: EvalConfig, cache_dir: Path, standard: Callable) -> None:
    from pipelines.defences.distillation import TemperatureScaled

    steps = cfg.steps
    student = load_defence("distill_student", cache_dir)
    T = float(_load_cache(Path(cache_dir) / "distill_student.pt", "defence model cache")["config"]["temperature"])
    n, _ = standard(student)
    scaled = TemperatureScaled(student, T)
    out["distillation"] = Defence(
        "distillation", f"defensive distillation, T={T:g} (Papernot et al.), deployed at T=1",
        logits_predictor(student), student, n,
        lambda e: [AttackSpec("pgd_cw", pgd(e, steps, "cw"), student),
                   AttackSpec("pgd_ce_at_T", pgd(e, steps), scaled)],
        channel_attack="pgd_cw", trained="distill_student")


def _ensemble(out: dict[str, Defence], cfg: EvalConfig, cache_dir: Path, undefended: nn.Module) -> None:
    from pipelines.defences.ensemble import Ensemble

    steps = cfg.steps
    members = [undefended, load_defence("member1", cache_dir), load_defence("member2", cache_dir)]
    ens = Ensemble(members)
    out["ensemble"] = Defence(
        "ensemble", "average of softmax of 3 independently trained sign-cnns (shipped + seeds 1, 2)",
        logits_predictor(ens), ens,
        lambda e: [AttackSpec("fgsm_member0", fgsm(e), members[0]), AttackSpec("pgd_ce_member0", pgd(e, steps),
                                                                                members[0])],
        lambda e: [AttackSpec("pgd_ce", pgd(e, steps), ens), AttackSpec("pgd_cw", pgd(e, steps, "cw"), ens)])


def _transforms(out: dict[str, Defence], cfg: EvalConfig, undefended: nn.Module, wanted: set[str]) -> None:
    from pipelines.defences.transforms import (JPEG, BitDepth, MedianFilter, RandomResizePad, TransformDefence,
                                               eot_callable)

    steps = cfg.steps
    for name, tr, desc in (
        ("jpeg", JPEG(cfg.jpeg_quality), f"JPEG compression, quality {cfg.jpeg_quality} (Guo et al. 2018)"),
        ("bit_depth", BitDepth(cfg.bits), f"bit-depth reduction to {cfg.bits} bits (Xu et al. 2018)"),
        ("median", MedianFilter(cfg.median_k), f"{cfg.median_k}×{cfg.median_k} median filter (Xu et al. 2018)"),
    ):
        if name not in wanted:
            continue
        naive_m = TransformDefence(undefended, tr, "naive")
        bp = TransformDefence(undefended, tr, "bpda")
        out[name] = Defence(
            name, desc + " in front of the shipped sign-cnn", logits_predictor(naive_m), naive_m,
            (lambda m: lambda e: [AttackSpec("fgsm", fgsm(e), m), AttackSpec("pgd_ce", pgd(e, steps), m)])(naive_m),
            (lambda m: lambda e: [AttackSpec("bpda_pgd_ce", pgd(e, steps), m),
                                  AttackSpec("bpda_pgd_cw", pgd(e, steps, "cw"), m)])(bp),
            channel_attack="bpda_pgd_ce")

    if "resize_pad" not in wanted:
        return
    rrp = RandomResizePad(cfg.resize_min)
    rd = TransformDefence(undefended, rrp, "naive", seed=cfg.seed + 17)
    eot = eot_callable(rrp)
    out["resize_pad"] = Defence(
        "resize_pad", f"random resize to [{cfg.resize_min}, 32] px and random zero-pad (Xie et al. 2018)",
        logits_predictor(rd, reseed=lambda: rd.reseed(cfg.seed + 17)), rd,
        lambda e: [AttackSpec("fgsm", fgsm(e), rd), AttackSpec("pgd_ce", pgd(e, steps), rd)],
        lambda e: [AttackSpec("eot_pgd_ce", pgd(e, steps, eot=eot, eot_samples=cfg.eot_samples), undefended)],
        channel_attack="eot_pgd_ce")


def _smoothing(out: dict[str, Defence], cfg: EvalConfig, cache_dir: Path) -> None:
    from pipelines.defences.smoothing import NoisyModel, gaussian_eot

    steps = cfg.steps
    base = load_defence("noise", cache_dir)
    geot = gaussian_eot(cfg.smooth_sigma)
    out["smoothing"] = Defence(
        "smoothing", f"randomized smoothing, σ={cfg.smooth_sigma}, n={cfg.smooth_n} votes, abstain at "
        f"α={cfg.smooth_predict_alpha} counted wrong (Cohen et al.); base trained with Gaussian noise",
        smoothing_predictor(base, cfg.smooth_sigma, cfg.smooth_n, cfg.smooth_predict_alpha, cfg.seed + 23),
        NoisyModel(base, cfg.smooth_sigma, samples=1, seed=cfg.seed + 29),
        lambda e: [AttackSpec("fgsm_base", fgsm(e), base), AttackSpec("pgd_ce_base", pgd(e, steps), base)],
        lambda e: [AttackSpec("eot_pgd_ce", pgd(e, steps, eot=geot, eot_samples=cfg.eot_samples), base)],
        channel_attack="eot_pgd_ce", trained="noise")


# ------------------------------------------------------------------------------------------------ sections
def _rates(hits: Tensor) -> dict[str, Any]:
    return wilson(int(hits.sum()), int(hits.numel())).as_dict()


def _correct(pred: Callable, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    p1, p5 = pred(x)
    return p1 == y, (p5 == y[:, None]).any(1)


def section_table(cfg: EvalConfig, defences: dict[str, Defence], data: dict[str, Tensor],
                  log: Callable[[str], None], partial: Callable[[dict[str, Any]], None] | None = None
                  ) -> dict[str, Any]:
    from testbed.models.registry import get_model

    x, y = data["x_attack"], data["y_attack"]
    und = get_model("sign-cnn", device="cpu")
    transfer: dict[int, Tensor] = {}
    for e in cfg.eps:
        transfer[e] = batched_attack(AttackSpec("transfer", pgd(e / 255, cfg.steps), und), x, y, seed=cfg.seed)
    data["transfer"] = transfer  # type: ignore[assignment]
    out: dict[str, Any] = {}
    for name, d in defences.items():
        if name not in cfg.defences:
            continue
        t0 = time.time()
        nc = cfg.smooth_clean_images if name == "smoothing" else len(data["y_clean"])
        c1, c5 = _correct(d.predictor, data["x_clean"][:nc], data["y_clean"][:nc])
        row: dict[str, Any] = {"description": d.description, "clean_top1": _rates(c1), "clean_top5": _rates(c5),
                               "eps": {}}
        a1, a5 = _correct(d.predictor, x, y)
        row["clean_attack_subset_top1"] = _rates(a1)
        for e in cfg.eps:
            specs_n = d.naive(e / 255)
            specs_a = d.adaptive(e / 255)
            if name != "undefended":
                specs_a = specs_a + [AttackSpec("transfer_pgd_ce_undefended", fixed=transfer[e])]
            per: dict[str, Any] = {}
            n1, n5 = a1.clone(), a5.clone()
            w1, w5 = a1.clone(), a5.clone()
            for kind, specs in (("naive", specs_n), ("adaptive", specs_a)):
                for s in specs:
                    adv = batched_attack(s, x, y, seed=cfg.seed + e)
                    h1, h5 = _correct(d.predictor, adv, y)
                    per[s.name] = {"kind": kind, "top1": _rates(h1), "top5": _rates(h5)}
                    if kind == "naive":
                        n1 &= h1
                        n5 &= h5
                    w1 &= h1
                    w5 &= h5
                    if e == cfg.channel_eps and s.name == d.channel_attack:
                        data.setdefault("channel_adv", {})[name] = adv  # type: ignore[index]
                    if e == 8 and s.name in ("pgd_ce", "pgd_ce_base", "pgd_ce_member0"):
                        data.setdefault("whitebox8", {})[name] = float((~h1).float().mean())  # type: ignore[index]
                    if e == 8 and s.name == "transfer_pgd_ce_undefended":
                        data.setdefault("transfer8", {})[name] = float((~h1).float().mean())  # type: ignore[index]
            row["eps"][str(e)] = {"non_adaptive_top1": _rates(n1), "non_adaptive_top5": _rates(n5),
                                  "adaptive_top1": _rates(w1), "adaptive_top5": _rates(w5), "attacks": per}
        row["seconds"] = round(time.time() - t0, 1)
        out[name] = row
        if partial:
            partial(out)
        log(f"table {name}: clean {100 * c1.float().mean():.1f}% "
            + " ".join(f"eps{e}: {row['eps'][str(e)]['non_adaptive_top1']['value']:.2f}/"
                       f"{row['eps'][str(e)]['adaptive_top1']['value']:.2f}" for e in cfg.eps)
            + f" ({row['seconds']} s)")
    return out


def section_masking(cfg: EvalConfig, defences: dict[str, Defence], data: dict[str, Any],
                    log: Callable[[str], None]) -> dict[str, Any]:
    x, y = data["x_attack"][:cfg.n_masking], data["y_attack"][:cfg.n_masking]
    out = {}
    for name, d in defences.items():
        if name not in cfg.defences:
            continue
        t0 = time.time()
        rep: MaskingReport = masking_checks(d.naive_view, x, y, eps=8 / 255, weak_steps=cfg.steps,
                                            strong_steps=cfg.masking_strong_steps, seed=cfg.seed)
        rep.whitebox_success = data.get("whitebox8", {}).get(name)
        rep.transfer_success = data.get("transfer8", {}).get(name)
        rep.finalise()
        out[name] = {**rep.as_dict(), "seconds": round(time.time() - t0, 1)}
        log(f"masking {name}: flags={rep.flags}")
    return out


def section_smoothing(cfg: EvalConfig, data: dict[str, Any], cache_dir: Path,
                      log: Callable[[str], None]) -> dict[str, Any]:
    from pipelines.defences.smoothing import ABSTAIN, SmoothedClassifier

    base = load_defence("noise", cache_dir)
    x, y = data["x_attack"][:cfg.certify_images], data["y_attack"][:cfg.certify_images]
    sm = SmoothedClassifier(base, cfg.smooth_sigma, 30)
    t0 = time.time()
    cert = sm.certify(x, cfg.certify_n0, cfg.certify_n, cfg.smooth_alpha, torch.Generator().manual_seed(cfg.seed + 31))
    correct = (cert.prediction == y) & (cert.prediction != ABSTAIN)
    curve = {}
    for r in cfg.radii:
        curve[str(r)] = _rates(correct & (cert.radius >= r))
    res = {"sigma": cfg.smooth_sigma, "n0": cfg.certify_n0, "n": cfg.certify_n, "alpha": cfg.smooth_alpha,
           "images": int(len(y)), "abstain": _rates(cert.prediction == ABSTAIN), "certified_accuracy": curve,
           "mean_radius_correct": float(cert.radius[correct].mean()) if bool(correct.any()) else 0.0,
           "radius_linf_equivalent": {str(e): e / 255 * (3 * 32 * 32) ** 0.5 for e in cfg.eps},
           "seconds": round(time.time() - t0, 1)}
    log(f"smoothing: certified {json.dumps({k: round(v['value'], 3) for k, v in curve.items()})}")
    return res


def section_detectors(cfg: EvalConfig, data: dict[str, Any], cache_dir: Path,
                      log: Callable[[str], None]) -> dict[str, Any]:
    from pipelines.defences.detectors import (FeatureSqueezing, MCDropoutUncertainty, threshold_at_fpr)
    from testbed.models.registry import get_model

    x, y = data["x_attack"], data["y_attack"]
    xc = data["x_cal"]
    out: dict[str, Any] = {}
    und = get_model("sign-cnn", device="cpu")
    drop = load_defence("dropout", cache_dir)
    fs = FeatureSqueezing(und)
    mc = MCDropoutUncertainty(drop, samples=20, seed=cfg.seed)
    mc_attack = MCDropoutUncertainty(drop, samples=4, seed=cfg.seed + 1)

    def mc_score(z: Tensor) -> Tensor:
        mc.reseed(cfg.seed)
        return torch.cat([mc.score(z[i:i + 100]) for i in range(0, len(z), 100)])

    def fs_score(z: Tensor) -> Tensor:
        return torch.cat([fs.score(z[i:i + 100]) for i in range(0, len(z), 100)])

    dets = {
        "feature_squeezing": (und, fs_score, und, fs.score_differentiable, cfg.fs_lambdas,
                              "Xu et al. 2018 on the shipped sign-cnn: max L1 over {5-bit depth, 2×2 median}"),
        "mc_dropout": (drop, mc_score, lambda z: mc_attack.mc_logits(z), mc_attack.score_differentiable, cfg.mc_lambdas,
                       "Feinman et al. 2017: Σ_c Var over 20 dropout passes (p=0.3) of a dropout sign-cnn"),
    }
    for name, (clf, score, att_model, att_score, lams, desc) in dets.items():
        if name not in cfg.detector_names:
            continue
        t0 = time.time()
        thr = threshold_at_fpr(score(xc), cfg.detector_fpr)
        clean_s = score(x)
        with torch.no_grad():
            clean_ok = clf(x).argmax(1) == y
        res: dict[str, Any] = {"description": desc, "threshold": thr, "target_fpr": cfg.detector_fpr,
                               "calibration_images": int(len(xc)), "fpr_on_fresh_clean": _rates(clean_s > thr),
                               "classifier_clean_top1": _rates(clean_ok), "eps": {}}
        for e in (8, 16):
            adv = batched_attack(AttackSpec("pgd_ce", pgd(e / 255, cfg.steps), clf), x, y, seed=cfg.seed + e)
            with torch.no_grad():
                fooled = clf(adv).argmax(1) != y
            s_adv = score(adv)
            det = s_adv > thr
            na = cfg.n_detector_adaptive
            xa_, ya_ = x[:na], y[:na]
            fooled2 = torch.zeros(na, dtype=torch.bool)
            det2 = torch.ones(na, dtype=torch.bool)
            for lam in lams:  # per image, the attacker keeps the λ that works (fooled and undetected if any)
                adv2 = torch.cat([detector_aware_pgd(att_model, att_score, xa_[i:i + 50], ya_[i:i + 50],
                                                     eps=e / 255, steps=20, lam=lam, threshold=thr,
                                                     generator=torch.Generator().manual_seed(cfg.seed + i))
                                  for i in range(0, na, 50)])
                with torch.no_grad():
                    f_l = clf(adv2).argmax(1) != ya_
                d_l = score(adv2) > thr
                better = (f_l & ~d_l) & ~(fooled2 & ~det2)
                better |= ~fooled2 & f_l & ~(fooled2 & ~det2)
                fooled2 = torch.where(better, f_l, fooled2)
                det2 = torch.where(better, d_l, det2)
            lam = ", ".join(f"{v:g}" for v in lams)
            res["eps"][str(e)] = {
                "non_adaptive": {"attack": "PGD-CE on the classifier, detector unknown to the attacker",
                                 "attack_success": _rates(fooled),
                                 "detection_rate_of_successful": _rates(det[fooled]),
                                 "success_and_undetected": _rates(fooled & ~det)},
                "adaptive": {"attack": f"detector-aware PGD (margin + λ·score, λ ∈ {{{lam}}} best per image, 20 steps"
                                       + (", BPDA through bit depth)" if name == "feature_squeezing"
                                          else ", EOT over 4 dropout masks per step)"),
                             "attack_success": _rates(fooled2),
                             "detection_rate_of_successful": _rates(det2[fooled2]),
                             "success_and_undetected": _rates(fooled2 & ~det2)},
            }
        res["seconds"] = round(time.time() - t0, 1)
        out[name] = res
        log(f"detector {name}: thr={thr:.4f} " + " ".join(
            f"eps{e}: det {v['non_adaptive']['detection_rate_of_successful']['value']:.2f} -> "
            f"evade {v['adaptive']['success_and_undetected']['value']:.2f}" for e, v in res["eps"].items()))
    return out


def section_channel(cfg: EvalConfig, defences: dict[str, Defence], data: dict[str, Any],
                    log: Callable[[str], None]) -> dict[str, Any]:
    from pipelines.channels import SimulatedChannel

    n = cfg.channel_images
    x, y = data["x_attack"][:n], data["y_attack"][:n]
    ch = SimulatedChannel(cfg.seed)
    ids = [f"heldout{cfg.heldout_seed}-{i}" for i in range(n)]
    t0 = time.time()
    xc = ch.transmit(x, ids).images
    out: dict[str, Any] = {"channel": ch.describe()["backend"], "preset": "default", "images": n,
                           "eps": cfg.channel_eps, "defences": {}}
    for name in cfg.channel_defences:
        d = defences.get(name)
        if d is None:
            continue
        adv_all = data.get("channel_adv", {}).get(name)
        if adv_all is None:  # the table ran in another process: craft the channel attack's images here
            spec = next(s for s in d.naive(cfg.channel_eps / 255) + d.adaptive(cfg.channel_eps / 255)
                        if s.name == d.channel_attack)
            adv_all = batched_attack(spec, x, y, seed=cfg.seed + cfg.channel_eps)
        xa = ch.transmit(adv_all[:n], ids, tag=name).images
        c_dig, _ = _correct(d.predictor, x, y)
        c_ch, _ = _correct(d.predictor, xc, y)
        a_dig, _ = _correct(d.predictor, adv_all[:n], y)
        a_ch, _ = _correct(d.predictor, xa, y)
        out["defences"][name] = {"attack": d.channel_attack, "clean_digital": _rates(c_dig),
                                 "clean_print_photo": _rates(c_ch), "adversarial_digital": _rates(a_dig),
                                 "adversarial_print_photo": _rates(a_ch)}
        log(f"channel {name}: clean {c_ch.float().mean():.2f} adv {a_dig.float().mean():.2f} -> "
            f"{a_ch.float().mean():.2f}")
    out["seconds"] = round(time.time() - t0, 1)
    return out


def stop_sticker_row(cfg: EvalConfig, model: Callable[[Tensor], Tensor]) -> tuple[dict[str, Any], Tensor]:
    """The RP2 stop -> no_entry sticker on ``model`` (the shared physical loop: stop rendered at 128 px on grey,
    saliency-placed cells within 9.5% of the sign, ``rp2`` EOT, 32 px input): its report row and per-draw success."""
    from physical.universal import SignSticker, mask_fraction_of_sign, saliency_mask
    from worlds.signs.render import class_names, composite, render_sign

    names = class_names()
    src, tgt = names.index("stop"), names.index("no_entry")
    rgba = render_sign("stop", 128)
    sign, alpha = composite(rgba, 0.5).clamp(0, 1), rgba[:, 3:4]
    t0 = time.time()
    atk = SignSticker(eot="rp2", input_size=(32, 32), max_mask_fraction=0.10, steps=cfg.sticker_steps,
                      batch_size=cfg.sticker_batch, lr=0.1, eval_samples=cfg.sticker_eval, seed=cfg.seed,
                      checkpoint_every=10_000)
    mask = saliency_mask(atk.saliency(model, sign, target=tgt, samples=64, alpha=alpha), alpha, 0.095, cell=8)
    r = atk(model, sign, mask, target=tgt, alpha=alpha, source_label=src)
    return {"mask_fraction_of_sign": mask_fraction_of_sign(mask, alpha), "targeted_success": _rates(r.success),
            "initial_success": _rates(r.initial_success),
            "clean_accuracy_same_draws": _rates(r.extras["clean_correct"]),
            "seconds": round(time.time() - t0, 1)}, r.success


def section_sticker(cfg: EvalConfig, defences: dict[str, Defence], log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"sign": "stop", "target": "no_entry", "sign_size": 128, "steps": cfg.sticker_steps,
                           "batch_size": cfg.sticker_batch, "eval_draws": cfg.sticker_eval, "models": {}}
    for name in cfg.sticker_models:
        d = defences.get(name)
        if d is None:
            continue
        out["models"][name], success = stop_sticker_row(cfg, d.naive_view)
        log(f"sticker {name}: success {int(success.sum())}/{success.numel()} "
            f"({out['models'][name]['seconds']:.0f} s)")
    return out


# ------------------------------------------------------------------------------------------------ patches (issue 20)
class CertificateViolation(DefenceError):
    """An image certified against a patch was broken by a patch attack within the threat model."""


def _check_certificate(what: str, certified: Tensor, robust: Tensor) -> dict[str, Any]:
    """Certified images must survive every in-threat-model attack: raises :class:`CertificateViolation` if not."""
    bad = (certified & ~robust).nonzero().flatten().tolist()
    if bad:
        raise CertificateViolation(f"{what}: {len(bad)} certified image(s) broken by the patch attack (indices "
                                   f"{bad[:10]}): a bug in the certificate or in the attack's threat model")
    return {"certified_but_broken": 0, "empirical_at_least_certified": True}


def section_patchcleanser(cfg: EvalConfig, data: dict[str, Any], cache_dir: Path, log: Callable[[str], None],
                          partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    from pipelines.defences.patchcleanser import (AdaptiveView, PatchCleanser, mask_set, masked_sign_cnn,
                                                  patch_attack, patch_side, weights_sha256)
    from testbed.models.registry import get_model

    n = cfg.patch_images
    x, y = data["x_attack"][:n], data["y_attack"][:n]
    sides = tuple(patch_side(f, 32) for f in cfg.patch_fractions)
    bases: dict[str, nn.Module] = {}
    out: dict[str, Any] = {"images": n, "k": cfg.pc_k, "weights": {}, "models": {},
                           "attack": {"grid": cfg.pc_grid, "steps": cfg.pc_steps, "eot_masks": cfg.pc_eot,
                                      "kind": "per-image MaskedPGD patch (unbounded inside a side×side square, "
                                              "C&W margin, step 16/255, uniform start) at grid×grid positions"}}
    if "shipped" in cfg.pc_bases:
        bases["shipped"] = get_model("sign-cnn", device="cpu")
        out["weights"]["shipped"] = weights_sha256()
    if "masked" in cfg.pc_bases:
        train_sides = tuple(patch_side(f, 32) for f in cfg.pc_train_fractions)
        bases["masked"], rec = masked_sign_cnn(train_sides, cfg.pc_k, epochs=cfg.pc_train_epochs, cache_dir=cache_dir,
                                               log=log)
        out["weights"]["masked"] = rec["sha256"]
        out["weights"]["masked_from_shipped"] = rec["config"]["init_sha256"]
        out["masked_training"] = rec
    for bname, base in bases.items():
        rows = out["models"].setdefault(bname, {})
        for side in sides:
            t0 = time.time()
            ms = mask_set(32, side, cfg.pc_k)
            pc = PatchCleanser(base, ms, num_classes=30)
            with torch.no_grad():
                base_ok = base(x).argmax(1) == y
            pred = pc.predict(x)
            clean = pred.label == y
            cert = pc.certify(x, y)
            row: dict[str, Any] = {"mask_set": ms.as_dict(), "base_clean": _rates(base_ok), "clean": _rates(clean),
                                   "certified": _rates(cert),
                                   "cases": {str(c): int((pred.case == c).sum()) for c in (1, 2, 3)}}
            if bname in cfg.pc_attack_bases:
                ad = patch_attack(AdaptiveView(pc, cfg.pc_eot, seed=cfg.seed + side), x, y, side, grid=cfg.pc_grid,
                                  steps=cfg.pc_steps, seed=cfg.seed + 100 + side)
                na = patch_attack(base, x, y, side, grid=cfg.pc_grid, steps=cfg.pc_steps, seed=cfg.seed + 200 + side)
                # shown to PatchCleanser: the positions where the patch fools the bare classifier
                fooled = na.predictions != y[:, None]
                na_broken = torch.zeros(n, dtype=torch.bool)
                if bool(fooled.any()):
                    na_pc = pc.predict(na.adversarial[fooled]).label
                    na_broken[fooled.nonzero()[:, 0][na_pc != y.repeat_interleave(fooled.sum(1))]] = True
                robust = clean & ~ad.broken & ~na_broken
                row.update({
                    "undefended_under_patch": _rates(base_ok & ~na.broken),
                    "non_adaptive_robust": _rates(clean & ~na_broken),
                    "adaptive_robust": _rates(clean & ~ad.broken),
                    "empirical_robust": _rates(robust),
                    "adaptive_success_on_clean_correct": _rates(ad.broken[clean]),
                    "positions": len(ad.positions),
                })
                try:
                    row.update(_check_certificate(f"PatchCleanser({bname}) side {side}", cert, robust))
                except CertificateViolation as exc:  # recorded in the report, then the run fails loudly
                    row["certificate_violation"] = str(exc)
                    rows[str(side)] = row
                    if partial:
                        partial(out)
                    raise
            row["seconds"] = round(time.time() - t0, 1)
            rows[str(side)] = row
            if partial:
                partial(out)
            robust_v = row.get("empirical_robust", {}).get("value", float("nan"))
            log(f"patchcleanser {bname} side {side}: clean {row['clean']['value']:.2f} certified "
                f"{row['certified']['value']:.2f} robust {robust_v:.2f} ({row['seconds']} s)")
    return out


def section_derandomized(cfg: EvalConfig, data: dict[str, Any], cache_dir: Path,
                         log: Callable[[str], None]) -> dict[str, Any]:
    from pipelines.defences.derandomized import (DerandomizedSmoothing, certified_from_counts, delta,
                                                 train_ablated_sign_cnn)
    from pipelines.defences.patchcleanser import patch_side, weights_sha256
    from testbed.models.registry import get_model

    sides = tuple(patch_side(f, 32) for f in cfg.patch_fractions)
    out: dict[str, Any] = {"sides": list(sides), "fill": 0.5, "models": {}}
    for spec in cfg.drs:
        mode, band = spec.rstrip("0123456789"), int(spec[len(spec.rstrip("0123456789")):])
        n = cfg.drs_block_images if mode == "block" else cfg.drs_images
        x, y = data["x_attack"][:n], data["y_attack"][:n]
        for base_name in (["shipped"] if spec in cfg.drs_shipped else []) + ["ablation-trained"]:
            t0 = time.time()
            if base_name == "shipped":
                model, sha = get_model("sign-cnn", device="cpu"), weights_sha256()
            else:
                model, rec = train_ablated_sign_cnn(mode, band, epochs=cfg.drs_train_epochs, cache_dir=cache_dir,
                                                    log=log)
                sha = rec["sha256"]
            votes = DerandomizedSmoothing(model, mode, band).votes(x)
            res: dict[str, Any] = {"mode": mode, "band": band, "images": n, "weights_sha256": sha,
                                   "votes_per_image": int(votes.counts[0].sum()), "sides": {}}
            for side in sides:
                pred, cert = certified_from_counts(votes.counts, side, band, mode)
                res["sides"][str(side)] = {"delta": delta(side, band, mode), "clean": _rates(pred == y),
                                           "certified": _rates(cert & (pred == y))}
            res["seconds"] = round(time.time() - t0, 1)
            out["models"][f"{spec}/{base_name}"] = res
            log(f"derandomized {spec} {base_name}: " + " ".join(
                f"side {s}: {v['clean']['value']:.2f}/{v['certified']['value']:.2f}" for s, v in res["sides"].items()))
    return out


def section_patch_sticker(cfg: EvalConfig, cache_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The RP2 sticker (the shared physical loop) against the masked sign-cnn and PatchCleanser around it, the
    attacker differentiating the masked predictions (EOT over mask positions inside ``AdaptiveView``); the loop's
    fresh-draw evaluation runs without gradients, i.e. on the exact double-masked vote."""
    from pipelines.defences.patchcleanser import (AdaptiveView, PatchCleanser, mask_set, masked_sign_cnn,
                                                  patch_side)

    masked, rec = masked_sign_cnn(tuple(patch_side(f, 32) for f in cfg.pc_train_fractions), cfg.pc_k,
                                  epochs=cfg.pc_train_epochs, cache_dir=cache_dir, log=log)
    side = patch_side(cfg.patch_sticker_fraction, 32)
    pc = PatchCleanser(masked, mask_set(32, side, cfg.pc_k), num_classes=30)
    out: dict[str, Any] = {"sign": "stop", "target": "no_entry", "steps": cfg.sticker_steps,
                           "batch_size": cfg.sticker_batch, "eval_draws": cfg.sticker_eval, "patchcleanser_side": side,
                           "weights_sha256": rec["sha256"], "models": {}}
    view = AdaptiveView(pc, cfg.pc_eot, seed=cfg.seed)
    for name, model in (("masked sign-cnn (no defence)", masked),
                        (f"PatchCleanser(masked), {side}-px mask set, adaptive", view)):
        out["models"][name], success = stop_sticker_row(cfg, model)
        log(f"patch_sticker {name}: success {int(success.sum())}/{success.numel()}")
    return out


def section_patch_detector(cfg: EvalConfig, data: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from physical.losses import margin
    from pipelines.defences.detectors import FeatureNormDetector, first_stage, threshold_at_fpr
    from pipelines.defences.patchcleanser import patch_attack, patch_side, weights_sha256
    from testbed.models.registry import get_model

    n = cfg.patch_images
    x, y, xc = data["x_attack"][:n], data["y_attack"][:n], data["x_cal"]
    und = get_model("sign-cnn", device="cpu")
    det = FeatureNormDetector(und, first_stage(und))
    thr = threshold_at_fpr(det.score(xc), cfg.detector_fpr)
    out: dict[str, Any] = {"description": "max over positions of the channel-L2 norm of sign-cnn's first-stage "
                                          "features (after Yu et al. 2021), shipped sign-cnn",
                           "weights_sha256": weights_sha256(), "threshold": thr, "target_fpr": cfg.detector_fpr,
                           "calibration_images": int(len(xc)), "fpr_on_fresh_clean": _rates(det.score(x) > thr),
                           "images": n, "sides": {}}
    with torch.no_grad():
        clean_ok = und(x).argmax(1) == y

    def outcome(adv: Tensor) -> tuple[Tensor, Tensor]:  # (B, L) fooled, detected
        flat = adv.flatten(0, 1)
        with torch.no_grad():
            fooled = (und(flat).argmax(1) != y.repeat_interleave(adv.shape[1])).view(n, -1)
        return fooled, (det.score(flat) > thr).view(n, -1)

    for f in cfg.patch_detector_fractions:
        side = patch_side(f, 32)
        t0 = time.time()
        na = patch_attack(und, x, y, side, grid=cfg.pc_grid, steps=cfg.pc_steps, seed=cfg.seed + 300 + side)
        fo, de = outcome(na.adversarial)
        na_any = fo.any(1)
        na_evade = (fo & ~de).any(1)
        ad_any, ad_evade = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        for lam in cfg.patch_detector_lambdas:  # per image the attacker keeps the best λ
            def objective(net: nn.Module, z: Tensor, lab: Tensor, lam: float = lam) -> tuple[Tensor, Tensor]:
                logits, s = net(z), det.score_differentiable(z)
                keep = (logits.argmax(1) != lab) & (s < thr)
                return -(margin(logits, lab).clamp(min=-2.0) + lam * s / thr), keep

            ad = patch_attack(und, x, y, side, grid=cfg.pc_grid, steps=cfg.pc_steps, seed=cfg.seed + 400 + side,
                              loss_fn=objective)
            fo2, de2 = outcome(ad.adversarial)
            ad_any |= fo2.any(1)
            ad_evade |= (fo2 & ~de2).any(1)
        lam = ", ".join(f"{v:g}" for v in cfg.patch_detector_lambdas)
        out["sides"][str(side)] = {
            "fraction": side * side / 1024, "classifier_clean": _rates(clean_ok),
            "non_adaptive": {"attack": "per-image patch on the classifier (detector unknown)",
                             "attack_success": _rates(na_any), "success_and_undetected": _rates(na_evade)},
            "adaptive": {"attack": f"detector-aware patch: margin + λ·score/threshold, λ ∈ {{{lam}}} best per image",
                         "attack_success": _rates(ad_any | na_any),
                         "success_and_undetected": _rates(ad_evade | na_evade)},
            "seconds": round(time.time() - t0, 1)}
        log(f"patch_detector side {side}: undetected success {na_evade.float().mean():.2f} -> "
            f"{(ad_evade | na_evade).float().mean():.2f}")
    return out


def section_patch_imagenet(cfg: EvalConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """PatchCleanser around MobileNetV2 on the shipped photos; labels = MobileNetV2's own clean top-1."""
    from pipelines.defences.patchcleanser import AdaptiveView, PatchCleanser, mask_set, patch_attack, patch_side
    from testbed.device import default_device
    from testbed.models.registry import get_model
    from testbed.photos import center_crop, load_photo

    dev = default_device()
    model = get_model("mobilenet_v2", device=dev)
    s = cfg.imagenet_size
    x = torch.cat([center_crop(load_photo(p, s), s) for p in cfg.imagenet_photos]).to(dev)
    with torch.no_grad():
        y = model(x).argmax(1)
    side = patch_side(cfg.imagenet_fraction, s)
    ms = mask_set(s, side, cfg.imagenet_k)
    pc = PatchCleanser(model, ms, num_classes=1000, batch=72).to(dev)
    t0 = time.time()
    pred = pc.predict(x)
    clean = pred.label == y
    cert = pc.certify(x, y)
    ad = patch_attack(AdaptiveView(pc, cfg.pc_eot, seed=cfg.seed), x, y, side, grid=cfg.imagenet_grid,
                      steps=cfg.imagenet_steps, seed=cfg.seed + 500)
    robust = clean & ~ad.broken.to(clean.device)
    res = {"model": "mobilenet_v2", "device": str(dev), "photos": list(cfg.imagenet_photos), "size": s,
           "labels": "MobileNetV2's own top-1 on the clean photo", "mask_set": ms.as_dict(),
           "clean_agreement": _rates(clean.cpu()), "certified": _rates(cert.cpu()),
           "empirical_robust": _rates(robust.cpu()),
           "attack": {"grid": cfg.imagenet_grid, "steps": cfg.imagenet_steps, "eot_masks": cfg.pc_eot},
           **_check_certificate("PatchCleanser(mobilenet_v2)", cert.cpu(), robust.cpu()),
           "seconds": round(time.time() - t0, 1)}
    log(f"patch_imagenet: clean {res['clean_agreement']['value']:.2f} certified {res['certified']['value']:.2f} "
        f"robust {res['empirical_robust']['value']:.2f}")
    return res


# ------------------------------------------------------------------------------------------------ driver
def run_report(cfg: EvalConfig, out_dir: Path, *, cache_dir: Path = DEFAULT_CACHE, command: str = "",
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate every defence and write ``out_dir/report.json``, ``report.md`` and plots after each section."""
    from pipelines.defences.report import write_report
    from pipelines.defences.training import default_suite

    log = log or print
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    suite = default_suite()
    report: dict[str, Any] = {
        "command": command, "config": asdict(cfg), "machine": machine_line(), "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "sections": {},
        "training": {}, "wall_seconds": 0.0,
    }
    try:
        for n, c in suite.items():
            p = Path(cache_dir) / f"{n}.pt"
            if p.is_file():
                ck = _load_cache(p, "defence model cache")
                report["training"][n] = {"config": ck["config"], "history": ck.get("history"),
                                         "train_seconds": round(ck.get("train_seconds", 0.0), 1),
                                         "bytes": p.stat().st_size}
        xh, yh = heldout_data(cfg.n_clean, cfg.heldout_seed, cache_dir)
        data: dict[str, Any] = {"x_clean": xh, "y_clean": yh, "x_attack": xh[:cfg.n_attack],
                                "y_attack": yh[:cfg.n_attack],
                                "x_cal": xh[cfg.n_attack:cfg.n_attack + cfg.n_detector_cal]}
        needed = set(cfg.defences) if {"table", "masking"} & set(cfg.sections) else set()
        if "channel" in cfg.sections:
            needed |= set(cfg.channel_defences)
        if "sticker" in cfg.sections:
            needed |= set(cfg.sticker_models)
        defences = build_defences(cfg, cache_dir, tuple(needed))

        def save_partial(section: str) -> Callable[[dict[str, Any]], None]:
            """A callback writing a long section's rows so far into the report."""
            def partial(rows: dict[str, Any]) -> None:
                report["sections"][section] = rows
                report["wall_seconds"] = round(time.time() - t_start, 1)
                write_report(report, out_dir)
            return partial

        for sec in SECTIONS:
            if sec not in cfg.sections:
                continue
            t0 = time.time()
            if sec == "table":
                res = section_table(cfg, defences, data, log, save_partial("table"))
            elif sec == "masking":
                res = section_masking(cfg, defences, data, log)
            elif sec == "smoothing":
                res = section_smoothing(cfg, data, cache_dir, log)
            elif sec == "detectors":
                res = section_detectors(cfg, data, cache_dir, log)
            elif sec == "channel":
                res = section_channel(cfg, defences, data, log)
            elif sec == "sticker":
                res = section_sticker(cfg, defences, log)
            elif sec == "patchcleanser":
                res = section_patchcleanser(cfg, data, cache_dir, log, save_partial("patchcleanser"))
            elif sec == "derandomized":
                res = section_derandomized(cfg, data, cache_dir, log)
            elif sec == "patch_sticker":
                res = section_patch_sticker(cfg, cache_dir, log)
            elif sec == "patch_detector":
                res = section_patch_detector(cfg, data, log)
            else:
                res = section_patch_imagenet(cfg, log)
            report["sections"][sec] = res
            report["section_seconds"] = {**report.get("section_seconds", {}), sec: round(time.time() - t0, 1)}
            report["wall_seconds"] = round(time.time() - t_start, 1)
            write_report(report, out_dir)
            log(f"section {sec} done in {time.time() - t0:.0f} s")
    finally:
        torch.set_num_threads(prev)
    return report
