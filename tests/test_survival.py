"""The survival table (pipelines.survival): pairing, baselines, n, and errors — on fake runs whose attack is a no-op,
so that the 'after print + photo' rate must equal the un-attacked rate on the same photos exactly."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.survival import (
    SurvivalConfig, eyeglass_survival, load_run, patch_survival, run_survival, sticker_survival,
)
from testbed.errors import ConfigError

torch.set_num_threads(1)


def _fake_run(path: Path, config: dict, metrics: dict, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps(metrics))
    for name, t in tensors.items():
        torch.save(t, path / f"{name}.pt")
    return path


def _noop_sticker_run(tmp_path: Path) -> Path:
    from worlds.signs.render import composite, render_sign

    sign = composite(render_sign("stop", 128), 0.5).clamp(0, 1)
    return _fake_run(tmp_path / "stk", {"attack": "sticker", "model": "sign-cnn", "sign": "stop", "background": "0.5",
                                        "target": 15, "source_label": 13, "steps": 0},
                     {"eval_samples": 10, "success_rate": 0.3}, {"adversarial": sign})


def test_noop_sticker_survives_exactly_as_the_clean_sign(tmp_path: Path) -> None:
    row = sticker_survival(_noop_sticker_run(tmp_path), SurvivalConfig(photos=3))
    # the adversarial and the clean sign get the same printer and camera draw: identical predictions
    assert row.printed == row.clean_printed
    assert row.printed.n == 3 and row.printed.k == 0  # a clean stop sign is never 'no_entry'
    assert row.extra["clean_sign_accuracy"].k == 3  # and is recognised through the simulated camera
    assert (row.digital.k, row.digital.n) == (3, 10)  # the run's recorded held-out rate, with its n
    assert row.survival == 0.0


def test_noop_patch_and_same_seed_same_table(tmp_path: Path) -> None:
    patch = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    run = _fake_run(tmp_path / "patch", {"attack": "patch", "model": "mobilenet_v2", "target": 859, "steps": 0,
                                         "placement": {"area": [0.1, 0.1]},
                                         "scenes": ["chelsea", "coffee"]},
                    {"eval_samples": 100, "success_rate": 0.5, "model": "mobilenet_v2", "scenes": ["chelsea", "coffee"]},
                    {"perturbation": patch, "mask": torch.full((1, 1, 40, 40), 1e-9)})
    cfg = SurvivalConfig(photos=2, seed=5)
    a, b = patch_survival(run, cfg), patch_survival(run, cfg)
    assert a.printed.n == 2 * 2  # photos x scenes
    assert a.printed == a.clean_printed == a.extra["digital_same_placements"]  # a ~zero mask pastes (almost) nothing
    assert a.as_dict()["printed"] == b.as_dict()["printed"]
    assert a.extra["per_photo_success"] == b.extra["per_photo_success"]


def test_noop_eyeglass_frame_gives_the_wearers_own_distances(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "eg", {"attack": "eyeglass", "mode": "dodge", "wearer": ["astronaut"], "target": [],
                                      "threshold": 0.6, "steps": 0},
                    {"eval_samples": 50, "success_rate": 1.0},
                    {"texture": torch.rand(1, 3, 150, 150), "mask": torch.zeros(1, 1, 150, 150)})
    row = eyeglass_survival(run, SurvivalConfig(photos=2))
    assert row.extra["no_face_found_adversarial"] == row.extra["no_face_found_clean"] == 0
    assert row.printed.n == 2 and row.printed.k == 0  # the wearer is still recognised: no dodge
    assert row.extra["distance_enrolled_mean_adversarial"] == pytest.approx(row.extra["distance_enrolled_mean_clean"])
    assert row.extra["distance_enrolled_mean_clean"] < 0.6


def test_bad_run_directories_and_config_are_named(tmp_path: Path) -> None:
    stk = _noop_sticker_run(tmp_path)
    with pytest.raises(ConfigError, match="not a 'patch' run"):
        load_run(stk, "patch")
    with pytest.raises(ConfigError, match="does not exist"):
        load_run(tmp_path / "nope", "sticker")
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match="config.json is missing"):
        load_run(tmp_path / "half", "sticker")
    with pytest.raises(ConfigError, match="photos must be a positive integer"):
        SurvivalConfig(photos=0).validate()
    with pytest.raises(ConfigError, match="preset"):
        SurvivalConfig(preset="blurry").validate()
    with pytest.raises(ConfigError, match="at least one attack run"):
        run_survival([], SurvivalConfig(), tmp_path / "out")
    (stk / "adversarial.pt").unlink()
    with pytest.raises(ConfigError, match="adversarial.pt is missing"):
        sticker_survival(stk, SurvivalConfig(photos=1))


def test_cli_writes_the_report(tmp_path: Path) -> None:
    stk = _noop_sticker_run(tmp_path)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "pipelines.main", "survival", "--sticker", str(stk), "--photos", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "report.json").read_text())
    assert data["config"]["photos"] == 1 and data["rows"][0]["printed"]["n"] == 1
    md = (out / "report.md").read_text()
    assert "| sticker | rectified photo of the printed sign | sign-cnn | stop -> no_entry |" in md and "0/1 = 0.0%" in md
    assert "![survival](plots/survival.png)" in md and (out / "plots" / "survival.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, "-m", "pipelines.main", "survival", "--patch", str(stk), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "not a 'patch' run" in bad.stderr


def _noop_patch_run(tmp_path: Path, mask_value: float = 1e-9) -> Path:
    patch = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    return _fake_run(tmp_path / "patch", {"attack": "patch", "model": "mobilenet_v2", "target": 859, "steps": 0,
                                          "placement": {"area": [0.1, 0.1]}, "scenes": ["chelsea", "coffee"]},
                     {"eval_samples": 100, "success_rate": 0.5, "model": "mobilenet_v2",
                      "scenes": ["chelsea", "coffee"]},
                     {"perturbation": patch, "mask": torch.full((1, 1, 40, 40), mask_value)})


def test_in_situ_rows_pair_with_the_same_photo_without_the_patch_in_held_out_scenes(tmp_path: Path) -> None:
    from pipelines.survival import held_out_scenes, patch_in_situ_survival

    run = _noop_patch_run(tmp_path)
    cfg = SurvivalConfig(photos=1, seed=5, in_situ_photos=3)
    row = patch_in_situ_survival(run, cfg)
    assert row.method == "in situ (simulated)" and row.printed.n == 3
    assert row.printed == row.clean_printed  # a ~zero mask is cut to nothing: the same photo as without it
    assert row.extra["patch_fraction_of_view_max"] == 0.0
    scenes = held_out_scenes({"scenes": ["chelsea", "coffee"]}, {})
    assert row.extra["scenes"] == scenes and "chelsea" not in scenes and "coffee" not in scenes  # never the run's
    assert patch_in_situ_survival(run, cfg).as_dict()["printed"] == row.as_dict()["printed"]  # seeded


def test_survival_cli_in_situ_and_real_photo_rows(tmp_path: Path) -> None:
    from PIL import Image

    from testbed.photos import load_photo
    from testbed.runs import save_image

    run = _noop_patch_run(tmp_path, mask_value=1.0)
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(load_photo("coffee"), photos / "p1.png")
    Image.new("L", (32, 32)).save(photos / "p2_gray.png")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "pipelines.main", "survival", "--patch", str(run), "--photos", "1",
                           "--in-situ-photos", "2", "--photos-dir", str(photos), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["rectify-and-paste", "in situ (simulated)", "in situ (real photos)"]
    assert rows[1]["printed"]["n"] == 2 and rows[2]["printed"]["n"] == 1  # the grayscale photo is skipped...
    assert "p2_gray.png" in next(iter(rows[2]["extra"]["skipped"]))  # ...and named
    assert 0 < rows[1]["extra"]["patch_fraction_of_view_mean"] <= 0.1 + 1e-6  # never above its nominal 10 %
    assert "| patch | in situ (simulated) | mobilenet_v2 |" in (out / "report.md").read_text()
