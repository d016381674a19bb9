"""The person-evasion patch (physical/detector_patch.py, ``testbed evade-persons``) on a toy detector defined here:
a conv net with BatchNorm whose "person" heat-map is the mean redness of a 32 x 64 window. A red rectangle is a
person; a patch of 18% of its box in the opposite colour hides it, a random-colour patch does not. Asserted: the
loss falls, recall on held-out scenes drops, the random control leaves it, the placement's area budget, the success
hook at IoU 0.5, the detector bit-identical after the attack (weights, BatchNorm buffers, train flags), and the
command's refusals."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from physical.detector_patch import (
    DetectorClassScores,
    PersonPatch,
    detection_images,
    pad_boxes,
    random_patch,
)
from pipelines.person_evasion import detection_report
from testbed.errors import ConfigError, ImageError
from testbed.models.detection import Detector, DetectionSet, check_images, select_detections

BOX_H, BOX_W, STRIDE = 64, 32, 4
TOY_EOT = {"brightness": 0.05, "noise": (0.0, 0.02), "printer_gain": 0.05}


class ToyPersonDetector(Detector):
    """Person score = sigmoid(25 (mean redness of a 32 x 64 window - 0.74)), redness = R - (G + B) / 2 through a
    1x1 conv and a BatchNorm (identity statistics); one candidate per window position (stride 4)."""

    labels = ("thing", "person")
    score_threshold = 0.5
    nms_iou = 0.3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1))

    def heat(self, images: torch.Tensor) -> torch.Tensor:
        r = self.bn(self.conv(check_images(images)))
        return torch.sigmoid(25 * (F.avg_pool2d(r, (BOX_H, BOX_W), stride=STRIDE) - 0.74))

    def candidate_scores(self, images: torch.Tensor, label: int) -> torch.Tensor:
        h = self.heat(images).flatten(1)
        return h if label == 1 else torch.zeros_like(h)

    def candidate_boxes(self, images: torch.Tensor) -> torch.Tensor:
        hh = (images.shape[-2] - BOX_H) // STRIDE + 1
        ww = (images.shape[-1] - BOX_W) // STRIDE + 1
        y, x = torch.meshgrid(torch.arange(hh) * STRIDE, torch.arange(ww) * STRIDE, indexing="ij")
        b = torch.stack([x, y, x + BOX_W, y + BOX_H], -1).float().view(1, -1, 4)
        return b.expand(len(images), -1, -1)

    def detect(self, images: torch.Tensor, score_threshold: float | None = None) -> list[DetectionSet]:
        t = self.score_threshold if score_threshold is None else score_threshold
        with torch.no_grad():
            scores, boxes = self.candidate_scores(images, 1), self.candidate_boxes(images)
        return [select_detections(b, s, torch.ones_like(s, dtype=torch.long), t, self.nms_iou)
                for b, s in zip(boxes, scores)]


def scene(persons: list[tuple[int, int]], *, red=(1.0, 0.0, 0.0), seed: int = 0) -> torch.Tensor:
    """A 128 x 128 grey scene with a red 32 x 64 "person" at each (x, y) top-left corner."""
    g = torch.Generator().manual_seed(seed)
    x = (0.5 + 0.02 * torch.randn(1, 3, 128, 128, generator=g)).clamp(0, 1)
    for px, py in persons:
        x[0, :, py : py + BOX_H, px : px + BOX_W] = torch.tensor(red).view(3, 1, 1)
    return x


@pytest.fixture(scope="module")
def data():
    train = torch.cat([scene([(8, 8), (72, 40)], seed=1), scene([(40, 56)], seed=2)])
    held = torch.cat([scene([(16, 48), (80, 12)], red=(1.0, 0.0, 0.05), seed=3), scene([(52, 32)], seed=4)])
    return train, held


def _attack(**kw) -> PersonPatch:
    base = dict(steps=30, batch_size=8, lr=0.3, eot=TOY_EOT, eval_samples=60, eval_batch_size=30, patch_size=16,
                checkpoint_every=10, channels_last=False)
    return PersonPatch(**{**base, **kw})


def test_ground_truth_is_the_clean_detections_and_the_placement_keeps_the_budget(data):
    train, _ = data
    det = ToyPersonDetector()
    attack = _attack()
    boxes = attack.ground_truth(det, train)
    assert [len(b) for b in boxes] == [2, 1]
    assert torch.equal(boxes[0][boxes[0][:, 0].argsort()], torch.tensor([[8.0, 8, 40, 72], [72, 40, 104, 104]]))
    ctx = attack.context(det, train, train)
    draw = attack._sample(ctx, 200, torch.Generator().manual_seed(0))
    side, centre, angle, valid = attack.placements(ctx.boxes[draw.scene_index], draw)
    area = side ** 2 / (BOX_W * BOX_H)
    assert valid.sum() == 200 + int((draw.scene_index == 0).sum())
    assert float(area[valid].max()) <= attack.max_area_fraction + 1e-6 <= 0.2
    assert float(area[valid].min()) >= 0.18 * 0.9 ** 2 - 1e-6 and float(angle.abs().max()) <= 20
    b = ctx.boxes[draw.scene_index]
    cy_frac = (centre[..., 1] - b[..., 1]) / (b[..., 3] - b[..., 1])
    assert float((cy_frac[valid] - 0.5).abs().max()) <= 0.05 + 1e-6
    with pytest.raises(ImageError, match="no person detected.*empty"):
        attack.ground_truth(det, scene([]), ["empty"])
    with pytest.raises(ConfigError, match="patch_fraction"):
        PersonPatch(patch_fraction=0.25)
    with pytest.raises(ConfigError, match="unknown label 'cat'"):
        PersonPatch(label="cat").label_index(det)


def test_success_hook_counts_a_person_at_iou_half():
    attack = _attack()
    goal = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60]], [[0, 0, 10, 10], [float("nan")] * 4]])
    dets = torch.full((2, attack.max_detections, 5), -1.0)
    dets[0, 0] = torch.tensor([0, 0, 10, 5, 0.9])  # IoU exactly 0.5 with person 0
    dets[0, 1] = torch.tensor([50, 50, 60, 60, 0.4])  # below the score threshold
    dets[1, 0] = torch.tensor([0, 0, 10, 4, 0.9])  # IoU 0.4
    s = attack._score(None, dets.flatten(1), goal)
    assert s["detected"].tolist() == [[True, False], [False, False]]
    assert s["valid"].tolist() == [[True, True], [True, False]] and s["success"].tolist() == [False, True]
    rows = detection_images(s["detections"], s["gt_boxes"])
    assert [len(r[0]) for r in rows] == [2, 1] and [len(r[1]) for r in rows] == [2, 1]


def test_patch_hides_held_out_persons_random_control_does_not_and_detector_state_is_restored(data, tmp_path):
    train, held = data
    det = ToyPersonDetector()
    det.train()  # BatchNorm in train mode would update its running statistics
    before = {k: v.clone() for k, v in det.state_dict().items()}
    flags = {n: m.training for n, m in det.named_modules()}
    grads = [p.requires_grad for p in det.parameters()]
    attack = _attack()
    result = attack(det, train, eval_scenes=held, run_dir=tmp_path / "run")
    after = det.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {n: m.training for n, m in det.named_modules()} == flags
    assert [p.requires_grad for p in det.parameters()] == grads
    h = result.loss_history
    assert h[0] > 0.7 and sum(h[-3:]) / 3 < 0.3  # the highest person score: from ~0.8 to well below 0.5
    # held-out scenes, fresh draws: clean and grey patch found, the optimised patch hides the persons
    assert result.extras["clean_recall"] == 1.0 and result.extras["initial_recall"] == 1.0
    assert result.extras["final_recall"] <= 0.1
    assert result.extras["held_out_persons"] == 3 and result.extras["max_area_fraction"] <= 0.2
    random_scores, _ = attack.evaluate(det, {"random": random_patch(16, 99), "none": None}, held)
    r = random_scores["random"]
    assert float(r["detected"].sum()) / float(r["valid"].sum()) >= 0.9
    # the same draws as the attack's evaluation: the clean variant replays result's clean detections
    assert torch.equal(random_scores["none"]["detections"], result.scores["clean_detections"])
    report = detection_report({"final": {"detections": result.scores["detections"],
                                         "gt_boxes": result.scores["gt_boxes"]}}, iou_threshold=0.5,
                              score_threshold=0.5)
    assert report["final"]["recall"]["n"] == int(result.scores["valid"].sum())
    assert (tmp_path / "run" / "texture.pt").is_file() and (tmp_path / "run" / "metrics.json").is_file()


def test_only_overlapping_keeps_candidates_on_person_boxes(data):
    train, _ = data
    det = ToyPersonDetector()
    attack = _attack(only_overlapping=True, overlap_iou=0.5)
    ctx = attack.context(det, train, train)
    draw = attack._sample(ctx, 4, torch.Generator().manual_seed(0))
    x = attack._render(ctx, None, draw)
    with torch.enable_grad():
        out = ctx.model(x.requires_grad_(True))
    assert out.shape[1] == 5 * det.candidate_scores(x, 1).shape[1]
    goal = attack._goal(ctx, draw)
    far = torch.full_like(goal, float("nan"))
    far[:, 0] = torch.tensor([0.0, 0, 4, 4])  # a "person" no candidate overlaps at IoU 0.5
    assert float(attack._attack_loss(ctx, out, goal).detach()) > 0.9
    assert float(attack._attack_loss(ctx, out, far).detach()) == 0.0
    plain = DetectorClassScores(det, 1)
    with torch.no_grad():
        d = plain(x)
    assert d.shape == (4, 5 * plain.max_detections) and (d.view(4, -1, 5)[:, 0, 4] > 0.9).all()


def test_pad_boxes():
    p = pad_boxes([torch.ones(2, 4), torch.zeros(1, 4)])
    assert p.shape == (2, 2, 4) and torch.isnan(p[1, 1]).all() and not torch.isnan(p[0]).any()


@pytest.fixture
def toy_registered(tmp_path, data):
    """The toy detector in the registry under a test name, and the scenes as PNG files."""
    from testbed.models.base import _REGISTRY
    from testbed.models.registry import ModelEntry, register_model
    from testbed.runs import save_image

    register_model(ModelEntry(name="toy-person-detector", task="detector", builder=ToyPersonDetector,
                              input_size=(128, 128), labels=ToyPersonDetector.labels))
    train, held = data
    files = {}
    for name, x in (("t1", train[:1]), ("t2", train[1:]), ("h1", held[:1]), ("h2", held[1:]), ("none", scene([]))):
        files[name] = str(save_image(x, tmp_path / f"{name}.png"))
    try:
        yield files
    finally:
        _REGISTRY.pop("toy-person-detector", None)


def _cli(files, tmp_path, *extra, train=("t1", "t2"), held=("h1", "h2")):
    from pipelines.main import main

    return main(["evade-persons", "--model", "toy-person-detector", "--train", *[files[t] for t in train],
                 "--held-out", *[files[h] for h in held], "--scene-size", "128", "--steps", "30",
                 "--batch-size", "8", "--lr", "0.3", "--patch-size", "16", "--score-threshold", "0.5", "--gt-score", "0.5", "--eot", "secure-eval-patch",
                 "--lambda-tv", "0", "--lambda-nps", "0", "--eval-samples", "40", "--eval-batch-size", "20",
                 "--no-progress", "--allocator", "glibc", "--out", str(tmp_path / "cli"), *extra])


def test_evade_persons_command_writes_recall_per_variant(toy_registered, tmp_path, capsys):
    assert _cli(toy_registered, tmp_path) == 0
    rep = json.loads((tmp_path / "cli" / "detection.json").read_text())
    v = rep["variants"]
    assert v["clean"]["recall"]["k"] == v["clean"]["recall"]["n"] > 0
    assert v["random"]["recall"]["k"] >= 0.9 * v["random"]["recall"]["n"]
    assert v["final"]["recall"]["k"] <= 0.1 * v["final"]["recall"]["n"]
    assert set(v["final"]["recall_by_scene"]) == {toy_registered["h1"], toy_registered["h2"]}
    for name in ("clean", "random", "final"):  # one k/n per person box, summing to the scene's k/n
        for scene, per_box in v[name]["recall_by_box"].items():
            assert len(per_box) == rep["persons"]["held_out"][scene]
            k, n = (sum(int(t.split("/")[i]) for t in per_box) for i in (0, 1))
            assert f"{k}/{n}" == v[name]["recall_by_scene"][scene]
    assert rep["persons"]["held_out"] == {toy_registered["h1"]: 2, toy_registered["h2"]: 1}
    assert rep["max_area_fraction"] <= 0.2 and "machine" in rep and rep["score_threshold"] == 0.5
    assert (tmp_path / "cli" / "texture.pt").is_file() and (tmp_path / "cli" / "metrics.json").is_file()
    assert capsys.readouterr().err == ""  # --no-progress: no bar of the optimisation or of the evaluations


def test_evade_persons_progress_goes_to_stderr(toy_registered, tmp_path, capsys):
    """--progress: bars for the optimisation, the held-out evaluation (40 draws x 3 variants), the random control on
    the same draws and the print-photo loop, all on stderr; stdout keeps only the report lines."""
    assert _cli(toy_registered, tmp_path, "--steps", "2", "--print-photos", "1", "--progress") == 0
    out, err = capsys.readouterr()
    assert "person-patch:" in err and "2/2" in err  # the optimisation's steps
    assert "person-patch evaluation:" in err and "120/120" in err and "40/40" in err  # 3 variants, then the control
    assert "print + photo:" in err and "6/6" in err  # 2 held-out scenes x 1 photo x 3 textures
    assert "evaluation" not in out and "print + photo:" not in out and "recall" in out


@pytest.mark.parametrize("case, message", [
    ("overlap", "--held-out must not repeat a --train photo"),
    ("label", "unknown label 'cat'"),
    ("model", "--model sign-cnn is a classification model; this command takes a detector model"),
    ("empty", "no person detected at score >= 0.5 in"),
])
def test_evade_persons_refuses_bad_inputs(toy_registered, tmp_path, capsys, case, message):
    from pipelines.main import main

    if case == "overlap":
        rc = _cli(toy_registered, tmp_path, held=("h1", "t2"))
    elif case == "label":
        rc = _cli(toy_registered, tmp_path, "--label", "cat")
    elif case == "empty":
        rc = _cli(toy_registered, tmp_path, held=("h1", "none"))
    else:
        rc = main(["evade-persons", "--model", "sign-cnn", "--train", toy_registered["t1"], "--held-out",
                   toy_registered["h1"], "--out", str(tmp_path / "m"), "--no-progress", "--allocator", "glibc"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_per_box_reduce_averages_each_persons_highest_overlapping_candidate():
    attack = _attack(reduce="per-box", overlap_iou=0.5)
    scores = torch.tensor([[0.9, 0.3, 0.6]])
    cand = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]]])  # two on person 0, one on person 1
    goal = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30], [float("nan")] * 4]])
    out = torch.cat([scores, cand.flatten(1)], dim=1)
    assert torch.isclose(attack._attack_loss(None, out, goal), torch.tensor((0.9 + 0.3) / 2))
    assert float(_attack(reduce="max")._attack_loss(None, scores, goal)) == pytest.approx(0.9)


def test_box_hinge_scores_each_box_in_logit_space_and_pushes_the_detected_ones():
    """--box-hinge h: a box's term is softplus(logit(s) - logit(h)) of its highest overlapping candidate; the
    gradient reaches a still-confident box almost undiminished and a box far below h almost not at all."""
    attack = _attack(reduce="per-box", overlap_iou=0.5, box_hinge=0.1)
    scores = torch.tensor([[0.9, 0.3, 0.002]], requires_grad=True)
    cand = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]]])  # two on person 0, one on person 1
    goal = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30]]])
    loss = attack._attack_loss(None, torch.cat([scores, cand.flatten(1)], dim=1), goal)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expected = (softplus(logit(0.9) - logit(0.1)) + softplus(logit(0.002) - logit(0.1))) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    dlogit = scores.grad[0] * scores.detach()[0] * (1 - scores.detach()[0])  # d loss / d logit of each candidate
    assert float(dlogit[0]) == pytest.approx(0.5 * 81 / 82, rel=1e-4)  # 0.5 x sigmoid(logit(0.9) - logit(0.1))
    assert float(dlogit[1]) == 0.0  # not the box's highest candidate
    assert 0 < float(dlogit[2]) < 0.1 * float(dlogit[0])
    with pytest.raises(ConfigError, match="box_hinge"):
        _attack(reduce="max", box_hinge=0.1)
    assert _attack(reduce="per-box").box_hinge is None  # off by default: null, so a run folder from before resumes
    for bad in (0.0, 1.0):
        with pytest.raises(ConfigError, match="box_hinge"):
            _attack(reduce="per-box", box_hinge=bad)


def test_nominal_draw_pastes_the_patch_own_colours_not_an_eot_print_draw(data):
    """The print-photo loop's input: the patch at its nominal placement in its own colours (the loop's printer prints
    it); a run's EOT printer stage (here a strong gain / offset) must not act on it."""
    train, _ = data
    det = ToyPersonDetector()
    colours = torch.full((1, 3, 16, 16), 0.5)
    shown = {}
    for name, eot in [("toy", TOY_EOT), ("strong print", {"printer_gain": 0.4, "printer_offset": 0.2})]:
        attack = _attack(eot=eot)
        ctx = attack.context(det, train, train)
        draw = attack.nominal_draw(ctx, torch.arange(len(train)))
        assert draw.printed is False
        shown[name] = attack.composite(ctx, colours, draw, ctx.scenes, ctx.boxes)
        sampled = attack._sample(ctx, len(train), torch.Generator().manual_seed(0))
        assert sampled.printed is True
    assert torch.equal(shown["toy"], shown["strong print"])
    # the centre of the first person's patch (box 8..40 x 8..72 of scene 0) is the patch's own grey
    assert torch.allclose(shown["toy"][0, :, 40, 24], torch.full((3,), 0.5), atol=1e-5)


def test_evade_persons_scores_several_random_controls_on_the_same_draws(toy_registered, tmp_path, capsys):
    """--random-controls 3: three random textures (seeds 99, 100, 101) on the same held-out draws, digital and printed;
    the first is the one-control run's 'random' row exactly, each texture's cost is clean recall minus its recall in
    points, and the summary's mean / range / pooled counts are those of the three rows."""
    assert _cli(toy_registered, tmp_path, "--steps", "2", "--print-photos", "1", "--out", str(tmp_path / "one")) == 0
    one = json.loads((tmp_path / "one" / "detection.json").read_text())
    assert one["random_controls"] is None and one["random_control_seeds"] == {"random": 99}
    capsys.readouterr()
    assert _cli(toy_registered, tmp_path, "--steps", "2", "--print-photos", "1", "--random-controls", "3",
                "--out", str(tmp_path / "three")) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "three" / "detection.json").read_text())
    assert rep["random_control_seeds"] == {"random": 99, "random_100": 100, "random_101": 101}
    for key in ("recall", "average_precision", "recall_by_scene"):
        assert rep["variants"]["random"][key] == one["variants"]["random"][key]
        assert rep["variants"]["final"][key] == one["variants"]["final"][key]
    for summary, variants in ((rep["random_controls"], rep["variants"]),
                              (rep["print_photo"]["random_controls"], rep["print_photo"]["variants"])):
        clean = variants["clean"]["recall"]
        costs = []
        assert summary["textures"] == 3 and set(summary["per_texture"]) == {"random", "random_100", "random_101"}
        for name, row in summary["per_texture"].items():
            r = variants[name]["recall"]
            assert (row["k"], row["n"]) == (r["k"], r["n"]) and r["n"] == clean["n"] > 0
            assert row["cost_points"] == pytest.approx(100 * (clean["k"] - r["k"]) / clean["n"], abs=0.01)
            costs.append(100 * (clean["k"] - r["k"]) / clean["n"])
        assert summary["mean_cost_points"] == pytest.approx(sum(costs) / 3, abs=0.01)
        assert (summary["min_cost_points"], summary["max_cost_points"]) == (round(min(costs), 2), round(max(costs), 2))
        assert summary["pooled_recall"]["k"] == sum(variants[n]["recall"]["k"] for n in summary["per_texture"])
        assert summary["pooled_recall"]["n"] == 3 * clean["n"]
    assert out.count("random controls (3 textures): mean cost") == 2  # digital, then printed
    assert "random_100" not in out  # the per-texture rows are in detection.json, not on the report lines


def test_evade_persons_refuses_zero_random_controls(toy_registered, tmp_path, capsys):
    assert _cli(toy_registered, tmp_path, "--random-controls", "0") == 2
    err = capsys.readouterr().err
    assert "--random-controls: must be between 1 and 100, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "cli").exists()
