"""bench/: the comparison tables are built from the cases' results (ratios computed, not timings asserted), one
case runs end to end in its own subprocess with the allocator preloaded, and the speed settings of the patch
attack keep its behaviour."""
from __future__ import annotations

import json
import math

import pytest
import torch

from bench import run_all  # bench/ is importable through pytest's pythonpath = ["."] (pyproject.toml)
from bench.common import allocator_env, find_tcmalloc


def _row(key: str, median_s: float, rss: float = 1000.0, **extra):
    return {"key": key, "median_s": median_s, "seconds": [median_s], "peak_rss_mb": rss, "allocator": "tcmalloc",
            "sys_s": 0.5, "workload": {"eot_samples": 8}, **extra}


def test_tables_compute_ratios_from_rows():
    rows = {
        "floor": _row("floor", 0.4, floor_s_fp32=0.4, floor_s_bf16=0.1, gflop_per_image=7.26,
                      matmul_gflops_fp32=300.0, matmul_gflops_bf16=1200.0),
        "model-fp32": _row("model-fp32", 1.0), "model-fp32-cl": _row("model-fp32-cl", 0.6),
        "model-bf16-cl": _row("model-bf16-cl", 0.25),
        "art": _row("art", 1.5, rss=2000.0),
        "patch-fp32-cl": _row("patch-fp32-cl", 0.66, rss=900.0),
        "patch-bf16-cl": _row("patch-bf16-cl", 0.3, rss=800.0),
        "success-fp32": _row("success-fp32", 0.3, success_rate=0.80, eval_samples=400, steps=150),
        "success-bf16": _row("success-bf16", 0.15, success_rate=0.79, eval_samples=400, steps=150),
        "eotpgd": _row("eotpgd", 4.0), "ta-eotpgd-eot": _row("ta-eotpgd-eot", 5.0),
        "live-secure": _row("live-secure", 0.04, fps=25.0, classify_fps=40.0, stages_ms={"capture": 1.0}),
        "ta-pgd": {"key": "ta-pgd", "error": "exit 1: boom"},
    }
    tables = run_all.build_tables(rows)
    titles = [t.title for t in tables]
    assert len(tables) == 6 and titles[0].startswith("Patch attack") and titles[3].startswith("EOT-PGD")
    patch = {r[0]: r for r in tables[0].rows}
    row = patch["testbed patch fp32 channels_last"]
    # s/step, RSS, project/ART, speed-up, / model fwd+bwd (same precision and layout), / FLOP floor
    assert row[2] == 0.66 and row[3] == 900
    assert math.isclose(row[4], 0.66 / 1.5) and math.isclose(row[5], 1.5 / 0.66)
    assert math.isclose(row[6], 0.66 / 0.6) and math.isclose(row[7], 0.66 / 0.4)
    bf = patch["testbed patch bf16 channels_last"]
    assert math.isclose(bf[6], 0.3 / 0.25) and math.isclose(bf[7], 0.3 / 0.1)
    assert patch["ART AdversarialPatchPyTorch (fp64 patch)"][4] is None  # no ratio of ART to itself
    eot = {r[0]: r for r in tables[3].rows}
    assert math.isclose(eot["torchattacks EOTPGD, EOTTransform in the model"][4], 5.0 / 4.0)
    assert math.isclose(eot["testbed PGD + EOTTransform (eot_batch=1, channels_last)"][5], 4.0 / (8 * 1.0))
    pgd = [r for r in tables[4].rows if r[0] == "PGD"]
    assert pgd == [["PGD", None, None, None, None]]  # failed and missing rows print as —
    head = run_all.headline(rows)
    assert math.isclose(head["speedup_vs_art_fp32"], 1.5 / 0.66)
    assert math.isclose(head["speedup_vs_art_fastest"], 5.0)
    assert math.isclose(head["step_over_model_bf16"], 1.2)
    assert math.isclose(head["success_points_bf16_minus_fp32"], -1.0)
    assert math.isclose(head["peak_rss_project_over_art"], 0.45)
    assert head["live_secure_fps"] == 25.0
    md = "\n".join(t.markdown() for t in tables)
    assert "| testbed patch fp32 channels_last | tcmalloc | 0.660 | 1000.000" not in md  # RSS is the row's own
    assert "difference bf16 - fp32: -1.0 points" in md and "| — |" in md


def test_merge_takes_median_of_repetitions():
    runs = [_row("x", 1.0, rss=10.0), _row("x", 3.0, rss=30.0), _row("x", 2.0, rss=20.0), {"key": "x", "error": "e"}]
    m = run_all.merge(runs)
    assert m["median_s"] == 2.0 and m["peak_rss_mb"] == 30.0 and m["repeats"] == 3


def test_allocator_env_preloads_tcmalloc_or_refuses():
    env = allocator_env("glibc")
    assert "tcmalloc" not in env.get("LD_PRELOAD", "")
    lib = find_tcmalloc()
    if lib is None:
        with pytest.raises(RuntimeError, match="libtcmalloc-minimal4"):
            allocator_env("tcmalloc")
    else:
        assert allocator_env("tcmalloc")["LD_PRELOAD"].split(":")[0] == lib
    with pytest.raises(ValueError):
        allocator_env("jemalloc")


def test_quick_run_of_one_case_in_a_subprocess(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert run_all.main(["--quick", "--only", "model-fp32-cl", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    row = data["rows"]["model-fp32-cl"]
    assert "error" not in row, row
    assert row["quick"] is True and row["workload"]["size"] == 64 and len(row["seconds"]) == 2
    assert row["peak_rss_mb"] > 50 and row["median_s"] > 0
    assert row["allocator"] == ("tcmalloc" if find_tcmalloc() else "glibc")
    assert data["tables"][1]["rows"][0][0] == "model fwd+bwd fp32 channels_last"
    assert "Patch attack" in capsys.readouterr().out


def test_unknown_case_key_is_refused():
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope"])


def _tiny_model():
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_patch_speed_settings_leave_the_model_as_given(precision):
    from physical.universal import UniversalPatch

    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scenes = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attack = UniversalPatch(patch_size=8, steps=3, batch_size=4, eval_samples=8, eval_batch_size=8, precision=precision,
                            channels_last=True)
    res = attack(model, scenes, target=1)
    assert len(res.loss_history) == 3 and all(math.isfinite(v) for v in res.loss_history)
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert all(p.grad is None for p in model.parameters())  # no weight gradients computed
    assert model[0].weight.is_contiguous()  # layout restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.config["channels_last"] is True
    assert ("precision" in res.config) == (precision == "bf16")


def test_patch_channels_last_matches_nchw_and_settings_are_validated():
    from physical.universal import UniversalPatch
    from testbed.errors import ConfigError

    model = _tiny_model()
    scenes = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(patch_size=8, steps=3, batch_size=4, eval_samples=8, eval_batch_size=8)
    a = UniversalPatch(channels_last=True, **kw)(model, scenes, target=1)
    b = UniversalPatch(channels_last=False, **kw)(model, scenes, target=1)
    assert torch.allclose(a.perturbation, b.perturbation, atol=1e-4)
    assert torch.equal(a.predictions, b.predictions)
    with pytest.raises(ConfigError, match="precision"):
        UniversalPatch(precision="fp16")
    with pytest.raises(ConfigError, match="channels_last"):
        UniversalPatch(channels_last="yes")


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_warp_pixels_samples_where_kornia_does(padding):
    import kornia.geometry.transform as KT

    from physical.eot import EOTTransform, warp_pixels

    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 40, 48, generator=g)
    t = EOTTransform({"rotation": 30.0, "scale": (0.7, 1.3), "translate": 0.1, "perspective": 0.2})
    m = t.homography(t.sample(4, g), 40, 48)
    ref = KT.warp_perspective(x, m, (40, 48), mode="bilinear", padding_mode=padding, align_corners=True)
    assert torch.allclose(warp_pixels(x, m, (40, 48), padding), ref, atol=2e-5)
    small = torch.rand(4, 4, 12, 12, generator=g)
    a = m[:, :2].clone()
    a[:, :, :2] *= 2.0  # an affine map that enlarges the small source into the larger output
    ref_a = KT.warp_affine(small, a, (40, 48), mode="bilinear", padding_mode="zeros", align_corners=True)
    assert torch.allclose(warp_pixels(small, a, (40, 48), "zeros", affine=True), ref_a, atol=2e-5)
