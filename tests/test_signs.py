"""Traffic-sign world: renderer, dataset generator, sign-cnn (committed weights and a retraining smoke test)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from testbed.errors import ConfigError
from worlds.signs.dataset import SPLIT_PHOTOS, DatasetConfig, generate_dataset, generate_sample, sample_params
from worlds.signs.render import (
    BLACK, BLUE, RED, SIGN_CLASSES, WHITE, YELLOW, class_names, composite, get_sign, render_sign,
    render_sign_array,
)

# Area of the shape / area of the square canvas.
SHAPE_AREA = {
    "circle": math.pi / 4,
    "octagon": 8 * 0.25 * math.tan(math.pi / 8),
    "triangle": math.sqrt(3) / 4,
    "inverted_triangle": math.sqrt(3) / 4,
    "diamond": 0.5,
    "square": 1.0,
}
PALETTE = {"red": RED, "blue": BLUE, "yellow": YELLOW, "white": WHITE, "black": BLACK}


def colour_fractions(rgba: np.ndarray) -> dict[str, float]:
    """Fraction of the sign's (opaque) pixels nearest to each palette colour."""
    mask = rgba[..., 3] > 0.99
    px = rgba[..., :3][mask]
    names = list(PALETTE)
    pal = np.array([PALETTE[n] for n in names], np.float32) / 255.0
    nearest = np.argmin(((px[:, None, :] - pal[None]) ** 2).sum(-1), axis=1)
    return {n: float((nearest == i).mean()) for i, n in enumerate(names)}


@pytest.mark.parametrize("size", [32, 64, 150])
def test_every_class_renders_with_its_shape(size):
    assert len(SIGN_CLASSES) >= 20
    for sign in SIGN_CLASSES:
        x = render_sign(sign.name, size)
        assert x.shape == (1, 4, size, size) and x.dtype == torch.float32
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0
        area = x[0, 3].mean().item()
        tol = 0.03 if size >= 64 else 0.05
        expected = SHAPE_AREA[sign.shape] - (0.02 if "triangle" in sign.shape else 0.0)  # rounded corners
        assert abs(area - expected) < tol, (sign.name, size, area, expected)


def test_dominant_colours_match_the_designs():
    f = {s.name: colour_fractions(render_sign_array(s.name, 128)) for s in SIGN_CLASSES}
    assert f["stop"]["red"] > 0.6 and f["stop"]["white"] > 0.1  # red octagon, white legend and rim
    assert f["no_entry"]["red"] > 0.6 and f["no_entry"]["white"] > 0.15
    assert f["yield"]["red"] > 0.35 and f["yield"]["white"] > 0.3
    assert f["priority_road"]["yellow"] > 0.3 and f["priority_road"]["white"] > 0.3
    for name in ("ahead_only", "turn_left_ahead", "turn_right_ahead", "keep_right", "keep_left", "roundabout"):
        assert f[name]["blue"] > 0.6 and f[name]["white"] > 0.1, name
    for v in (20, 30, 50, 60, 70, 80, 100, 120):
        c = f[f"speed_limit_{v}"]
        assert c["white"] > 0.35 and c["red"] > 0.25 and c["black"] > 0.05, (v, c)
    for name in ("general_caution", "pedestrians", "traffic_signals", "right_of_way_next_intersection"):
        assert f[name]["red"] > 0.25 and f[name]["white"] > 0.3, name


def test_legends_are_drawn_and_distinguish_classes():
    arrays = {s.name: render_sign_array(s.name, 64) for s in SIGN_CLASSES}
    names = list(arrays)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diff = np.abs(arrays[a] - arrays[b]).mean()
            assert diff > 0.01, f"{a} and {b} render almost the same ({diff:.4f})"
    # mirror pairs are mirror images of each other
    for left, right in (("turn_left_ahead", "turn_right_ahead"), ("keep_left", "keep_right"),
                        ("straight_or_left", "straight_or_right")):
        assert np.abs(arrays[left][:, ::-1] - arrays[right]).mean() < 0.01
    # STOP's white legend sits in the middle band
    stop = arrays["stop"]
    band = stop[26:38, 12:52, :3]
    assert (band.min(-1) > 0.8).mean() > 0.2


def test_render_is_deterministic_and_validates():
    assert torch.equal(render_sign("stop", 64), render_sign("stop", 64))
    with pytest.raises(ConfigError, match="unknown sign class 'stopp'"):
        render_sign("stopp")
    with pytest.raises(ConfigError, match="size"):
        render_sign("stop", 4)
    rgb = composite(render_sign("stop", 32), 0.5)
    assert rgb.shape == (1, 3, 32, 32) and abs(rgb[0, :, 0, 0].mean().item() - 0.5) < 1e-6  # corner: background
    assert get_sign("stop").size_mm == 900 and get_sign("speed_limit_50").size_mm == 600
    assert [s.gtsrb_id for s in SIGN_CLASSES if s.name == "stop"] == [14]


def test_dataset_is_deterministic_by_seed_and_split():
    a = generate_dataset(DatasetConfig(n=40, split="train", seed=3))
    b = generate_dataset(DatasetConfig(n=40, split="train", seed=3))
    c = generate_dataset(DatasetConfig(n=40, split="train", seed=4))
    h = generate_dataset(DatasetConfig(n=40, split="heldout", seed=3))
    assert a.images.shape == (40, 3, 32, 32) and a.images.dtype == torch.float32
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, h.images)
    assert a.labels.tolist() == [i % len(SIGN_CLASSES) for i in range(40)]  # class-balanced
    # one sample can be regenerated alone
    img, _ = generate_sample(DatasetConfig(n=40, split="train", seed=3), 17)
    assert torch.equal(torch.from_numpy(img).permute(2, 0, 1), a.images[17])


def test_train_and_heldout_backgrounds_are_disjoint():
    assert not set(SPLIT_PHOTOS["train"]) & set(SPLIT_PHOTOS["heldout"])
    from testbed.photos import list_photos

    assert set(SPLIT_PHOTOS["train"]) | set(SPLIT_PHOTOS["heldout"]) <= set(list_photos())
    from worlds.signs.dataset import AugmentConfig

    for split in ("train", "heldout"):
        used = set()
        for i in range(300):
            rng = np.random.default_rng([0, 1 if split == "train" else 2, i])
            p = sample_params(rng, 0, SPLIT_PHOTOS[split], 96, AugmentConfig())
            if p.photo is not None:
                used.add(p.photo)
        assert used and used <= set(SPLIT_PHOTOS[split])


def test_dataset_config_validation():
    with pytest.raises(ConfigError, match="split"):
        DatasetConfig(split="test")
    with pytest.raises(ConfigError, match="sign_scale"):
        from worlds.signs.dataset import AugmentConfig

        AugmentConfig(sign_scale=(0.9, 0.5))
    cfg = DatasetConfig(n=5, seed=2)
    assert DatasetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---- the committed model ------------------------------------------------------------------------------------
def test_registry_entry_matches_the_card():
    from testbed.models.registry import get_entry, get_model
    from testbed.models.signs import SIGN_CNN_CARD, SIGN_CNN_WEIGHTS

    card = json.loads(SIGN_CNN_CARD.read_text())
    entry = get_entry("sign-cnn")
    assert entry.task == "classification" and entry.input_size == (32, 32)
    assert tuple(entry.labels) == class_names() == tuple(card["labels"])
    # first the independent held-out set (another drawing method), then the renderer's own held-out split
    ind, held = entry.accuracy
    assert ind.top1 == card["independent_eval"]["top1"] and ind.n == card["independent_eval"]["n"] >= 3000
    assert "independent" in ind.dataset and "Wilson" in ind.note
    assert held.top1 == card["heldout_eval"]["top1"] and held.n >= 1000
    assert SIGN_CNN_WEIGHTS.stat().st_size < 5 * 1024 * 1024
    import hashlib

    assert hashlib.sha256(SIGN_CNN_WEIGHTS.read_bytes()).hexdigest() == card["weights_sha256"]
    model = get_model("sign-cnn", device="cpu")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, len(SIGN_CLASSES))


def test_card_claims_the_independent_target_with_intervals():
    """Issue 15 done-when, as the card states it: >= 97 % top-1 on the independent held-out set, no class below
    90 %, each with n and a Wilson interval."""
    from testbed.models.signs import SIGN_CNN_CARD
    from testbed.stats import wilson

    ind = json.loads(SIGN_CNN_CARD.read_text())["independent_eval"]
    assert ind["top1"] >= 97.0 and ind["n"] >= 3000 and ind["seed"] == 0
    r = wilson(ind["k"], ind["n"])
    assert (round(100 * r.low, 2), round(100 * r.high, 2)) == (ind["top1_low"], ind["top1_high"])
    assert set(ind["per_class"]) == set(class_names())
    assert min(c["top1"] for c in ind["per_class"].values()) >= 90.0
    assert sum(c["n"] for c in ind["per_class"].values()) == ind["n"]


def test_committed_model_on_the_independent_set_matches_its_card():
    """Re-measure the card's independent claim: the first 450 images of the card's set (same seed, so the same
    images) are classified by the committed weights; the card's top-1 must lie in this subset's Wilson interval,
    and the subset's own top-1 must reach 95 %."""
    from testbed.models.registry import get_model
    from testbed.models.signs import SIGN_CNN_CARD
    from testbed.stats import rate
    from worlds.signs.independent import independent_set

    ind = json.loads(SIGN_CNN_CARD.read_text())["independent_eval"]
    torch.set_num_threads(1)
    x, y = independent_set(450, seed=ind["seed"])
    with torch.no_grad():
        hits = get_model("sign-cnn", device="cpu")(x).argmax(1) == y
    r = rate(hits)
    assert r.low <= ind["top1"] / 100 <= r.high, (str(r), ind["top1"])
    assert r.value >= 0.95, str(r)


def test_committed_model_on_a_fresh_rendered_heldout_split_matches_its_card():
    """The committed sign-cnn on a freshly rendered held-out split (seed 7, not the card's seed 1: held-out photos,
    held-out artwork fonts and drawings): the card's held-out top-1 lies in this set's Wilson interval."""
    from testbed.models.signs import SIGN_CNN_CARD
    from testbed.stats import wilson
    from worlds.signs.train import evaluate_checkpoint

    card = json.loads(SIGN_CNN_CARD.read_text())["heldout_eval"]
    ev = evaluate_checkpoint(n=600, seed=7, threads=1)
    r = wilson(round(ev.top1 * ev.n / 100), ev.n)
    assert ev.n == 600 and r.low <= card["top1"] / 100 <= r.high, (str(r), card["top1"])
    assert ev.top5 >= 98.0


def test_committed_model_classifies_clean_renders():
    from testbed.models.registry import get_model

    model = get_model("sign-cnn", device="cpu")
    x = torch.cat([composite(render_sign(s.name, 32), 0.85) for s in SIGN_CLASSES])
    pred = model(x).argmax(1)
    assert pred.tolist() == list(range(len(SIGN_CLASSES)))


# ---- training ----------------------------------------------------------------------------------------------
def test_training_smoke_loss_decreases_and_beats_chance(tmp_path):
    from testbed.models.signs import load_sign_cnn
    from worlds.signs.train import TrainConfig, save_checkpoint, train

    # the canonical drawings (no artwork variation): a loop smoke test, 600 images x 3 epochs
    cfg = TrainConfig(seed=5, n_train=600, epochs=3, batch_size=32, n_heldout=150, heldout_seed=6, threads=1,
                      artwork_prob=0.0, pole_prob=0.0)
    r = train(cfg)
    losses = [h["train_loss"] for h in r.history]
    assert losses[-1] < losses[0] * 0.8, losses
    chance = 100.0 / len(SIGN_CLASSES)
    assert r.heldout.top1 > 3 * chance, r.heldout
    out, card = save_checkpoint(r, tmp_path / "w.pt")
    loaded = load_sign_cnn(out)
    assert not loaded.training
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(loaded(x), r.model(x), atol=1e-6)
    meta = json.loads(card.read_text())
    assert meta["seed"] == 5 and meta["heldout_eval"]["n"] == 150 and meta["train_config"]["n_train"] == 600


def test_one_training_loop_with_a_batch_hook():
    """``fit`` is the sign model's and the defences' one loop: each epoch the hook sees every training sample once
    (seeded shuffling), its loss is what is minimised, and the epoch record goes through ``end_epoch``."""
    import pipelines.defences.training as defences
    from worlds.signs.train import fit

    assert defences.fit is fit
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 3, 2, 2, generator=g), torch.arange(10) % 3
    seen: list[list[int]] = []

    def hook(model, xb, yb, idx):
        seen.append(idx.tolist())
        logits = model(xb)
        return torch.nn.functional.cross_entropy(logits, yb), logits

    def run(seed: int) -> tuple[list[dict], torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        hist = fit(model, x, y, epochs=4, batch_size=4, lr=0.1, weight_decay=0.0,
                   generator=torch.Generator().manual_seed(seed), batch_loss=hook, end_epoch=lambda r: {**r, "tag": "x"})
        return hist, model[1].weight.detach().clone()

    hist, w = run(1)
    assert [sorted(sum(seen[e * 3:(e + 1) * 3], [])) for e in range(4)] == [list(range(10))] * 4  # 3 batches/epoch
    assert hist[-1]["loss"] < hist[0]["loss"] and all(r["tag"] == "x" for r in hist)
    assert set(hist[0]) == {"epoch", "loss", "top1", "seconds", "tag"}
    assert torch.equal(run(1)[1], w) and not torch.equal(run(2)[1], w)  # the generator decides the batches


def test_missing_weights_and_offline_gtsrb_errors(tmp_path):
    from testbed.errors import AssetError
    from testbed.models.signs import load_sign_cnn
    from worlds.signs.train import load_gtsrb

    with pytest.raises(AssetError, match="signs train"):
        load_sign_cnn(tmp_path / "none.pt")
    with pytest.raises(ConfigError, match="--download"):
        load_gtsrb(tmp_path / "gtsrb", "train", 32, download=False)


def test_cli_render_and_dataset(tmp_path, capsys):
    from pipelines.main import main

    assert main(["signs", "render", "stop", "--size", "64", "--out", str(tmp_path / "stop.png")]) == 0
    from PIL import Image

    with Image.open(tmp_path / "stop.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert main(["signs", "render", "--list"]) == 0
    assert "stop" in capsys.readouterr().out
    assert main(["signs", "dataset", "--n", "12", "--no-progress", "--out", str(tmp_path / "d.pt")]) == 0
    d = torch.load(tmp_path / "d.pt", weights_only=True)
    assert d["images"].shape == (12, 3, 32, 32) and d["config"]["split"] == "heldout"
    assert main(["signs", "render", "nope", "--out", str(tmp_path / "x.png")]) == 2
