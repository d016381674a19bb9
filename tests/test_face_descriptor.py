"""dlib ResNet face descriptor port: matches face-api (tfjs) fixtures, separates faces, fails clearly."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from testbed.errors import AssetError, ConfigError
from testbed.models.face_descriptor import (
    DESCRIPTOR_DIM,
    MATCH_THRESHOLD,
    FaceDescriptorNet,
    face_distance,
    load_face_descriptor,
    read_tfjs_weights,
)

FIXTURES = Path(__file__).parent / "fixtures" / "face_descriptor"
TOLERANCE = 1e-4  # max abs difference to the original implementation, per the issue


@pytest.fixture(scope="module")
def net() -> FaceDescriptorNet:
    return load_face_descriptor(device="cpu")


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads((FIXTURES / "descriptors.json").read_text())


def _fixture_batch(reference: dict) -> torch.Tensor:
    """The fixture PNGs as the port's input (pixels / 255), checked to be the pixels node fed to tfjs."""
    images = []
    for item in reference["inputs"]:
        pixels = np.asarray(Image.open(FIXTURES / item["file"]).convert("RGB"), dtype=np.uint8)
        assert pixels.shape == (150, 150, 3)
        assert hashlib.sha256(pixels.tobytes()).hexdigest() == item["pixels_sha256"], item["file"]
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0)
    return torch.stack(images)


# --- the port matches the original implementation ----------------------------------------------------------------


def test_port_matches_tfjs_reference(net, reference):
    assert reference["face_api_version"] == "1.7.15"
    assert len(reference["inputs"]) >= 4
    x = _fixture_batch(reference)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (len(reference["inputs"]), DESCRIPTOR_DIM)
    for backend in reference["backends"]:  # pure-JS cpu (the reference) and wasm
        ref = torch.tensor([item["descriptors_by_backend"][backend] for item in reference["inputs"]])
        diff = (out - ref).abs().max().item()
        assert diff < TOLERANCE, f"max abs diff to tfjs-{backend}: {diff:.3g}"
    ref = torch.tensor([item["descriptor"] for item in reference["inputs"]])
    assert (out - ref).abs().max().item() < TOLERANCE
    assert ref.abs().max().item() > 0.1  # the reference is not degenerate


def test_batch_and_single_agree(net, reference):
    x = _fixture_batch(reference)
    with torch.no_grad():
        batched = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(batched, single, atol=1e-5)


def test_weights_dequantised_like_tfjs():
    from testbed.assets import asset_path

    weights = read_tfjs_weights(asset_path("face_recognition_manifest"), {
        "face_recognition_model.bin": asset_path("face_recognition_weights")
    })
    assert weights["conv32_down/conv/filters"].shape == (7, 7, 3, 32)  # HWIO
    assert weights["fc"].shape == (256, 128)
    assert len(weights) == 4 + 14 * 2 * 4 + 1
    manifest = json.loads(asset_path("face_recognition_manifest").read_text())
    spec = next(w for w in manifest[0]["weights"] if w["name"] == "conv32_down/scale/weights")
    q = spec["quantization"]
    values = weights["conv32_down/scale/weights"]
    # every value is min + k * scale for an integer k in [0, 255]
    k = (values.astype(np.float64) - q["min"]) / q["scale"]
    assert np.allclose(k, np.round(k), atol=1e-3) and k.min() >= -1e-3 and k.max() <= 255 + 1e-3


# --- the descriptor separates faces (dlib's 0.6 threshold, not tuned) ---------------------------------------------


def _crop(image: torch.Tensor, left: int, top: int, side: int) -> torch.Tensor:
    """A landmark-free square crop resized to the descriptor's 150x150."""
    patch = image[..., top : top + side, left : left + side]
    return F.interpolate(patch, size=(150, 150), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _photometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fixed brightness/contrast change plus seeded Gaussian noise (sigma 0.02)."""
    return (x * 0.85 + 0.03 + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def test_landmark_free_crops_separate_faces(net):
    from testbed.photos import load_photo

    gen = torch.Generator().manual_seed(0)
    astronaut, hopper = load_photo("astronaut"), load_photo("grace_hopper")
    view_a = _crop(astronaut, 160, 45, 130)
    view_b = _photometric(_crop(astronaut, 166, 41, 138), gen)  # shifted, rescaled, photometric + noise
    other = _crop(hopper, 160, 110, 200)
    with torch.no_grad():
        d = net(torch.cat([view_a, view_b, other]))
    same, diff_a, diff_b = face_distance(d[0], d[1]), face_distance(d[0], d[2]), face_distance(d[1], d[2])
    # measured: same 0.374, different 0.688 / 0.648
    assert same < MATCH_THRESHOLD, f"two views of the astronaut: distance {same:.3f}"
    assert diff_a > MATCH_THRESHOLD and diff_b > MATCH_THRESHOLD, f"astronaut vs Hopper: {diff_a:.3f}, {diff_b:.3f}"


def test_aligned_chips_separate_faces(net):
    from testbed.photos import load_photo
    from worlds import faces

    gen = torch.Generator().manual_seed(0)
    astronaut, hopper = load_photo("astronaut"), load_photo("grace_hopper")
    view_a = faces.detect_and_align(astronaut).crop
    # second view: the whole photo mirrored, darker, lower contrast and noisy, detected and aligned again
    augmented = _photometric(torch.flip(astronaut, dims=[-1]), gen)
    view_b = faces.detect_and_align(augmented).crop
    other = faces.detect_and_align(hopper).crop
    assert view_a.shape == view_b.shape == other.shape == (1, 3, 150, 150)
    with torch.no_grad():
        d = net(torch.cat([view_a, view_b, other]))
    same, diff_a, diff_b = face_distance(d[0], d[1]), face_distance(d[0], d[2]), face_distance(d[1], d[2])
    # measured: same 0.193, different 0.675 / 0.672
    assert same < MATCH_THRESHOLD, f"two views of the astronaut: distance {same:.3f}"
    assert diff_a > MATCH_THRESHOLD and diff_b > MATCH_THRESHOLD, f"astronaut vs Hopper: {diff_a:.3f}, {diff_b:.3f}"


# --- registry, gradients ------------------------------------------------------------------------------------------


def test_registry_entry():
    from testbed.models.registry import get_entry, get_model, list_models

    assert "face-descriptor-dlib" in list_models(task="face-descriptor")
    entry = get_entry("face-descriptor-dlib")
    assert entry.input_size == (150, 150) and entry.task == "face-descriptor"
    assert entry.assets == ("face_recognition_manifest", "face_recognition_weights")
    model = get_model("face-descriptor-dlib", device="cpu")
    assert isinstance(model, FaceDescriptorNet) and not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_gradient_reaches_input(net):
    x = torch.full((1, 3, 150, 150), 0.5, requires_grad=True)
    target = torch.zeros(1, DESCRIPTOR_DIM)
    face_distance(net(x), target).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 160, 160), (3, 150, 150), (1, 1, 150, 150), (1, 150, 150, 3)],
)
def test_wrong_input_shape_is_a_clear_error(net, shape):
    with pytest.raises(ConfigError, match=r"\(B, 3, 150, 150\)"):
        net(torch.zeros(shape))


def test_integer_input_is_refused(net):
    with pytest.raises(ConfigError, match="float"):
        net(torch.zeros((1, 3, 150, 150), dtype=torch.uint8))


def test_face_distance_checks_dimension():
    a = torch.zeros(2, DESCRIPTOR_DIM)
    b = torch.ones(2, DESCRIPTOR_DIM)
    assert torch.allclose(face_distance(a, b), torch.full((2,), DESCRIPTOR_DIM**0.5))
    with pytest.raises(ConfigError, match="128-d"):
        face_distance(torch.zeros(2, 64), torch.zeros(2, 64))


def test_missing_asset_names_file_and_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    with pytest.raises(AssetError) as info:
        load_face_descriptor(device="cpu")
    message = str(info.value)
    assert "face_recognition_model-weights_manifest.json" in message and "testbed assets fetch" in message


def test_corrupt_weights_name_file_and_fix(monkeypatch, tmp_path):
    from testbed.assets import asset_path

    manifest = asset_path("face_recognition_manifest")
    (tmp_path / "assets").mkdir()
    shutil.copy(manifest, tmp_path / "assets" / manifest.name)
    (tmp_path / "assets" / "face_recognition_model.bin").write_bytes(b"\0" * 1024)
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    with pytest.raises(AssetError) as info:
        load_face_descriptor(device="cpu")
    message = str(info.value)
    assert "face_recognition_model.bin" in message and "corrupt" in message and "testbed assets fetch" in message


def test_truncated_weights_file_is_detected(tmp_path):
    from testbed.assets import asset_path

    shutil.copy(asset_path("face_recognition_manifest"), tmp_path / "m.json")
    data = asset_path("face_recognition_weights").read_bytes()
    (tmp_path / "face_recognition_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(AssetError, match="past the end"):
        read_tfjs_weights(tmp_path / "m.json")
