"""PatchCleanser (double masking): mask set, coverage, certification on models with a known answer, the adaptive
view and patch attack, CPU/CUDA parity."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipelines.defences import DefenceError
from pipelines.defences.patchcleanser import (AdaptiveView, PatchCleanser, axis_masks, covers_every_patch, mask_set,
                                              patch_attack, patch_side, square_masks)


def one_pixel_patches(x: torch.Tensor, values: tuple[float, ...] = (0.0, 1.0)):
    """Every 1-px patch of ``x`` (1, C, H, W): each position set to each value (exhaustive soundness checks)."""
    for yy in range(x.shape[-2]):
        for xx in range(x.shape[-1]):
            for v in values:
                xp = x.clone()
                xp[:, :, yy, xx] = v
                yield xp


class RegionModel(nn.Module):
    """Class 1 when the mean of the 2×2 region at (ry, rx) exceeds 0.9, else class 0: constant outside the region."""

    def __init__(self, ry: int = 5, rx: int = 6) -> None:
        super().__init__()
        self.ry, self.rx = ry, rx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, self.ry:self.ry + 2, self.rx:self.rx + 2].mean((1, 2, 3))
        one = torch.sigmoid((s - 0.9) * 50)  # smooth, so the attack has a gradient
        return torch.stack([1 - one, one], 1) * 10


class PixelModel(nn.Module):
    """The decision lives in one pixel: class 1 when pixel (py, px) is bright (> 0.75), else class 0."""

    def __init__(self, py: int = 0, px: int = 0) -> None:
        super().__init__()
        self.py, self.px = py, px

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = torch.sigmoid((x[:, :, self.py, self.px].mean(1) - 0.75) * 50)
        return torch.stack([1 - one, one], 1) * 10


def test_axis_masks_follow_the_r_covering_formula() -> None:
    # ImageNet setting of the paper: 224 px, 32 px patch, k = 6 -> stride 33, mask 64, last mask flush at 160
    m, s, starts = axis_masks(224, 32, 6)
    assert (m, s) == (64, 33)
    assert starts == (0, 33, 66, 99, 132, 160)
    m, s, starts = axis_masks(32, 3, 6)
    assert (m, s, starts) == (7, 5, (0, 5, 10, 15, 20, 25))
    with pytest.raises(DefenceError):
        axis_masks(8, 9, 2)


def test_masks_cover_every_patch_position_exhaustively() -> None:
    for n in range(3, 13):
        for p in range(1, n + 1):
            for k in (1, 2, 3, 5):
                ms = mask_set((n, n + 1), (p, max(1, p - 1)), k)
                assert len(ms) <= k * k
                assert covers_every_patch(ms), (n, p, k)
    # independent brute force on one case: every 3×3 window of a 12×12 image is hidden by some mask
    ms = mask_set(12, 3, 3)
    hidden = ms.tensor() == 0
    for y in range(10):
        for x in range(10):
            assert any(bool(h[0, y:y + 3, x:x + 3].all()) for h in hidden)


def test_coverage_check_catches_a_too_small_mask_set() -> None:
    ms = mask_set(12, 4, 3)
    from dataclasses import replace

    smaller = replace(ms, mask_size=(ms.mask_size[0] - 1, ms.mask_size[1] - 1))
    assert covers_every_patch(ms) and not covers_every_patch(smaller)


def test_patch_side() -> None:
    assert patch_side(0.01, 32) == 3 and patch_side(0.1, 32) == 10 and patch_side(0.02, 224) == 32


def test_model_constant_outside_a_region_is_certified_and_survives_every_patch() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 3, 12, 12) * 0.5  # region mean < 0.9: class 0
    y = torch.zeros(3, dtype=torch.long)
    pc = PatchCleanser(RegionModel(), mask_set(12, 2, 3), num_classes=2)
    assert pc.certify(x, y).all()
    assert (pc.predict(x).label == 0).all() and (pc.predict(x).case == 1).all()
    # every 2×2 patch position, content all ones: the model is fooled without the defence where the patch covers
    # the region, never with it; covering the region exactly takes round 2 (a disagreer wins)
    for yy in range(11):
        for xx in range(11):
            xp = x.clone()
            xp[:, :, yy:yy + 2, xx:xx + 2] = 1.0
            r = pc.predict(xp)
            assert (r.label == 0).all()
            if (yy, xx) == (5, 6):
                assert RegionModel()(xp).argmax(1).eq(1).all() and (r.case == 2).all()


def test_a_constant_model_is_certified() -> None:
    class Const(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.0, 1.0, 0.0]]).repeat(len(x), 1)

    pc = PatchCleanser(Const(), mask_set(10, 3, 2), num_classes=3)
    assert pc.certify(torch.rand(2, 3, 10, 10), torch.tensor([1, 1])).all()
    assert pc.certify(torch.rand(2, 3, 10, 10), torch.tensor([0, 1])).tolist() == [False, True]


def test_decision_in_one_pixel_is_not_certified_and_a_one_pixel_patch_breaks_it() -> None:
    # class 1 when pixel (0, 0) is bright; the clean image has it bright. A mask over that pixel greys it (0.5):
    # class 0 — the masked predictions disagree, no certificate, and the defended prediction itself flips
    # (the covering mask is a disagreer whose every two-mask prediction agrees with it)
    x = torch.full((1, 3, 12, 12), 0.2)
    x[:, :, 0, 0] = 1.0
    y = torch.tensor([1])
    pc = PatchCleanser(PixelModel(), mask_set(12, 1, 3), num_classes=2)
    assert PixelModel()(x).argmax(1).item() == 1
    assert not pc.certify(x, y).any()
    r = pc.predict(x)
    assert r.label.item() == 0 and r.case.item() == 2 and r.first_round.tolist() == [[0] + [1] * 8]
    # the testbed's adaptive patch attack reports the image broken
    att = patch_attack(AdaptiveView(pc, samples=4, seed=0), x, y, 1, grid=2, steps=3, alpha=0.5)
    assert att.broken.item()


def test_one_pixel_decision_that_grey_does_not_flip_is_certified_and_sound() -> None:
    # the same model on a pixel at 0.6 (class 0): greying it keeps class 0, so every masked prediction is 0 and the
    # image is certified; no 1-px patch value at any position changes the defended prediction
    x = torch.full((1, 3, 8, 8), 0.2)
    x[:, :, 0, 0] = 0.6
    pc = PatchCleanser(PixelModel(), mask_set(8, 1, 3), num_classes=2)
    assert pc.certify(x, torch.tensor([0])).all()
    for xp in one_pixel_patches(x):
        assert pc.predict(xp).label.item() == 0


def test_patch_attack_changes_only_its_square_and_never_breaks_a_certified_image() -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 3, 12, 12) * 0.5
    y = torch.zeros(2, dtype=torch.long)
    pc = PatchCleanser(RegionModel(), mask_set(12, 3, 3), num_classes=2)
    assert pc.certify(x, y).all()
    r = patch_attack(AdaptiveView(pc, samples=4, seed=0), x, y, 3, grid=3, steps=5, alpha=0.5)
    assert not r.broken.any()
    sq = square_masks((12, 12), 3, r.positions)
    diff = (r.adversarial - x[:, None]).abs().sum(2, keepdim=True)
    assert float((diff * (1 - sq[None])).max()) == 0
    # the same attack on the bare model breaks the images whose region a patch position covers
    bare = patch_attack(RegionModel(), x, y, 3, grid=10, steps=5, alpha=0.5)  # every position
    assert bare.broken.all()


def test_adaptive_view_is_the_defence_without_grad_and_differentiable_with_it() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5)).eval()
    pc = PatchCleanser(m, mask_set(16, 3, 3), num_classes=5)
    view = AdaptiveView(pc, samples=3, seed=0)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(view(x).argmax(1), pc.predict(x).label)
    xg = x.clone().requires_grad_(True)
    out = view(xg)
    assert out.shape == (2, 5)
    (g,) = torch.autograd.grad(out[:, 0].sum(), xg)
    assert float(g.abs().sum()) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_cuda_parity() -> None:
    from testbed.models.registry import get_model

    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 30, (4,))
    m = get_model("sign-cnn", device="cpu")
    cpu = PatchCleanser(m, mask_set(32, 6, 6), num_classes=30)
    r_cpu, c_cpu = cpu.predict(x), cpu.certify(x, cpu.predict(x).label)
    gpu = PatchCleanser(get_model("sign-cnn", device="cuda"), mask_set(32, 6, 6), num_classes=30).cuda()
    r_gpu = gpu.predict(x.cuda())
    assert torch.equal(r_cpu.first_round, r_gpu.first_round.cpu())
    assert torch.equal(r_cpu.label, r_gpu.label.cpu())
    assert torch.equal(c_cpu, gpu.certify(x.cuda(), r_cpu.label.cuda()).cpu())


def test_cli_patch_options_and_default_sections() -> None:
    import argparse

    from pipelines.defences.cli import _eval_config, add_parser
    from pipelines.defences.evaluate import PATCH_SECTIONS, EvalConfig

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    a = p.parse_args(["defences", "evaluate", "--out", "x", "--sections", "patchcleanser,derandomized",
                      "--patch-fractions", "0.01,0.1", "--patch-images", "20", "--pc-bases", "masked"])
    cfg = _eval_config(a)
    assert cfg.patch_fractions == (0.01, 0.1) and cfg.patch_images == 20 and cfg.pc_bases == ("masked",)
    assert cfg.sections == ("patchcleanser", "derandomized")
    for bad in (["--patch-fractions", "2"], ["--patch-fractions", "a"], ["--pc-bases", "other"]):
        with pytest.raises(DefenceError):
            _eval_config(p.parse_args(["defences", "evaluate", "--out", "x", *bad]))
    assert not set(PATCH_SECTIONS) & set(EvalConfig().sections)  # the patch sections run only when named


def test_certificate_check_fails_loudly() -> None:
    from pipelines.defences.evaluate import CertificateViolation, _check_certificate

    assert _check_certificate("x", torch.tensor([True, False]), torch.tensor([True, False]))["certified_but_broken"] == 0
    with pytest.raises(CertificateViolation, match="1 certified image"):
        _check_certificate("x", torch.tensor([True, True]), torch.tensor([True, False]))


def test_report_renders_the_patch_sections(tmp_path) -> None:
    from pipelines.defences.report import write_report

    r = {"n": 10, "k": 5, "value": 0.5, "low": 0.24, "high": 0.76}
    ms = mask_set(32, 3, 6).as_dict()
    report = {"command": "c", "date": "d", "machine": "m", "torch": "t", "wall_seconds": 1.0,
              "config": {"seed": 0, "heldout_seed": 7, "eps": [2]}, "training": {}, "sections": {
                  "patchcleanser": {"images": 10, "k": 6, "weights": {"masked": "abc"}, "attack": {
                      "kind": "k", "grid": 3, "steps": 10, "eot_masks": 4}, "models": {"masked": {"3": {
                          "mask_set": ms, "base_clean": r, "clean": r, "certified": r, "empirical_robust": r}}}},
                  "derandomized": {"sides": [3], "models": {"column4/x": {"images": 10, "weights_sha256": "e",
                                                                          "votes_per_image": 32, "sides": {"3": {
                                                                              "delta": 6, "clean": r,
                                                                              "certified": r}}}}}}}
    write_report(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## PatchCleanser" in md and "| masked | 3×3 (0.9%) | 10 | 7 / 5 / 36 |" in md and "50.0% [24–76]" in md
    assert "## De-randomized smoothing" in md and (tmp_path / "patch_certified.png").is_file()


def test_merge_keeps_the_parts_of_a_merged_report(tmp_path) -> None:
    import json

    from pipelines.defences.report import merge_reports

    base = {"command": "a ; b", "date": "d", "machine": "m", "torch": "t", "wall_seconds": 5.0,
            "config": {"seed": 0, "heldout_seed": 7, "eps": [2]}, "training": {}, "sections": {},
            "parts": [{"command": "a", "config": {}, "wall_seconds": 5.0, "date": "d"},
                      {"command": "b", "config": {}, "wall_seconds": 4.0, "date": "d"}]}
    new = {**base, "command": "c", "wall_seconds": 7.0, "parts": None}
    for name, r in (("one", base), ("two", new)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(r))
    out = merge_reports([tmp_path / "one", tmp_path / "two"], tmp_path / "out")
    assert [p["command"] for p in out["parts"]] == ["a", "b", "c"] and out["wall_seconds"] == 7.0


def test_predict_matches_a_plain_reading_of_algorithm_1() -> None:
    """Batched/symmetric double masking == the algorithm written as plain loops, on a random model whose masked
    predictions disagree a lot (both the per-disagreer and the all-pairs path run)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 30)).eval()
    ms = mask_set(12, 3, 3)
    pc = PatchCleanser(m, ms, num_classes=30)
    keep = ms.tensor()
    x = torch.rand(12, 3, 12, 12)

    def f(z: torch.Tensor) -> int:
        with torch.no_grad():
            return int(m(z[None]).argmax(1))

    for b in range(len(x)):
        first = [f(x[b] * keep[i] + 0.5 * (1 - keep[i])) for i in range(len(ms))]
        counts = [first.count(c) for c in range(30)]
        label = counts.index(max(counts))
        if len(set(first)) > 1:
            for d in [i for i, v in enumerate(first) if v != label]:
                two = [f(x[b] * keep[d] * keep[j] + 0.5 * (1 - keep[d] * keep[j])) for j in range(len(ms))]
                if all(v == first[d] for v in two):
                    label = first[d]
                    break
        assert pc.predict(x[b:b + 1]).label.item() == label
    dis = (pc.predict(x).first_round != pc.predict(x).first_round.mode(1).values[:, None]).sum(1)
    half = (len(ms) + 1) / 2  # more disagreers than this: the all-pairs path; fewer: the per-disagreer path
    assert bool((dis > half).any()) and bool(((dis > 0) & (dis < half)).any())
