"""Kurakin metrics on hand-made cells, the image set, and the simulated channel (camera.simulated): determinism,
pairing of clean / adversarial draws, independence of seeds, presets ordered by severity."""
from __future__ import annotations

import torch

from pipelines.channels import SimulatedChannel, derive_seed, make_channel
from pipelines.kurakin import PAPER_ACCURACY, PAPER_DESTRUCTION, build_image_set, crop_views, summarise
from pipelines.experiment import ImageSetConfig


def _pred(top1: list[int], conf: list[float] | None = None) -> dict:
    """Top-5 lists whose first entry is ``top1`` and whose others are classes 90..93 (never a label here)."""
    return {"top5": [[t, 90, 91, 92, 93] for t in top1], "conf": conf or [0.5] * len(top1)}


def test_destruction_and_prefilter_on_hand_made_cells():
    labels = [0, 1, 2, 3, 4, 5]
    clean = {"kind": "clean", "model": "m", "labels": labels,
             "digital": _pred([0, 1, 2, 3, 4, 9]),          # image 5 clean-wrong: never eligible
             "photo": [_pred([0, 1, 2, 3, 9, 9])]}
    adv = {"kind": "attack", "model": "m", "attack_label": "fgsm", "eps": 8.0, "labels": labels, "target": None,
           # adversarial wrong (digital) for images 0, 1, 2 and 5; right for 3 and 4
           "digital": _pred([7, 7, 7, 3, 4, 7], conf=[0.9, 0.5, 0.95, 0.99, 0.99, 0.99]),
           # after the photo: image 0 recovers, 1 and 2 stay wrong, 4 breaks
           "photo": [_pred([0, 7, 7, 3, 7, 5])]}
    (row,) = summarise({"m/clean": clean, "m/fgsm/eps8": adv})
    assert (row.clean_digital[0].k, row.clean_digital[0].n) == (5, 6)
    assert (row.clean_photo[0].k, row.adv_digital[0].k, row.adv_photo[0].k) == (4, 2, 3)
    # Eq. 1: eligible = clean right & adv wrong = {0, 1, 2}; photo right among them = {0}
    d = row.destruction_average[0]
    assert (d.k, d.n) == (1, 3)
    # prefiltered: eligible with adversarial confidence >= 0.8 = {0, 2}
    p = row.destruction_prefiltered[0]
    assert (p.k, p.n) == (1, 2)
    # top-5: adversarial top-5 holds the label for none of {0, 1, 2, 5} (90..93 filler) -> same sets
    assert (row.destruction_average[1].k, row.destruction_average[1].n) == (1, 3)
    assert 0 <= d.low <= d.value <= d.high <= 1


def test_repetitions_pool_photos_and_targeted_success():
    labels = [0, 1]
    clean = {"kind": "clean", "model": "m", "labels": labels, "digital": _pred([0, 1]),
             "photo": [_pred([0, 1]), _pred([0, 1])]}
    adv = {"kind": "attack", "model": "m", "attack_label": "iter_ll", "eps": 16.0, "labels": labels,
           "target": [5, 6], "digital": _pred([5, 6], [0.9, 0.9]), "photo": [_pred([0, 6]), _pred([0, 1])]}
    (row,) = summarise({"m/clean": clean, "a": adv})
    assert row.reps == 2 and row.adv_photo[0].n == 4 and row.adv_photo[0].k == 3
    assert (row.destruction_average[0].k, row.destruction_average[0].n) == (3, 4)
    assert (row.targeted_digital.k, row.targeted_digital.n) == (2, 2)
    assert (row.targeted_photo.k, row.targeted_photo.n) == (1, 4)


def test_paper_reference_numbers():
    assert PAPER_ACCURACY[("fgsm", 16)]["adv_photo"] == (36.4, 67.7)
    assert PAPER_DESTRUCTION[("iter_ll", 8)]["prefiltered"] == (88.9, 97.0)
    assert len(PAPER_ACCURACY) == len(PAPER_DESTRUCTION) == 6


def test_image_set_crops():
    from testbed.photos import imagenet_preprocess, load_photo

    views = crop_views(load_photo("chelsea"), 3, (64, 64))
    assert len(views) == 3 and all(v.shape == (1, 3, 64, 64) for v in views)
    assert torch.equal(views[0], imagenet_preprocess(load_photo("chelsea"), 64))
    assert (views[1] - views[2]).abs().mean() > 0.01
    s = build_image_set(ImageSetConfig(names=("chelsea", "coffee"), crops_per_photo=2), (32, 32))
    assert s.ids == ["chelsea-0", "chelsea-1", "coffee-0", "coffee-1"] and s.images.shape == (4, 3, 32, 32)


FAST = {"frame_size": [640, 480], "dpi": 150, "width_mm": 30}


def test_simulated_channel_is_replayable_and_paired():
    from camera.simulated import PrintPhotoConfig, replay_print_photograph
    from testbed.photos import imagenet_view

    x = torch.cat([imagenet_view(n, 48) for n in ("coffee", "chelsea", "rocket")])
    ch = SimulatedChannel(seed=7, **FAST)
    a = ch.transmit(x, ["a", "b", "c"], rep=0, tag="clean")
    b = ch.transmit(x, ["a", "b", "c"], rep=0, tag="fgsm")  # same image id + rep -> same draw, whatever the cell
    c = ch.transmit(x, ["a", "b", "c"], rep=1)
    assert torch.equal(a.images, b.images) and a.params == b.params
    assert not torch.equal(a.images, c.images)
    # the draw follows the id, not the position in the batch
    d = ch.transmit(x[[2, 0]], ["c", "a"], rep=0)
    assert torch.equal(d.images[0], a.images[2]) and torch.equal(d.images[1], a.images[0])
    assert a.images.shape == x.shape and 0 <= float(a.images.min()) and float(a.images.max()) <= 1
    # a real degradation, not a destruction: correlated with the input, but changed
    err = (a.images - x).abs().mean()
    assert 0.01 < float(err) < 0.35
    for img, out, p in zip(x, a.images, a.params):
        u, v = (t.flatten() - t.mean() for t in (img, out))
        assert float(u @ v / (u.norm() * v.norm())) > 0.6, p["id"]
        assert len(p["rectify"]["markers_used"]) >= 3 and p["rectify"]["reprojection_error_px"] < 4
    # replay from the recorded (JSON) parameters
    import json

    rec = json.loads(json.dumps(a.params[1]))
    assert torch.equal(replay_print_photograph(x[1:2], rec, ch.config), a.images[1:2])
    assert ch.config == PrintPhotoConfig(**{**FAST, "frame_size": (640, 480)})
    # evaluation draws are seeded apart from anything else (namespace "channel")
    assert derive_seed(7, "channel", 0, "a") != derive_seed(7, "eot", 0, "a")
    assert ch.describe()["backend"].startswith("camera.simulated")


def test_mild_preset_degrades_less_than_harsh():
    from testbed.photos import imagenet_view

    x = imagenet_view("coffee", 64)
    ids = [f"i{k}" for k in range(4)]
    xs = x.repeat(4, 1, 1, 1)
    mild = SimulatedChannel(0, "mild", **FAST).transmit(xs, ids).images
    harsh = SimulatedChannel(0, "harsh", **FAST).transmit(xs, ids).images
    assert (mild - xs).abs().mean() < (harsh - xs).abs().mean()


def test_make_channel_simulated_is_camera_simulated():
    """kind: simulated = printouts sheet -> camera.simulated photo -> camera.rectify -> the image's frame."""
    from testbed.photos import imagenet_view

    ch = make_channel({"kind": "simulated", "simulator": {"frame_size": [640, 480], "dpi": 150, "width_mm": 40,
                                                          "max_tilt_deg": 15}}, 3)
    assert isinstance(ch, SimulatedChannel)
    x = imagenet_view("coffee", 64)
    out = ch.transmit(x, ["coffee-0"], rep=0)
    assert out.images.shape == x.shape and 0 <= float(out.images.min()) and float(out.images.max()) <= 1
    info = out.params[0]["rectify"]
    assert len(info["markers_used"]) >= 3 and info["reprojection_error_px"] < 4
    a, b = (t.flatten() - t.mean() for t in (x, out.images))
    assert float((a @ b) / (a.norm() * b.norm())) > 0.6
    again = ch.transmit(x, ["coffee-0"], rep=0)
    assert torch.equal(again.images, out.images)  # replayable
    import pipelines.channels as pc

    assert not hasattr(pc, "PrintPhotoSimulator") and not hasattr(pc, "SimulatorConfig")  # one simulator


def test_imagenet_samples_carry_their_true_labels(monkeypatch, tmp_path):
    """images.source imagenet-samples: the pinned ImageNet validation samples, each crop with its image's true
    label (not the model's answer); the asset table pins each file with the class its Foolbox name states."""
    import numpy as np
    from PIL import Image

    from pipelines.kurakin import resolve_labels
    from testbed import assets

    labels = assets.imagenet_sample_labels()
    assert len(labels) == 20 and labels["imagenet_val03"] == 990 and labels["imagenet_val15"] == 99
    for name, label in labels.items():
        a = assets.ASSETS[name]
        assert a.package == "foolbox==3.3.4" and a.member.endswith(f"_{label}.jpg") and len(a.sha256) == 64
    files = {}
    for k, name in enumerate(("imagenet_val03", "imagenet_val15")):
        files[name] = tmp_path / f"{name}.jpg"
        Image.fromarray(np.full((40, 60, 3), 60 + 100 * k, np.uint8)).save(files[name])
    monkeypatch.setattr(assets, "asset_path", lambda name: files[name])
    s = build_image_set(ImageSetConfig(source="imagenet-samples", names=("imagenet_val03", "imagenet_val15"),
                                       crops_per_photo=2), (32, 32))
    assert s.ids == ["imagenet_val03-0", "imagenet_val03-1", "imagenet_val15-0", "imagenet_val15-1"]
    assert s.images.shape == (4, 3, 32, 32) and float(s.images[2].mean()) > float(s.images[0].mean())
    assert resolve_labels("mobilenet_v2", None, s).tolist() == [990, 990, 99, 99]  # no model call needed


def test_imagenet_samples_config_and_missing_assets(monkeypatch, tmp_path):
    import pytest

    from pipelines.experiment import parse_config
    from testbed.errors import AssetError, ConfigError

    cfg = parse_config({"name": "x", "images": {"source": "imagenet-samples", "names": ["imagenet_val01"]}})
    assert cfg.images.source == "imagenet-samples" and cfg.images.names == ("imagenet_val01",)
    with pytest.raises(ConfigError, match="not ImageNet samples"):
        parse_config({"name": "x", "images": {"source": "imagenet-samples", "names": ["chelsea"]}})
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))  # an empty cache: the fix is named
    with pytest.raises(AssetError, match="testbed assets fetch"):
        build_image_set(ImageSetConfig(source="imagenet-samples", names=("imagenet_val01",)), (32, 32))


def test_kurakin_phone_preset_is_phone_in_focus_with_less_noise_and_finer_jpeg():
    """'kurakin-phone' changes only focus, noise and JPEG against 'phone' (which the in-situ survival rows use and
    which stays as it was), and adds the sensor's Bayer mosaic and the lens's residual distortion."""
    from dataclasses import asdict

    from camera.simulated import SimCameraConfig

    phone, kp = asdict(SimCameraConfig.preset("phone")), asdict(SimCameraConfig.preset("kurakin-phone"))
    assert {k for k in phone if phone[k] != kp[k]} == {"blur_probs", "read_noise", "shot_noise", "jpeg_quality",
                                                       "demosaic", "lens_distortion"}
    assert (phone["demosaic"], phone["lens_distortion"]) == ("none", (0.0, 0.0))
    assert kp["demosaic"] == "edge-aware" and kp["lens_distortion"] == (-0.01, 0.01)
    assert (phone["blur_probs"], phone["read_noise"], phone["jpeg_quality"]) == ((0.7, 0.3, 0.0), (0.002, 0.005),
                                                                                   (88, 96))
    assert kp["blur_probs"][0] > phone["blur_probs"][0] and kp["read_noise"][1] < phone["read_noise"][1]
    assert kp["jpeg_quality"][0] > phone["jpeg_quality"][0]
    from testbed.photos import imagenet_view

    x = imagenet_view("coffee", 64).repeat(3, 1, 1, 1)
    out = SimulatedChannel(0, "kurakin-phone", **FAST).transmit(x, ["a", "b", "c"]).images
    assert out.shape == x.shape and 0.005 < float((out - x).abs().mean()) < 0.3
