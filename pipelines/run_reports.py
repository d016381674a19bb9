"""``testbed report``: a report for every kind of run directory, and one table across runs (``--compare``).

Kinds (recognised from what the folder holds, see :func:`run_kind`):

* ``patch`` / ``sticker`` / ``eyeglass`` (``testbed-run.json`` marker, ``config.json``, ``metrics.json``,
  ``checkpoints/``): held-out success of the optimised, the initial and (when scored) the un-attacked object, each
  k/n with a Wilson 95% interval, and the loss curve from the newest checkpoint's history;
* ``experiment`` (``testbed evaluate``; ``config.resolved.yaml``): :func:`pipelines.experiment.write_report`;
* ``live`` (``log.jsonl``): frames, start-up and steady rate, how it stopped, the time span, frames lost or refused
  (sequence gaps, the secure path's rejected and overwritten frames), the rate / latency over time and, for a
  classifier, the top-1 labels' shares or, for a detector (``boxes`` / ``labels`` records), the frames with >= 1
  detection of each label (Wilson intervals), detections per frame and the score distribution;
* ``survival`` (``report.json`` with ``rows``), ``demo`` (``results.json`` with ``target_success``),
  ``secure-eval`` (``results.json`` with ``protected``), ``defences`` (``report.json`` with ``sections``).

Each report is ``report.md`` + ``report.html`` (+ ``report.json`` where the run has none of its own) with its plots
under ``plots/``. :func:`summary_rows` gives a run's headline rates (one row per measured rate) and
:func:`compare` puts several runs' rows in one Markdown table and, optionally, a CSV file.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.report import (
    ci,
    demo_plots,
    md_table,
    md_to_html,
    plot_live_detections,
    plot_loss,
    plot_rate_and_latency,
    plot_rate_bars,
    plots_section,
    survival_plots,
)
from testbed.errors import ConfigError, TestbedError
from testbed.inputs import load_json
from testbed.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    load_checked,
    run_dir_kind,
    write_atomic,
)
from testbed.stats import Rate, wilson

ATTACK_KINDS = ("patch", "sticker", "eyeglass")
PLOTS = "plots"


# ------------------------------------------------------------------------------------------------ reading
def _json(path: Path, what: str) -> dict[str, Any]:
    data = load_json(path, what=what)
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return data


def _rate(d: Any) -> Rate | None:
    """A stored rate (``{"k", "n", ...}``) as a Rate with its Wilson interval recomputed; None if it is not one."""
    if isinstance(d, dict) and isinstance(d.get("k"), int) and isinstance(d.get("n"), int) and 0 <= d["k"] <= d["n"]:
        return wilson(d["k"], d["n"])
    return None


def _from_fraction(value: Any, n: Any) -> Rate | None:
    """A rate stored as a fraction of ``n`` draws (``metrics.json``): k = round(value * n)."""
    if not isinstance(n, int) or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return wilson(min(n, max(0, round(value * n))), n)


def run_kind(run_dir: str | Path) -> str:
    """What kind of run ``run_dir`` holds (see the module docstring); ConfigError for anything else."""
    p = Path(run_dir)
    if not p.is_dir():
        raise ConfigError(f"{p} is not a folder")
    kind = run_dir_kind(p)
    if kind is not None:
        if kind in ATTACK_KINDS or kind in ("experiment", "campaign"):
            return kind
        raise ConfigError(f"{p} is a {kind} run directory; `testbed report` reads patch, sticker, eyeglass, "
                          "experiment (evaluate), campaign, survival, demo, live, secure-eval and defences runs")
    if (p / "results.json").is_file():
        data = _json(p / "results.json", "results file")
        if "target_success" in data:
            return "demo"
        if "protected" in data and "unprotected" in data:
            return "secure-eval"
    if (p / "log.jsonl").is_file():
        return "live"
    if (p / "report.json").is_file():
        data = _json(p / "report.json", "report file")
        if isinstance(data.get("rows"), list) and isinstance(data.get("config"), dict) and "photos" in data["config"]:
            return "survival"
        if isinstance(data.get("sections"), dict):
            return "defences"
    raise ConfigError(f"{p} is not a run directory (no {CONFIG_FILE} of an attack run, no config.resolved.yaml of an "
                      "experiment, no survival / demo / live / secure-eval / defences results)")


@dataclass(frozen=True)
class SummaryRow:
    """One measured rate of one run: what ``--compare`` tabulates."""

    run: str
    kind: str
    model: str
    goal: str
    measure: str
    rate: Rate | None

    def cells(self) -> list[str]:
        return [self.run, self.kind, self.model, self.goal, self.measure, ci(self.rate)]

    def csv_cells(self) -> list[Any]:
        r = self.rate
        if r is None or r.n == 0:
            return [self.run, self.kind, self.model, self.goal, self.measure, "", 0, "", "", ""]
        return [self.run, self.kind, self.model, self.goal, self.measure, r.k, r.n, f"{r.value:.6g}",
                f"{r.low:.6g}", f"{r.high:.6g}"]


TABLE_HEADER = ["run", "kind", "model", "goal", "measure", "rate % [Wilson 95%] (n)"]
CSV_HEADER = ["run", "kind", "model", "goal", "measure", "k", "n", "rate", "wilson_low", "wilson_high"]


# ------------------------------------------------------------------------------------------------ attack runs
def _attack_goal(kind: str, cfg: dict[str, Any], m: dict[str, Any]) -> str:
    if kind == "eyeglass":
        target = m.get("target") or cfg.get("target")
        target = ", ".join(target) if isinstance(target, list) else target
        wearer = ", ".join(cfg["wearer"]) if isinstance(cfg.get("wearer"), list) else cfg.get("wearer", "")
        return f"{m.get('mode', cfg.get('mode', ''))} {wearer}" + (f" as {target}" if target else "")
    target = m.get("target_name", m.get("target", cfg.get("target")))
    if kind == "sticker":
        sign = m.get("sign", cfg.get("sign", "sign"))
        return f"{sign} -> {target}" if target is not None else f"{sign}, untargeted"
    return f"target {target}" if target is not None else "untargeted"


def _attack_model(kind: str, cfg: dict[str, Any], m: dict[str, Any]) -> str:
    """The attacked model's name (eyeglass runs attack the one face descriptor and do not record it)."""
    return str(m.get("model", cfg.get("model", "face-descriptor-dlib" if kind == "eyeglass" else "?")))


def _attack_rates(m: dict[str, Any]) -> dict[str, Rate]:
    n = m.get("eval_samples")
    rates = {"optimised (held-out EOT draws)": _from_fraction(m.get("success_rate"), n),
             "initial (same draws)": _from_fraction(m.get("initial_success_rate"), n),
             "un-attacked (same draws)": _from_fraction(m.get("clean_success_rate"), n)}
    return {k: v for k, v in rates.items() if v is not None}


def _newest_history(run_dir: Path) -> list[float] | None:
    """The loss per step from the newest intact checkpoint (read with :func:`testbed.runs.load_checked`)."""
    for path in sorted((run_dir / CHECKPOINT_DIR).glob("step_*.pt"), reverse=True):
        try:
            state = load_checked(path, what="checkpoint", expect=dict)
        except TestbedError:  # a damaged or foreign checkpoint: no loss curve from it
            continue
        hist = state.get("history")
        if isinstance(hist, list) and all(isinstance(v, (int, float)) for v in hist):
            return [float(v) for v in hist]
    return None


def _attack_report(run_dir: Path, kind: str) -> tuple[str, list[str], dict[str, Any]]:
    cfg = _json(run_dir / CONFIG_FILE, "run configuration")
    if not (run_dir / METRICS_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {METRICS_FILE}: the {kind} run has not finished; rerun its command with "
                          "the same --out to finish it, then `testbed report`")
    m = _json(run_dir / METRICS_FILE, "metrics file")
    model = _attack_model(kind, cfg, m)
    goal = _attack_goal(kind, cfg, m)
    rates = _attack_rates(m)
    plots: list[Path] = []
    if rates:
        plots.append(plot_rate_bars({goal: rates}, run_dir / PLOTS / "success.png",
                                    title=f"{kind} on {model}: attack success", ylabel="attack success (%)"))
    history = _newest_history(run_dir)
    if history:
        plots.append(plot_loss(history, run_dir / PLOTS / "loss.png",
                               title=f"{kind} on {model}: loss per optimisation step"))
    lines = [f"# {kind.capitalize()} run report: `{run_dir.name}`", "",
             (f"Model {model}; goal: {goal}; {m.get('steps', cfg.get('steps'))} steps × {cfg.get('batch_size')} EOT "
              f"draws (seed {m.get('seed', cfg.get('seed'))}); evaluation on {m.get('eval_samples')} fresh draws "
              f"(seed {m.get('eval_seed', cfg.get('eval_seed'))})."), ""]
    lines += md_table(["measure", "success % [Wilson 95%] (n)"], [[k, ci(v)] for k, v in rates.items()]) + [""]
    facts = [("final loss", m.get("final_loss")), ("optimisation seconds", m.get("optimise_seconds")),
             ("evaluation seconds", m.get("eval_seconds")), ("mask fill", m.get("mask_fill")),
             ("machine", m.get("machine"))]
    facts += [(k, m[k]) for k in sorted(m) if k.startswith("distance_") and k.endswith("_mean")]
    lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in facts if v is not None]
    lines.append("")
    images = [f for f in ("perturbation_8bit.png", "adversarial_8bit.png", "texture_8bit.png",
                          "wearer_with_frame_0.png") if (run_dir / f).is_file()]
    if images:
        lines += ["## Images", ""] + [f"![{Path(f).stem}]({f})" for f in images] + [""]
    lines += plots_section(run_dir, plots)
    data = {"kind": kind, "model": model, "goal": goal, "rates": {k: v.as_dict() for k, v in rates.items()},
            "loss_history_steps": len(history or []), "plots": [p.relative_to(run_dir).as_posix() for p in plots],
            "metrics": m}
    return f"{kind} run {run_dir.name}", lines, data


def _write(run_dir: Path, title: str, lines: list[str], data: dict[str, Any] | None) -> Path:
    md = "\n".join(lines) + "\n"
    write_atomic(run_dir / "report.md", md)
    write_atomic(run_dir / "report.html", md_to_html(md, title))
    if data is not None:
        write_atomic(run_dir / "report.json", json.dumps(data, indent=1, default=str) + "\n")
    return run_dir / "report.md"


def _strip_plots(md: str) -> list[str]:
    """A report's lines without an earlier ``## Plots`` section (so re-running ``testbed report`` is idempotent)."""
    lines = md.rstrip("\n").split("\n")
    if "## Plots" in lines:
        i = lines.index("## Plots")
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("#")), len(lines))
        lines = lines[:i] + lines[j:]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines + [""]


# ------------------------------------------------------------------------------------------------ writers
def write_run_report(run_dir: str | Path) -> Path:
    """(Re)write the report of any kind of run directory (with its plots); returns report.md."""
    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    if kind == "campaign":  # testbed campaign run: one table over its cells (pipelines.campaign)
        from pipelines.campaign import write_campaign_report

        return write_campaign_report(run_dir)
    if kind == "experiment":
        import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
        from pipelines.experiment import write_report

        return write_report(run_dir)
    if kind in ATTACK_KINDS:
        title, lines, data = _attack_report(run_dir, kind)
        return _write(run_dir, title, lines, data)
    if kind == "survival":
        from pipelines.survival import SurvivalConfig, render_markdown, rows_from_dicts

        data = _json(run_dir / "report.json", "report file")
        rows = rows_from_dicts(data["rows"])
        md = render_markdown(rows, SurvivalConfig(**data["config"]), data)
        lines = md.rstrip("\n").split("\n") + [""] + survival_plots(data["rows"], run_dir)
        return _write(run_dir, "survival", lines, None)
    if kind == "demo":
        data = _json(run_dir / "results.json", "results file")
        md = (run_dir / "report.md").read_text(encoding="utf-8") if (run_dir / "report.md").is_file() else ""
        lines = (_strip_plots(md) if md else ["# testbed demo", ""]) + demo_plots(data, run_dir)
        return _write(run_dir, "testbed demo", lines, None)
    if kind == "live":
        title, lines, data = _live_report(run_dir)
        return _write(run_dir, title, lines, data)
    if kind == "secure-eval":
        data = _json(run_dir / "results.json", "results file")
        md = (run_dir / "report.md").read_text(encoding="utf-8") if (run_dir / "report.md").is_file() else ""
        groups = _secure_groups(data)
        plot = plot_rate_bars(groups, run_dir / PLOTS / "top1.png", title="secure-eval: top-1 agreement with the "
                              "clean label, unprotected vs protected path", ylabel="top-1 (%)")
        lines = (_strip_plots(md) if md else ["# secure-eval", ""]) + plots_section(run_dir, [plot])
        return _write(run_dir, "secure-eval", lines, None)
    # defences
    from pipelines.defences.report import write_report as write_defences

    write_defences(_json(run_dir / "report.json", "defence report"), run_dir)
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    write_atomic(run_dir / "report.html", md_to_html(md, "defences"))
    return run_dir / "report.md"


#: largest live log read (a day of frames at 30 frames/s is ~0.5 GB; a report needs far less)
MAX_LOG_BYTES = 256 * 2**20
#: numbers of the closing summary record the report prints
_SUMMARY_NUMBERS = ("frames", "seconds", "startup_s", "steady_fps", "video_frames", "video_fps", "rectify_failures")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_detector_record(rec: dict[str, Any], where: str) -> None:
    """A detector's frame record (``boxes`` [[x1, y1, x2, y2, score], ...] and ``labels`` aligned with them, as
    ``pipelines.live`` logs them); ConfigError naming the first thing wrong."""
    boxes, labels = rec.get("boxes"), rec.get("labels")
    if not isinstance(boxes, list) or not isinstance(labels, list) or len(boxes) != len(labels):
        raise ConfigError(f"{where}: 'boxes' and 'labels' must be lists of the same length")
    for b in boxes:
        if not (isinstance(b, list) and len(b) == 5 and all(_finite(v) for v in b)):
            raise ConfigError(f"{where}: a box is not [x1, y1, x2, y2, score] of finite numbers: {str(b)[:80]}")
        if b[2] < b[0] or b[3] < b[1] or not 0.0 <= b[4] <= 1.0:
            raise ConfigError(f"{where}: box {b} has x2 < x1, y2 < y1 or a score outside [0, 1]")
    if not all(isinstance(name, str) and name for name in labels):
        raise ConfigError(f"{where}: every label must be a non-empty string")


def _read_live_log(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, bool]:
    """(frame records, closing summary or None, whether a detector wrote them) of a live run's ``log.jsonl``: a
    classifier's frames carry a ``top5``, a detector's ``boxes`` and ``labels``. ConfigError, naming the line, for a
    foreign or corrupt file."""
    from testbed.inputs import check_input_file

    path = run_dir / "log.jsonl"
    check_input_file(path, what="live log", max_bytes=MAX_LOG_BYTES)
    frames, summary, kinds = [], None, set()
    with path.open(encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"live log {path}: line {i}"
            try:
                rec = json.loads(line)
            except ValueError:
                raise ConfigError(f"{where} is not JSON") from None
            if not isinstance(rec, dict):
                continue
            if isinstance(rec.get("summary"), dict):
                summary = rec["summary"]
                bad = [k for k in _SUMMARY_NUMBERS if summary.get(k) is not None and not _finite(summary[k])]
                if bad:
                    raise ConfigError(f"{where}: the summary's {bad[0]} is not a number")
                continue
            if "boxes" in rec:
                _check_detector_record(rec, where)
                kinds.add("detector")
            elif isinstance(rec.get("top5"), list) and rec["top5"]:
                top = rec["top5"][0]
                if not isinstance(top, list) or not top:
                    raise ConfigError(f"{where}: 'top5' must hold [label, probability] pairs")
                kinds.add("classifier")
            else:
                continue
            for key in ("t", "fps", "latency_ms"):
                if rec.get(key) is not None and not _finite(rec[key]):
                    raise ConfigError(f"{where}: {key!r} is not a number")
            frames.append(rec)
    if not frames:
        raise ConfigError(f"live log {path} has no frame records: is {run_dir} a `testbed live` folder?")
    if len(kinds) > 1:
        raise ConfigError(f"live log {path} mixes classifier (top5) and detector (boxes) frame records")
    return frames, summary, kinds == {"detector"}


def _live_top1(frames: list[dict[str, Any]]) -> dict[str, Rate]:
    """The share of frames with each top-1 label (most frequent first, at most 8 and the rest together)."""
    counts = Counter(str(f["top5"][0][0]) for f in frames)
    n = len(frames)
    top = counts.most_common(8)
    out = {label: wilson(k, n) for label, k in top}
    rest = n - sum(k for _, k in top)
    if rest:
        out["(other labels)"] = wilson(rest, n)
    return out


def _live_detections(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """A detector's frames summarised: the frames with >= 1 detection (of any label, and of each label seen, most
    frequent first) as Wilson rates, detections per frame, each label's scores."""
    n = len(frames)
    per_frame = [len(f["boxes"]) for f in frames]
    with_label: Counter[str] = Counter()
    scores: dict[str, list[float]] = {}
    for f in frames:
        with_label.update(set(f["labels"]))
        for b, name in zip(f["boxes"], f["labels"]):
            scores.setdefault(name, []).append(float(b[4]))
    shares = {"any label": wilson(sum(c > 0 for c in per_frame), n)}
    shares.update({name: wilson(k, n) for name, k in with_label.most_common()})
    return {"shares": shares, "per_frame": per_frame,
            "scores": {name: scores[name] for name, _ in with_label.most_common()}}


def _quantiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    v = np.asarray(values, dtype=float)
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"n": int(v.size), "min": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]),
            "max": float(q[4]), "mean": float(v.mean())}


def _live_integrity(frames: list[dict[str, Any]], summary: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    """What the log says about frames lost or refused: gaps in the frame sequence numbers, a summary that counts
    other frames than the log holds, the secure path's rejected (tampered, replayed, forged) and overwritten
    (dropped in the ring) frames, frames not rectified."""
    s = summary or {}
    seqs = [f["seq"] for f in frames if isinstance(f.get("seq"), int) and not isinstance(f.get("seq"), bool)]
    facts: dict[str, Any] = {}
    lines: list[str] = []
    if seqs:
        first, last = min(seqs), max(seqs)
        facts.update(seq_first=first, seq_last=last, seq_missing=(last - first + 1) - len(set(seqs)),
                     seq_repeated=len(seqs) - len(set(seqs)))
        lines.append(f"- frame sequence numbers {first}–{last}: {facts['seq_missing']} missing between the logged "
                     f"frames, {facts['seq_repeated']} repeated")
    if isinstance(s.get("frames"), int) and s["frames"] != len(frames):
        facts["summary_frames"] = s["frames"]
        lines.append(f"- the summary counts {s['frames']} frames; the log holds {len(frames)} frame records")
    sec = s.get("secure")
    if isinstance(sec, dict):
        rej = sec.get("rejected") if isinstance(sec.get("rejected"), dict) else {}
        facts.update(secure_accepted=sec.get("accepted", 0), secure_rejected=rej,
                     secure_overwritten=sec.get("overwritten", 0))
        lines.append(f"- secure path: {sec.get('accepted', 0)} frames accepted, {sum(rej.values())} rejected "
                     f"({', '.join(f'{k} {v}' for k, v in sorted(rej.items())) or 'none'}) by the verifier "
                     f"(tampered, replayed or forged records), {sec.get('overwritten', 0)} dropped (overwritten in "
                     "the ring before they were read)")
    if s.get("rectify_failures"):
        facts["rectify_failures"] = s["rectify_failures"]
        lines.append(f"- {s['rectify_failures']} frames not rectified (markers not found)")
    return lines, facts


def _live_header(run_dir: Path, frames: list[dict[str, Any]], summary: dict[str, Any] | None,
                 what: str) -> list[str]:
    s = summary or {}
    model = f"{s['model']}, " if isinstance(s.get("model"), str) and s["model"] else ""
    lines = [f"# Live run report: `{run_dir.name}` ({model}{what})", ""]
    if summary:
        lines += [(f"{s.get('frames')} frames in {float(s.get('seconds') or 0):.1f} s: start-up "
                   f"{float(s.get('startup_s') or 0):.2f} s, then {float(s.get('steady_fps') or 0):.1f} frames/s "
                   f"steady; stopped by {s.get('stopped_by')}; video {Path(str(s.get('video'))).name} "
                   f"({s.get('video_frames')} frames, {s.get('codec')}, {s.get('video_fps')} fps from "
                   f"{s.get('video_fps_from')})."), ""]
        if s.get("error"):
            lines += [f"Ended with an error: {s['error']}", ""]
    else:
        lines += ["The log has no closing summary record (the run did not finish in order).", ""]
    t = [float(f["t"]) for f in frames if f.get("t") is not None]
    if t:
        lines += [f"Logged frames from {min(t):.2f} s to {max(t):.2f} s after the start ({max(t) - min(t):.2f} s).",
                  ""]
    return lines


def _live_report(run_dir: Path) -> tuple[str, list[str], dict[str, Any]]:
    frames, summary, detector = _read_live_log(run_dir)
    t = [float(f["t"]) if f.get("t") is not None else float(i) for i, f in enumerate(frames)]
    rate_plot = plot_rate_and_latency(t, [float(f.get("fps", 0.0)) for f in frames],
                                      [float(f.get("latency_ms", 0.0)) for f in frames], run_dir / PLOTS / "rate.png")
    integrity, facts = _live_integrity(frames, summary)
    data: dict[str, Any] = {"kind": "live", "model": (summary or {}).get("model"),
                            "model_task": "detector" if detector else "classifier",
                            "frames": len(frames), "summary": summary, "time_span_s": [min(t), max(t)],
                            "lost_or_refused": facts}
    if detector:
        lines = _live_header(run_dir, frames, summary, "detector")
        d = _live_detections(frames)
        n = len(frames)
        plots = [plot_rate_bars({"frames with >= 1 detection": dict(d["shares"])},
                                run_dir / PLOTS / "detection_frames.png",
                                title=f"live: share of the {n} frames with at least one detection of each label",
                                ylabel="frames (%)"),
                 plot_live_detections(t, d["per_frame"], d["scores"], run_dir / PLOTS / "detections.png"),
                 rate_plot]
        counts = dict(sorted(Counter(d["per_frame"]).items()))  # {k detections: frames}, increasing k
        per = _quantiles([float(c) for c in d["per_frame"]])
        lines += ["## Frames with at least one detection", ""]
        lines += md_table(["label", "frames % [Wilson 95%] (n)"], [[k, ci(v)] for k, v in d["shares"].items()])
        lines += ["", ("Only the labels detected at least once are listed; a detection is one the detector "
                       "returned (at its own score threshold)."), "", "## Detections per frame", "",
                  (f"{sum(d['per_frame'])} detections in {n} frames: mean {per['mean']:.2f}, median "
                   f"{per['median']:g}, max {per['max']:g} per frame; frames with k detections: "
                   + ", ".join(f"{k}: {v}" for k, v in counts.items()) + "."), "", "## Scores", ""]
        score_rows = [[name] + [f"{q[k]:.3f}" if k != "n" else str(q[k])
                                for k in ("n", "min", "q25", "median", "q75", "max", "mean")]
                      for name, q in ((name, _quantiles(v)) for name, v in d["scores"].items())]
        lines += (md_table(["label", "detections", "min", "25%", "median", "75%", "max", "mean"], score_rows)
                  if score_rows else ["No detection in any frame."]) + [""]
        data.update(frames_with_detection={k: v.as_dict() for k, v in d["shares"].items()},
                    detections_per_frame={**per, "total": sum(d["per_frame"]), "histogram": counts},
                    scores={name: _quantiles(v) for name, v in d["scores"].items()})
    else:
        lines = _live_header(run_dir, frames, summary, "classifier")
        shares = _live_top1(frames)
        plots = [plot_rate_bars({"top-1 label": dict(shares)}, run_dir / PLOTS / "top1_labels.png",
                                title=f"live: share of the {len(frames)} frames with each top-1 label",
                                ylabel="frames (%)"), rate_plot]
        lines += md_table(["top-1 label", "frames % [Wilson 95%] (n)"], [[k, ci(v)] for k, v in shares.items()])
        lines += [""]
        data["top1_shares"] = {k: v.as_dict() for k, v in shares.items()}
    lines += ["## Frames lost or refused", ""] + (integrity or ["- nothing recorded"]) + [""]
    lines += plots_section(run_dir, plots)
    data["plots"] = [q.relative_to(run_dir).as_posix() for q in plots]
    return f"live run {run_dir.name}", lines, data


def _secure_groups(data: dict[str, Any]) -> dict[str, dict[str, Rate | None]]:
    groups: dict[str, dict[str, Rate | None]] = {}
    for path in ("unprotected", "protected"):
        for exp, r in (data.get(path) or {}).items():
            if isinstance(r, dict) and isinstance(r.get("top1_n"), int):
                k = r.get("top1_correct", 0)
                groups.setdefault(exp, {})[path] = wilson(int(k), r["top1_n"]) if 0 <= k <= r["top1_n"] else None
    return groups


# ------------------------------------------------------------------------------------------------ summaries
def _rows_attack(run_dir: Path, kind: str) -> list[SummaryRow]:
    cfg = _json(run_dir / CONFIG_FILE, "run configuration")
    if not (run_dir / METRICS_FILE).is_file():
        raise ConfigError(f"{run_dir} has no {METRICS_FILE}: the {kind} run has not finished")
    m = _json(run_dir / METRICS_FILE, "metrics file")
    model, goal = _attack_model(kind, cfg, m), _attack_goal(kind, cfg, m)
    return [SummaryRow(str(run_dir), kind, model, goal, k, v) for k, v in _attack_rates(m).items()]


def _rows_experiment(run_dir: Path) -> list[SummaryRow]:
    if not (run_dir / "report.json").is_file():
        write_run_report(run_dir)
    data = _json(run_dir / "report.json", "report file")
    cfg = data.get("config") or {}
    out = []
    for r in data.get("rows") or []:  # kurakin: accuracy after the channel, per attack and ε
        out.append(SummaryRow(str(run_dir), f"experiment ({cfg.get('kind')})", str(r.get("model")),
                              f"{r.get('attack')} ε={r.get('eps'):g}", "adversarial photo top-1 accuracy",
                              _rate((r.get("adv_photo") or {}).get("top1"))))
    for s in data.get("scores") or []:  # every kind: the scored findings (success among the eligible images)
        f = s.get("finding") or {}
        if isinstance(f.get("n"), int):
            out.append(SummaryRow(str(run_dir), f"experiment ({cfg.get('kind')})", ", ".join(cfg.get("models", [])),
                                  str(f.get("title")), "finding success", _from_fraction(f.get("success_rate"), f["n"])))
    return out


def summary_rows(run_dir: str | Path) -> list[SummaryRow]:
    """The headline rates of one run directory (any kind), one row per measured rate."""
    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    name = str(run_dir)
    if kind in ATTACK_KINDS:
        return _rows_attack(run_dir, kind)
    if kind == "campaign":  # one row per finished cell (each cell is an attack run directory)
        from pipelines.campaign import read_status

        return [r for key, st in read_status(run_dir).items()
                if st.get("state") == "done" and st.get("attack") != "digital"
                for r in summary_rows(run_dir / "cells" / key)]
    if kind == "experiment":
        return _rows_experiment(run_dir)
    if kind == "survival":
        data = _json(run_dir / "report.json", "report file")
        return [SummaryRow(name, f"survival ({r.get('kind')})", str(r.get("model")), str(r.get("goal")), measure,
                           _rate(r.get(key)))
                for r in data["rows"] for key, measure in (("digital", "digital (held-out EOT)"),
                                                          ("printed", "after print + photo"),
                                                          ("clean_printed", "un-attacked, same photos"))]
    if kind == "demo":
        data = _json(run_dir / "results.json", "results file")
        cfg = data.get("config") or {}
        model, goal = str(cfg.get("model", "?")), f"target {cfg.get('target', '?')}"
        ts = data.get("target_success") or {}
        return [SummaryRow(name, "demo", model, goal, "held-out EOT success", _rate(data.get("eot_success")))] + [
            SummaryRow(name, "demo", model, goal, f"scenes: {label}", _rate(ts.get(key)))
            for key, label in (("none", "no patch"), ("digital", "digital patch"),
                               ("printed", "printed + photographed patch"))]
    if kind == "live":
        frames, summary, detector = _read_live_log(run_dir)
        model = str((summary or {}).get("model") or "")  # logs written before the summary named it: ""
        if detector:
            return [SummaryRow(name, "live (detector)", model, "frames", f">= 1 detection: {label}", r)
                    for label, r in _live_detections(frames)["shares"].items()]
        return [SummaryRow(name, "live", model, "frames", f"top-1 label {label}", r)
                for label, r in _live_top1(frames).items()]
    if kind == "secure-eval":
        data = _json(run_dir / "results.json", "results file")
        return [SummaryRow(name, "secure-eval", "mobilenet_v2", exp, f"top-1, {path} path", r)
                for exp, g in _secure_groups(data).items() for path, r in g.items()]
    data = _json(run_dir / "report.json", "defence report")
    eps = (data.get("config") or {}).get("eps") or []
    rows = []
    for name_d, row in ((data.get("sections") or {}).get("table") or {}).items():
        rows.append(SummaryRow(name, "defences", name_d, "clean", "top-1 accuracy", _rate(row.get("clean_top1"))))
        for e in eps:
            cell = (row.get("eps") or {}).get(str(e)) or {}
            rows.append(SummaryRow(name, "defences", name_d, f"adaptive attacks ε={e}/255", "top-1 accuracy",
                                   _rate(cell.get("adaptive_top1"))))
    return rows


def compare(run_dirs: list[str | Path], *, csv_path: str | Path | None = None) -> tuple[str, list[SummaryRow]]:
    """One Markdown table of every run's headline rates (and the same rows as CSV at ``csv_path``)."""
    rows = [r for d in run_dirs for r in summary_rows(d)]
    table = "\n".join(md_table(TABLE_HEADER, [r.cells() for r in rows])) + "\n"
    if csv_path is not None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_HEADER)
        w.writerows(r.csv_cells() for r in rows)
        write_atomic(Path(csv_path), buf.getvalue())
    return table, rows



__all__ = ["SummaryRow", "compare", "run_kind", "summary_rows", "write_run_report"]
