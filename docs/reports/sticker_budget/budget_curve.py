"""Collect the stop -> speed_limit_80 budget runs into budget_curve.json and plot budget_curve.png.

Usage (after the commands in docs/signs.md, "Paper-like target"):

    .venv/bin/python docs/reports/sticker_budget/budget_curve.py --runs runs/i15 --out docs/reports/sticker_budget

reads, for each budget B, the sticker run ``RUNS/bB`` (its metrics.json: the digital success on fresh EOT draws,
the mask fraction, the time) and the survival report ``RUNS/surv_bB/report.json`` (success after the simulated
print-photo loop, the clean sign's accuracy there, the clean sign read as the target), and writes one JSON row per
budget with k, n and Wilson intervals (testbed.stats.wilson), then the plot.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BUDGETS = ("0.05", "0.10", "0.15", "0.20", "0.25")


def _rate(d: dict) -> dict:
    return {k: d[k] for k in ("k", "n", "value", "low", "high")}


def collect(runs: Path, prefix: str = "b", survival: tuple[str, ...] = ("surv_",)) -> list[dict]:
    """One row per budget; the survival report is the first of ``survival`` + prefix + budget that exists (e.g.
    ``surv100_`` before ``surv_``: a 100-photo re-run of the same draws supersedes the 50-photo one)."""
    from testbed.stats import wilson

    rows = []
    for b in BUDGETS:
        metrics = json.loads((runs / f"{prefix}{b}" / "metrics.json").read_text())
        rep = next(runs / f"{s}{prefix}{b}" / "report.json" for s in survival
                   if (runs / f"{s}{prefix}{b}" / "report.json").is_file())
        report = json.loads(rep.read_text())
        (row,) = [r for r in report["rows"] if r["kind"] == "sticker"]
        n = int(metrics["eval_samples"])
        digital = wilson(int(round(float(metrics["success_rate"]) * n)), n).as_dict()
        rows.append({
            "budget": float(b), "mask_fraction_of_sign": metrics["mask_fraction_of_sign"],
            "digital": _rate(digital), "printed": _rate(row["printed"]),
            "clean_sign": _rate(row["extra"]["clean_sign_accuracy"]),
            "clean_printed_target": _rate(row["clean_printed"]),
            "sticker_seconds": metrics.get("seconds"), "survival_seconds": row.get("seconds"),
        })
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [100 * r["mask_fraction_of_sign"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=100)
    for key, label, marker in (("digital", "fresh EOT draws (digital)", "o"),
                               ("printed", "after print + photo (simulated)", "s")):
        y = [100 * r[key]["value"] for r in rows]
        err = [[100 * (r[key]["value"] - r[key]["low"]) for r in rows],
               [100 * (r[key]["high"] - r[key]["value"]) for r in rows]]
        ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=label)
    ax.axhline(80, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("sticker area, % of the stop sign (saliency cells)")
    ax.set_ylabel("stop -> speed_limit_80 success, %")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="folder holding bB/ and surv_bB/ for each budget")
    ap.add_argument("--out", type=Path, required=True, help="folder for budget_curve.json and budget_curve.png")
    ap.add_argument("--prefix", default="b", help="run folder prefix: RUNS/<prefix>B and RUNS/surv_<prefix>B")
    ap.add_argument("--survival", nargs="+", default=["surv_"],
                    help="survival folder prefixes, first found wins (default: surv_)")
    ap.add_argument("--name", default="budget_curve", help="file stem of the JSON and PNG")
    ap.add_argument("--title", default="sign-cnn (retrained, fe403a17) sticker: success against mask budget "
                                       "(Wilson 95%)")
    args = ap.parse_args()
    rows = collect(args.runs, args.prefix, tuple(args.survival))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    plot(rows, args.out / f"{args.name}.png", args.title)
    f = lambda q: f"{q['k']}/{q['n']} = {100 * q['value']:.1f}% [{100 * q['low']:.1f}, {100 * q['high']:.1f}]"
    for r in rows:  # the table rows of docs/signs.md
        print(f"| {100 * r['budget']:.0f}% | {100 * r['mask_fraction_of_sign']:.2f}% | {f(r['digital'])} | "
              f"{f(r['printed'])} | {f(r['clean_sign'])} | {r['sticker_seconds']:.0f} s / {r['survival_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
