"""NPS, TV, Lp and LAB regularisers, and the palette file format."""
from __future__ import annotations

import json

import pytest
import torch

from physical.regularizers import lab_distance, lp_norm, nps, nps_map, total_variation
from testbed.errors import ConfigError
from testbed.palette import DEFAULT_PALETTE_PATH, Palette, default_palette, load_palette, resolve_palette


def _palette_image(palette: torch.Tensor, h: int = 4, w: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, palette.shape[0], (h * w,), generator=g)
    return palette[idx].T.reshape(1, 3, h, w).contiguous()


@pytest.mark.parametrize("kind", ["min", "product"])
def test_nps_zero_on_palette_and_positive_off_palette(kind):
    pal = torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.5, 0.5, 0.9]])
    on = _palette_image(pal)
    assert float(nps(on, pal, kind=kind)) == 0.0
    off = torch.full((1, 3, 4, 4), 0.55)
    assert float(nps(off, pal, kind=kind)) > 0
    # min form: the distance to the nearest palette colour, exactly
    if kind == "min":
        x = torch.tensor([0.2, 0.1, 0.1]).view(1, 3, 1, 1)
        assert torch.allclose(nps_map(x, pal, kind="min"), torch.tensor(0.1).view(1, 1, 1, 1), atol=1e-6)


def test_nps_gradient_is_finite_on_palette_and_points_towards_it():
    pal = load_palette()
    x = (pal[5].view(1, 3, 1, 1) + 0.03).requires_grad_(True)
    (g,) = torch.autograd.grad(nps(x, pal), x)
    assert torch.isfinite(g).all() and bool((g > 0).all())  # descending moves back towards the palette colour
    x0 = pal[5].view(1, 3, 1, 1).clone().requires_grad_(True)
    (g0,) = torch.autograd.grad(nps(x0, pal), x0)
    assert torch.isfinite(g0).all()


def test_nps_mask_restricts_to_masked_pixels():
    pal = load_palette()
    x = _palette_image(pal, 4, 4)
    x[..., :2] = 0.55  # off-palette on the left half
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:] = 1
    assert float(nps(x, pal, mask=mask)) == 0.0
    assert float(nps(x, pal, mask=1 - mask)) > 0


def test_default_palette_and_file_roundtrip(tmp_path):
    pal = load_palette()
    # the shipped default: the default printer model on the 130-patch chart (ink black ~0.2, paper white 1.0)
    assert DEFAULT_PALETTE_PATH.parent.parent.name == "testbed"
    assert pal.shape == (130, 3) and 0.15 < float(pal.min()) < 0.25 and float(pal.max()) == pytest.approx(1.0)
    assert torch.equal(resolve_palette(None), pal) and torch.equal(default_palette().tensor(), pal)
    assert float(nps(pal.T.reshape(1, 3, 10, 13), None)) == 0.0  # palette=None in the loss is the same default
    path = Palette(pal.numpy()).save(tmp_path / "palette.json")
    assert json.loads(path.read_text())["colors"][0] == pytest.approx(pal[0].tolist(), abs=1e-6)
    assert torch.allclose(load_palette(path), pal, atol=1e-6)
    # the camera part's format: extra keys are fine
    (tmp_path / "cam.json").write_text(json.dumps({"colors": [[0, 0, 0], [1, 1, 1]], "source": "chart"}))
    assert load_palette(tmp_path / "cam.json").shape == (2, 3)


@pytest.mark.parametrize(
    "content,match",
    [("{", "not valid JSON"), ('{"colours": []}', "colors"), ('{"colors": [[0, 0]]}', "triples"),
     ('{"colors": [[0, 0, 2]]}', r"\[0, 1\]")],
)
def test_bad_palette_files_are_named(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_palette(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_palette(tmp_path / "missing.json")


@pytest.mark.parametrize("kind", ["l1", "l2", "isotropic"])
def test_tv_zero_on_constant_and_positive_on_edges(kind):
    const = torch.full((2, 3, 8, 8), 0.3)
    assert float(total_variation(const, kind=kind)) == 0.0
    edge = const.clone()
    edge[..., 4:] = 0.7
    assert float(total_variation(edge, kind=kind)) > 0
    # anisotropic L1 value: one vertical edge of height 8, step 0.4, 3 channels, over 64 pixels
    if kind == "l1":
        assert float(total_variation(edge, kind="l1")) == pytest.approx(3 * 8 * 0.4 / 64, rel=1e-5)
    x = edge.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(total_variation(x, kind=kind), x)
    assert torch.isfinite(g).all()


def test_tv_with_mask_ignores_edges_outside():
    x = torch.full((1, 3, 8, 8), 0.3)
    x[..., 4:] = 0.7
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1  # entirely left of the edge
    assert float(total_variation(x, mask=mask)) == 0.0


def test_lp_norms():
    d = torch.zeros(2, 3, 4, 4)
    d[0, 0, 0, 0] = 0.3
    d[0, 1, 1, 1] = -0.4
    assert lp_norm(d, 2).tolist() == pytest.approx([0.5, 0.0])
    assert lp_norm(d, 1).tolist() == pytest.approx([0.7, 0.0])
    assert lp_norm(d, "inf").tolist() == pytest.approx([0.4, 0.0])
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1, 1] = 1
    assert lp_norm(d, 2, mask=mask).tolist() == pytest.approx([0.4, 0.0])
    x = torch.zeros(1, 3, 2, 2, requires_grad=True)
    (g,) = torch.autograd.grad(lp_norm(x, 2).sum(), x)
    assert torch.isfinite(g).all()
    with pytest.raises(ConfigError):
        lp_norm(d, 3)


def test_lab_distance():
    a = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert float(lab_distance(a, a)) == 0.0
    black, white = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert float(lab_distance(black, white)) == pytest.approx(100.0, abs=0.1)  # L* 0 -> 100
    x = a.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(lab_distance(x, a * 0.9), x)
    assert torch.isfinite(g).all()


def test_palette_loader_needs_neither_camera_nor_opencv():
    """physical/ must not import camera/ or OpenCV: the NPS loss reads the default palette through testbed.palette."""
    import subprocess
    import sys

    code = ("import sys; from physical.regularizers import nps; import torch; nps(torch.rand(1, 3, 4, 4)); "
            "bad = sorted(m for m in sys.modules if m == 'cv2' or m.startswith('camera')); print(bad); "
            "sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
