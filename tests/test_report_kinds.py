"""``testbed report`` on every kind of run directory (patch, sticker, eyeglass, survival, demo, defences, evaluate)
and ``testbed report --compare`` with its CSV: each report has its plots and carries the run's own figures."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from pipelines.main import main
from testbed.stats import wilson

DOCS = Path(__file__).resolve().parent.parent / "docs" / "reports"
PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def _pct(k: int, n: int) -> str:
    """A rate as ``pipelines.report.ci`` prints it."""
    r = wilson(k, n)
    return f"{100 * r.value:.1f} [{100 * r.low:.0f}–{100 * r.high:.0f}] (n={n})"


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    from test_patch import _register_tiny_cli_model

    run = tmp_path_factory.mktemp("kinds") / "patch"
    assert main(["patch", "--model", _register_tiny_cli_model(), "--target", "two", "--scenes", "chelsea",
                 "--area", "0.2", "--steps", "4", "--batch-size", "2", "--eval", "10", "--eot", "thys",
                 "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    return run


def _check_attack_report(run: Path, capsys, *, n: int, loss_curve: bool = True) -> str:
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert f"report: {run / 'report.md'}" in capsys.readouterr().out
    m = json.loads((run / "metrics.json").read_text())
    md = (run / "report.md").read_text()
    k = round(m["success_rate"] * n)
    assert m["eval_samples"] == n and f"| optimised (held-out EOT draws) | {_pct(k, n)} |" in md
    assert _is_png(run / "plots" / "success.png") and "![success](plots/success.png)" in md
    assert _is_png(run / "plots" / "loss.png") == loss_curve
    data = json.loads((run / "report.json").read_text())
    assert data["rates"]["optimised (held-out EOT draws)"]["k"] == k
    assert (run / "report.html").read_text().startswith("<!doctype html>")
    return md


def test_report_on_a_patch_run(patch_run, capsys):
    md = _check_attack_report(patch_run, capsys, n=10)
    assert "Model eot-test-tiny; goal: target two; 4 steps" in md
    assert json.loads((patch_run / "report.json").read_text())["loss_history_steps"] == 4
    before = (patch_run / "report.md").read_text()
    assert main(["report", str(patch_run)]) == 0 and (patch_run / "report.md").read_text() == before  # idempotent
    # the run still resumes as itself after its report was written (report files are not part of the run)
    from test_patch import _register_tiny_cli_model

    assert main(["patch", "--model", _register_tiny_cli_model(), "--target", "two", "--scenes", "chelsea",
                 "--area", "0.2", "--steps", "4", "--batch-size", "2", "--eval", "10", "--eot", "thys",
                 "--out", str(patch_run), "--no-progress", "--device", "cpu"]) == 0


def test_report_on_a_sticker_run(tmp_path, capsys):
    run = tmp_path / "sticker"
    assert main(["sticker", "--sign", "stop", "--target", "no_entry", "--steps", "2", "--batch-size", "2", "--eval",
                 "4", "--eval-batch-size", "4", "--out", str(run), "--no-progress", "--device", "cpu",
                 "--allocator", "glibc"]) == 0
    md = _check_attack_report(run, capsys, n=4)
    assert "goal: stop -> no_entry" in md and "| un-attacked (same draws) |" in md


def test_report_on_an_eyeglass_run_built_from_the_run_dir_format(tmp_path, capsys):
    """An eyeglass run directory as the loop writes it (marker, config.json, metrics.json, a checked checkpoint)."""
    from testbed.runs import RunDir

    run = RunDir(tmp_path / "eye", {"attack": "eyeglass", "mode": "dodge", "wearer": ["astronaut"], "target": [],
                                    "steps": 30, "batch_size": 4, "seed": 0})
    run.save_checkpoint({"history": [1.0 - 0.02 * i for i in range(30)]}, 30)
    run.save_metrics({"attack": "eyeglass", "mode": "dodge", "success_rate": 0.75, "initial_success_rate": 0.05,
                      "clean_success_rate": 0.0, "eval_samples": 20, "steps": 30, "seed": 0, "eval_seed": 1000003,
                      "target": None, "distance_enrolled_mean": 0.71})
    md = _check_attack_report(run.path, capsys, n=20)
    assert "goal: dodge astronaut" in md and f"| initial (same draws) | {_pct(1, 20)} |" in md
    assert "face-descriptor-dlib" in md and "distance_enrolled_mean: 0.71" in md


def test_report_refuses_an_unfinished_attack_run_and_a_foreign_folder(tmp_path, capsys):
    from testbed.runs import RunDir

    RunDir(tmp_path / "eye", {"attack": "eyeglass", "steps": 3})
    assert main(["report", str(tmp_path / "eye")]) == 2
    assert "has not finished" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    assert main(["report", str(tmp_path / "junk")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_on_a_survival_run(tmp_path, capsys):
    run = tmp_path / "survival"
    shutil.copytree(DOCS / "survival", run)
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    rows = json.loads((run / "report.json").read_text())["rows"]
    for r in rows:  # every row's figures, as the survival command printed them
        d = r["printed"]
        assert f"{d['k']}/{d['n']} = {100 * d['value']:.1f}%" in md
    assert _is_png(run / "plots" / "survival.png") and "![survival](plots/survival.png)" in md
    assert "<img" in (run / "report.html").read_text()


def test_report_on_a_demo_run(tmp_path, capsys):
    run = tmp_path / "demo"
    shutil.copytree(DOCS / "demo", run)
    assert main(["report", str(run)]) == 0
    assert main(["report", str(run)]) == 0  # twice: one Plots section, not two
    md = (run / "report.md").read_text()
    assert md.count("## Plots") == 1 and "![target_success](plots/target_success.png)" in md
    assert _is_png(run / "plots" / "target_success.png")
    assert "Before / after" in md  # the demo's own report is kept


def test_report_on_a_defences_run(tmp_path, capsys):
    run = tmp_path / "defences"
    shutil.copytree(DOCS / "defences_sign", run)
    assert main(["report", str(run)]) == 0
    assert _is_png(run / "accuracy_vs_eps.png") and "issue 8" not in (run / "report.md").read_text()


def test_compare_runs_in_one_table_and_csv(patch_run, tmp_path, capsys):
    demo = tmp_path / "demo"
    shutil.copytree(DOCS / "demo", demo)
    kurakin = tmp_path / "kurakin"
    shutil.copytree(DOCS / "kurakin_mobilenet_v2", kurakin)
    out_csv = tmp_path / "cmp.csv"
    capsys.readouterr()
    assert main(["report", "--compare", str(patch_run), str(demo), str(kurakin), "--csv", str(out_csv)]) == 0
    table = capsys.readouterr().out
    m = json.loads((patch_run / "metrics.json").read_text())
    k = round(m["success_rate"] * 10)
    assert f"| {patch_run} | patch | eot-test-tiny | target two | optimised (held-out EOT draws) | {_pct(k, 10)} |" in table
    assert f"| {demo} | demo | mobilenet_v2 | target toaster | held-out EOT success | {_pct(159, 200)} |" in table
    assert "| bim ε=16 | adversarial photo top-1 accuracy |" in table
    with out_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    printed = next(r for r in rows if r["run"] == str(demo) and r["measure"] == "scenes: printed + photographed patch")
    assert (printed["k"], printed["n"]) == ("9", "60")
    assert float(printed["wilson_low"]) == pytest.approx(wilson(9, 60).low, abs=1e-5)
    assert {r["kind"] for r in rows} == {"patch", "demo", "experiment (kurakin)"}
    assert not (patch_run / "report.csv").exists()  # --compare reads, it writes only the CSV asked for


def test_report_on_a_live_run_built_from_its_log(tmp_path, capsys):
    """A `testbed live` folder: log.jsonl (one record per frame, then the closing summary record)."""
    run = tmp_path / "live"
    run.mkdir()
    labels = ["espresso"] * 7 + ["cup"] * 3
    recs = [{"seq": i, "t": 0.5 + 0.1 * i, "top5": [[lab, 0.9], ["other", 0.05]], "fps": 9.5, "latency_ms": 30.0,
             "secure": False, "rectified": False, "note": None} for i, lab in enumerate(labels)]
    summary = {"frames": 10, "seconds": 1.6, "startup_s": 0.5, "steady_fps": 10.0, "stopped_by": "end of source",
               "video": str(run / "annotated.webm"), "video_frames": 10, "codec": "VP80", "video_fps": 10.0,
               "video_fps_from": "source", "secure": {"accepted": 9, "rejected": {"bad_tag": 1}}, "error": None}
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + json.dumps({"summary": summary}) + "\n")
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert f"| espresso | {_pct(7, 10)} |" in md and f"| cup | {_pct(3, 10)} |" in md
    assert "10.0 frames/s steady" in md and "9 frames accepted, 1 rejected (bad_tag 1)" in md
    assert _is_png(run / "plots" / "top1_labels.png") and _is_png(run / "plots" / "rate.png")
    assert main(["report", "--compare", str(run)]) == 0
    assert f"| top-1 label espresso | {_pct(7, 10)} |" in capsys.readouterr().out


# --- live runs with a detector ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector_live_run(tmp_path_factory):
    """A real ``testbed live`` log of a detector: test_person_patch's toy detector (a red 32 x 64 rectangle is a
    "person"), registered here, over a loopback MJPEG stream of four frames with 2, 0, 1 and 2 persons."""
    import numpy as np
    from mjpeg_stream import mjpeg_stream
    from test_person_patch import ToyPersonDetector, scene

    from pipelines.live import LiveConfig, run_live
    from testbed.models.base import _REGISTRY
    from testbed.models.registry import ModelEntry, register_model

    register_model(ModelEntry(name="toy-live-detector", task="detector", builder=ToyPersonDetector,
                              input_size=(128, 128), labels=ToyPersonDetector.labels))
    images = [scene([(8, 8), (72, 40)]), scene([]), scene([(40, 56)]), scene([(8, 8), (72, 40)], seed=3)]
    bgr = [np.ascontiguousarray((x[0].permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8))
           for x in images]
    run = tmp_path_factory.mktemp("live") / "detector"
    try:
        with mjpeg_stream(lambda: iter(bgr), path="people.mjpg") as url:
            summary = run_live(LiveConfig(source=url, model="toy-live-detector", out=run, max_frames=4, width=128,
                                          height=128, codec="mp4v"))
    finally:
        _REGISTRY.pop("toy-live-detector", None)
    assert summary.frames == 4
    return run


def _log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_report_on_a_live_run_with_a_detector(detector_live_run, tmp_path, capsys):
    run = tmp_path / "live"
    shutil.copytree(detector_live_run, run)
    recs = _log_records(run)
    frames = recs[:-1]
    assert [len(f["boxes"]) for f in frames] == [2, 0, 1, 2] and all(f["top5"] == [] for f in frames)
    scores = sorted(b[4] for f in frames for b in f["boxes"])
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert recs[-1]["summary"]["model"] == "toy-live-detector"
    assert "(toy-live-detector, detector)" in md and f"| any label | {_pct(3, 4)} |" in md
    assert f"| person | {_pct(3, 4)} |" in md
    assert "| thing |" not in md  # a label never detected is not listed
    assert ("5 detections in 4 frames: mean 1.25, median 1.5, max 2 per frame; frames with k detections: "
            "0: 1, 1: 1, 2: 2.") in md
    assert f"| person | 5 | {scores[0]:.3f} |" in md and f"| {scores[-1]:.3f} |" in md
    t = [f["t"] for f in frames]
    assert f"Logged frames from {min(t):.2f} s to {max(t):.2f} s" in md
    seqs = [f["seq"] for f in frames]
    assert f"frame sequence numbers {seqs[0]}–{seqs[-1]}: 0 missing" in md
    for plot in ("detection_frames.png", "detections.png", "rate.png"):
        assert _is_png(run / "plots" / plot) and f"(plots/{plot})" in md
    data = json.loads((run / "report.json").read_text())
    assert data["model_task"] == "detector" and data["frames_with_detection"]["person"]["k"] == 3
    assert data["scores"]["person"]["median"] == pytest.approx(scores[2])
    assert data["detections_per_frame"]["histogram"] == {"0": 1, "1": 1, "2": 2}
    assert main(["report", "--compare", str(run)]) == 0
    assert f"| toy-live-detector | frames | >= 1 detection: person | {_pct(3, 4)} |" in capsys.readouterr().out


def test_report_on_a_detector_log_counts_lost_and_refused_frames(detector_live_run, tmp_path):
    """A frame record lost from the log and the secure path's refused / overwritten frames are reported."""
    run = tmp_path / "live"
    shutil.copytree(detector_live_run, run)
    recs = _log_records(run)
    del recs[1]  # the frame with no person
    recs[-1]["summary"]["secure"] = {"accepted": 4, "rejected": {"auth_failed": 1}, "overwritten": 2}
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "1 missing between the logged frames" in md
    assert "the summary counts 4 frames; the log holds 3 frame records" in md
    assert "4 frames accepted, 1 rejected (auth_failed 1) by the verifier" in md and "2 dropped" in md
    assert f"| person | {_pct(3, 3)} |" in md


@pytest.mark.parametrize("damage, message", [
    ("box4", "a box is not [x1, y1, x2, y2, score]"),
    ("labels", "'boxes' and 'labels' must be lists of the same length"),
    ("score", "score outside [0, 1]"),
    ("truncated", "line 4 is not JSON"),
    ("mixed", "mixes classifier (top5) and detector (boxes) frame records"),
    ("summary", "the summary's seconds is not a number"),
    ("time", "'t' is not a number"),
])
def test_report_refuses_a_corrupt_detector_log_in_one_line(detector_live_run, tmp_path, capsys, damage, message):
    run = tmp_path / "live"
    shutil.copytree(detector_live_run, run)
    recs = _log_records(run)
    if damage == "box4":
        recs[0]["boxes"][0] = recs[0]["boxes"][0][:4]
    elif damage == "labels":
        recs[0]["labels"] = recs[0]["labels"][:1]
    elif damage == "score":
        recs[2]["boxes"][0][4] = 1.5
    elif damage == "mixed":
        recs[1] = {**recs[1], "top5": [["cup", 0.9]]}
        del recs[1]["boxes"]
    elif damage == "summary":
        recs[-1]["summary"]["seconds"] = "soon"
    elif damage == "time":
        recs[3]["t"] = "late"
    lines = [json.dumps(r) for r in recs]
    if damage == "truncated":  # a run killed while writing its fourth record
        lines = lines[:3] + [lines[3][: len(lines[3]) // 2]]
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (run / "report.md").exists()
