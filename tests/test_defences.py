"""Mechanics of the defences (pipelines.defences) on tiny models and tiny data."""
from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.defences import DefenceError
from pipelines.defences.adaptive import detector_aware_pgd, masking_checks, pgd
from pipelines.defences.detectors import FeatureSqueezing, MCDropoutUncertainty, detection_rates, threshold_at_fpr
from pipelines.defences.distillation import TemperatureScaled, distillation_loss, logit_scale, softmax_t
from pipelines.defences.ensemble import Ensemble
from pipelines.defences.smoothing import (ABSTAIN, SmoothedClassifier, certified_radius, clopper_pearson_lower,
                                          gaussian_eot)
from pipelines.defences.training import (DefenceTrainConfig, DropoutHead, GeneratorDropout, rect_positions,
                                         roa_examples, trades_loss, train_defence)
from pipelines.defences.transforms import (JPEG, BitDepth, MedianFilter, RandomResizePad, TransformDefence, bpda,
                                           eot_callable)


def tiny_model(seed: int = 0, classes: int = 4, side: int = 8) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def images(n: int = 6, side: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def grad_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return g


# ------------------------------------------------------------------------------------------------ transforms
def test_bpda_gradient_is_the_gradient_at_the_transformed_input():
    m, x = tiny_model(), images()
    y = m(x).argmax(1)
    tr = BitDepth(2)
    g_bpda = grad_of(TransformDefence(m, tr, "bpda"), x, y)
    g_at_tx = grad_of(m, tr.apply(x), y)  # identity backward: ∇_x L(m(T(x))) := ∇_z L(m(z)) at z = T(x)
    assert torch.allclose(g_bpda, g_at_tx)
    assert g_bpda.abs().sum() > 0
    assert float(grad_of(TransformDefence(m, tr, "naive"), x, y).abs().max()) == 0.0  # round: zero gradient


def test_jpeg_changes_the_image_and_has_no_gradient_without_bpda():
    m, x = tiny_model(side=16), images(4, side=16)
    y = m(x).argmax(1)
    out = JPEG(50).apply(x)
    assert out.shape == x.shape and float((out - x).abs().max()) > 0.02
    assert torch.equal(JPEG(50).apply(x), out)  # deterministic
    assert float(grad_of(TransformDefence(m, JPEG(50), "naive"), x, y).abs().max()) == 0.0
    assert float(grad_of(TransformDefence(m, JPEG(50), "bpda"), x, y).abs().max()) > 0.0
    with pytest.raises(DefenceError):
        JPEG(0)


def test_bit_depth_and_median_values():
    x = torch.tensor([0.0, 0.2, 0.49, 0.51, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert torch.equal(BitDepth(1).apply(x)[0, 0, 0], torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))
    img = torch.zeros(1, 3, 5, 5)
    img[0, :, 2, 2] = 1.0  # a single salt pixel disappears under a 3x3 median
    assert float(MedianFilter(3).apply(img).abs().max()) == 0.0
    flat = torch.full((1, 3, 4, 4), 0.3)
    assert torch.allclose(MedianFilter(2).apply(flat), flat)


def test_random_resize_pad_is_seeded_and_keeps_the_shape():
    x = images(3, side=16)
    tr = RandomResizePad(min_side=10)
    a = tr(x, torch.Generator().manual_seed(5))
    b = tr(x, torch.Generator().manual_seed(5))
    c = tr(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    d = TransformDefence(tiny_model(side=16), tr, seed=3)
    with torch.no_grad():
        assert not torch.equal(d(x), d(x))  # a fresh draw per call
    eot = eot_callable(tr)
    assert eot.config()["bpda"] is False and eot_callable(JPEG(75)).config()["bpda"] is True


# ------------------------------------------------------------------------------------------------ smoothing
def test_certified_radius_and_clopper_pearson_hand_cases():
    assert certified_radius(0.9, 0.5) == pytest.approx(0.5 * 1.2815515655446004)
    assert certified_radius(0.5, 0.5) == 0.0 and certified_radius(0.3, 1.0) == 0.0
    # k = n: the one-sided lower bound solves p^n = alpha
    assert clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    assert clopper_pearson_lower(0, 10, 0.05) == 0.0
    with pytest.raises(DefenceError):
        clopper_pearson_lower(11, 10, 0.05)


class _Threshold(nn.Module):
    """Class 0 when pixel (0, 0, 0) > 0.5, else 1: on a 0.5 image under noise it is a fair coin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0]
        return torch.stack([(v > 0.5).float(), (v <= 0.5).float()], 1)


def test_smoothing_certify_predict_and_abstain():
    const = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    with torch.no_grad():
        const[1].weight.zero_()
        const[1].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    sm = SmoothedClassifier(const, sigma=0.5, num_classes=3)
    x = torch.full((2, 3, 4, 4), 0.5)
    cert = sm.certify(x, n0=10, n=100, alpha=0.001, generator=torch.Generator().manual_seed(0))
    assert cert.prediction.tolist() == [1, 1]
    expected = 0.5 * torch.distributions.Normal(0, 1).icdf(torch.tensor(0.001 ** (1 / 100))).item()
    assert cert.radius[0].item() == pytest.approx(expected, rel=1e-5)
    coin = SmoothedClassifier(_Threshold(), sigma=0.25, num_classes=2)
    pred = coin.predict(x[:1], n=200, alpha=0.001, generator=torch.Generator().manual_seed(0))
    assert pred.tolist() == [ABSTAIN]
    noisy = gaussian_eot(0.25)(x, torch.Generator().manual_seed(0))
    assert noisy.shape == x.shape and float((noisy - x).std()) == pytest.approx(0.25, rel=0.2)


# ------------------------------------------------------------------------------------------------ distillation
def test_distillation_temperature_and_saturation():
    z = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.allclose(softmax_t(z, 1.0), F.softmax(z, 1))
    assert torch.allclose(softmax_t(z, 2.0), F.softmax(z / 2, 1))
    assert float(softmax_t(z, 1e6).std()) < 1e-6  # very high T -> uniform
    # the loss equals the soft-label cross-entropy; minimal (= entropy of the soft labels) when student == teacher
    t = torch.tensor([[3.0, 0.0, -1.0]])
    soft = F.softmax(t / 5, 1)
    assert distillation_loss(t, t, 5.0).item() == pytest.approx(float(-(soft * soft.log()).sum()), rel=1e-5)
    assert distillation_loss(z, t, 5.0) > distillation_loss(t, t, 5.0)
    # logits scaled by a large T saturate the softmax: the CE gradient is exactly zero in float32
    m = tiny_model()
    x = images(8)
    y = m(x).argmax(1)
    big = nn.Sequential(m, _Scale(1000.0))
    assert float(grad_of(big, x, y).abs().max()) == 0.0
    assert float(grad_of(TemperatureScaled(big, 1000.0), x, y).abs().max()) > 0.0
    assert logit_scale(big, x) == pytest.approx(1000 * logit_scale(m, x), rel=1e-4)


class _Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def test_ensemble_averages_probabilities():
    a, b, x = tiny_model(0), tiny_model(1), images(5)
    e = Ensemble([a, b])
    expected = (F.softmax(a(x), 1) + F.softmax(b(x), 1)) / 2
    assert torch.allclose(e(x).exp(), expected, atol=1e-6)
    with pytest.raises(DefenceError):
        Ensemble([a])


# ------------------------------------------------------------------------------------------------ detectors
class _MeanModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([20 * (m - 0.5), -20 * (m - 0.5)], 1)


def test_feature_squeezing_score_hand_case_and_threshold():
    fs = FeatureSqueezing(_MeanModel(), squeezers=[BitDepth(1)])
    x = torch.full((1, 3, 4, 4), 0.4)  # mean 0.4 -> logits (-2, 2); squeezed to 0 -> (-10, 10)
    expected = 2 * abs(torch.sigmoid(torch.tensor(-4.0)) - torch.sigmoid(torch.tensor(-20.0))).item()
    assert fs.score(x).item() == pytest.approx(expected, rel=1e-5)
    assert fs.score(torch.zeros(1, 3, 4, 4)).item() == 0.0  # already squeezed: nothing changes
    scores = torch.arange(1, 101, dtype=torch.float32)
    thr = threshold_at_fpr(scores, 0.05)
    assert thr == 95.0 and int((scores > thr).sum()) == 5
    r = detection_rates(scores, torch.tensor([96.0, 10.0]), thr)
    assert (r.fpr.k, r.fpr.n, r.detection.k, r.detection.n) == (5, 100, 1, 2)


def test_mc_dropout_uncertainty_is_seeded_and_zero_without_dropout():
    net = nn.Module()
    net.features = nn.Identity()
    net.classifier = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in net.classifier.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    model = DropoutHead(net, 0.5).eval()
    x = images(4, side=4)
    det = MCDropoutUncertainty(model, samples=10, seed=3)
    s1 = det.score(x)
    det.reseed(3)
    assert torch.equal(s1, det.score(x)) and bool((s1 > 0).all())
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval mode without mc: deterministic
    model.dropout.p = 0.0
    assert float(det.score(x).abs().max()) == 0.0
    with pytest.raises(DefenceError):
        GeneratorDropout(1.0)


# ------------------------------------------------------------------------------------------------ training pieces
def test_trades_loss_hand_values():
    zc = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1])
    assert trades_loss(zc, zc, y, 6.0).item() == pytest.approx(F.cross_entropy(zc, y).item())
    za = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    p = F.softmax(zc[0], 0)
    kl0 = float((p * (p.log() - math.log(0.5))).sum())
    assert trades_loss(zc, za, y, 6.0).item() == pytest.approx(F.cross_entropy(zc, y).item() + 6.0 * kl0 / 2, rel=1e-5)


def test_roa_changes_only_one_rectangle():
    m, x = tiny_model(side=16), images(3, side=16)
    y = m(x).argmax(1)
    xa = roa_examples(m, x, y, rect=4, stride=2, steps=3, alpha=0.25, generator=torch.Generator().manual_seed(0))
    changed = (xa != x).any(1)  # (B, H, W)
    for c in changed:
        rows, cols = torch.nonzero(c, as_tuple=True)
        assert int(c.sum()) <= 16 and int(rows.max() - rows.min()) < 4 and int(cols.max() - cols.min()) < 4
    assert len(rect_positions(16, 4, 2)) == 49


def test_train_defence_is_deterministic_and_cached(tmp_path):
    cfg = DefenceTrainConfig("pgd_at", n_train=64, epochs=1, batch_size=32, steps=1, threads=1)
    a = train_defence("a", cfg, cache_dir=tmp_path)
    b = train_defence("b", cfg, cache_dir=tmp_path)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    again = train_defence("a", cfg, cache_dir=tmp_path)
    assert again.cached and not a.cached
    with pytest.raises(DefenceError):
        DefenceTrainConfig("magic")
    with pytest.raises(DefenceError):
        DefenceTrainConfig("distill_student")  # needs a teacher


# ------------------------------------------------------------------------------------------------ masking checks
def test_masking_checks_flag_a_rounding_model_and_not_a_clean_one():
    m, x = tiny_model(), images(16)
    y = m(x).argmax(1)
    clean = masking_checks(m, x, y, eps=8 / 255, weak_steps=5, strong_steps=20, unbounded_eps=1.0).finalise()
    assert "zero_gradients" not in clean.flags and "unbounded_attack_fails" not in clean.flags
    assert clean.unbounded_success >= 0.95
    masked = TransformDefence(m, BitDepth(3), "naive")  # a rounding layer in front
    rep = masking_checks(masked, x, y, eps=8 / 255, weak_steps=5, strong_steps=20, unbounded_eps=1.0)
    rep.transfer_success, rep.whitebox_success = 0.9, 0.1
    rep.finalise()
    assert rep.zero_gradient_fraction == 1.0
    assert {"zero_gradients", "transfer_beats_whitebox"} <= set(rep.flags)
    rnd = masking_checks(TransformDefence(m, RandomResizePad(5), "naive", seed=1), x, y, weak_steps=2,
                         strong_steps=3).finalise()
    assert "randomised_output" in rnd.flags


def test_detector_aware_pgd_stays_in_the_ball():
    m, x = tiny_model(), images(8)
    y = m(x).argmax(1)
    fs = FeatureSqueezing(m, squeezers=[BitDepth(4)])
    adv = detector_aware_pgd(m, fs.score_differentiable, x, y, eps=16 / 255, steps=5, threshold=0.5,
                             generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 16 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    r = pgd(8 / 255, 5, "cw")(m, x, y, generator=torch.Generator().manual_seed(0))
    assert float(r.norms("inf").max()) <= 8 / 255 + 1e-6


def test_cli_parser():
    from pipelines.defences.cli import add_parser

    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    a = p.parse_args(["defences", "evaluate", "--out", "x", "--sections", "table,masking", "--n-attack", "50"])
    assert a.defences_command == "evaluate" and a.n_attack == 50 and a.sections == "table,masking"
    a = p.parse_args(["defences", "train", "--only", "pgd_at"])
    assert a.only == "pgd_at" and callable(a.func)
