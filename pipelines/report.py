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
