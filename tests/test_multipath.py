"""Multi-path synchronous prediction: flags, majority, rates with sample sizes; integrity is not robustness."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from camera.secure.frames import FrameSealer, FrameVerifier, SessionKey, VerifyPolicy, quantize_frame
from camera.secure.multipath import (
    GaussianBlur,
    Identity,
    MultiPathPredictor,
    PredictionPath,
    Rescale,
    evaluate_detection,
    wilson,
)
from pipelines.defences import DefenceError
from pipelines.defences.transforms import JPEG, BitDepth
from testbed.errors import ConfigError

S = 32
CHECKER = ((torch.arange(S)[:, None] + torch.arange(S)[None, :]) % 2).float() * 2 - 1  # +-1 checkerboard


class TextureModel(torch.nn.Module):
    """3 classes = dominant colour channel; a checkerboard in a channel also votes for it (a texture shortcut
    that high-frequency noise can exploit, like real CNNs' sensitivity to it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colour = x.mean((2, 3))
        texture = (x * CHECKER).mean((2, 3)).abs() * 16
        return colour + texture


def scenes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth frames whose dominant channel is the label."""
    labels = torch.arange(n) % 3
    base = torch.rand(n, 3, 1, 1, generator=gen) * 0.1 + 0.2
    base[torch.arange(n), labels] += 0.35
    x = base.expand(n, 3, S, S) + 0.02 * torch.rand(n, 3, S, S, generator=gen)
    return x.clamp(0, 1), labels


def digital_attack(x: torch.Tensor, labels: torch.Tensor, eps: float = 8 / 255) -> torch.Tensor:
    """A small high-frequency perturbation into the next class's channel (fools the plain path only)."""
    adv = x.clone()
    for i, y in enumerate(labels.tolist()):
        adv[i, (y + 1) % 3] += eps * CHECKER
    return adv.clamp(0, 1)


def physical_patch(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A large, smooth coloured patch in the scene (survives blur/JPEG): every path sees the same new colour."""
    adv = x.clone()
    for i, y in enumerate(labels.tolist()):
        t = (y + 1) % 3
        adv[i, :, 4:28, 4:28] = 0.1
        adv[i, t, 4:28, 4:28] = 1.0
    return adv


@pytest.fixture(scope="module")
def predictor() -> MultiPathPredictor:
    m = TextureModel()
    return MultiPathPredictor([PredictionPath("plain", m), PredictionPath("blur", m, GaussianBlur(1.0)),
                               PredictionPath("rescale", m, Rescale(0.5)), PredictionPath("bits", m, BitDepth(4))])


def test_detection_and_false_positive_rates(predictor):
    gen = torch.Generator().manual_seed(0)
    x, y = scenes(30, gen)
    m = TextureModel()
    assert (m(x).argmax(1) == y).all()
    dig, phys = digital_attack(x, y), physical_patch(x, y)
    assert (m(dig).argmax(1) != y).all() and (m(phys).argmax(1) != y).all()  # both attacks fool the model
    assert float((dig - x).abs().max()) <= 8 / 255 + 1e-6
    rep = evaluate_detection(predictor, x, {"digital": dig, "physical": phys},
                             labels={"digital": y.tolist(), "physical": y.tolist()}, batch_size=7)
    assert (rep.false_positive.k, rep.false_positive.n) == (0, 30)
    assert (rep.detection["digital"].k, rep.detection["digital"].n) == (30, 30)
    assert (rep.detection_on_fooled["digital"].k, rep.detection_on_fooled["digital"].n) == (30, 30)
    # the physical patch changes what every path sees: consistent, so not flagged (and it fooled all of them)
    assert (rep.detection["physical"].k, rep.fooled_first_path["physical"].k) == (0, 30)
    assert rep.false_positive.high == pytest.approx(wilson(0, 30).high) and 0.10 < rep.false_positive.high < 0.12
    d = rep.as_dict()
    assert d["detection"]["digital"]["value"] == 1.0 and "clean" in rep.table()


def test_physical_patch_passes_integrity_but_not_consistency_free(predictor):
    """Integrity is not robustness: a patch in the scene is sealed by the camera and verifies fine."""
    gen = torch.Generator().manual_seed(1)
    x, y = scenes(3, gen)
    phys = physical_patch(x, y)
    key = SessionKey.generate()
    sealer = FrameSealer(key)
    v = FrameVerifier(key.verify_key(), sealer.stream_id, VerifyPolicy(max_age_s=None))
    for i in range(3):
        frame = v.verify(sealer.seal(quantize_frame(phys[i:i + 1])))
        t = frame.to_tensor()
        assert TextureModel()(t).argmax(1).item() != y[i].item()  # accepted, and still fools the model
        assert not predictor.predict(t).flagged.item()


def test_majority_agreement_and_min_agree():
    def const(label: int):
        def f(x):
            out = torch.zeros(x.shape[0], 5)
            out[:, label] = 1
            return out
        return f

    x = torch.zeros(2, 3, 4, 4)
    d = MultiPathPredictor([const(3), const(1), const(3)]).predict(x)
    assert d.majority.tolist() == [3, 3] and d.agree.tolist() == [2, 2] and d.flagged.tolist() == [True, True]
    assert d.labels.shape == (3, 2) and d.path_names == ["path0", "path1", "path2"]
    assert not MultiPathPredictor([const(3), const(1), const(3)], min_agree=2).predict(x).flagged.any()
    tie = MultiPathPredictor([const(4), const(2)]).predict(x)
    assert tie.majority.tolist() == [2, 2] and tie.flagged.all()  # ties resolve to the smaller label
    with pytest.raises(ConfigError):
        MultiPathPredictor([const(1)])
    with pytest.raises(ConfigError):
        MultiPathPredictor([const(1), const(2)], min_agree=3)
    with pytest.raises(ConfigError):
        MultiPathPredictor([PredictionPath("a", const(1)), PredictionPath("a", const(1))])


def test_wilson_known_values():
    r = wilson(8, 10)
    assert (round(r.low, 3), round(r.high, 3)) == (0.49, 0.943)
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == 1.0
    assert math.isnan(wilson(0, 0).value) and str(wilson(0, 0)) == "n/a (n=0)"
    with pytest.raises(ConfigError):
        wilson(3, 2)


def test_transforms_keep_shape_and_range():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 20, 24, generator=gen)
    for t in (Identity(), GaussianBlur(1.5), Rescale(0.5), BitDepth(3), JPEG(60)):
        y = t(x)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1 + 1e-6, t
    assert torch.equal(Identity()(x), x)
    assert len(torch.unique(BitDepth(1)(x))) == 2
    flat = torch.full((1, 3, 20, 24), 0.5)
    assert torch.allclose(GaussianBlur(2.0)(flat), flat, atol=1e-6)
    assert float((JPEG(95)(x) - x).abs().mean()) < float((JPEG(10)(x) - x).abs().mean())
    for bad in (lambda: GaussianBlur(0), lambda: Rescale(1.0)):
        with pytest.raises(ConfigError):
            bad()
    for bad in (lambda: BitDepth(9), lambda: JPEG(0), lambda: JPEG(101)):
        with pytest.raises(DefenceError):
            bad()
    assert JPEG(100).quality == 100  # one JPEG, one quality range [1, 100] (the defence capped at 95 before)


def test_jpeg_is_channel_order_correct():
    x = torch.zeros(1, 3, 16, 16)
    x[:, 0] = 1.0  # pure red stays red through the BGR edge
    y = JPEG(95)(x)
    assert float(y[:, 0].mean()) > 0.9 and float(y[:, 2].mean()) < 0.1
    assert isinstance(np.asarray(y), np.ndarray)
