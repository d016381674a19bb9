"""The print-photo EOT distribution: gradients, exact replay, p=1 semantics, config validation, presets; the
stage list (one random stream per stage, params format version, a toy stage driven through the preset table)."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pickle

import pytest
import torch
import torch.nn.functional as F
import yaml

from physical.eot import (
    DEFAULT_STAGES,
    FORMAT_VERSION,
    PRESETS,
    EOTConfig,
    EOTParams,
    EOTTransform,
    ResizeStage,
    Stage,
    _nonneg,
    preset,
    register_stage,
    resolve_config,
    stage_seed,
    unregister_stage,
)
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
    optics = t.stage("optics")
    k = optics.kernel(p["optics"])
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(4), atol=1e-5)
    p.blur.zero_()
    p.motion_length.zero_()
    x = _images(b=4)
    assert torch.allclose(optics.apply(x, p["optics"]), x, atol=1e-6)


def test_print_stage_can_be_skipped():
    t = EOTTransform(EOTConfig(printer_gain=0.2, clamp=False))
    x = _images()
    p = t.sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(t.apply(x, p, print_stage=False), x)
    assert torch.allclose(t.apply_print(x, p), t.apply(x, p))


def test_presets_resolve_and_serialise(tmp_path):
    assert set(PRESETS) == {"athalye-eot-2d", "rp2", "sharif", "thys", "art-patch-default", "print-aware",
                            "print-aware-10pct", "secure-eval-patch", "rp2-print",
                            "sharif-print-aware", "thys-person", "thys-person-print-aware", "in-situ-sharp"}
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


# ------------------------------------------------------------------------------------------------ the stage list
@dataclasses.dataclass(frozen=True)
class VignetteConfig:
    vignette: float = 0.0  # corner darkening, uniform in [0, vignette] per sample

    def __post_init__(self) -> None:
        object.__setattr__(self, "vignette", _nonneg("vignette", self.vignette, 1.0))


class VignetteStage(Stage):
    """A toy stage defined here: darkens towards the corners, x * (1 - s * r^2), r = 1 at the corners."""

    name = "toy-vignette"
    Config = VignetteConfig

    @property
    def enabled(self) -> bool:
        return self.config.vignette > 0

    def sample(self, n, generator, device):
        return {"vignette_strength": self.uniforms(n, 1, generator, device)[:, 0] * self.config.vignette}

    def apply(self, x, params):
        h, w = x.shape[-2:]
        ys, xs = torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device)
        r2 = (ys[:, None] ** 2 + xs[None, :] ** 2) / 2
        return x * (1 - params["vignette_strength"].to(x.dtype)[:, None, None, None] * r2)


@pytest.fixture
def vignette():
    register_stage(VignetteStage)
    yield VignetteStage
    unregister_stage(VignetteStage.name)


def _draw(config, seed=11, n=16):
    g = torch.Generator().manual_seed(seed)
    p = EOTTransform(config).sample(n, g)
    return p, g.get_state()


def _same_stage_draws(a: EOTParams, b: EOTParams, stages) -> None:
    for s in stages:
        assert set(a[s]) == set(b[s]), s
        for k in a[s]:
            assert torch.equal(a[s][k], b[s][k]), f"{s}.{k} changed"


def test_inserting_a_stage_leaves_every_other_stage_draw_bit_identical(vignette):
    ref, ref_state = _draw(FULL)
    for pos in range(len(DEFAULT_STAGES) + 1):
        order = list(DEFAULT_STAGES)
        order.insert(pos, "toy-vignette")
        p, state = _draw(FULL.replace(stages=order, vignette=0.4))
        assert p.stage_names == tuple(order)
        _same_stage_draws(p, ref, DEFAULT_STAGES)
        assert torch.equal(state, ref_state), "the caller's generator must advance the same amount"
        assert float(p["toy-vignette"]["vignette_strength"].max()) > 0


def test_removing_or_reordering_stages_leaves_the_others_bit_identical():
    ref, ref_state = _draw(FULL)
    for left_out in DEFAULT_STAGES:
        order = [s for s in DEFAULT_STAGES if s != left_out]
        p, state = _draw(FULL.replace(stages=order))
        assert left_out not in p and p.stage_names == tuple(order)
        _same_stage_draws(p, ref, order)
        assert torch.equal(state, ref_state)
    for order in (DEFAULT_STAGES[::-1], ("light", "sensor", "print", "optics", "geometry")):
        p, state = _draw(FULL.replace(stages=list(order)))
        _same_stage_draws(p, ref, DEFAULT_STAGES)
        assert torch.equal(state, ref_state)


def test_a_stage_draws_do_not_depend_on_other_stages_settings():
    ref, _ = _draw(FULL)
    p, _ = _draw(FULL.replace(rotation=0.0, noise=(0.0, 0.0), jpeg_quality=None, saturation=(1.0, 1.0)))
    _same_stage_draws(p, ref, ("print", "optics"))
    assert torch.equal(p.scale, ref.scale) and torch.equal(p.illuminant, ref.illuminant)


def test_a_disabled_inserted_stage_leaves_the_images_bit_identical(vignette):
    x = _images(b=4, h=32, w=32)
    y = EOTTransform(FULL)(x, torch.Generator().manual_seed(3))
    order = [*DEFAULT_STAGES[:2], "toy-vignette", *DEFAULT_STAGES[2:]]
    off = EOTTransform(FULL.replace(stages=order))
    assert torch.equal(off(x, torch.Generator().manual_seed(3)), y)
    on = EOTTransform(FULL.replace(stages=order, vignette=0.5))
    assert not torch.equal(on(x, torch.Generator().manual_seed(3)), y)


def test_stage_seeds_are_a_stable_hash_of_base_seed_and_name():
    """Pinned: stored base seeds replay only while this derivation (BLAKE2b, not Python's hash) stays put."""
    assert stage_seed(0, "geometry") == 5493215710872391171
    assert stage_seed(2**62, "print") == 652902316133847933
    digest = hashlib.blake2b(b"0:geometry", digest_size=8).digest()
    assert stage_seed(0, "geometry") == int.from_bytes(digest, "little") & (2**63 - 1)
    p = EOTTransform("athalye-eot-2d").sample(3, torch.Generator().manual_seed(0))
    assert p.angle.tolist() == [-7.815359115600586, -21.726308822631836, -7.0102458000183105]


def test_fused_apply_equals_the_stages_one_after_another():
    """Fusing print + light into one colour map (across a border-padded warp) is a detail: the result is the
    stages applied one by one, in list order. With zeros padding the print is not moved past the warp."""
    x = _images(b=3, h=24, w=24)
    for padding in ("border", "zeros"):
        t = EOTTransform(FULL.replace(padding=padding, jpeg_quality=None, clamp=False))
        p = t.sample(3, torch.Generator().manual_seed(4))
        ref = x
        for s in t.stages:
            ref = s.apply(ref, p[s.name])
        assert torch.allclose(t.apply(x, p), ref, atol=1e-5), padding


def test_resize_stage_between_geometry_and_light_replays_the_camera_order():
    """The camera order of SignSticker.photograph: geometry at the print resolution, resize, then light, optics,
    sensor on the camera image; inserting the (drawless) resize stage changes no draw."""
    t = EOTTransform("rp2")
    camera = t.with_stage(ResizeStage({"resize_to": (16, 16)}), after="geometry")
    assert camera.cfg.stage_names == ("print", "geometry", "resize", "light", "optics", "sensor")
    assert t.with_stage(ResizeStage({"resize_to": (16, 16)}), after="geometry") is camera  # cached
    p = t.sample(4, torch.Generator().manual_seed(5))
    q = camera.sample(4, torch.Generator().manual_seed(5))
    _same_stage_draws(q, p, DEFAULT_STAGES)
    assert q["resize"] == {}
    assert torch.equal(camera.apply(_images(b=4, h=40, w=40), q), camera.apply(_images(b=4, h=40, w=40), p))
    x = _images(b=4, h=40, w=40)
    y = camera.apply(x, p, print_stage=False)
    ref = t.stage("geometry").apply(x, p["geometry"])
    ref = F.interpolate(ref, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    for name in ("light", "optics", "sensor"):
        ref = t.stage(name).apply(ref, p[name])
    assert y.shape == (4, 3, 16, 16) and torch.allclose(y, ref, atol=1e-6)
    with pytest.raises(ConfigError, match="resize_to"):
        ResizeStage({"resize_to": (0, 16)})


def test_params_round_trip_with_the_format_version(tmp_path):
    t = EOTTransform(FULL)
    x = _images(b=5, h=32, w=32)
    p = t.sample(5, torch.Generator().manual_seed(8))
    d = p.to_dict()
    assert d["format"] == FORMAT_VERSION == 2 and d["batch_size"] == 5
    assert list(d["stages"]) == list(DEFAULT_STAGES) and set(d["stages"]["geometry"]) == {
        "angle", "scale", "translate", "perspective"}
    assert EOTParams.from_dict(d).equal(p)
    torch.save(d, tmp_path / "p.pt")
    assert EOTParams.from_dict(torch.load(tmp_path / "p.pt", weights_only=True)).equal(p)
    # through JSON (lists of numbers): float32 values survive exactly, so the images replay bit for bit
    as_json = json.loads(json.dumps({**d, "stages": {s: {k: v.tolist() for k, v in q.items()}
                                                     for s, q in d["stages"].items()}}))
    again = EOTParams.from_dict(as_json)
    assert again.equal(p) and torch.equal(t.apply(x, again), t.apply(x, p))
    assert EOTParams.load(p.save(tmp_path / "saved.pt")).equal(p)
    assert pickle.loads(pickle.dumps(p)).equal(p)


@pytest.mark.parametrize("version", [3, 0, "2", None])
def test_unknown_params_format_is_refused(version):
    d = EOTTransform(FULL).sample(2, torch.Generator().manual_seed(0)).to_dict()
    d["format"] = version
    with pytest.raises(ConfigError, match=f"format {version!r} is not supported"):
        EOTParams.from_dict(d)


def test_malformed_params_are_refused():
    d = EOTTransform(FULL).sample(2, torch.Generator().manual_seed(0)).to_dict()
    with pytest.raises(ConfigError, match="missing keys \\['batch_size'\\]"):
        EOTParams.from_dict({k: v for k, v in d.items() if k != "batch_size"})
    with pytest.raises(ConfigError, match="print.printer_gain has 2 rows, the batch has 3"):
        EOTParams.from_dict({**d, "batch_size": 3})
    with pytest.raises(ConfigError, match="no draw of stage 'print'; stages drawn: \\['geometry'\\]"):
        EOTTransform(FULL).apply(_images(b=2), EOTParams({"geometry": d["stages"]["geometry"]}, 2))


def test_format1_flat_params_still_load_and_replay():
    """Draws stored before the stage list (one flat dict, no format key) load onto the stages and replay."""
    t = EOTTransform(FULL)
    x = _images(b=3, h=32, w=32)
    p = t.sample(3, torch.Generator().manual_seed(9))
    flat = {k: v for s in p.stage_names for k, v in p[s].items()}
    old = EOTParams.from_dict(flat)
    assert old.equal(p) and torch.equal(t.apply(x, old), t.apply(x, p))
    with pytest.raises(ConfigError, match="format 1.*missing keys \\['angle'\\]"):
        EOTParams.from_dict({k: v for k, v in flat.items() if k != "angle"})


def test_params_cat_keeps_stage_groups():
    t = EOTTransform(FULL)
    a, b = (t.sample(2, torch.Generator().manual_seed(s)) for s in (1, 2))
    c = EOTParams.cat([a, b])
    assert c.batch_size == 4 and torch.equal(c.angle, torch.cat([a.angle, b.angle]))
    assert torch.equal(c.noise_seed, a.noise_seed)
    with pytest.raises(ConfigError, match="same stages"):
        EOTParams.cat([a, EOTTransform(FULL.replace(stages=["geometry"])).sample(2, torch.Generator())])


@pytest.mark.parametrize("name", sorted(PRESETS) + ["full", "custom-stages"])
def test_config_round_trips_through_dict_json_yaml_and_pickle(name, tmp_path):
    cfg = {"full": FULL, "custom-stages": EOTConfig(stages=["geometry", "resize", "sensor"], rotation=5.0,
                                                    resize_to=(32, 24), noise=(0.0, 0.1))}.get(name)
    cfg = cfg if cfg is not None else preset(name)
    assert EOTConfig.from_dict(cfg.to_dict()) == cfg
    assert EOTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert EOTConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    for suffix in (".json", ".yml"):
        assert EOTConfig.load(cfg.save(tmp_path / f"c{suffix}")) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg
    assert hash(copy.deepcopy(cfg)) == hash(cfg)
    assert eval(repr(cfg), {"EOTConfig": EOTConfig}) == cfg


def test_flat_config_maps_onto_stages():
    cfg = EOTConfig(rotation=10, printer_gain=0.1, noise=[0.0, 0.1])
    assert cfg.stage_names == DEFAULT_STAGES
    assert cfg.stage_config("geometry").rotation == 10.0 and cfg.stage_config("print").printer_gain == 0.1
    assert cfg.noise == (0.0, 0.1) and cfg.rotation == 10.0
    assert "stages" not in cfg.to_dict()  # the default list is left out: configs written before it compare equal
    assert cfg.replace(stages=["geometry", "sensor"]).to_dict() == {
        "stages": ["geometry", "sensor"], "rotation": 10.0, "scale": [1.0, 1.0], "translate": 0.0,
        "perspective": 0.0, "padding": "border", "noise_kind": "gaussian", "noise": [0.0, 0.1],
        "jpeg_quality": None, "clamp": True}
    only_geometry = EOTConfig(stages=["geometry"], rotation=3.0)
    assert only_geometry.printer_gain == 0.0  # a field of a stage not in the list reads as the identity
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rotation = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(stages=["geometry"], printer_gain=0.1), "printer_gain belongs to stage 'print', which is not in"),
     (dict(stages=["geometry", "fisheye"]), "unknown EOT stage 'fisheye'"),
     (dict(stages=["geometry", "geometry"]), "more than once"),
     (dict(stages="geometry"), "must be a list of stage names")],
)
def test_bad_stage_lists_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EOTConfig(**kwargs)


def test_stage_registration_refuses_clashing_fields():
    @dataclasses.dataclass(frozen=True)
    class Clash:
        rotation: float = 0.0

    class ClashStage(Stage):
        name = "toy-clash"
        Config = Clash

    with pytest.raises(ConfigError, match="'rotation' is already a field of stage 'geometry'"):
        register_stage(ClashStage)
    assert "toy-clash" not in EOTConfig().to_dict()


def test_toy_stage_is_drivable_through_the_preset_table(vignette, monkeypatch, tmp_path):
    """Adding a stage = one class + one preset-table row: the toy stage defined above, a row naming it."""
    monkeypatch.setitem(PRESETS, "toy-dark-corners", {"stages": [*DEFAULT_STAGES, "toy-vignette"],
                                                      "rotation": 5.0, "vignette": (0.5)})
    t = EOTTransform("toy-dark-corners")
    assert t.cfg.stage_names[-1] == "toy-vignette" and t.cfg.vignette == 0.5
    x = torch.full((4, 3, 17, 17), 0.8)
    y = t(x, torch.Generator().manual_seed(0))
    s = t.last_params["toy-vignette"]["vignette_strength"]
    assert bool((s > 0).all()) and bool((s <= 0.5).all())
    # a uniform grey stays uniform through the other stages (border padding): the centre keeps 0.8, the corners
    # get 0.8 * (1 - s)
    assert torch.allclose(y[:, :, 8, 8], torch.full((4, 3), 0.8), atol=1e-5)
    assert torch.allclose(y[:, :, 0, 0], (0.8 * (1 - s))[:, None].expand(4, 3), atol=1e-5)
    # overrides, a JSON/YAML file (what --eot FILE loads), and the stage's own validation
    assert not resolve_config({"preset": "toy-dark-corners", "vignette": 0.0}).enabled("toy-vignette")
    assert "vignette" not in resolve_config({"preset": "toy-dark-corners", "stages": list(DEFAULT_STAGES)}).to_dict()
    path = tmp_path / "toy.yaml"
    path.write_text("preset: toy-dark-corners\nvignette: 0.25\n")
    assert EOTConfig.load(path) == t.cfg.replace(vignette=0.25)
    with pytest.raises(ConfigError, match="vignette must be <= 1.0"):
        resolve_config({"preset": "toy-dark-corners", "vignette": 2.0})
    with pytest.raises(ConfigError, match="vignette"):
        EOTConfig(vignette=0.3)  # not in the default stage list


def test_toy_stage_through_the_patch_command(vignette, monkeypatch, tmp_path, capsys):
    """The toy stage, named by a preset row, through ``testbed patch --eot FILE``: the run records it and its draws."""
    from pipelines.main import main
    from test_patch import _register_tiny_cli_model

    monkeypatch.setitem(PRESETS, "toy-dark-corners", {**PRESETS["thys"], "stages": [*DEFAULT_STAGES, "toy-vignette"],
                                                      "vignette": 0.5})
    eot_file = tmp_path / "dark.yaml"
    eot_file.write_text("preset: toy-dark-corners\nvignette: 0.2\n")
    out = tmp_path / "run"
    argv = ["patch", "--model", _register_tiny_cli_model(), "--target", "two", "--scenes", "chelsea,coffee",
            "--area", "0.2", "--steps", "2", "--batch-size", "4", "--eval", "8", "--eot", str(eot_file),
            "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["eot"]["stages"][-1] == "toy-vignette" and config["eot"]["vignette"] == 0.2
    draws = torch.load(out / "eval_draws.pt", weights_only=True)
    strength = torch.cat([d["eot"]["stages"]["toy-vignette"]["vignette_strength"] for d in draws])
    assert strength.numel() == 8 and 0 < float(strength.min()) and float(strength.max()) <= 0.2


def test_presets_are_one_table_used_by_demo_secure_eval_and_the_experiment_files():
    from pipelines.demo import DemoConfig
    from pipelines.secure_eval import patch_eot_config

    assert DemoConfig().eot == "in-situ-sharp" and preset("print-aware").saturation == (0.6, 1.0)
    sharp = preset("in-situ-sharp")
    assert EOTConfig.load("experiments/eot_in_situ_sharp_10pct.yaml") == sharp
    assert EOTConfig.load("experiments/eot_in_situ_sharp_profile_10pct.yaml") == sharp.replace(
        printer_profile="experiments/printer_profile_default.json", printer_profile_jitter=0.03)
    assert (sharp.scale, sharp.contrast, sharp.blur) == ((1.0, 1.0), (0.85, 1.3), (0.0, 0.4))  # no scene warp
    assert patch_eot_config() == preset("secure-eval-patch")
    assert preset("print-aware-10pct") == preset("print-aware").replace(scale=(0.8, 1.0))
    # rp2-print: rp2's viewpoints and blur, print-aware's colour ranges, nothing else
    rp2, pa = preset("rp2"), preset("print-aware")
    colour = ("brightness", "contrast", "contrast_pivot", "saturation", "illuminant", "printer_gain",
              "printer_offset", "noise")
    assert preset("rp2-print") == rp2.replace(**{k: getattr(pa, k) for k in colour})
    assert EOTConfig.load("experiments/eot_print_aware.yaml") == preset("print-aware")
    assert EOTConfig.load("experiments/eot_print_aware_10pct.yaml") == preset("print-aware-10pct")
