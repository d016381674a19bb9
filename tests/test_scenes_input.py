"""Any scenes in: shipped photo names, image files, folders and globs, the same way in every command
(testbed.photos.resolve_images: patch --scenes, classify, attack digital --image, experiment configs, survival)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipelines.main import main
from testbed.errors import ImageError
from testbed.photos import resolve_images


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """A working folder with photos/ (three JPEGs, a PNG in a subfolder, a text file) as the current folder."""
    d = tmp_path / "photos"
    (d / "more").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("img10.jpg", "img2.jpg", "img1.JPG"):
        Image.fromarray((rng.random((40, 44, 3)) * 255).astype(np.uint8)).save(d / name)
    Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(d / "more" / "deep.png")
    (d / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    return d


def test_resolver_takes_names_files_folders_and_globs(photos):
    assert resolve_images("chelsea,coffee") == ["chelsea", "coffee"]
    assert resolve_images(["photos/img2.jpg"]) == ["photos/img2.jpg"]
    folder = resolve_images("photos")  # the one folder reader: images only, natural order, no recursion
    assert [p.rsplit("/", 1)[1] for p in folder] == ["img1.JPG", "img2.jpg", "img10.jpg"]
    assert resolve_images("photos/*.jpg") == ["photos/img2.jpg", "photos/img10.jpg"]  # glob: as the shell would
    assert resolve_images("photos/**/*.png") == ["photos/more/deep.png"]
    assert resolve_images(["chelsea", "photos/img2.jpg,coffee"]) == ["chelsea", "photos/img2.jpg", "coffee"]
    for bad, words in (("nope", "unknown photo name"), ("photos/*.gif", "matches no image"),
                       ("photos/more/none", "unknown photo name"), ("", "no scenes")):
        with pytest.raises(ImageError, match=words):
            resolve_images(bad)
    (photos / "empty").mkdir()
    with pytest.raises(ImageError, match="no images in it"):
        resolve_images("photos/empty")


def _patch(out, scenes):
    return main(["patch", "--model", "sign-cnn", "--untargeted", "--scenes", scenes, "--steps", "2",
                 "--batch-size", "2", "--eval-samples", "4", "--eval-batch-size", "4", "--out", str(out)])


def test_patch_scenes_folder_and_glob(photos, tmp_path, capsys):
    assert _patch(tmp_path / "by_folder", "photos") == 0
    by_folder = json.loads((tmp_path / "by_folder" / "metrics.json").read_text())
    assert len(by_folder["scenes"]) == 3 and by_folder["eval_samples"] == 4
    assert _patch(tmp_path / "by_glob", "photos/*.jpg") == 0
    by_glob = json.loads((tmp_path / "by_glob" / "metrics.json").read_text())
    assert by_glob["scenes"] == ["photos/img2.jpg", "photos/img10.jpg"]
    capsys.readouterr()
    assert _patch(tmp_path / "bad", "photos/*.gif") == 2
    err = capsys.readouterr().err.strip()
    assert "matches no image" in err and "\n" not in err


def test_classify_and_experiment_config_take_the_same_forms(photos, capsys):
    assert main(["classify", "--model", "sign-cnn", "photos", "photos/**/*.png", "chelsea"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [
        "photos/img1.JPG", "photos/img2.jpg", "photos/img10.jpg", "photos/more/deep.png", "chelsea"]
    import pipelines.kinds  # noqa: F401  registers the kurakin kind
    from pipelines.experiment import parse_config
    from testbed.errors import ConfigError

    cfg = parse_config({"name": "t", "images": {"names": ["photos/*.jpg", "coffee"]}})
    assert cfg.images.names == ("photos/*.jpg", "coffee")
    with pytest.raises(ConfigError, match="unknown photo name"):
        parse_config({"name": "t", "images": {"names": ["nope"]}})


def test_resolver_takes_pinned_photo_assets_by_name_from_the_cache_only(tmp_path, monkeypatch):
    """``imagenet_val07`` / ``person_*`` / ``faceapi_sample*`` are names wherever images are taken (patch --scenes,
    classify, …): the verified cached file, never a download at run time; absent, the fix is named."""
    from testbed import assets
    from testbed.errors import AssetError
    from testbed.photos import image_asset_names

    names = image_asset_names()
    assert {"imagenet_val07", "faceapi_sample1", "person_ultralytics_bus"} <= set(names)
    assert "mobilenet_v2" not in names and "centernet_coco_weights" not in names  # weights are not photos
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    with pytest.raises(AssetError, match=r"imagenet-val07-.*testbed assets fetch"):
        resolve_images("chelsea,imagenet_val07")
    dst = assets.destination("imagenet_val07")  # a cached copy: the resolver returns its path after verifying it
    dst.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(dst, format="JPEG")
    monkeypatch.setattr(assets, "check", lambda name: "ok")  # (a stand-in file: its sha256 is not the pinned one)
    assert resolve_images("chelsea,imagenet_val07") == ["chelsea", str(dst)]
    with pytest.raises(ImageError, match="imagenet_val00 … imagenet_val19"):
        resolve_images("imagenet_val99")
