"""End to end, tiny: the secure-path evaluation on MobileNetV2 with 4 frames (pipelines/secure_eval.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.secure_eval import SecureEvalConfig, build_frames, mixed_plan, run_secure_eval, write_results
from testbed.machine import machine_line

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def tiny():
    from testbed.errors import AssetError

    cfg = SecureEvalConfig(frames=4, eps=8.0, pgd_steps=2, patch="masked-pgd", patch_steps=2, multipath=False,
                           seed=0)
    try:
        return cfg, *run_secure_eval(cfg, device="cpu")
    except AssetError as exc:  # pragma: no cover - weights not fetched
        pytest.skip(f"model weights unavailable: {exc}")


def test_frames_are_deterministic_and_distinct():
    a, b = build_frames(12), build_frames(12)
    assert [(p, v) for p, v, _ in a] == [(p, v) for p, v, _ in b]
    assert all(np.array_equal(x, y) for (_, _, x), (_, _, y) in zip(a, b))
    assert all(f.shape == (224, 224, 3) and f.dtype == np.uint8 for _, _, f in a)
    assert len({f.tobytes() for _, _, f in a}) == 12
    # view-major: frame 10 is the flipped canonical view of photo 0
    assert a[10][0] == a[0][0] and a[10][1] == "canonical-flip"
    assert np.array_equal(a[10][2], a[0][2][:, ::-1])


def test_unprotected_tamperer_delivers_and_top1_drops(tiny):
    cfg, res, _ = tiny
    assert res.n_frames == 4
    base, pgd = res.unprotected["no_attack"], res.unprotected["pgd_all"]
    assert base["top1"].k == base["top1"].n == 4  # labels = clean top-1
    assert pgd["delivered"] == pgd["accepted"] == 4
    assert pgd["tampered_delivered"] == pgd["tampered_accepted"] == 4
    assert pgd["top1"].n == 4 and pgd["top1"].k < 4
    assert 0 < res.unprotected["delivered_linf_255"] <= 8


def test_protected_rejects_every_tampered_frame_and_accepts_clean(tiny):
    _, res, _ = tiny
    allp = res.protected["pgd_all"]
    assert allp["tampered_delivered"] == 4 and allp["tampered_accepted"] == 0 and allp["accepted"] == 0
    assert allp["rejected"] == {"bad_payload_tag": 4}
    assert allp["tampered_rejected"].k == allp["tampered_rejected"].n == 4
    clean = res.protected["untampered"]
    assert clean["accepted"] == 4 and clean["rejected"] == {} and clean["top1"].k == clean["top1"].n == 4
    mixed = res.protected["mixed"]  # frame 0 perturbed, frame 1 replayed
    assert mixed["tampered_accepted"] == 0
    assert mixed["rejected"] == {"bad_payload_tag": 1, "replay": 1}
    assert mixed["accepted"] == 3 and mixed["top1"].k == mixed["top1"].n == 3


def test_patched_scene_passes_integrity(tiny):
    _, res, art = tiny
    assert res.patch["method"] == "masked-pgd"
    assert res.patch["accepted"].k == res.patch["accepted"].n == 4
    assert res.patch["secure_path"]["rejected"] == {}
    assert res.patch["fooled"].n == 4
    assert len(art["patched"]) == 4 and not np.array_equal(art["patched"][0], art["frames"][0])


def test_mixed_plan_indices():
    p = mixed_plan(60)
    assert p.perturb == tuple(range(0, 60, 4)) and p.replay == (1,) and p.reorder == (5,) and p.inject_after == (9,)
    p = mixed_plan(4)
    assert p.reorder == () and p.inject_after == ()


def test_written_results_have_sample_sizes(tiny, tmp_path):
    cfg, res, art = tiny
    report = write_results(res, art, tmp_path, command=cfg.command(tmp_path), started="now")
    d = json.loads((tmp_path / "results.json").read_text())
    assert d["run"]["machine"].split(";")[0] == machine_line().split(";")[0]  # read from this machine
    assert d["unprotected"]["pgd_all"]["top1"]["n"] == 4
    assert d["protected"]["pgd_all"]["tampered_rejected"]["n"] == 4
    assert len(d["frames"]) == 4 and d["config"]["seed"] == 0
    text = report.read_text()
    assert "secure-eval --frames 4" in text and "bad_payload_tag" in text
    assert (tmp_path / "examples.jpg").is_file()


def test_config_is_validated():
    from testbed.errors import ConfigError

    with pytest.raises(ConfigError, match="frames"):
        SecureEvalConfig(frames=0)
    with pytest.raises(ConfigError, match="patch"):
        SecureEvalConfig(patch="banana")
    with pytest.raises(ConfigError, match="eps"):
        SecureEvalConfig(eps=-1)
