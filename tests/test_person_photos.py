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
    "person_human_me": 1,
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
        assert a.member.endswith(".jpg") and a.filename.endswith(".jpg") and a.description, name
    assert len({assets.ASSETS[n].filename for n in names}) == len(names)  # no two share a cache file


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
def test_each_person_photo_gives_the_documented_person_boxes_at_least_100_px_tall():
    import torch

    from physical.detector_patch import PersonPatch
    from pipelines.person_evasion import detector_model, load_scenes

    detector = detector_model("centernet-coco")
    scenes, names = load_scenes(list(PERSON_BOXES), 512)
    boxes = PersonPatch(gt_score=0.3, score_threshold=0.2).ground_truth(detector, scenes, names)
    counts = {n: len(b) for n, b in zip(names, boxes)}
    assert counts == PERSON_BOXES
    heights = torch.cat([b[:, 3] - b[:, 1] for b in boxes])
    assert float(heights.min()) >= 100
