"""Artwork variation of the sign world (issue 15): seeded artwork draws, named splits, placement on a pole."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from testbed.errors import ConfigError
from worlds.signs.render import (
    ARTWORK_FONTS, ARTWORK_SPLITS, CANONICAL_ARTWORK, ArtworkParams, PlacementParams, class_names, composite,
    place_on_pole, placement_homography, render_sign, render_sign_array, sample_artwork, sample_placement,
)


def test_canonical_artwork_is_the_default_render():
    for name in ("stop", "ahead_only", "speed_limit_50"):
        assert np.array_equal(render_sign_array(name, 48), render_sign_array(name, 48, artwork=CANONICAL_ARTWORK))
    assert ArtworkParams() == CANONICAL_ARTWORK


def test_sample_artwork_is_seeded_varies_and_splits_differ():
    assert ARTWORK_SPLITS == ("train", "heldout-artwork")
    assert not set(ARTWORK_FONTS["train"]) & set(ARTWORK_FONTS["heldout-artwork"])
    a = sample_artwork("stop", np.random.default_rng(3))
    assert a == sample_artwork("stop", np.random.default_rng(3)) == sample_artwork("stop", 3)
    assert sample_artwork("stop", torch.Generator().manual_seed(5)) == sample_artwork("stop", torch.Generator().manual_seed(5))
    draws = [sample_artwork("stop", np.random.default_rng(i)) for i in range(40)]
    assert len(set(draws)) == 40 and len({d.font for d in draws}) >= 4
    assert {d.font for d in draws} <= set(ARTWORK_FONTS["train"])
    held = [sample_artwork("stop", np.random.default_rng(i), "heldout-artwork") for i in range(40)]
    assert {d.font for d in held} <= set(ARTWORK_FONTS["heldout-artwork"])
    assert not {(d.rim, d.red) for d in draws} & {(d.rim, d.red) for d in held}
    # the artwork changes the pixels, and a draw round-trips through JSON-able dicts
    x0 = render_sign_array("stop", 64)
    x1 = render_sign_array("stop", 64, artwork=a)
    assert np.abs(x0[..., :3] - x1[..., :3]).mean() > 0.01
    assert np.array_equal(x1, render_sign_array("stop", 64, artwork=ArtworkParams.from_dict(a.to_dict())))
    with pytest.raises(ConfigError, match="artwork split"):
        sample_artwork("stop", 0, "test")
    with pytest.raises(ConfigError, match="unknown sign class"):
        sample_artwork("stopp", 0)
    with pytest.raises(ConfigError, match="rim"):
        ArtworkParams(rim=10.0)
    with pytest.raises(ConfigError, match="font"):
        ArtworkParams(font="NoSuchFont")


def test_every_class_renders_with_random_artwork_and_keeps_its_shape():
    rng = np.random.default_rng(0)
    for name in class_names():
        canon = render_sign_array(name, 48)
        x = render_sign_array(name, 48, artwork=sample_artwork(name, rng))
        assert x.shape == (48, 48, 4) and 0 <= x.min() and x.max() <= 1
        assert abs(x[..., 3].mean() - canon[..., 3].mean()) < 0.02, name  # the sign's outline does not move


def test_placement_on_a_pole_is_perspective_correct_and_differentiable():
    p = PlacementParams(scale=0.5, cx=0.5, cy=0.4, focal=2.0)
    hom = placement_homography(p, (100, 100))
    corners = np.array([[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], float) @ hom.T
    corners = corners[:, :2] / corners[:, 2:]
    assert np.allclose(corners, [[25, 15], [75, 15], [75, 65], [25, 65]])  # head-on: 0.5 of the width, centred
    yawed = placement_homography(PlacementParams(scale=0.5, yaw_deg=40), (100, 100))
    c = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]], float) @ yawed.T
    c = c[:, :2] / c[:, 2:]
    assert abs((c[1, 1] - c[0, 1]) - (c[3, 1] - c[2, 1])) > 2  # the far edge is shorter: perspective, not affine

    sign = render_sign("stop", 96).requires_grad_(True)
    out = place_on_pole(sign, p, torch.zeros(1, 3, 100, 100))
    assert out.shape == (1, 3, 100, 100)
    assert out[0, 0, 40, 50] > 0.5 and out[0, :, 40, 2].abs().max() == 0  # sign centre red, far left background
    assert 0.5 < out[0, 1, 90, 50] < 0.6  # the pole (grey 0.55) below the sign
    out[0, 0, 40, 50].backward()
    assert sign.grad is not None and sign.grad.abs().sum() > 0
    g = torch.Generator().manual_seed(1)
    ps = [sample_placement(g) for _ in range(3)]
    assert len(set(ps)) == 3 and sample_placement(torch.Generator().manual_seed(1)) == ps[0]  # seeded
    many = place_on_pole(render_sign("yield", 64).expand(3, -1, -1, -1), ps, 0.3, out_hw=(64, 80))
    assert many.shape == (3, 3, 64, 80) and not torch.equal(many[0], many[1])
    with pytest.raises(ConfigError, match="placements"):
        place_on_pole(render_sign("yield", 64).expand(2, -1, -1, -1), ps, 0.3, out_hw=(64, 64))
    with pytest.raises(ConfigError, match="yaw"):
        PlacementParams(yaw_deg=85)
    assert composite(render_sign("stop", 32)).shape == (1, 3, 32, 32)


def test_datasets_draw_artwork_from_their_own_split_and_default_data_is_unchanged():
    from worlds.signs.dataset import AugmentConfig, DatasetConfig, generate_dataset, generate_sample

    plain = DatasetConfig(n=6, split="train", seed=2)
    assert all(generate_sample(plain, i)[1].artwork is None for i in range(6))  # default: canonical drawings
    aug = AugmentConfig(artwork_prob=1.0, pole_prob=1.0)
    for split, fonts in (("train", ARTWORK_FONTS["train"]), ("heldout", ARTWORK_FONTS["heldout-artwork"])):
        cfg = DatasetConfig(n=30, split=split, seed=2, augment=aug)
        params = [generate_sample(cfg, i)[1] for i in range(30)]
        assert all(p.artwork is not None and p.artwork.font in fonts and p.pole is not None for p in params)
    a = generate_dataset(DatasetConfig(n=12, split="train", seed=2, augment=aug))
    b = generate_dataset(DatasetConfig(n=12, split="train", seed=2, augment=aug))
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, generate_dataset(plain.__class__(n=12, split="train", seed=2)).images)


def test_independent_set_shares_no_code_with_the_training_renderer():
    """The independent held-out set is drawn by another method: it imports nothing of the renderer or the dataset
    generator, nor OpenCV or PIL's ImageDraw (the training path's rasteriser and warps)."""
    import ast
    import inspect

    import worlds.signs.independent as ind

    tree = ast.parse(inspect.getsource(ind))
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in mods if m and (m.startswith("worlds") or m.startswith("cv2"))}, mods
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "ImageDraw" not in names
    assert not set(ind.INDEPENDENT_FONTS) & {f for fs in ARTWORK_FONTS.values() for f in fs}
    from testbed.photos import list_photos

    assert not set(ind._STOCK) & set(list_photos())  # backgrounds the training set never shows


def test_independent_set_is_deterministic_and_class_balanced():
    from worlds.signs.independent import independent_sample, independent_set

    x, y = independent_set(36, seed=3)
    assert x.shape == (36, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [i % 30 for i in range(36)]
    img, label = independent_sample(7, seed=3)
    assert label == 7 and torch.equal(torch.from_numpy(img).permute(2, 0, 1), x[7])
    assert not torch.equal(independent_set(2, seed=4)[0], x[:2])
    with pytest.raises(ConfigError):
        independent_set(0)
