"""The print-photo EOT distribution: gradients, exact replay, p=1 semantics, config validation, presets."""
from __future__ import annotations

import json

import pytest
import torch

from physical.eot import PRESETS, EOTConfig, EOTParams, EOTTransform, preset, resolve_config
from testbed.errors import ConfigError

FULL = EOTConfig(
    rotation=20, scale=(0.8, 1.2), translate=0.1, perspective=0.2, printer_gain=0.1, printer_offset=0.05,
    illuminant=0.1, brightness=0.1, contrast=(0.8, 1.2), saturation=(0.7, 1.3), blur=(0.5, 1.5), motion=(1, 4),
    noise=(0.01, 0.05), jpeg_quality=(50, 90),
)

# one op enabled at a time (every op of the distribution)
SINGLE_OPS = {
    "rotation": dict(rotation=20),
    "scale": dict(scale=(0.8, 0.9)),
    "translate": dict(translate=0.2),
    "perspective": dict(perspective=0.3),
    "printer_gain": dict(printer_gain=0.2),
    "printer_offset": dict(printer_offset=0.1),
    "illuminant": dict(illuminant=0.2),
    "brightness": dict(brightness=0.1),
    "contrast": dict(contrast=(0.7, 0.9)),
    "saturation": dict(saturation=(0.3, 0.6)),
    "blur_gaussian": dict(blur=(0.8, 1.5)),
    "blur_disk": dict(blur=(1.0, 2.0), blur_kind="disk"),
    "motion": dict(motion=(2.0, 4.0)),
    "noise_gaussian": dict(noise=(0.02, 0.05)),
    "noise_uniform": dict(noise=(0.02, 0.05), noise_kind="uniform"),
    "jpeg": dict(jpeg_quality=(30, 60)),
}


def _images(b=4, h=16, w=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (0.1 + 0.8 * torch.rand(b, 3, h, w, generator=g)).to(dtype)


@pytest.mark.parametrize("op", sorted(SINGLE_OPS))
def test_every_op_is_applied_to_every_sample(op):
    """p = 1: with one op enabled, every sample of the batch changes (and clamping is not what changed it)."""
    t = EOTTransform(EOTConfig(**SINGLE_OPS[op], clamp=False))
    x = _images(b=8)
    y = t(x, torch.Generator().manual_seed(1))
    diff = (y - x).abs().flatten(1).amax(dim=1)
    assert bool((diff > 1e-4).all()), f"{op}: some samples were left unchanged: {diff.tolist()}"


def test_identity_config_is_identity():
    x = _images()
    y = EOTTransform(EOTConfig())(x, torch.Generator().manual_seed(0))
    assert torch.equal(x, y)


@pytest.mark.parametrize("op", sorted(SINGLE_OPS))
def test_gradcheck_each_op_float64(op):
    """Gradients flow through every transform (float64 gradcheck on a tiny input, op by op)."""
    t = EOTTransform(EOTConfig(**SINGLE_OPS[op], clamp=False))
    params = t.sample(2, torch.Generator().manual_seed(3))
    x = _images(b=2, h=8, w=8, dtype=torch.float64).requires_grad_(True)
    # fast_mode checks random projections v^T J u of the analytical against the numerical Jacobian
    if op == "jpeg":  # kornia's differentiable JPEG works on 16x16 blocks; keep pixels off the clipping edges
        x = _images(b=1, h=16, w=16, dtype=torch.float64).mul(0.5).add(0.25).requires_grad_(True)
        params = t.sample(1, torch.Generator().manual_seed(3))
    assert torch.autograd.gradcheck(lambda im: t.apply(im, params), (x,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_gradient_through_full_distribution_is_nonzero_float32():
    t = EOTTransform(FULL)
    x = _images(b=3, h=32, w=32).requires_grad_(True)
    y = t(x, torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
    assert y.dtype == torch.float32 and y.shape == x.shape


def test_same_seed_replays_bit_for_bit():
    t = EOTTransform(FULL)
    x = _images(b=5, h=32, w=32)
    y1 = t(x, torch.Generator().manual_seed(123))
    p1 = t.last_params
    y2 = t(x, torch.Generator().manual_seed(123))
    assert p1.equal(t.last_params)
    assert torch.equal(y1, y2)
    y3 = t(x, torch.Generator().manual_seed(124))
    assert not torch.equal(y1, y3)


def test_saved_params_replay_exactly(tmp_path):
    t = EOTTransform(FULL)
    x = _images(b=4, h=32, w=32)
    params = t.sample(4, torch.Generator().manual_seed(7))
    y = t.apply(x, params)
    path = params.save(tmp_path / "draw.pt")
    loaded = EOTParams.load(path)
    assert loaded.equal(params)
    assert torch.equal(t.apply(x, loaded), y)
    # through a plain dict and torch.save as well
    torch.save(params.to_dict(), tmp_path / "d.pt")
    again = EOTParams.from_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    assert torch.equal(t.apply(x, again), y)
    # a transform rebuilt from the saved config replays too
    rebuilt = EOTTransform(EOTConfig.from_dict(json.loads(json.dumps(FULL.to_dict()))))
    assert torch.equal(rebuilt.apply(x, loaded), y)


def test_sampling_consumes_the_same_randomness_whatever_the_config():
    """Disabled ops do not shift the random stream of the others."""
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = EOTTransform(EOTConfig(rotation=10)).sample(6, g1)
    b = EOTTransform(FULL.replace(rotation=10)).sample(6, g2)
    assert torch.equal(a.angle, b.angle)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_sampled_values_lie_in_configured_ranges():
    p = EOTTransform(FULL).sample(2000, torch.Generator().manual_seed(0))
    assert p.angle.abs().max() <= 20 and p.angle.abs().max() > 19
    assert 0.8 <= p.scale.min() and p.scale.max() <= 1.2
    assert p.translate.abs().max() <= 0.1
    assert 0 <= p.perspective.min() and p.perspective.max() <= 0.2
    assert torch.allclose(p.illuminant.mean(dim=1), torch.ones(2000))
    assert 50 <= p.jpeg_quality.min() and p.jpeg_quality.max() <= 90
    assert p.printer_gain.dtype == torch.float32


def test_geometry_rotation_moves_pixels_as_expected():
    """A 90-degree rotation of a square image equals torch.rot90 (exact homography convention)."""
    t = EOTTransform(EOTConfig(rotation=90, padding="zeros"))
    x = _images(b=1, h=9, w=9)
    p = t.sample(1, torch.Generator().manual_seed(0))
    p.angle = torch.tensor([90.0])
    y = t.apply(x, p)
    # +90 deg in image coordinates (y down) maps (x, y) -> (-y, x) about the centre: rot90 with k=1 on (H, W) dims
    assert torch.allclose(y, torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-5) or torch.allclose(
        y, torch.rot90(x, k=-1, dims=(-2, -1)), atol=1e-5
    )


def test_colour_ops_match_reference_formulas():
    cfg = EOTConfig(printer_gain=0.1, printer_offset=0.05, illuminant=0.1, brightness=0.1, contrast=(0.8, 1.2),
                    saturation=(0.5, 1.5), clamp=False)
    t = EOTTransform(cfg)
    x = _images(b=3)
    p = t.sample(3, torch.Generator().manual_seed(2))
    y = t.apply(x, p)
    v = lambda a: a[:, :, None, None]  # noqa: E731
    ref = v(p.printer_gain) * x + v(p.printer_offset)
    ref = ref * v(p.illuminant)
    c = p.contrast[:, None, None, None]
    ref = c * (ref - 0.5) + 0.5 + p.brightness[:, None, None, None]
    lum = (ref * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
    s = p.saturation[:, None, None, None]
    ref = s * ref + (1 - s) * lum
    assert torch.allclose(y, ref, atol=1e-5)


def test_blur_kernels_are_normalised_and_identity_at_zero():
    t = EOTTransform(EOTConfig(blur=(0.0, 2.0), motion=(0.0, 5.0)))
    p = t.sample(4, torch.Generator().manual_seed(0))
    k = t.blur_kernel(p)
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(4), atol=1e-5)
    p.blur.zero_()
    p.motion_length.zero_()
    x = _images(b=4)
    assert torch.allclose(t.apply_blur(x, p), x, atol=1e-6)


def test_print_stage_can_be_skipped():
    t = EOTTransform(EOTConfig(printer_gain=0.2, clamp=False))
    x = _images()
    p = t.sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(t.apply(x, p, print_stage=False), x)
    assert torch.allclose(t.apply_print(x, p), t.apply(x, p))


def test_presets_resolve_and_serialise(tmp_path):
    assert set(PRESETS) == {"athalye-eot-2d", "rp2", "sharif", "thys", "art-patch-default"}
    a = preset("athalye-eot-2d")
    assert a.scale == (0.9, 1.4) and a.rotation == 22.5 and a.brightness == 0.05 and a.noise == (0.0, 0.1)
    art = preset("art-patch-default")
    assert art.rotation == 22.5 and art.scale == (0.1, 1.0) and art.perspective == 0.0
    thys = preset("thys")
    assert thys.contrast == (0.8, 1.2) and thys.brightness == 0.1 and thys.rotation == 20.0
    for name in PRESETS:
        cfg = preset(name)
        for suffix in (".json", ".yaml"):
            path = cfg.save(tmp_path / f"{name}{suffix}")
            assert EOTConfig.load(path) == cfg
        y = EOTTransform(name)(_images(b=2, h=32, w=32), torch.Generator().manual_seed(0))
        assert y.shape == (2, 3, 32, 32) and float(y.min()) >= 0 and float(y.max()) <= 1
    assert resolve_config({"preset": "rp2", "rotation": 0.0}).rotation == 0.0


@pytest.mark.parametrize(
    "bad",
    [dict(rotation=-1), dict(scale=(1.2, 0.9)), dict(jpeg_quality=(0, 50)), dict(padding="wrap"),
     dict(noise=(0, 2.0)), dict(contrast="high")],
)
def test_invalid_config_is_refused(bad):
    with pytest.raises(ConfigError):
        EOTConfig(**bad)


def test_unknown_keys_and_presets_are_named():
    with pytest.raises(ConfigError, match="rotaton"):
        EOTConfig.from_dict({"rotaton": 5})
    with pytest.raises(ConfigError, match="known presets"):
        preset("nope")


def test_params_batch_mismatch_is_refused():
    t = EOTTransform(FULL)
    p = t.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="2 draws"):
        t.apply(_images(b=3), p)


def test_plugs_into_digital_attacks_eot_argument():
    """The transform is an ``eot(x, generator)`` callable with ``config()`` and ``last_params``."""
    from physical.attacks.digital import PGD

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(net[1].weight.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    net.eval()
    t = EOTTransform("athalye-eot-2d")
    attack = PGD(eps=8 / 255, alpha=2 / 255, steps=2, eot=t, eot_samples=3, record_transforms=True)
    res = attack(net, _images(b=2), torch.tensor([0, 1]))
    assert len(res.transform_params) == 2 and isinstance(res.transform_params[0], EOTParams)
    assert res.transform_params[0].batch_size == 6
    assert res.config["eot"] == {"eot": preset("athalye-eot-2d").to_dict()}
