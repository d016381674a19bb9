"""Simulated print-photo camera: replayable draws, a FrameSource, a mean-preserving halftoning printer, and
independent of kornia (the optimisation's EOT)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from camera.simulated import (PrinterParams, SimCameraConfig, SimParams, SimulatedCamera, SimulatedPrinter,
                              linear_to_srgb, srgb_to_linear)
from camera.sources import FrameSource
from testbed.errors import ConfigError


def _page(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    page = torch.ones(1, 3, 297, 210)  # 1 px per mm
    page[..., 60:200, 40:170] = torch.rand(1, 3, 140, 130, generator=g)
    return page


def test_same_seed_same_frames_and_params_replay():
    cfg = SimCameraConfig(frame_size=(640, 360))
    a = SimulatedCamera(_page(), (210, 297), seed=5, n_frames=3, config=cfg)
    b = SimulatedCamera(_page(), (210, 297), seed=5, n_frames=3, config=cfg)
    assert isinstance(a, FrameSource)
    fa, fb = list(a), list(b)
    assert len(fa) == 3 and [f.seq for f in fa] == [0, 1, 2]
    for x, y in zip(fa, fb):
        assert torch.equal(x.image, y.image)
        assert x.meta["params"] == y.meta["params"]
    # replay one draw from its recorded (JSON) parameters, out of order
    params = SimParams.from_dict(json.loads(json.dumps(fa[2].meta["params"])))
    img, meta = a.render(params)
    assert torch.equal(img, fa[2].image) and meta["page_corners_px"] == fa[2].meta["page_corners_px"]
    assert a.sample_params(2) == SimParams.from_dict(fa[2].meta["params"])
    c = SimulatedCamera(_page(), (210, 297), seed=6, n_frames=1, config=cfg)
    assert not torch.equal(c.read().image, fa[0].image)
    assert fa[0].image.shape == (1, 3, 360, 640) and 0 <= float(fa[0].image.min()) <= float(fa[0].image.max()) <= 1


def test_reported_page_corners_are_where_the_page_is():
    # a white page on the darkest possible scene region: its bright area should match the reported quad
    import cv2

    cfg = SimCameraConfig(frame_size=(640, 360), blur_probs=(1, 0, 0), read_noise=(0, 0), jpeg_quality=(100, 100),
                          scenes=("moon",))
    cam = SimulatedCamera(torch.ones(1, 3, 297, 210), (210, 297), seed=1, n_frames=3, config=cfg)
    for f in cam:
        quad = np.array(f.meta["page_corners_px"], np.float32)
        inside = np.zeros((360, 640), np.uint8)
        cv2.fillConvexPoly(inside, np.round(quad * 16).astype(np.int32), 1, cv2.LINE_8, shift=4)
        bright = f.image[0].mean(0).numpy()
        paper = bright[inside.astype(bool)]
        # paper = exposure * white balance * (1 +- gradient) in linear -> clearly bright and uniform
        assert np.median(paper) > 0.7
        eroded = cv2.erode(inside, np.ones((5, 5), np.uint8)).astype(bool)
        assert bright[eroded].min() > 0.6


def test_printer_compresses_gamut_and_halftone_preserves_the_mean():
    pr = SimulatedPrinter(PrinterParams())
    cols = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0.5, 0.5, 0.5]], np.float32)
    out = pr.expected_colors(cols)
    assert out[0].min() > 0.15  # ink black is not 0
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)  # paper white
    assert out[2][0] - out[2][1] < 1.0 - 0.3  # red is less saturated
    for c in cols:
        page = np.broadcast_to(c, (64, 64, 3)).copy()
        printed = pr.print_linear(page)
        vals = np.unique(printed[..., 0])
        assert all(np.isclose(v, pr.params.black[0]) or np.isclose(v, 1.0) for v in vals)  # binary dots
        mean = linear_to_srgb(printed.reshape(-1, 3).mean(0))
        np.testing.assert_allclose(mean, pr.expected_colors(c[None])[0], atol=5e-3)  # 16x16 Bayer: 1/256 steps
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(cols)), cols, atol=1e-6)


def test_config_validation():
    with pytest.raises(ConfigError, match=r"blur_probs"):
        SimCameraConfig(blur_probs=(0.5, 0.5, 0.5)).validate()
    with pytest.raises(ConfigError, match=r"frame_size"):
        SimCameraConfig(frame_size=(10, 10)).validate()
    with pytest.raises(ConfigError, match=r"halftone cell must be a power of two"):
        PrinterParams(halftone_cell=12).validate()


def test_simulated_camera_does_not_use_kornia():
    code = "import sys, camera.simulated, camera.rectify, camera.palette; print('kornia' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
