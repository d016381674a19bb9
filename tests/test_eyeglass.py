"""Adversarial eyeglass frames (physical.eyeglass): mask, placement, dodging, impersonation, replay, resume, CLI.

Tiny budgets (a few steps of 2-4 EOT draws); the full runs and their numbers are in docs/eyeglass.md.
"""
from __future__ import annotations

import functools
import json

import pytest
import torch

from killed_runs import run_until_killed
from physical.eot import EOTParams
from physical.eyeglass import (
    EyeglassFrame,
    FrameGeometry,
    enroll,
    fitted_frame_mask,
    frame_mask,
    frame_mask_from_eyes,
    place_in_image,
    print_crop,
    wear,
)
from testbed.errors import ConfigError, ImageError
from worlds.faces import align_face, chip_template, chip_to_image_matrix
from testbed.models.face_descriptor import face_distance, load_face_descriptor
from testbed.photos import load_photo

# MTCNN landmarks of the shipped photos (measured with testbed.models.mtcnn), so most tests skip detection.
ASTRONAUT_LMS = torch.tensor(
    [[203.443, 101.218], [246.868, 103.360], [224.451, 129.206], [202.021, 139.688], [245.174, 141.836]]
)
HOPPER_LMS = torch.tensor(
    [[220.097, 190.383], [308.927, 185.761], [268.782, 237.366], [230.092, 277.199], [305.781, 272.694]]
)


@pytest.fixture(scope="module")
def net():
    return load_face_descriptor(device="cpu")


@pytest.fixture(scope="module")
def astronaut_chip() -> torch.Tensor:
    return align_face(load_photo("astronaut"), ASTRONAUT_LMS[None]).detach()


@pytest.fixture(scope="module")
def hopper_chip() -> torch.Tensor:
    return align_face(load_photo("grace_hopper"), HOPPER_LMS[None]).detach()


def tiny(**kw) -> EyeglassFrame:
    base = dict(steps=3, batch_size=2, lr=0.1, eval_samples=4, eval_batch_size=4, seed=3)
    base.update(kw)
    return EyeglassFrame(**base)


# ------------------------------------------------------------------------------------------------ mask
def test_mask_covers_4_to_9_percent_around_the_eyes():
    m = frame_mask()
    assert m.shape == (1, 1, 150, 150)
    assert 0.0 <= float(m.min()) and float(m.max()) <= 1.0
    frac = float(m.mean())
    assert 0.04 <= frac <= 0.09 and abs(frac - 0.065) < 0.005  # Sharif-like: about 6.5% of the chip
    t = chip_template()
    (lx, ly), (rx, ry) = t[0].tolist(), t[1].tolist()
    d = rx - lx
    # the eyes themselves are seen through the lenses
    assert float(m[0, 0, round(ly - 0.5), round(lx - 0.5)]) == 0.0
    assert float(m[0, 0, round(ry - 0.5), round(rx - 0.5)]) == 0.0
    # all of the frame lies in a band around the eye line, above the mouth
    rows = torch.nonzero(m[0, 0].sum(dim=1) > 0).flatten()
    assert float(rows.min()) > ly - 0.5 * d and float(rows.max()) < ly + 0.5 * d
    assert float(rows.max()) < float(t[3, 1])
    # centred between the eyes; left-right symmetric about the eyes' midpoint
    ys, xs = torch.meshgrid(torch.arange(150.0) + 0.5, torch.arange(150.0) + 0.5, indexing="ij")
    w = m[0, 0]
    cx, cy = float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum())
    assert abs(cx - (lx + rx) / 2) < 1.0 and abs(cy - ly) < 0.15 * d
    sym = frame_mask_from_eyes((48.0, 47.0), (102.0, 47.0), 150, 150)[0, 0]  # midpoint = the chip's centre
    assert float((sym - sym.flip(-1)).abs().max()) < 1e-6
    # both rims: a ring around each eye (pixels at the outer lens edge are frame)
    g = FrameGeometry()
    for ex in (lx, rx):
        col = round(ex - 0.5)
        below = round(ly + (g.lens_drop + g.lens_height - g.thickness / 2) * d - 0.5)
        assert float(m[0, 0, below, col]) > 0.5


def test_mask_follows_the_eye_line_and_geometry_is_validated():
    flat = frame_mask_from_eyes((40.0, 50.0), (90.0, 50.0), 120, 130)
    tilted = frame_mask_from_eyes((40.0, 50.0), (90.0, 60.0), 120, 130)
    ratio = (50.0**2 + 10.0**2) / 50.0**2  # the tilted eyes are further apart: area grows with D^2
    assert float(tilted.sum()) == pytest.approx(float(flat.sum()) * ratio, rel=0.02)  # same frame, rotated
    assert not torch.equal(flat, tilted)
    thicker = frame_mask(geometry={"thickness": 0.15})
    assert float(thicker.mean()) > float(frame_mask().mean())
    with pytest.raises(ConfigError, match="thickness"):
        FrameGeometry(thickness=0.5)
    with pytest.raises(ConfigError, match="unknown frame geometry"):
        frame_mask(geometry={"rim": 1})
    with pytest.raises(ConfigError, match="eye centres must differ"):
        frame_mask_from_eyes((10.0, 10.0), (10.0, 10.0), 20, 20)


def test_frame_placed_in_the_photo_aligns_back_onto_the_chip_mask():
    photo = load_photo("astronaut")
    m = frame_mask()
    placed = place_in_image(m, ASTRONAUT_LMS, *photo.shape[-2:])
    assert placed.shape == (1, 1, *photo.shape[-2:])
    # area scales with the square of the chip -> image scale of the landmarks' similarity
    scale = float(chip_to_image_matrix(ASTRONAUT_LMS[None])[0, :, 0].norm())
    assert float(placed.sum()) == pytest.approx(float(m.sum()) * scale**2, rel=0.05)
    back = align_face(placed.expand(-1, 3, -1, -1), ASTRONAUT_LMS[None], antialias=False)[:, :1]
    inner = (m > 0.99) | (m < 0.01)  # compare away from the anti-aliased edges
    assert float((back - m).abs()[inner].mean()) < 0.05
    # wearing a solid red frame turns the frame's pixels red and leaves the rest of the photo alone
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 150, 150)
    worn = wear(photo, red, m, ASTRONAUT_LMS)
    solid = placed[0, 0] > 0.999
    assert torch.allclose(worn[0, :, solid], torch.tensor([[1.0], [0.0], [0.0]]), atol=2e-3)
    assert torch.equal(worn[0, :, placed[0, 0] == 0], photo[0, :, placed[0, 0] == 0])
    crop = print_crop(red, m)
    assert 100 < crop.width_mm < 160  # a real frame's width at a 63 mm interpupillary distance
    assert crop.image.shape[-2:] == crop.mask.shape[-2:]


def test_one_frame_mask_for_the_attack_and_the_print_template():
    """The glasses print template's default cut mask is the attack's frame (``fitted_frame_mask``), not a second
    drawing: fitted to the print crop's size it covers the crop's mask (IoU > 0.9)."""
    from printouts.sheets import glasses_sheet

    crop = print_crop(torch.rand(1, 3, 150, 150, generator=torch.Generator().manual_seed(0)), frame_mask())
    h, w = crop.mask.shape[-2:]
    fitted = fitted_frame_mask(h, w)[0, 0] >= 0.5
    c = crop.mask[0, 0]
    assert float((fitted & c).sum()) / float((fitted | c).sum()) > 0.9
    cols, rows = fitted.any(0).nonzero().flatten(), fitted.any(1).nonzero().flatten()
    assert int(cols[0]) == 0 and int(cols[-1]) == w - 1 and int(rows[-1]) - int(rows[0]) < h  # temple to temple
    for sheet in (glasses_sheet(crop.image, width_mm=140.0), glasses_sheet(crop.image, crop.mask, width_mm=140.0)):
        cuts = [it for it in sheet.pages[0].items if type(it).__name__ == "LineItem" and it.closed]
        assert len(cuts) == 3  # the same frame topology either way: the outline and the two lens openings


# ------------------------------------------------------------------------------------------------ attacks
def test_few_dodging_steps_increase_the_distance_to_the_enrolled_descriptor(net, astronaut_chip):
    enrolled = enroll(net, astronaut_chip)
    attack = tiny(mode="dodge", loss="distance", steps=4)
    r = attack(net, astronaut_chip, enrolled)
    d, d0, dc = r.distances["enrolled"], r.distances["initial_enrolled"], r.distances["clean_enrolled"]
    assert d.shape == d0.shape == dc.shape == (4,)
    assert float(dc.max()) < 0.6  # the wearer is recognised without glasses on these draws
    assert float(d.mean()) > float(d0.mean()) + 0.02  # optimising moved the frame away from the wearer
    assert torch.equal(r.success, d > 0.6) and torch.equal(r.clean_success, dc > 0.6)
    assert len(r.loss_history) == 4 and r.loss_history[-1] < r.loss_history[0]
    assert r.texture.shape == (1, 3, 150, 150) and 0 <= float(r.texture.min()) <= float(r.texture.max()) <= 1
    # the texture only changes the chip inside the mask
    outside = r.mask[0, 0] == 0
    assert torch.equal(r.adversarial[0, :, outside], astronaut_chip[0, :, outside])
    assert r.metrics()["eval_samples"] == 4 and r.metrics()["mode"] == "dodge"


def test_impersonation_loss_decreases(net, astronaut_chip, hopper_chip):
    enrolled, target = enroll(net, astronaut_chip), enroll(net, hopper_chip)
    assert float(face_distance(enrolled, target)) > 0.6  # different people before the attack
    attack = tiny(mode="impersonate", loss="distance", steps=4, lambda_tv=0.1, lambda_nps=0.1)
    r = attack(net, astronaut_chip, enrolled, target=target)
    assert float(r.distances["target"].mean()) < float(r.distances["initial_target"].mean()) - 0.02
    assert r.loss_history[-1] < r.loss_history[0]
    # the recorded success rule: closer to the target than the threshold and than to oneself
    ok = (r.distances["target"] < 0.6) & (r.distances["target"] < r.distances["enrolled"])
    assert torch.equal(r.success, ok)
    # objective: zero hinge once far inside the target's ball and far from oneself
    emb = target[None] + 0.01
    hinge = EyeglassFrame(mode="impersonate", loss="hinge", margin=0.1)
    assert float(hinge.objective(emb, enrolled, target)[0]) == 0.0


def test_seeded_replay_and_fresh_evaluation_draws(net, astronaut_chip):
    enrolled = enroll(net, astronaut_chip)
    a = tiny(steps=2, batch_size=2, eval_samples=2, eval_batch_size=2)
    r1 = a(net, astronaut_chip, enrolled)
    r2 = a(net, astronaut_chip, enrolled)
    assert torch.equal(r1.texture, r2.texture)
    assert r1.loss_history == r2.loss_history
    assert torch.equal(r1.distances["enrolled"], r2.distances["enrolled"])
    for d1, d2 in zip(r1.train_draws, r2.train_draws):
        assert EOTParams.from_dict(d1["eot"]).equal(EOTParams.from_dict(d2["eot"]))
        assert torch.equal(d1["chip_index"], d2["chip_index"])
    # evaluation draws come from another generator: none equals an optimisation draw
    train_angles = torch.cat([EOTParams.from_dict(d["eot"]).angle for d in r1.train_draws])
    eval_angles = torch.cat([EOTParams.from_dict(d["eot"]).angle for d in r1.eval_draws])
    assert not bool((eval_angles[:, None] == train_angles[None, :]).any())
    # re-scoring the saved texture with evaluate() gives the same numbers
    ev = a.evaluate(net, r1.texture, astronaut_chip, enrolled)
    assert torch.equal(ev["distances"]["enrolled"], r1.distances["enrolled"])
    other = tiny(steps=1, batch_size=2, eval_samples=1, eval_batch_size=1, seed=4)(net, astronaut_chip, enrolled)
    assert not torch.equal(EOTParams.from_dict(other.train_draws[0]["eot"]).angle,
                           EOTParams.from_dict(r1.train_draws[0]["eot"]).angle)


def test_killed_run_resumes_to_the_same_frame(net, astronaut_chip, tmp_path):
    enrolled = enroll(net, astronaut_chip)
    # batch >= 2: with a single draw per step, oneDNN's CPU convolution backward parallelises a reduction
    # and the gradient may differ in the last bit from run to run (see docs/eyeglass.md)
    a = tiny(steps=3, batch_size=2, eval_samples=1, eval_batch_size=1, checkpoint_every=1)
    full = a(net, astronaut_chip, enrolled)
    run_until_killed(functools.partial(a, net, astronaut_chip, enrolled, run_dir=tmp_path / "run"), step=2,
                     exc=KeyboardInterrupt)
    assert (tmp_path / "run" / "checkpoints").is_dir() and not (tmp_path / "run" / "metrics.json").exists()
    resumed = a(net, astronaut_chip, enrolled, run_dir=tmp_path / "run")
    assert torch.equal(resumed.texture, full.texture)
    assert resumed.loss_history == full.loss_history
    for name in ("texture.png", "texture.npy", "frame.png", "mask.png", "adversarial_chip_0.png", "metrics.json"):
        assert (tmp_path / "run" / name).is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["eval_samples"] == 1
    with pytest.raises(ConfigError, match="different config"):  # the evaluation's size may change, the optimisation not
        tiny(steps=5, batch_size=2, lr=0.5)(net, astronaut_chip, enrolled, run_dir=tmp_path / "run")


def test_killed_run_with_speed_settings_resumes_bit_for_bit(net, astronaut_chip, tmp_path):
    """The eyeglass runs in the shared loop: with NHWC and micro-batched draws (eot_batch) a run killed after 2 of
    3 steps and rerun resumes from its checkpoint to the same frame, bit for bit on CPU."""
    enrolled = enroll(net, astronaut_chip)
    a = tiny(steps=3, batch_size=4, eot_batch=2, channels_last=True, eval_samples=2, eval_batch_size=2,
             checkpoint_every=1, lambda_tv=0.1)
    assert a.config()["eot_batch"] == 2 and "precision" not in a.config()  # fp32: left out (old runs resume)
    full = a(net, astronaut_chip, enrolled)
    run_until_killed(functools.partial(a, net, astronaut_chip, enrolled, run_dir=tmp_path / "run"), step=2)
    assert not (tmp_path / "run" / "metrics.json").exists()
    steps_seen: list[int] = []
    resumed = a(net, astronaut_chip, enrolled, run_dir=tmp_path / "run", callback=lambda i, _: steps_seen.append(i))
    assert steps_seen == [3]  # only the missing step ran
    assert torch.equal(resumed.texture, full.texture)
    assert resumed.loss_history == full.loss_history
    assert torch.equal(resumed.distances["enrolled"], full.distances["enrolled"])
    # speed settings may change between a run and its resumption (they change rounding only)
    again = a.replace(eot_batch=None, channels_last=False)(net, astronaut_chip, enrolled, run_dir=tmp_path / "run")
    assert torch.equal(again.texture, full.texture)


def test_eot_batch_gives_the_one_pass_gradient(net, astronaut_chip, hopper_chip):
    """Micro-batching (eot_batch=k: the step's draws rendered once, the descriptor run on k of them at a time,
    input gradients summed) gives the loss and gradient of one pass over all draws, up to float rounding."""
    from physical.loop import logit
    from physical.speed import prepared_model

    enrolled, target = enroll(net, astronaut_chip), enroll(net, hopper_chip)
    a = tiny(mode="impersonate", batch_size=4, lambda_tv=0.1, lambda_nps=0.1, init="random")
    ctx = a.context(net, astronaut_chip, enrolled, target)
    draw = a._sample(ctx, 4, torch.Generator().manual_seed(5))
    w = logit(a.initial_texture()).requires_grad_(True)
    with prepared_model(net, channels_last=False, compile=False) as frozen:
        loss1, grad1 = a.loss_and_grad(frozen, ctx, w, draw)
        for k in (1, 2, 3):
            loss_k, grad_k = a.replace(eot_batch=k).loss_and_grad(frozen, ctx, w, draw)
            assert torch.allclose(loss_k, loss1, rtol=1e-5, atol=1e-7), (k, float(loss_k), float(loss1))
            assert torch.allclose(grad_k, grad1, rtol=1e-4, atol=1e-5 * float(grad1.abs().max())), k
    assert float(grad1.abs().max()) > 0
    with pytest.raises(ConfigError, match="eot_batch"):
        tiny(eot_batch=0)


def test_bf16_and_channels_last_match_the_fp32_frame(net, astronaut_chip):
    """The shared loop's speed settings on the eyeglass: bf16 autocast + NHWC optimise the same dodge as fp32
    NCHW (same draws; evaluation in fp32): success and distances agree within rounding-level tolerances."""
    enrolled = enroll(net, astronaut_chip)
    kw = dict(mode="dodge", loss="distance", steps=3, batch_size=2, eval_samples=8, eval_batch_size=8)
    fp32 = tiny(**kw)(net, astronaut_chip, enrolled)
    fast = tiny(precision="bf16", channels_last=True, **kw)(net, astronaut_chip, enrolled)
    assert fast.config["precision"] == "bf16" and fast.config["channels_last"] is True
    for r in (fp32, fast):  # both moved the frame away from the wearer on the fresh draws
        assert float(r.distances["enrolled"].mean()) > float(r.distances["initial_enrolled"].mean()) + 0.02
    assert abs(fast.success_rate - fp32.success_rate) <= 0.125  # at most one of 8 draws differs
    assert float((fast.distances["enrolled"] - fp32.distances["enrolled"]).abs().max()) < 0.03
    assert fast.loss_history == pytest.approx(fp32.loss_history, abs=0.03)
    # the evaluation stays fp32: the unoptimised frame scores the same up to the NHWC layout's rounding
    assert torch.allclose(fast.distances["initial_enrolled"], fp32.distances["initial_enrolled"], atol=1e-5)


def test_result_shares_the_attack_result_api(net, astronaut_chip):
    enrolled = enroll(net, astronaut_chip)
    r = tiny(steps=1, eval_samples=2, eval_batch_size=2)(net, astronaut_chip, enrolled)
    s = r.summary()
    json.dumps(s)
    assert s["success_rate"] == r.success_rate and s["success"] == r.success.tolist() and s["targeted"] is False
    assert s["metrics"]["attack"] == "eyeglass" and s["metrics"]["mode"] == "dodge" and r.predictions is None
    assert torch.equal(r.texture, r.perturbation) and r.adversarial.shape == astronaut_chip.shape


def test_bench_eyeglass_rows_give_steps_per_second():
    from bench import run_all

    rows = {"eyeglass-fp32": {"key": "eyeglass-fp32", "median_s": 2.0, "peak_rss_mb": 900.0},
            "eyeglass-bf16": {"key": "eyeglass-bf16", "median_s": 8.0, "peak_rss_mb": 800.0}}
    table = [t for t in run_all.build_tables(rows) if t.title.startswith("Eyeglass")]
    assert len(table) == 1
    by = {r[0]: r for r in table[0].rows}
    assert by["testbed eyeglass fp32 NCHW"][1:4] == [2.0, 0.5, 900]
    assert by["testbed eyeglass bf16 NCHW"][2] == 0.125 and by["testbed eyeglass bf16 NCHW"][4] == 4.0
    assert not [t for t in run_all.build_tables({}) if t.title.startswith("Eyeglass")]  # no rows: no table


def test_parameters_are_validated(net, astronaut_chip):
    enrolled = enroll(net, astronaut_chip)
    with pytest.raises(ConfigError, match="mode"):
        EyeglassFrame(mode="hide")
    with pytest.raises(ConfigError, match="eval_seed must differ"):
        EyeglassFrame(seed=1, eval_seed=1)
    with pytest.raises(ConfigError, match="init"):
        EyeglassFrame(init="plaid")
    with pytest.raises(ConfigError, match="unknown EOT preset"):
        EyeglassFrame(eot="nope")
    with pytest.raises(ConfigError, match="needs target"):
        tiny(mode="impersonate")(net, astronaut_chip, enrolled)
    with pytest.raises(ConfigError, match="no target"):
        tiny(mode="dodge")(net, astronaut_chip, enrolled, target=enrolled)
    with pytest.raises(ConfigError, match="128-d"):
        tiny()(net, astronaut_chip, enrolled[:10])
    with pytest.raises(ImageError, match="chips"):
        tiny()(net, astronaut_chip[:, :, :100], enrolled)
    with pytest.raises(ConfigError, match="Generator"):
        enroll(net, astronaut_chip, views=2)


def test_cli_runs_the_whole_path(tmp_path, capsys):
    from pipelines.main import main

    out = tmp_path / "imp"
    rc = main(["eyeglass", "--wearer", "astronaut", "--mode", "impersonate", "--target", "grace_hopper", "--steps", "1",
               "--batch-size", "2", "--eval-samples", "2", "--eval-batch-size", "2", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "result.json").read_text())
    m = report["metrics"]
    assert m["mode"] == "impersonate" and m["eval_samples"] == 2 and m["steps"] == 1
    assert 0.04 < m["mask_fraction"] < 0.09
    assert m["clean_distance_target"] > 0.6  # astronaut vs grace_hopper, no frame
    assert report["full_photo_recheck"][0]["detected"] is True
    for name in ("wearer_with_frame_0.png", "frame_print.png", "texture.png", "config.json"):
        assert (out / name).is_file()
    assert "eyeglass impersonate: success" in capsys.readouterr().out
    assert main(["eyeglass", "--wearer", "astronaut", "--mode", "impersonate", "--out", str(tmp_path / "x")]) == 2
