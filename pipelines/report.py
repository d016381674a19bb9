"""Reports from a run directory: ``report.md``, ``report.html`` (same content, images inlined by path),
``report.json`` (every metric with k, n and its Wilson 95% interval) and matplotlib plots under ``plots/``.

Everything is recomputed from the stored cells, so a report can be regenerated at any time
(``testbed report RUN_DIR``) and a partial run reports the cells it has.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from pipelines.experiment import write_atomic
from pipelines.metrics import Rate
from testbed.errors import ConfigError
from testbed.imageio import load_image
from testbed.inputs import load_json, load_yaml


def _pct(r: Rate | None) -> str:
    if r is None or r.n == 0:
        return "n/a"
    return f"{100 * r.value:.1f}"


def _ci(r: Rate | None) -> str:
    if r is None or r.n == 0:
        return "n/a (n=0)"
    return f"{100 * r.value:.1f} [{100 * r.low:.0f}–{100 * r.high:.0f}] (n={r.n})"


def _pair(rs: tuple[Rate, Rate]) -> str:
    return f"{_pct(rs[0])} / {_pct(rs[1])}"


def _paper(t: tuple[float, float] | None) -> str:
    return "—" if t is None else f"{t[0]:.1f} / {t[1]:.1f}"


def _savefig(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------ plots
def plot_accuracy_vs_eps(rows, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    attacks = sorted({r.attack for r in rows})
    colors = dict(zip(attacks, ["C0", "C1", "C2", "C3", "C4", "C5", "C6"]))
    for ax, k, name in ((axes[0], 0, "top-1"), (axes[1], 1, "top-5")):
        for a in attacks:
            rs = sorted((r for r in rows if r.attack == a), key=lambda r: r.eps)
            eps = [r.eps for r in rs]
            for field, style, lab in (("adv_digital", "--", "digital"), ("adv_photo", "-", "after channel")):
                vals = [100 * getattr(r, field)[k].value for r in rs]
                lo = [100 * getattr(r, field)[k].low for r in rs]
                hi = [100 * getattr(r, field)[k].high for r in rs]
                ax.plot(eps, vals, style, marker="o", color=colors[a], label=f"{a} {lab}")
                if field == "adv_photo":
                    ax.fill_between(eps, lo, hi, color=colors[a], alpha=0.12)
        if rows:
            ax.axhline(100 * rows[0].clean_digital[k].value, color="k", lw=0.8, ls=":", label="clean digital")
            ax.axhline(100 * rows[0].clean_photo[k].value, color="grey", lw=0.8, ls="-.", label="clean photo")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ε (0–255 scale)")
        ax.set_title(f"{name} accuracy")
        ax.set_ylim(-2, 102)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle("Adversarial accuracy vs ε, digital (dashed) and after the channel (solid; shaded: Wilson 95% CI)",
                 fontsize=9)
    axes[1].legend(fontsize=7, loc="lower left")
    _savefig(fig, path)
    plt.close(fig)
    return path


def plot_destruction(rows, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rs = sorted(rows, key=lambda r: (r.attack, r.eps))
    labels = [f"{r.attack}\nε={r.eps:g}" for r in rs]
    x = np.arange(len(rs))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rs)), 3.8))
    for off, (field, k, name) in zip((-0.3, -0.1, 0.1, 0.3), (("destruction_average", 0, "average top-1"),
                                                            ("destruction_average", 1, "average top-5"),
                                                            ("destruction_prefiltered", 0, "prefiltered top-1"),
                                                            ("destruction_prefiltered", 1, "prefiltered top-5"))):
        v = [100 * getattr(r, field)[k].value if getattr(r, field)[k].n else 0 for r in rs]
        lo = [max(0, vv - 100 * getattr(r, field)[k].low) if getattr(r, field)[k].n else 0 for vv, r in zip(v, rs)]
        hi = [max(0, 100 * getattr(r, field)[k].high - vv) if getattr(r, field)[k].n else 0 for vv, r in zip(v, rs)]
        ax.bar(x + off, v, 0.2, yerr=[lo, hi], capsize=2, label=name)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("destruction rate (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title("Destruction rate (Kurakin et al. Eq. 1), Wilson 95% CI")
    _savefig(fig, path)
    plt.close(fig)
    return path


def plot_examples(run_dir: Path, cells: dict[str, dict], path: Path, per_row: int = 2) -> Path | None:
    """A grid: for each attack at its largest ε, the first images: clean, clean photo, adversarial, adv photo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    clean = {c["model"]: c for c in cells.values() if c.get("kind") == "clean"}
    best: dict[tuple[str, str], dict] = {}
    for c in cells.values():
        if c.get("kind") == "attack" and c.get("examples"):
            k = (c["model"], c["attack_label"])
            if k not in best or c["eps"] > best[k]["eps"]:
                best[k] = c
    for (m, a), c in sorted(best.items()):
        cl = {e["id"]: e for e in (clean.get(m, {}).get("examples") or [])}
        for e in c["examples"][:per_row]:
            if e["id"] in cl:
                rows.append((f"{a} ε={c['eps']:g}\n{e['id']}",
                             [cl[e["id"]]["digital"], cl[e["id"]]["photo"], e["adversarial"], e["photo"]]))
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for i, (name, files) in enumerate(rows):
        for j, (f, t) in enumerate(zip(files, ("clean", "clean → channel", "adversarial", "adversarial → channel"))):
            ax = axes[i][j]
            ax.imshow(load_image(run_dir / f, convert=True)[0].permute(1, 2, 0).numpy())
            ax.set_xticks([]); ax.set_yticks([])
            if i == 0:
                ax.set_title(t, fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    _savefig(fig, path)
    plt.close(fig)
    return path


def plot_transfer_heatmap(matrix: dict[str, Any], path: Path) -> Path:
    """One heatmap per attack (rows source, columns target): top-1 accuracy of the target on the adversarials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    attacks = matrix["attacks"]
    sources, targets = matrix["sources"], matrix["targets"]
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.6 * len(attacks), 3.2), squeeze=False)
    for ax, a in zip(axes[0], attacks):
        m = np.array([[100 * matrix["top1"][a][s][t]["value"] for t in targets] for s in sources])
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        for i in range(len(sources)):
            for j in range(len(targets)):
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", color="w" if m[i, j] < 60 else "k")
        ax.set_xticks(range(len(targets)), targets, rotation=30, fontsize=7)
        ax.set_yticks(range(len(sources)), sources, fontsize=7)
        ax.set_title(f"{a} ε={matrix['eps']:g}: target top-1 %", fontsize=8)
        ax.set_xlabel("target"); ax.set_ylabel("source")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    _savefig(fig, path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ markdown
def md_to_html(md: str, title: str) -> str:
    """The small Markdown subset the reports use (headings, tables, images, lists, code, paragraphs)."""
    out, table, in_code = [], [], False

    def inline(s: str) -> str:
        s = html.escape(s, quote=False)
        s = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2" style="max-width:100%">', s)
        s = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)

    def flush() -> None:
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|?[\s|:-]+\|?", r)]
            out.append("<table>")
            for i, r in enumerate(rows):
                tag = "th" if i == 0 else "td"
                cells = [c.strip() for c in r.strip().strip("|").split("|")]
                out.append("<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in cells) + "</tr>")
            out.append("</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("```"):
            flush()
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        m = re.match(r"(#+) (.*)", line)
        if m:
            n = len(m.group(1))
            out.append(f"<h{n}>{inline(m.group(2))}</h{n}>")
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
             "th{background:#eee}code,pre{background:#f5f5f5}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def scores_section(findings: list) -> tuple[list[str], list[dict]]:
    """A Markdown table of CVSS v3.1 / v4.0 base scores and ATLAS ids (``pipelines.scoring``) for the findings."""
    from pipelines.scoring import score

    if not findings:
        return [], []
    scored = [score(f) for f in findings]
    lines = ["", "## Vulnerability scores (CVSS base metrics via `cvss`, MITRE ATLAS)", "",
             "| finding | success (n) | CVSS 3.1 | CVSS 4.0 | ATLAS |", "|---|---|---|---|---|"]
    for sc in scored:
        f = sc.finding
        lines.append(f"| {f.title} | {100 * f.success_rate:.1f}% ({f.n}) | {sc.cvss31_score} {sc.cvss31_severity} "
                     f"`{sc.cvss31_vector}` | {sc.cvss40_score} {sc.cvss40_severity} `{sc.cvss40_vector}` | "
                     f"{', '.join(sc.atlas)} |")
    return lines, [sc.as_dict() for sc in scored]


def _kurakin_markdown(run_dir: Path, cfg: dict, cells: dict, meta: dict) -> tuple[list[str], dict]:
    from pipelines.kurakin import PAPER_ACCURACY, PAPER_DESTRUCTION, PAPER_N, summarise

    rows = summarise(cells, cfg.get("prefilter_confidence", 0.8))
    rows.sort(key=lambda r: (r.model, r.attack, -r.eps))
    lines: list[str] = []
    plots = run_dir / "plots"
    if rows:
        n = rows[0].n
        reps = rows[0].reps
        lines += [f"Images per cell: **n = {n}** ({n * reps} photos per cell over {reps} repetition(s) of the "
                  f"channel); the paper used {PAPER_N}. Every number is a percentage; brackets are Wilson 95% "
                  "intervals.", ""]
        lines += ["## Accuracy: ours (MobileNetV2 unless stated) vs Kurakin et al. 2016 (Inception v3), top-1 / top-5", "",
                  "| model | method | ε | clean digital | clean photo (ours) | clean photo (paper) | adv. photo (ours) | "
                  "adv. photo (paper) | adv. digital (ours) | adv. digital (paper) |", "|---" * 10 + "|"]
        for r in rows:
            p = PAPER_ACCURACY.get((r.attack, int(r.eps)))
            lines.append(f"| {r.model} | {r.attack} | {r.eps:g} | {_pair(r.clean_digital)} | {_pair(r.clean_photo)} | "
                         f"{_paper(p and p['clean_photo'])} | {_pair(r.adv_photo)} | {_paper(p and p['adv_photo'])} | "
                         f"{_pair(r.adv_digital)} | {_paper(p and p['adv_digital'])} |")
        lines += ["", "## Destruction rate (Eq. 1): ours vs paper, top-1 / top-5", "",
                  "| model | method | ε | average (ours) | n avg (top-1 / top-5) | average (paper) | prefiltered (ours) | "
                  "n pre (top-1 / top-5) | prefiltered (paper) | ours, clean photo right |", "|---" * 10 + "|"]
        for r in rows:
            p = PAPER_DESTRUCTION.get((r.attack, int(r.eps)))
            lines.append(f"| {r.model} | {r.attack} | {r.eps:g} | {_pair(r.destruction_average)} | "
                         f"{r.destruction_average[0].n} / {r.destruction_average[1].n} | "
                         f"{_paper(p and p['average'])} | {_pair(r.destruction_prefiltered)} | "
                         f"{r.destruction_prefiltered[0].n} / {r.destruction_prefiltered[1].n} | "
                         f"{_paper(p and p['prefiltered'])} | {_pair(r.destruction_clean_photo_ok)} |")
        lines += ["", "The last column restricts Eq. 1 to images whose *clean* photo is classified correctly: the channel "
                  "alone misclassifies some clean images, and those can hardly be 'destroyed' back to the right class.",
                  "", "## All metrics with Wilson 95% intervals", "",
                  "| model | method | ε | metric | top-1 | top-5 |", "|---" * 6 + "|"]
        for r in rows:
            for f in ("clean_digital", "clean_photo", "adv_digital", "adv_photo", "destruction_average",
                      "destruction_prefiltered", "destruction_clean_photo_ok"):
                v = getattr(r, f)
                lines.append(f"| {r.model} | {r.attack} | {r.eps:g} | {f.replace('_', ' ')} | {_ci(v[0])} | {_ci(v[1])} |")
            if r.targeted_digital is not None:
                lines.append(f"| {r.model} | {r.attack} | {r.eps:g} | targeted success (l.l. class is top-1), "
                             f"digital / photo | {_ci(r.targeted_digital)} | {_ci(r.targeted_photo)} |")
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


def write_report(run_dir: str | Path) -> Path:
    """(Re)write report.md / report.html / report.json (and plots) of a run directory; returns report.md."""
    from pipelines.experiment import RunDir

    run_dir = Path(run_dir)
    cfg_file = run_dir / RunDir.CONFIG
    if not cfg_file.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {RunDir.CONFIG})")
    resolved = load_yaml(cfg_file, what="run configuration")
    if not isinstance(resolved, dict) or not isinstance(resolved.get("config"), dict):
        raise ConfigError(f"run configuration {cfg_file} has no 'config' mapping; is {run_dir} a run directory?")
    cfg = resolved["config"]
    cells = {}
    for p in sorted((run_dir / "cells").glob("*.json")):
        d = load_json(p, what="result cell")
        if not isinstance(d, dict) or not isinstance(d.get("key"), str):
            raise ConfigError(f"result cell {p} has no 'key'; delete it to recompute")
        cells[d["key"]] = d
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
        m = meta.get("machine", {})
        lines += [f"Machine: {m.get('machine')}, {m.get('cpus')} CPU cores, CUDA {m.get('cuda')}, torch "
                  f"{m.get('torch')}, {m.get('threads')} torch thread(s); last invocation "
                  f"{meta.get('seconds_this_invocation')} s, finished {meta.get('finished')}; cells computed then: "
                  f"{len(meta.get('computed', []))}, resumed from disk: {len(meta.get('skipped', []))}.", ""]
    lines += [f"Config sha256 `{resolved['sha256'][:16]}…` (full resolved config in `config.resolved.yaml`).", ""]
    if cfg["kind"] == "kurakin":
        body, data = _kurakin_markdown(run_dir, cfg, cells, meta)
    else:
        from pipelines.transfer import transfer_markdown

        body, data = transfer_markdown(run_dir, cfg, cells)
    lines += body
    md = "\n".join(lines) + "\n"
    write_atomic(run_dir / "report.md", md)
    write_atomic(run_dir / "report.html", md_to_html(md, cfg["name"]))
    write_atomic(run_dir / "report.json", json.dumps({"config": cfg, "sha256": resolved["sha256"], "run": meta,
                                                      **data}, indent=1))
    return run_dir / "report.md"
