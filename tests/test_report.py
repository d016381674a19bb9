"""Reports: Markdown / HTML / JSON with plots, regenerated from the stored cells."""
from __future__ import annotations

import json

import pytest

import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
from pipelines.experiment import run_experiment, write_report
from pipelines.report import md_to_html
from test_experiment import tiny_config
from testbed.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "run"
    run_experiment(tiny_config(attacks=["fgsm", "iter_ll"], eps=[8, 16]), out, progress=False)
    return out


def test_report_files_and_contents(tiny_run):
    md = (tiny_run / "report.md").read_text()
    assert "n = 4" in md and "Kurakin" in md and "Wilson" in md
    assert "36.4 / 67.7" in md  # the paper's fast eps=16 adversarial photo accuracy, side by side
    assert "| fgsm | 16 |" in md and "| iter_ll | 8 |" in md
    assert "targeted success" in md
    html = (tiny_run / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.count("<table>") >= 3 and "plots/destruction.png" in html
    data = json.loads((tiny_run / "report.json").read_text())
    rows = {(r["attack"], r["eps"]): r for r in data["rows"]}
    assert set(rows) == {("fgsm", 8.0), ("fgsm", 16.0), ("iter_ll", 8.0), ("iter_ll", 16.0)}
    r = rows[("fgsm", 16.0)]["adv_photo"]["top1"]
    assert set(r) == {"k", "n", "low", "high", "value"} and r["n"] == 4 * 2  # 4 images x 2 repetitions
    for name in ("accuracy_vs_eps", "destruction", "examples"):
        assert (tiny_run / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # example images before and after the channel exist where the report says
    assert list((tiny_run / "examples").rglob("*_photo.png"))


def test_report_regenerates_identically(tiny_run):
    before = (tiny_run / "report.json").read_text()
    write_report(tiny_run)
    assert json.loads((tiny_run / "report.json").read_text())["rows"] == json.loads(before)["rows"]


def test_report_refuses_non_run_dir(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        write_report(tmp_path)


def test_md_to_html_subset():
    html = md_to_html("# T\n\n| a | b |\n|---|---|\n| 1 | `x` |\n\n![p](plots/p.png)\n- item **b**\n", "t")
    assert "<h1>T</h1>" in html and "<th>a</th>" in html and "<td><code>x</code></td>" in html
    assert '<img alt="p" src="plots/p.png"' in html and "<li>item <b>b</b></li>" in html
    assert "<script" not in md_to_html("<script>alert(1)</script>", "t")


def test_demo_quick_end_to_end(tmp_path):
    """The demo's walkthrough on tiny budgets: chart -> profile -> patch through the profile -> printout in mask
    shape -> in-situ photos -> scored as `testbed score` does, each step timed."""
    from pipelines.demo import DemoConfig, run_demo

    report = run_demo(DemoConfig(out=tmp_path, quick=True, steps=2, photos=3, chart_photos=1))
    md = report.read_text()
    assert "| no patch |" in md and "in situ: printed, cut out, photographed in the scene" in md
    res = json.loads((tmp_path / "results.json").read_text())
    ts = res["target_success"]
    assert ts["none"]["n"] == 10 and ts["digital"]["n"] == 10 and ts["printed"]["n"] == 3
    assert res["in_situ"]["success"] == ts["printed"] and res["in_situ"]["clean_same_photos"]["n"] == 3
    assert not set(res["in_situ"]["scenes"]) & set(res["classification"])  # in situ only in held-out scenes
    assert res["profile"]["photos_used"] == 1 and res["eot"]["printer_profile"] == str(tmp_path / "profile.json")
    assert json.loads((tmp_path / "patch" / "metrics.json").read_text())["target_name"] == "banana"
    assert res["eot"]["printer_profile_jitter"] == 0.03 and res["eot"]["contrast"] == [0.85, 1.3]  # in-situ-sharp
    assert [t["step"][:2] for t in res["steps"]] == ["1.", "2.", "3.", "4.", "5.", "6.", "7."]
    assert all(t["seconds"] >= 0 for t in res["steps"])
    scores = json.loads((tmp_path / "score" / "scores.json").read_text())
    assert len(scores["photos"]) == 3 and scores["rate"] == ts["printed"]
    assert "![target_success](plots/target_success.png)" in md  # the demo's report has its plot
    for f in ("prints/chart.pdf", "prints/patch.pdf", "prints/patch_p1.png", "prints/patch.json", "profile.json",
              "patch/perturbation.pt", "patch.png", "report.html", "plots/target_success.png",
              "score/contact_sheet.png"):
        assert (tmp_path / f).is_file(), f
