"""MB3-CenterNet COCO detector (``centernet-coco``): the port vs human's graph model run by tfjs under node.

The reference (``tests/fixtures/coco_detector/reference.json``) was written by ``tools/coco_reference`` (tfjs 4.22.0,
pure-JS cpu backend, human 3.0.4's model files and post-processing); the PNG inputs are committed and their decoded
pixels' sha256 checked, so the port sees exactly what tfjs saw. Tests that need the weights skip when the assets
are not fetched (``testbed assets fetch``); the interpreter's own tests need nothing.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from testbed import assets
from testbed.errors import AssetError
from testbed.models.tfjs_graph import build_tfjs_graph, tf_resize_bilinear, tf_resize_nearest

FIXTURES = Path(__file__).parent / "fixtures" / "coco_detector"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
HAVE_WEIGHTS = all(assets.check(n) == "ok" for n in ("centernet_coco_graph", "centernet_coco_weights"))
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="centernet-coco assets not fetched (testbed assets fetch)")


def _image(entry: dict) -> torch.Tensor:
    pixels = np.asarray(Image.open(FIXTURES / entry["file"]).convert("RGB"))
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == entry["pixels_sha256"], entry["file"]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def detector():
    from testbed.models.registry import get_model

    return get_model("centernet-coco", device="cpu")


GRAD_IMAGE = "astronaut"


@pytest.fixture(scope="module")
def outputs(detector):
    """Per fixture image: (image, heat, wh), one forward pass each, shared by the tests (detached); the forward of
    ``GRAD_IMAGE`` also keeps its autograd graph, under ``"grad"``, for the gradient test."""
    out = {}
    for entry in REFERENCE["inputs"]:
        x = _image(entry)
        if entry["name"] == GRAD_IMAGE:
            x_grad = x.clone().requires_grad_(True)
            heat, wh = detector.raw_outputs(x_grad)
            out["grad"] = (x_grad, heat, wh)
        else:
            with torch.no_grad():
                heat, wh = detector.raw_outputs(x)
        out[entry["name"]] = (x, heat.detach(), wh.detach())
    return out


def test_reference_fixture_is_what_the_assets_hold():
    assert REFERENCE["human_version"] == "3.0.4" and REFERENCE["tfjs_version"] == "4.22.0"
    assert REFERENCE["model_files"]["centernet.json"] == assets.ASSETS["centernet_coco_graph"].sha256
    assert REFERENCE["model_files"]["centernet.bin"] == assets.ASSETS["centernet_coco_weights"].sha256
    assert len(REFERENCE["inputs"]) >= 5


@needs_weights
def test_raw_outputs_match_tfjs(outputs):
    """Heat-map (per-class maxima, sampled person channel, sum) and box sizes equal tfjs's within float noise."""
    step = REFERENCE["grid_step"]
    for entry in REFERENCE["inputs"]:
        _, heat, wh = outputs[entry["name"]]
        assert tuple(heat.shape) == (1, 80, 128, 128) and tuple(wh.shape) == (1, 4, 128, 128)
        class_max = heat[0].amax(dim=(1, 2)).numpy()
        assert np.abs(class_max - np.array(entry["keypoints"]["class_max"])).max() < 1e-5
        grid = heat[0, 0, ::step, ::step].numpy()
        assert np.abs(grid - np.array(entry["keypoints"]["person_grid"])).max() < 1e-5
        wh_grid = wh[0, :, ::step, ::step].permute(1, 2, 0).numpy()
        assert np.abs(wh_grid - np.array(entry["wh"]["grid"])).max() < 0.05  # 512-input pixels
        assert math.isclose(float(heat.double().sum()), entry["keypoints"]["sum"], rel_tol=1e-5)


@needs_weights
def test_graph_decoding_matches_tfjs_detections(detector, outputs):
    """The port's decoding equals the graph's own ``tower_0/detections`` (top-100 peaks) on the scoring peaks."""
    for entry in REFERENCE["inputs"]:
        _, heat, wh = outputs[entry["name"]]
        boxes, scores, labels = detector.decode(heat, wh)
        ref = np.array(entry["detections"])
        n = int((ref[:, 4] > 0.05).sum())  # below that, near-ties among weak peaks may swap order
        assert np.abs(scores[0, :n].numpy() - ref[:n, 4]).max() < 1e-5
        assert (labels[0, :n].numpy() == ref[:n, 5]).all()
        assert np.abs(boxes[0, :n].numpy() - ref[:n, :4]).max() < 0.05


@needs_weights
def test_detections_match_human_within_1px_and_1e3(detector, outputs):
    """The issue's tolerance: after human's NMS, boxes within 1 px and scores within 1e-3 on every image; human's
    own truncated boxes / two-decimal scores agree too."""
    for entry in REFERENCE["inputs"]:
        x, heat, wh = outputs[entry["name"]]
        (found,) = detector.detections_from_outputs(heat, wh, x.shape[-2], x.shape[-1])
        ref = entry["human"]
        assert len(found.scores) == len(ref), entry["name"]
        for box, score, label, r in zip(found.boxes, found.scores, found.labels, ref):
            assert int(label) == r["class"]
            assert abs(float(score) - r["raw_score"]) < 1e-3
            assert np.abs(box.numpy() - np.array(r["box_xyxy"])).max() < 1.0
            assert abs(math.trunc(100 * float(score)) / 100 - r["score"]) <= 0.01 + 1e-9
            human_box = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            assert all(abs(math.trunc(float(v)) - h) <= 1 for v, h in zip(human_box, r["box"]))


@needs_weights
def test_people_are_found_on_the_people_photos(detector, outputs):
    """Every fixture photo shows people: at least one person above human's 0.2 threshold on each; the group photo
    with three people (faceapi_sample1) gives three person boxes."""
    person = detector.label_index("person")
    assert person == 0
    counts = {}
    for entry in REFERENCE["inputs"]:
        x, heat, wh = outputs[entry["name"]]
        (found,) = detector.detections_from_outputs(heat, wh, x.shape[-2], x.shape[-1])
        counts[entry["name"]] = int((found.labels == person).sum())
    assert all(c >= 1 for c in counts.values()), counts
    assert counts["faceapi_sample1"] == 3


@needs_weights
def test_candidate_scores_pass_gradients_and_align_with_boxes(detector, outputs):
    x, heat, wh = outputs["grad"]
    scores, boxes = detector.candidates_from_outputs(heat, wh, "person", x.shape[-2], x.shape[-1])
    assert scores.shape == (1, 128 * 128) and boxes.shape == (1, 128 * 128, 4)
    scores.max().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in detector.parameters())
    (found,) = detector.detections_from_outputs(heat, wh, x.shape[-2], x.shape[-1])
    best = int(scores.detach().argmax())
    assert found.labels[0] == 0 and torch.allclose(scores[0, best].detach(), found.scores[0])
    assert torch.allclose(boxes[0, best].detach(), found.boxes[0], atol=1e-3)


@needs_weights
def test_candidate_methods_are_one_forward_of_the_same_outputs(detector, monkeypatch):
    """candidate_scores / candidate_boxes / candidates / detect all read raw_outputs (stubbed here: no network)."""
    heat = torch.rand(1, 80, 128, 128)
    wh = torch.rand(1, 4, 128, 128) * 20
    monkeypatch.setattr(detector, "raw_outputs", lambda images: (heat, wh))
    x = torch.zeros(1, 3, 100, 200)
    assert torch.equal(detector.candidate_scores(x, "person"), heat[:, 0].flatten(1))
    assert torch.equal(detector.candidate_scores(x, 5), heat[:, 5].flatten(1))
    boxes = detector.candidate_boxes(x)
    assert torch.equal(detector.candidates(x, 0)[1], boxes)
    # cell (row 1, col 2): anchor (8, 4) in 512 units, scaled by (200 / 512, 100 / 512)
    l, t, r, b = wh[0, :, 1, 2]
    expected = torch.stack([(8 - l) * 200 / 512, (4 - t) * 100 / 512, (8 + r) * 200 / 512, (4 + b) * 100 / 512])
    assert torch.allclose(boxes[0, 1 * 128 + 2], expected, atol=1e-5)
    assert len(detector.detect(x)[0].scores) <= detector.max_detections


def test_registry_entry():
    from testbed.models.registry import get_entry, list_models

    entry = get_entry("centernet-coco")
    assert entry.task == "detector" and "centernet-coco" in list_models("detector")
    assert entry.labels[0] == "person" and len(entry.labels) == 80
    assert entry.assets == ("centernet_coco_graph", "centernet_coco_weights")
    assert assets.ASSETS["centernet_coco_weights"].package == "@vladmandic/human@3.0.4"


def test_missing_assets_name_the_fix(monkeypatch, tmp_path):
    from testbed.models.coco_detector import build_centernet_coco

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    with pytest.raises(AssetError, match="centernet_coco_graph.*testbed assets fetch"):
        build_centernet_coco()


# ------------------------------------------------------------------------------------- the interpreter on its own
def _graph(nodes: list[dict]) -> dict:
    return {"format": "graph-model", "modelTopology": {"node": nodes}}


def _node(name: str, op: str, inputs=(), **attr) -> dict:
    return {"name": name, "op": op, "input": list(inputs), "attr": attr}


def test_unknown_op_is_refused_naming_it():
    graph = _graph([_node("x", "Placeholder"), _node("k", "Const"), _node("t", "TopKV2", ["x", "k"]),
                    _node("out", "Identity", ["t"])])
    with pytest.raises(AssetError, match=r"TopKV2.*node 't'"):
        build_tfjs_graph(graph, {"k": np.array(3, np.float32)}, ["out"])


def s(text: str) -> dict:
    """A string attr as tfjs's model.json stores it (base64)."""
    return {"s": base64.b64encode(text.encode()).decode()}


def test_same_padding_conv_and_constants_follow_tensorflow():
    """A stride-2 3x3 SAME conv pads only bottom/right on an even input (TF), bias + Relu6 fused, then x * c."""
    graph = _graph([
        _node("x", "Placeholder"), _node("w", "Const"), _node("b", "Const"), _node("c", "Const"),
        _node("conv", "_FusedConv2D", ["x", "w", "b"], padding=s("SAME"), strides={"list": {"i": ["1", "2", "2", "1"]}},
              fused_ops={"list": {"s": [s("BiasAdd")["s"], s("Relu6")["s"]]}}),
        _node("out", "Mul", ["conv", "c"]),
    ])
    w = np.ones((3, 3, 1, 1), np.float32)
    g = build_tfjs_graph(graph, {"w": w, "b": np.array([0.5], np.float32), "c": np.array(2.0, np.float32)},
                         ["out"])
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 16
    (y,) = g(x)
    # TF pads 0 rows/cols before and 1 after: output (0, 0) covers rows/cols 0..2, output (1, 1) rows/cols 2..3 + pad
    expected = torch.tensor([[x[0, 0, 0:3, 0:3].sum(), x[0, 0, 0:3, 2:4].sum()],
                             [x[0, 0, 2:4, 0:3].sum(), x[0, 0, 2:4, 2:4].sum()]])
    assert torch.allclose(y[0, 0], 2 * (expected + 0.5).clamp(0, 6))


def test_tf_legacy_resize_conventions():
    x = torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]])
    # legacy bilinear (tfjs default): src = dst * in / out; 4 -> 8 repeats the last value at the end
    up = tf_resize_bilinear(x, (1, 8))
    assert torch.allclose(up[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]))
    # half-pixel centres are torch's align_corners=False
    hp = tf_resize_bilinear(x, (1, 8), half_pixel_centers=True)
    ref = torch.nn.functional.interpolate(x, size=(1, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(hp, ref)
    assert torch.equal(tf_resize_nearest(x, (1, 2))[0, 0, 0], torch.tensor([0.0, 2.0]))
    # downsampling (human's 1920-px photos -> 512): legacy samples at dst * 8 / 3, no anti-aliasing
    ramp = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 1, 8, 2)
    down = tf_resize_bilinear(ramp, (3, 2))
    assert torch.allclose(down[0, 0, :, 0], torch.tensor([0.0, 8 / 3, 16 / 3]))


def test_small_resizes_as_matrix_products_equal_the_gathers(monkeypatch):
    """The interpreter's speed-up changes no result: small resizes done as two matrix products equal the per-axis
    gathers for TF's three conventions, up and down."""
    from testbed.models import tfjs_graph

    torch.manual_seed(0)
    img = torch.rand(1, 3, 7, 10) * 255
    for flags in ({}, {"align_corners": True}, {"half_pixel_centers": True}):
        for size in ((14, 20), (3, 4), (7, 13)):
            fast = tf_resize_bilinear(img, size, **flags)
            monkeypatch.setattr(tfjs_graph, "RESIZE_MATMUL_MAX", 0)
            plain = tf_resize_bilinear(img, size, **flags)
            monkeypatch.setattr(tfjs_graph, "RESIZE_MATMUL_MAX", 256)
            assert torch.allclose(fast, plain, atol=1e-4), (flags, size)
