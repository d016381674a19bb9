"""Writes ``report.json``, ``report.md`` and plots from the dict :func:`pipelines.defences.evaluate.run_report`
builds (atomically; sections that are not done yet are left out)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pipelines.report import md_table
from testbed.runs import write_atomic


def pct(r: dict[str, Any] | None, ci: bool = False) -> str:
    if not r or not r.get("n"):
        return "–"
    s = f"{100 * r['value']:.1f}%"
    return s + f" [{100 * r['low']:.0f}–{100 * r['high']:.0f}]" if ci else s


def _table(tab: dict[str, Any], report: dict[str, Any]) -> list[str]:
    eps = report["config"]["eps"]
    n_clean = next(iter(tab.values()))["clean_top1"]["n"]
    n_att = next(iter(tab.values()))["eps"][str(eps[0])]["adaptive_top1"]["n"]
    lines = [
        "## Accuracy under attack (L∞, ε in /255)", "",
        f"Layout of Kurakin et al.'s adversarial-training tables (seed 003). Clean: n = {n_clean} fresh held-out "
        f"images; attacked columns: the first n = {n_att} of them. A cell is the share of images still classified "
        "correctly under *every* attack of its kind (per-image worst case); 95% Wilson intervals in brackets. "
        "**Non-adaptive**: FGSM + PGD-CE (10 steps, random start, step 2.5ε/10) on the deployed model as autograd "
        "sees it. **Adaptive**: the non-adaptive attacks plus the defence-specific ones (see the attack list) and "
        "transfer of PGD-CE examples from the undefended model.", "",
        "| defence | attack | | clean | " + " | ".join(f"ε = {e}" for e in eps) + " |",
        "|---|---|---|---|" + "---|" * len(eps),
    ]
    for name, row in tab.items():
        for kind, label in (("non_adaptive", "non-adaptive"), ("adaptive", "**adaptive**")):
            for k in ("top1", "top5"):
                clean = pct(row[f"clean_{k}"])
                cells = " | ".join(pct(row["eps"][str(e)][f"{kind}_{k}"], ci=(k == "top1")) for e in eps)
                lines.append(f"| {name} | {label} | top {k[-1]} | {clean} | {cells} |")
    lines += ["", "Per-attack top-1 accuracy (each attack alone):", "",
              "| defence | attack (kind) | " + " | ".join(f"ε = {e}" for e in eps) + " |",
              "|---|---|" + "---|" * len(eps)]
    for name, row in tab.items():
        attacks = row["eps"][str(eps[0])]["attacks"]
        for a, info in attacks.items():
            cells = " | ".join(pct(row["eps"][str(e)]["attacks"].get(a, {}).get("top1")) for e in eps)
            lines.append(f"| {name} | {a} ({info['kind']}) | {cells} |")
    lines += ["", "Defences:", ""] + [f"* **{n}** — {r['description']}" for n, r in tab.items()] + [""]
    return lines


def _masking(m: dict[str, Any], report: dict[str, Any]) -> list[str]:
    lines = ["## Gradient-masking checks (ε = 8/255, n = %d, on the model as the naive attacker sees it)"
             % next(iter(m.values()))["n"], "",
             "| defence | zero-grad fraction | all-zero samples | output randomised | PGD-10 success | "
             "PGD-%d success | unbounded (ε=0.5) success | white-box PGD-CE success (table) | transfer success "
             "(table) | flags |" % report["config"]["masking_strong_steps"],
             "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v: "–" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    for name, r in m.items():
        lines.append(f"| {name} | {r['zero_gradient_fraction']:.2f} | {r['all_zero_gradient_samples']} | "
                     f"{f(r['randomised_fraction'])} | {f(r['weak_success'])} | {f(r['strong_success'])} | "
                     f"{f(r['unbounded_success'])} | {f(r['whitebox_success'])} | {f(r['transfer_success'])} | "
                     f"{', '.join(r['flags']) or 'none'} |")
    lines += ["", "Flags: `zero_gradients` (≥ 50% of input-gradient entries exactly 0, or a sample with an all-zero "
              "gradient), `randomised_output` (two calls differ: evaluate with EOT), `stronger_attack_worse` "
              "(more steps do worse), `weak_attack_insufficient` (more steps do > 10 points better), "
              "`unbounded_attack_fails` (< 95% success at ε = 0.5, where any working attack should reach ~100%), "
              "`transfer_beats_whitebox` (black-box transfer beats the white-box attack by > 5 points).", ""]
    return lines


def _smoothing(s: dict[str, Any], report: dict[str, Any]) -> list[str]:
    from scipy.stats import norm

    cap = s["sigma"] * float(norm.ppf(s["alpha"] ** (1 / s["n"])))
    l2_2 = min(s["radius_linf_equivalent"].values())
    lines = [f"## Randomized smoothing: certified accuracy vs L2 radius (σ = {s['sigma']}, n0 = {s['n0']}, "
             f"n = {s['n']}, α = {s['alpha']}, {s['images']} images)", "",
             "| radius (L2) | " + " | ".join(s["certified_accuracy"]) + " |",
             "|---|" + "---|" * len(s["certified_accuracy"]),
             "| certified accuracy | " + " | ".join(pct(v, ci=True) for v in s["certified_accuracy"].values())
             + " |", "",
             f"Abstained: {pct(s['abstain'], ci=True)}. With n = {s['n']} samples the largest radius CERTIFY can "
             f"give is σ·Φ⁻¹(α^(1/n)) = {cap:.3f} (every one of the n samples voting for the class), so the "
             "columns above it are 0 by construction, not by measurement. An L∞ ball of radius ε lies inside the L2 "
             "ball of radius ε·√(3·32·32): " + ", ".join(f"ε = {e}/255 → {v:.2f}"
                                                        for e, v in s["radius_linf_equivalent"].items())
             + f"; so the certified accuracy at the first listed radius ≥ {l2_2:.2f} is a certified lower bound "
             "for ε = 2/255, and the larger L∞ budgets are beyond what this n can certify; the table's smoothing "
             "row is empirical.", ""]
    return lines


def _detectors(d: dict[str, Any], report: dict[str, Any]) -> list[str]:
    lines = ["## Detectors (threshold set on held-out clean images at the stated FPR)", "",
             "| detector | target FPR | FPR on fresh clean | ε | attack | attack success | detection rate of "
             "successful | success and undetected |", "|---|---|---|---|---|---|---|---|"]
    for name, r in d.items():
        for e, v in r["eps"].items():
            for kind in ("non_adaptive", "adaptive"):
                a = v[kind]
                lines.append(f"| {name} | {100 * r['target_fpr']:.0f}% | {pct(r['fpr_on_fresh_clean'], True)} | {e} | "
                             f"{kind.replace('_', '-')}: {a['attack']} | {pct(a['attack_success'], True)} | "
                             f"{pct(a['detection_rate_of_successful'], True)} | "
                             f"{pct(a['success_and_undetected'], True)} |")
    lines += [""] + [f"* **{n}** — {r['description']}" for n, r in d.items()] + [""]
    return lines


def _channel(c: dict[str, Any], report: dict[str, Any]) -> list[str]:
    lines = [f"## Through the print-photo loop (simulated, {c['images']} images, ε = {c['eps']}/255)", "",
             f"Channel: {c['channel']}, preset `{c['preset']}`. The adversarial images are the adaptive attack's "
             "digital images (the attacker does not model the printer/camera, as in Kurakin et al. 2016).", ""]
    lines += md_table(["defence", "attack", "clean digital", "clean print-photo", "adversarial digital",
                       "adversarial print-photo"],
                      [[n, r["attack"]] + [pct(r[k], True) for k in ("clean_digital", "clean_print_photo",
                                                                       "adversarial_digital", "adversarial_print_photo")]
                       for n, r in c["defences"].items()])
    return lines + [""]


def _sticker(s: dict[str, Any], report: dict[str, Any]) -> list[str]:
    lines = [f"## RP2 sticker (stop → {s['target']}), tiny budget: {s['steps']} steps × {s['batch_size']} draws, "
             f"{s['eval_draws']} fresh evaluation draws", ""]
    lines += md_table(["model", "sticker area (of sign)", "clean stop accuracy (same draws)", "initial sticker success",
                       "targeted success"],
                      [[n, f"{100 * r['mask_fraction_of_sign']:.1f}%"]
                       + [pct(r[k], True) for k in ("clean_accuracy_same_draws", "initial_success", "targeted_success")]
                       for n, r in s["models"].items()])
    return lines + [""]


def _patchcleanser(p: dict[str, Any], report: dict[str, Any]) -> list[str]:
    a = p["attack"]
    lines = [f"## PatchCleanser (double masking, k = {p['k']} masks per axis) against one square patch", "",
             "n held-out images per row (the first of the attacked subset). *Certified*: every one- and "
             "two-mask prediction is the true class (Xiang et al. 2022, Theorem 1): no patch of that size anywhere "
             "changes the prediction. *Empirical robust*: correct on the clean image and under every attack — the "
             f"adaptive patch ({a['kind']}; {a['grid']}×{a['grid']} positions, {a['steps']} steps, EOT over "
             f"{a['eot_masks']} random one- or two-mask images per step, scored on the exact double-masked vote) and "
             "the non-adaptive one (the same patch crafted on the bare classifier; the positions where it fools the bare "
             "classifier are shown to PatchCleanser). Certified images broken by an "
             "attack would stop the run (none). Weights (sha256 prefix): "
             + ", ".join(f"{k} `{v}`" for k, v in p.get("weights", {}).items()) + ".", ""]
    rows = []
    for base, by_side in p["models"].items():
        for side, r in by_side.items():
            ms = r["mask_set"]
            rows.append([base, f"{side}×{side} ({100 * ms['patch_fraction']:.1f}%)", str(r["clean"]["n"]),
                         f"{ms['mask_size'][0]} / "
                         f"{ms['stride'][0]} / {ms['masks']}", pct(r["base_clean"], True), pct(r["clean"], True),
                         pct(r["certified"], True), pct(r.get("undefended_under_patch"), True),
                         pct(r.get("non_adaptive_robust"), True), pct(r.get("adaptive_robust"), True),
                         pct(r.get("empirical_robust"), True), pct(r.get("adaptive_success_on_clean_correct"), True)])
    lines += md_table(["base", "patch", "n", "mask / stride / masks", "base clean", "PC clean", "PC certified",
                       "base under patch (no PC)", "PC non-adaptive", "PC adaptive", "PC empirical robust",
                       "adaptive success (of clean-correct)"], rows)
    return lines + [""]


def _derandomized(d: dict[str, Any], report: dict[str, Any]) -> list[str]:
    lines = ["## De-randomized smoothing (Levine & Feizi 2020): clean / certified accuracy", "",
             "Votes over every band position (ablated pixels grey); certified when the vote gap exceeds 2Δ "
             "(tie-break to the smaller class index); Δ = p + b − 1 (columns), (p + b − 1)² (blocks). Not attacked "
             "(certificate only).", ""]
    sides = d["sides"]
    rows = [[name, str(r["images"]), f"`{r['weights_sha256']}`"]
            + [f"{pct(r['sides'][str(s)]['clean'], True)} / {pct(r['sides'][str(s)]['certified'], True)} "
               f"(Δ {r['sides'][str(s)]['delta']} of {r['votes_per_image']})" for s in sides]
            for name, r in d["models"].items()]
    lines += md_table(["smoothing / base", "n", "weights"] + [f"{s}×{s} patch: clean / certified" for s in sides], rows)
    return lines + [""]


def _patch_sticker(s: dict[str, Any], report: dict[str, Any]) -> list[str]:
    lines = [f"## RP2 sticker against PatchCleanser (stop → {s['target']}, {s['steps']} steps × {s['batch_size']} "
             f"draws, {s['eval_draws']} fresh draws scored on the exact vote; weights `{s['weights_sha256']}`)", "",
             "Several sticker cells spread over the sign: outside the one-patch threat model, so no certificate "
             "applies.", ""]
    lines += md_table(["model", "sticker area (of sign)", "clean stop accuracy (same draws)", "targeted success"],
                      [[n, f"{100 * r['mask_fraction_of_sign']:.1f}%", pct(r["clean_accuracy_same_draws"], True),
                        pct(r["targeted_success"], True)] for n, r in s["models"].items()])
    return lines + [""]


def _patch_detector(d: dict[str, Any], report: dict[str, Any]) -> list[str]:
    lines = [f"## Patch detector: {d['description']}", "",
             f"Threshold at {100 * d['target_fpr']:.0f}% FPR on {d['calibration_images']} clean images; FPR on the "
             f"n = {d['images']} attacked images' clean versions: {pct(d['fpr_on_fresh_clean'], True)}. "
             f"Weights `{d['weights_sha256']}`.", ""]
    rows = []
    for side, r in d["sides"].items():
        for kind in ("non_adaptive", "adaptive"):
            rows.append([f"{side}×{side} ({100 * r['fraction']:.1f}%)", r[kind]["attack"],
                         pct(r[kind]["attack_success"], True), pct(r[kind]["success_and_undetected"], True)])
    lines += md_table(["patch", "attack", "attack success", "success and undetected"], rows)
    return lines + [""]


def _patch_imagenet(r: dict[str, Any], report: dict[str, Any]) -> list[str]:
    ms = r["mask_set"]
    return [f"## PatchCleanser around MobileNetV2 on {len(r['photos'])} shipped photos ({r['size']} px, "
            f"{ms['patch_size'][0]} px patch = {100 * ms['patch_fraction']:.1f}%)", "",
            f"Labels: {r['labels']}; device {r['device']}; {ms['masks']} masks of {ms['mask_size'][0]} px, stride "
            f"{ms['stride'][0]}; photos: {', '.join(r['photos'])}.", "",
            *md_table(["clean agreement", "certified", "empirical robust (adaptive patch, "
                       f"{r['attack']['grid']}×{r['attack']['grid']} positions, {r['attack']['steps']} steps)"],
                      [[pct(r["clean_agreement"], True), pct(r["certified"], True), pct(r["empirical_robust"], True)]]),
            ""]


def _patch_plot(report: dict[str, Any], out_dir: Path, plt: Any) -> list[str]:
    p, d = report["sections"].get("patchcleanser"), report["sections"].get("derandomized")
    if not p and not d:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    series = []
    for base, by_side in (p or {}).get("models", {}).items():
        for key, label in (("clean", "clean"), ("certified", "certified"), ("empirical_robust", "empirical robust")):
            pts = [(100 * r["mask_set"]["patch_fraction"], r[key]) for r in by_side.values() if r.get(key)]
            if pts:
                series.append((f"PatchCleanser({base}) {label}", pts))
    for name, r in (d or {}).get("models", {}).items():
        series.append((f"DRS {name} certified", [(100 * int(s) ** 2 / 1024, v["certified"])
                                                  for s, v in r["sides"].items()]))
    markers = "osD^vP*Xh<>p"
    cmap = plt.get_cmap("tab10")
    for i, (label, pts) in enumerate(series):
        xs = [x for x, _ in pts]
        v = [100 * q["value"] for _, q in pts]
        lo = [max(0.0, vv - 100 * q["low"]) for vv, (_, q) in zip(v, pts)]
        hi = [max(0.0, 100 * q["high"] - vv) for vv, (_, q) in zip(v, pts)]
        ax.errorbar([x + (i - len(series) / 2) * 0.04 for x in xs], v, yerr=[lo, hi], marker=markers[i % 12], ms=4,
                    lw=1.1, capsize=2, color=cmap(i % 10), label=label)
    ax.set_xlabel("patch area (% of the 32 × 32 image)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("patch defences on sign-cnn (Wilson 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out_dir / "patch_certified.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return ["patch_certified.png"]


#: The report's sections in order: (name in ``report["sections"]``, renderer of that section's data); a section
#: the report does not have (not run, or empty) is left out.
SECTIONS: tuple[tuple[str, Callable[[dict[str, Any], dict[str, Any]], list[str]]], ...] = (
    ("table", _table), ("masking", _masking), ("smoothing", _smoothing), ("detectors", _detectors),
    ("channel", _channel), ("sticker", _sticker), ("patchcleanser", _patchcleanser), ("derandomized", _derandomized),
    ("patch_sticker", _patch_sticker), ("patch_detector", _patch_detector), ("patch_imagenet", _patch_imagenet))


def _plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    tab = report["sections"].get("table")
    if tab:
        eps = report["config"]["eps"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
        # one colour and one marker per defence (tab20 has 20 distinct colours; the markers tell apart what a
        # reader cannot by colour), error bars: Wilson 95% intervals; a small horizontal offset per defence
        # keeps the bars of the same ε apart
        cmap = plt.get_cmap("tab20")
        markers = "osD^vP*Xh<>p"
        xs = list(range(len(eps) + 1))
        for ax, kind in zip(axes, ("non_adaptive", "adaptive")):
            for i, (name, row) in enumerate(tab.items()):
                rs = [row["clean_attack_subset_top1"]] + [row["eps"][str(e)][f"{kind}_top1"] for e in eps]
                v = [100 * r["value"] for r in rs]
                lo = [max(0.0, vv - 100 * r["low"]) for vv, r in zip(v, rs)]
                hi = [max(0.0, 100 * r["high"] - vv) for vv, r in zip(v, rs)]
                off = (i - (len(tab) - 1) / 2) * 0.035
                ax.errorbar([x + off for x in xs], v, yerr=[lo, hi], marker=markers[i % len(markers)], ms=4,
                            lw=1.1, capsize=2, elinewidth=0.8, color=cmap(i % 20), label=name)
            ax.set_xticks(xs, ["clean"] + [str(e) for e in eps])
            ax.set_title(f"{kind.replace('_', '-')} attacks (Wilson 95% CI)")
            ax.set_xlabel("ε (/255)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("top-1 accuracy (%)")
        axes[1].legend(fontsize=7, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(out_dir / "accuracy_vs_eps.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append("accuracy_vs_eps.png")
    s = report["sections"].get("smoothing")
    if s:
        rs = [float(r) for r in s["certified_accuracy"]]
        v = [100 * x["value"] for x in s["certified_accuracy"].values()]
        lo = [100 * x["low"] for x in s["certified_accuracy"].values()]
        hi = [100 * x["high"] for x in s["certified_accuracy"].values()]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.plot(rs, v, marker="o")
        ax.fill_between(rs, lo, hi, alpha=0.2)
        ax.set_xlabel("L2 radius")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_title(f"randomized smoothing, σ = {s['sigma']}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "certified_accuracy.png", dpi=110)
        plt.close(fig)
        made.append("certified_accuracy.png")
    made += _patch_plot(report, out_dir, plt)
    return made


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "report.json", json.dumps(report, indent=1) + "\n")
    plots = _plots(report, out_dir)
    head = [
        "# Defences on sign-cnn, evaluated adaptively", "",
        "Generated by `pipelines.defences.evaluate.run_report`; do not edit by hand.", "",
        f"* Command: `{report['command']}`",
        f"* Date: {report['date']}; machine: {report['machine']}; torch {report['torch']}",
        f"* Wall time{' of the longest process' if report.get('parts') else ''}: {report['wall_seconds']:.0f} s "
        "(CPU-process seconds per section: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report.get("section_seconds", {}).items()) + ")",
        f"* Seeds: evaluation seed {report['config']['seed']}, held-out split seed "
        f"{report['config']['heldout_seed']}; training seeds in report.json → training.",
        "",
    ]
    if report.get("parts"):
        head += ["Produced by concurrent processes on the shared 2-core CPU, then merged "
                 "(`testbed defences merge`):", ""]
        head += [f"* `{p['command']}` — {p['wall_seconds']:.0f} s, started {p['date']}" for p in report["parts"]]
        head.append("")
    tr = report.get("training") or {}
    if tr:
        head += ["Trained models (cache `defences/` in the cache root `~/.cache/physical-testbed/`, not committed):", "",
                 "| model | method | init | train images | epochs | train seconds |", "|---|---|---|---|---|---|"]
        for n, t in tr.items():
            c = t["config"]
            head.append(f"| {n} | {c['method']} | {c['init']} | {c['n_train']} | {c['epochs']} | {t['train_seconds']} |")
        head.append("")
    body = [line for name, render in SECTIONS if report["sections"].get(name)
            for line in render(report["sections"][name], report)]
    body += [f"![{p}]({p})" for p in plots] + [""]
    findings = report.get("findings") or derive_findings(report)
    if findings:
        body = ["## Findings", ""] + [f"* {f}" for f in findings] + [""] + body
    write_atomic(out_dir / "report.md", "\n".join(head + body) + "\n")


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def merge_reports(parts: list[Path], out_dir: Path, command: str = "") -> dict[str, Any]:
    """Merge the sections of several partial runs (e.g. two processes on a 2-core machine) into one report.

    The first part's header is kept; sections come from every part (a later part wins); wall time is the
    longest part's (they ran at the same time); ``command`` lists every command."""
    from testbed.errors import ConfigError
    from testbed.inputs import load_json

    reports = [load_json(Path(p) / "report.json", what="defence report") for p in parts]
    for p, r in zip(parts, reports):
        if not isinstance(r, dict) or not isinstance(r.get("sections"), dict):
            raise ConfigError(f"defence report {Path(p) / 'report.json'} has no 'sections': not a defence report")
    out = dict(reports[0])
    out["sections"] = {}
    out["section_seconds"] = {}
    for r in reports:
        out["sections"] = _deep_merge(out["sections"], r["sections"])
        for k, v in r.get("section_seconds", {}).items():
            out["section_seconds"][k] = out["section_seconds"].get(k, 0.0) + v
        out["training"] = {**r.get("training", {}), **out.get("training", {})}
    order = ["undefended", "fgsm_at", "pgd_at", "trades", "doa", "distillation", "ensemble", "jpeg", "bit_depth",
             "median", "resize_pad", "smoothing"]
    for sec in ("table", "masking"):
        if sec in out["sections"]:
            d = out["sections"][sec]
            out["sections"][sec] = {k: d[k] for k in sorted(d, key=lambda k: order.index(k) if k in order else 99)}
    refresh_masking(out)
    out["wall_seconds"] = max(r["wall_seconds"] for r in reports)
    out["command"] = command or " ; ".join(r["command"] for r in reports)
    out["parts"] = [p for r in reports for p in (r.get("parts") or [  # a merged report brings its own parts
        {"command": r["command"], "config": r["config"], "wall_seconds": r["wall_seconds"], "date": r["date"]}])]
    write_report(out, out_dir)
    return out


def derive_findings(report: dict[str, Any]) -> list[str]:
    """The issue's three required observations, stated with the table's numbers (top-1, 95% Wilson)."""
    tab = report["sections"].get("table")
    if not tab:
        return []
    eps = report["config"]["eps"]
    out = []

    def cell(name: str, e: int, kind: str) -> str:
        return pct(tab[name]["eps"][str(e)][f"{kind}_top1"], ci=True)

    def att(name: str, e: int, a: str) -> str:
        return pct(tab[name]["eps"][str(e)]["attacks"].get(a, {}).get("top1"), ci=True)

    if "distillation" in tab:
        out.append("(a) Defensive distillation: under gradient (CE) attacks top-1 stays at "
                   + ", ".join(f"{cell('distillation', e, 'non_adaptive')} (ε={e})" for e in eps)
                   + "; under the C&W-margin PGD on the logits it falls to "
                   + ", ".join(f"{att('distillation', e, 'pgd_cw')} (ε={e})" for e in eps)
                   + " (worst case over all attacks: "
                   + ", ".join(f"{cell('distillation', e, 'adaptive')}" for e in eps) + ").")
    for name, adaptive in (("jpeg", "bpda_pgd_ce"), ("bit_depth", "bpda_pgd_ce"), ("resize_pad", "eot_pgd_ce")):
        if name in tab:
            how = "BPDA" if adaptive.startswith("bpda") else "EOT"
            out.append(f"(b) {name}: non-adaptive top-1 " + ", ".join(
                f"{cell(name, e, 'non_adaptive')} (ε={e})" for e in eps) + f"; {how}-PGD alone: " + ", ".join(
                f"{att(name, e, adaptive)}" for e in eps) + "; adaptive worst case: " + ", ".join(
                f"{cell(name, e, 'adaptive')}" for e in eps) + ".")
    for name in ("pgd_at", "trades", "fgsm_at", "doa"):
        if name in tab and "undefended" in tab:
            out.append(f"(c) {name} vs undefended, adaptive worst-case top-1: " + ", ".join(
                f"ε={e}: {cell(name, e, 'adaptive')} vs {cell('undefended', e, 'adaptive')}" for e in eps)
                + f"; clean {pct(tab[name]['clean_top1'])} vs {pct(tab['undefended']['clean_top1'])}.")
    m = report["sections"].get("masking")
    if m:
        flagged = [f"{n}: {', '.join(r['flags'])}" for n, r in m.items() if r["flags"]]
        clean = [n for n, r in m.items() if not r["flags"]]
        out.append("Masking checks flagged — " + ("; ".join(flagged) if flagged else "nothing")
                   + ". No flag: " + (", ".join(clean) or "none") + ".")
    return out


def refresh_masking(report: dict[str, Any]) -> None:
    """Fill each masking entry's white-box / transfer success at ε = 8 from the table (when its own run had no
    table) and recompute its flags."""
    from pipelines.defences.adaptive import MaskingReport

    tab = report["sections"].get("table") or {}
    for name, m in (report["sections"].get("masking") or {}).items():
        row = tab.get(name, {}).get("eps", {}).get("8", {}).get("attacks", {})
        wb = next((row[a] for a in ("pgd_ce", "pgd_ce_base", "pgd_ce_member0") if a in row), None)
        tr = row.get("transfer_pgd_ce_undefended")
        if m.get("whitebox_success") is None and wb:
            m["whitebox_success"] = 1 - wb["top1"]["value"]
        if m.get("transfer_success") is None and tr:
            m["transfer_success"] = 1 - tr["top1"]["value"]
        keep = {k: v for k, v in m.items() if k in MaskingReport.__dataclass_fields__ and k != "flags"}
        m["flags"] = MaskingReport(**keep).finalise().flags
