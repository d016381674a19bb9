"""Shared report rendering: number formats, plots, the vulnerability-score table and Markdown -> HTML.

A run's report (``report.md``, ``report.html`` with the same content, ``report.json`` with every metric's k, n and
Wilson 95% interval, plots under ``plots/``) is written by ``pipelines.experiment.write_report``: the common header
there, each kind's section by the kind itself (``render_report`` in ``pipelines/kurakin.py``,
``pipelines/transfer.py``), drawing on what is here. This module imports no experiment kind and not the runner.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Iterable

from pipelines.metrics import Rate
from testbed.imageio import load_image
from testbed.runs import write_atomic


def _rate(r: Rate | dict[str, Any] | None) -> tuple[float, float, float, int] | None:
    if r is None:
        return None
    if isinstance(r, dict):
        return float(r["value"]), float(r["low"]), float(r["high"]), int(r["n"])
    return r.value, r.low, r.high, r.n


def pct(r: Rate | dict[str, Any] | None) -> str:
    """A rate as a percentage with one decimal; ``n/a`` for no rate or n = 0."""
    v = _rate(r)
    return "n/a" if v is None or v[3] == 0 else f"{100 * v[0]:.1f}"


def ci(r: Rate | dict[str, Any] | None) -> str:
    """A rate (``Rate`` or its ``as_dict()``) as ``value [low–high] (n=N)`` in percent (Wilson 95% interval)."""
    v = _rate(r)
    if v is None or v[3] == 0:
        return "n/a (n=0)"
    return f"{100 * v[0]:.1f} [{100 * v[1]:.0f}–{100 * v[2]:.0f}] (n={v[3]})"


def pair(rs: tuple[Rate, Rate]) -> str:
    """Top-1 / top-5 rates as ``a / b`` percentages."""
    return f"{pct(rs[0])} / {pct(rs[1])}"


def paper(t: tuple[float, float] | None) -> str:
    """A paper's top-1 / top-5 figures, or a dash where the paper has none."""
    return "—" if t is None else f"{t[0]:.1f} / {t[1]:.1f}"


def md_table(header: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """A Markdown table as lines: the header, the separator and one line per row (cells formatted with ``str``)."""
    return (["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rate_bar_data(r: Rate | dict[str, Any] | None) -> tuple[float, float, float]:
    """(value, lower error, upper error) in percent of a rate for a bar with a Wilson 95% error bar; zeros for no
    rate or n = 0."""
    v = _rate(r)
    if v is None or v[3] == 0:
        return 0.0, 0.0, 0.0
    return 100 * v[0], max(0.0, 100 * (v[0] - v[1])), max(0.0, 100 * (v[2] - v[0]))


def plot_rate_bars(groups: dict[str, dict[str, Rate | dict[str, Any] | None]], path: Path, *, title: str,
                   ylabel: str = "rate (%)") -> Path:
    """Grouped bars with Wilson 95% error bars: ``groups`` maps a group label (x axis) to {series: rate}; each
    series has its own colour and its n is written above its bar."""
    import numpy as np

    plt = _pyplot()
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) * max(1, len(series)) * 0.6 + 2), 3.8))
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(series):
        vals = [rate_bar_data(g.get(s)) for g in groups.values()]
        off = (i - (len(series) - 1) / 2) * width
        ax.bar(x + off, [v[0] for v in vals], width, yerr=[[v[1] for v in vals], [v[2] for v in vals]],
               capsize=3, color=cmap(i % 10), label=s)
        for xi, g in zip(x, groups.values()):
            r = _rate(g.get(s))
            if r is not None:
                ax.text(xi + off, 101, f"n={r[3]}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(x, list(groups), fontsize=7, rotation=20 if len(groups) > 3 else 0,
                  ha="right" if len(groups) > 3 else "center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 118)
    ax.set_title(f"{title} (Wilson 95% CI)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _savefig(fig, path)
    plt.close(fig)
    return path


def plot_loss(history: list[float], path: Path, *, title: str) -> Path:
    """The optimisation's loss per step, with a running mean over ~5% of the steps."""
    import numpy as np

    plt = _pyplot()
    y = np.asarray(history, dtype=float)
    steps = np.arange(1, len(y) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(steps, y, lw=0.8, alpha=0.5, color="C0", label="loss per step")
    k = max(1, len(y) // 20)
    if k > 1:
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.6, color="C1", label=f"running mean ({k} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _savefig(fig, path)
    plt.close(fig)
    return path


def plot_rate_and_latency(t: list[float], fps: list[float], latency_ms: list[float], path: Path) -> Path:
    """A live run over time: the running frame rate (left axis) and each frame's latency (right axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.plot(t, fps, color="C0")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("running frames/s", color="C0")
    ax2 = ax.twinx()
    ax2.plot(t, latency_ms, color="C1", lw=0.8)
    ax2.set_ylabel("latency per frame (ms)", color="C1")
    ax.set_title("live: frame rate and latency over the run", fontsize=9)
    _savefig(fig, path)
    plt.close(fig)
    return path


def plot_live_detections(t: list[float], per_frame: list[int], scores: dict[str, list[float]], path: Path) -> Path:
    """A live run with a detector: the scores of its detections (histogram, one colour per label, stacked) and the
    number of detections in each frame over the run."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.2))
    labels = [k for k, v in scores.items() if v]
    if labels:
        left.hist([scores[k] for k in labels], bins=20, range=(0.0, 1.0), stacked=True, label=labels)
        left.legend(fontsize=7)
    left.set_xlabel("score")
    left.set_ylabel("detections")
    left.set_title(f"scores of the {sum(len(v) for v in scores.values())} detections", fontsize=9)
    right.step(t, per_frame, where="post", color="C0")
    right.set_xlabel("seconds since start")
    right.set_ylabel("detections in the frame")
    right.set_ylim(bottom=0)
    right.yaxis.get_major_locator().set_params(integer=True)
    right.set_title(f"detections per frame ({len(per_frame)} frames)", fontsize=9)
    _savefig(fig, path)
    plt.close(fig)
    return path


def plots_section(out_dir: Path, plots: list[Path]) -> list[str]:
    """The Markdown lines of a report's ``## Plots`` section (paths relative to the report's folder)."""
    if not plots:
        return []
    return ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots] + [""]


def survival_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """The survival table as bars (digital, after print + photo, un-attacked) with Wilson intervals:
    ``plots/survival.png`` under ``out_dir``; returns the report's Plots section."""
    groups = {f"{r['kind']}: {r['goal']}": {"digital (held-out EOT)": r.get("digital"),
                                           "after print + photo": r.get("printed"),
                                           "un-attacked, same photos": r.get("clean_printed")} for r in rows}
    path = plot_rate_bars(groups, Path(out_dir) / "plots" / "survival.png", title="Attack success before and "
                          "after the print-and-photograph loop", ylabel="attack success (%)")
    return plots_section(Path(out_dir), [path])


def demo_plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    """The demo's before / after target success as bars with Wilson intervals: ``plots/target_success.png``."""
    ts = results.get("target_success") or {}
    groups = {"held-out EOT draws": {"digital patch": results.get("eot_success")},
              "scenes": {"no patch": ts.get("none"), "digital patch": ts.get("digital"),
                         "printed + photographed patch": ts.get("printed")}}
    path = plot_rate_bars(groups, Path(out_dir) / "plots" / "target_success.png",
                          title="Target success of the demo patch", ylabel="target success (%)")
    return plots_section(Path(out_dir), [path])


def plot_transfer_heatmap(matrix: dict[str, Any], path: Path) -> Path:
    """One heatmap per attack (rows source, columns target): top-1 accuracy of the target on the adversarials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    attacks = matrix["attacks"]
    sources, targets = matrix["sources"], matrix["targets"]
    # each panel wide enough for its column labels (rotated 45°, right-aligned under their column) and the
    # first panel alone carries the source names, so neighbouring panels' labels never overlap
    longest = max((len(str(t)) for t in [*sources, *targets]), default=8)
    cell = 0.75
    panel_w = max(2.6, cell * len(targets) + 0.5)
    fig, axes = plt.subplots(1, len(attacks), squeeze=False, sharey=True,
                             figsize=(panel_w * len(attacks) + 0.09 * longest + 1.4,
                                      cell * len(sources) + 0.07 * longest + 1.2))
    for n_ax, (ax, a) in enumerate(zip(axes[0], attacks)):
        m = np.array([[100 * matrix["top1"][a][s][t]["value"] for t in targets] for s in sources])
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        for i in range(len(sources)):
            for j in range(len(targets)):
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="w" if m[i, j] < 60 else "k")
        ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_yticks(range(len(sources)), sources, fontsize=7)
        ax.set_title(f"{a} ε={matrix['eps']:g}:\ntarget top-1 %", fontsize=8)
        ax.set_xlabel("target")
        if n_ax == 0:
            ax.set_ylabel("source")
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
