"""Channel kind ``transform``: Kurakin et al. 2016 section 4's artificial transformations in place of a print and a
photo (brightness, contrast, Gaussian blur, Gaussian noise, JPEG), validated, seeded, and usable by an experiment."""
from __future__ import annotations

import pytest
import torch

from pipelines.channels import TRANSFORMS, TransformChannel, make_channel
from testbed.errors import ConfigError


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_brightness_and_contrast_are_the_papers_pointwise_changes_clipped():
    x = _images()
    up = TransformChannel(0, {"kind": "brightness", "delta": 30}).transmit(x, ["a", "b"]).images
    assert torch.allclose(up, (x + 30 / 255).clamp(0, 1))
    low = TransformChannel(0, {"kind": "contrast", "factor": 0.8}).transmit(x, ["a", "b"]).images
    assert torch.allclose(low, x * 0.8)


def test_blur_keeps_flat_images_and_smooths_a_checkerboard():
    flat = torch.full((1, 3, 32, 32), 0.4)
    ch = TransformChannel(0, {"kind": "blur", "sigma": 1.0})
    assert torch.allclose(ch.transmit(flat, ["f"]).images, flat, atol=1e-6)
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2).float().expand(1, 3, 32, 32)
    blurred = ch.transmit(checker, ["c"]).images
    assert blurred.std() < 0.1 * checker.std() and abs(float(blurred.mean()) - 0.5) < 0.01


def test_noise_has_its_std_is_seeded_per_image_and_repetition_and_shared_by_clean_and_adversarial():
    grey = torch.full((2, 3, 64, 64), 0.5)
    ch = TransformChannel(3, {"kind": "noise", "sigma": 10})
    a = ch.transmit(grey, ["img1", "img2"], rep=0).images
    assert abs(float((a - 0.5).std()) - 10 / 255) < 0.003
    assert torch.equal(a, ch.transmit(grey, ["img1", "img2"], rep=0).images)  # replayable
    assert not torch.equal(a[0], a[1])  # per image
    assert not torch.equal(a, ch.transmit(grey, ["img1", "img2"], rep=1).images)  # per repetition
    # the adversarial version of an image gets the same noise as its clean version (one "page")
    adv = grey + 0.02 * torch.sign(torch.randn(grey.shape, generator=torch.Generator().manual_seed(1)))
    b = ch.transmit(adv, ["img1", "img2"], rep=0).images
    assert torch.allclose(b - a, adv - grey, atol=1e-6)
    assert not torch.equal(a, TransformChannel(4, {"kind": "noise", "sigma": 10}).transmit(grey, ["img1", "img2"]).images)


def test_jpeg_is_the_testbeds_one_codec():
    from pipelines.defences.transforms import JPEG

    x = _images()
    out = TransformChannel(0, {"kind": "jpeg", "quality": 50}).transmit(x, ["a", "b"]).images
    assert torch.equal(out, JPEG(quality=50).apply(x).clamp(0, 1))
    assert (out - x).abs().mean() > 0.01


@pytest.mark.parametrize("spec, match", [
    ({"kind": "sharpen", "amount": 1}, "kind one of"),
    ("jpeg", "kind one of"),
    ({"kind": "jpeg"}, "takes one parameter quality"),
    ({"kind": "jpeg", "quality": 75.5}, "an integer"),
    ({"kind": "jpeg", "quality": 0}, r"in \[1, 100\]"),
    ({"kind": "blur", "sigma": 1, "size": 3}, "takes one parameter sigma"),
    ({"kind": "noise", "sigma": True}, "takes one parameter sigma"),
    ({"kind": "contrast", "factor": -1}, "factor"),
])
def test_bad_transforms_are_one_config_error(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        TransformChannel(0, spec)
    assert "\n" not in str(info.value)


def test_an_experiment_names_the_transform_and_gets_it():
    import pipelines.kinds  # noqa: F401  (registers the kurakin kind)
    from dataclasses import asdict

    from pipelines.experiment import parse_config

    base = {"name": "t", "kind": "kurakin", "models": ["mobilenet_v2"], "attacks": ["fgsm"], "eps": [16],
            "images": {"source": "photos", "names": ["coffee"]}}
    cfg = parse_config({**base, "channel": {"kind": "transform", "transform": {"kind": "blur", "sigma": 2}}})
    ch = make_channel(asdict(cfg.channel), cfg.seed)
    assert isinstance(ch, TransformChannel)
    assert ch.describe()["transform"] == {"kind": "blur", "sigma": 2.0} and set(TRANSFORMS) == {
        "brightness", "contrast", "blur", "noise", "jpeg"}
    with pytest.raises(ConfigError, match="channel.transform"):
        parse_config({**base, "channel": {"kind": "transform"}})


def test_the_committed_artificial_experiment_loads():
    import pipelines.kinds  # noqa: F401
    from dataclasses import asdict
    from pathlib import Path

    from pipelines.experiment import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "experiments" / "kurakin_artificial.yaml")
    ch = make_channel(asdict(cfg.channel), cfg.seed)
    assert ch.describe()["transform"] == {"kind": "jpeg", "quality": 50} and cfg.eps == (16.0,)
