"""Simulated print-photo camera: replayable draws, a FrameSource, a mean-preserving halftoning printer, and
independent of kornia (the optimisation's EOT)."""
from __future__ import annotations

import json
import math
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


# ------------------------------------------------------------------ halftone at the printer's dot pitch
def test_block_halftone_is_the_exact_area_mean_of_its_printer_dots():
    """print_linear(page, b) = the b x b block mean of the binary dots of the pixel-replicated page (any b)."""
    rng = np.random.default_rng(0)
    pr = SimulatedPrinter(PrinterParams.sample(rng))
    page = rng.uniform(size=(32, 24, 3)).astype(np.float32)
    for b in (2, 3, 4, 5, 16):
        dots = pr.print_linear(np.repeat(np.repeat(page, b, 0), b, 1), 1)
        vals = np.unique(dots[..., 1])
        assert all(np.isclose(v, pr.params.black[1]) or np.isclose(v, 1.0) for v in vals)  # binary dots
        np.testing.assert_allclose(pr.print_linear(page, b), dots.reshape(32, b, 24, b, 3).mean((1, 3)), atol=3e-6)
    # the 8-bit fast path (what the camera uses) is the same model
    u8 = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    u8[:5] = 255
    for b in (1, 2, 4):
        np.testing.assert_allclose(pr.print_u8(u8, b), pr.print_linear(u8.astype(np.float32) / 255, b), atol=1e-6)
    assert pr.dots_per_px(150) == 4 and pr.dots_per_px(300) == 2 and pr.dots_per_px(1200) == 1
    with pytest.raises(ConfigError, match=r"printer dpi"):
        PrinterParams(dpi=10).validate()


def _uniform_patch_stats(page_dpi: float, seed: int = 3, frames: int = 3) -> list[tuple[float, float]]:
    """Luminance / chroma std of a uniform colour patch as photographed (no noise, no JPEG, no blur)."""
    import cv2

    cfg = SimCameraConfig(frame_size=(1280, 720), blur_probs=(1, 0, 0), read_noise=(0, 0), shot_noise=(0, 0),
                          jpeg_quality=(100, 100), gradient=(0, 0), scenes=("moon",))
    k = page_dpi / 25.4
    n = round(100 * k)
    page = torch.ones(1, 3, n, n)
    page[..., round(15 * k):round(85 * k), round(15 * k):round(85 * k)] = torch.tensor([0.5, 0.4, 0.6]).view(1, 3, 1, 1)
    cam = SimulatedCamera(page, (100, 100), config=cfg, seed=seed, n_frames=frames, dpi=page_dpi)
    out = []
    for f in cam:
        to_mm = np.array([[0.25, 0, 25], [0, 0.25, 25], [0, 0, 1.0]])  # the patch's inner 50 x 50 mm
        img = f.image[0].permute(1, 2, 0).numpy()
        reg = cv2.warpPerspective(img, np.asarray(f.meta["params"]["homography_mm"]) @ to_mm, (200, 200),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        chroma = np.stack([reg[..., 0] - reg[..., 1], reg[..., 2] - reg[..., 1]])
        out.append((float(reg.mean(2).std()), float(chroma.std(axis=(1, 2)).max())))
    return out


def test_halftone_shows_no_moire_at_the_cameras_sampling():
    # the old model (16x16 Bayer on the 150-dpi raster, bilinear sampling) gave lum std ~0.09, chroma std ~0.04
    for dpi in (150.0, 600.0):  # 4 x 4 dots per raster px, and a raster of single printer dots
        for lum, chroma in _uniform_patch_stats(dpi, frames=2 if dpi == 600 else 3):
            assert lum < 0.02 and chroma < 0.01, (dpi, lum, chroma)


def test_print_photograph_batch_mode_is_seeded_per_image_and_replayable():
    from camera.simulated import PrintPhotoConfig, print_photograph, replay_print_photograph
    from testbed.errors import ImageError
    from testbed.photos import imagenet_view

    cfg = PrintPhotoConfig(frame_size=(640, 480), dpi=150, width_mm=30)
    x = torch.cat([imagenet_view(n, 40) for n in ("coffee", "chelsea", "rocket")])
    a = print_photograph(x, seed=1, rep=0, keys=[10, 11, 12], config=cfg)
    assert a.images.shape == x.shape and 0 <= float(a.images.min()) <= float(a.images.max()) <= 1
    assert [p["key"] for p in a.params] == [10, 11, 12] and all(p["dots_per_px"] == 4 for p in a.params)
    # image i's draw depends on (seed, key, rep) only: a sub-batch in another order gives the same photos
    b = print_photograph(x[[2, 1]], seed=1, rep=0, keys=[12, 11], config=cfg)
    assert torch.equal(b.images[0], a.images[2]) and torch.equal(b.images[1], a.images[1])
    assert b.params[0]["camera"] == a.params[2]["camera"]
    c = print_photograph(x[:1], seed=1, rep=1, keys=[10], config=cfg)
    assert c.params[0]["camera"] != a.params[0]["camera"] and not torch.equal(c.images[0], a.images[0])
    for img, out, p in zip(x, a.images, a.params):
        u, v = (t.flatten() - t.mean() for t in (img, out))
        assert float(u @ v / (u.norm() * v.norm())) > 0.6
        assert p["rectify"]["reprojection_error_px"] < 4 and len(p["rectify"]["markers_used"]) >= 3
    rec = json.loads(json.dumps(a.params[1]))
    assert torch.equal(replay_print_photograph(x[1:2], rec, cfg), a.images[1:2])
    with pytest.raises(ImageError, match=r"within \[0, 1\]"):
        print_photograph(x * 2, config=cfg)
    with pytest.raises(ConfigError, match=r"3 images but 2 keys"):
        print_photograph(x, keys=[1, 2], config=cfg)
    with pytest.raises(ConfigError, match=r"unknown simulated-camera preset 'foggy'"):
        PrintPhotoConfig(preset="foggy").validate()


def test_printed_photographed_chelsea_is_still_a_cat():
    """The moire of the old halftone made MobileNetV2 read this photo as 'window screen' (p=0.87)."""
    from camera.simulated import print_photograph
    from testbed.errors import AssetError
    from testbed.models.registry import get_entry, get_model
    from testbed.photos import imagenet_view

    try:
        model = get_model("mobilenet_v2", device="cpu")
    except AssetError as exc:
        pytest.skip(f"mobilenet_v2 weights not fetched: {exc}")
    labels = get_entry("mobilenet_v2").labels
    x = imagenet_view("chelsea", 224)
    outs = torch.cat([print_photograph(x, seed=0, rep=r).images for r in range(2)])
    with torch.no_grad():
        p = model(torch.cat([x, outs])).softmax(-1)
    preds = [labels[int(i)] for i in p.argmax(-1)]
    assert preds[0] == "Egyptian cat" and preds[1:] == ["Egyptian cat"] * 2, preds
    assert "window screen" not in preds


@pytest.mark.parametrize("quality", [10, 75, 95, 100])
def test_the_one_jpeg_is_the_codec_every_former_copy_used(quality):
    """``testbed.imageio.jpeg_round_trip`` (the simulated camera's sensor JPEG and the JPEG defence) gives the same
    pixels as the three implementations it replaced: Pillow (the defence), OpenCV on BGR (the secure path's JPEG
    path) and albumentations' ``image_compression`` (the camera)."""
    import io

    import albumentations.augmentations.pixel.functional as apf
    import cv2
    from PIL import Image

    from testbed.errors import TestbedError
    from testbed.imageio import jpeg_round_trip

    rng = np.random.default_rng(quality)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), (5, 5), 1.0)
    ours = jpeg_round_trip(rgb, quality)
    assert ours.shape == rgb.shape and ours.dtype == np.uint8 and not np.array_equal(ours, rgb)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    assert np.array_equal(ours, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    ok, enc = cv2.imencode(".jpg", rgb[:, :, ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok and np.array_equal(ours, cv2.imdecode(enc, cv2.IMREAD_COLOR)[:, :, ::-1])
    alb = apf.image_compression(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), quality=quality, image_type=".jpg")
    assert np.array_equal(ours, cv2.cvtColor(alb, cv2.COLOR_BGR2RGB))
    for bad in (0, 101, 75.0, True):
        with pytest.raises(TestbedError, match="JPEG quality"):
            jpeg_round_trip(rgb, bad)


def test_auto_exposure_and_white_balance_neutralise_the_light():
    """Whatever the illuminant and exposure drawn, AE puts the brightest part of the frame (the paper) at its
    highlight target and AWB makes the paper neutral; the legacy preset keeps its fixed 0.55-0.8 exposure."""
    from camera.simulated import SimCameraConfig, SimulatedCamera

    page = torch.ones(1, 3, 120, 90)
    page[..., 40:80, 20:70] = 0.3
    quiet = dict(frame_size=(320, 240), blur_probs=(1.0, 0.0, 0.0), read_noise=(0.0, 0.0),
                 shot_noise=(0.0, 0.0), gradient=(0.0, 0.0), jpeg_quality=(98, 98), sharpen=(0.0, 0.0))
    cam = SimulatedCamera(page, (90.0, 120.0), config=SimCameraConfig.preset("phone", **quiet), seed=3, n_frames=1)
    old = SimulatedCamera(page, (90.0, 120.0), config=SimCameraConfig.preset("default", **quiet), seed=3, n_frames=1)
    for i in range(4):
        p = cam.sample_params(i)
        assert p.auto_exposure and p.auto_white_balance and p.illuminant_gains != (1.0, 1.0, 1.0)
        frame, meta = cam.render(p)
        corners = np.array(meta["page_corners_px"])
        c = corners.mean(0).round().astype(int)
        paper = frame[0, :, c[1] - 60 + 10, c[0] - 5].numpy()  # top of the page: bare paper
        lin = np.asarray(srgb_to_linear(paper))
        assert 0.7 < float(lin.mean()) < 1.05  # paper near the highlight target (0.9 x metering error 0.85-1.1)
        assert float(np.ptp(np.asarray(srgb_to_linear(paper)))) < 0.08  # neutral despite a +-12 % coloured light
        assert "ae_gain" in meta["develop"] and "awb_gains" in meta["develop"]
        q = old.sample_params(i)
        assert not q.auto_exposure and q.illuminant_gains == (1.0, 1.0, 1.0) and 0.55 <= q.exposure <= 0.8
        assert "ae_gain" not in old.render(q)[1]["develop"]


def test_in_situ_patch_replays_stays_within_its_area_and_is_independent_of_the_eot():
    import ast
    from pathlib import Path

    from camera.simulated import InSituConfig, InSituPatch
    from physical.universal import circle_mask

    patch = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = circle_mask(32).view(1, 1, 32, 32)
    shooter = InSituPatch(patch, mask, InSituConfig(frame_size=(320, 240), max_tilt_deg=0.0, roll_deg=(0.0, 0.0),
                                                    zoom=(1.0, 1.0), aim=0.0))
    a = shooter.shoot("brick", 7, 0, clean=True)
    b = shooter.replay(json.loads(json.dumps(a.params)), clean=True)  # JSON round trip, bit-exact
    assert torch.equal(a.frame, b.frame) and torch.equal(a.view, b.view)
    assert a.view.shape == (1, 3, 224, 224) and a.frame.shape == (1, 3, 240, 320)
    # head-on at the nominal distance the patch covers its nominal 10 % of the model's view
    assert a.params["patch_fraction_of_view"] == pytest.approx(0.1, abs=0.01)
    assert (a.view - a.clean_view).abs().amax() > 0.2 and torch.equal(
        shooter.shoot("brick", 7, 0).view, a.view)
    far = InSituPatch(patch, mask, InSituConfig(frame_size=(320, 240), zoom=(0.8, 0.8)))
    assert far.shoot("grass", 1, 2).params["patch_fraction_of_view"] <= 0.1 * 0.8 ** 2 + 0.01
    # the simulator checks the EOT, so it must not use it: no import of physical/ or kornia in camera/simulated.py
    tree = ast.parse(Path("camera/simulated.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.startswith(("physical", "kornia")) for m in mods)


def test_patch_printed_per_cell_equals_the_full_raster_print_and_srgb_encoding_is_exact():
    """The in-situ print (one tone computation per patch pixel, ``print_cells``) is bit-identical to the printer's
    full-raster model (``print_u8``), premultiplied by the cut; a raster not made of cells falls back; the camera's
    fast sRGB encoding is within 1e-3/255 of the exact curve."""
    from camera.simulated import CellRaster, _encode_srgb_fast

    rng = np.random.default_rng(3)
    cells = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    cells[0, 0], cells[1, 1] = 0, 255  # solid ink and bare paper cells
    up = 5
    yy, xx = np.mgrid[:60, :50]
    inside = np.hypot(yy - 29.5, xx - 24.5) < 26
    raster = CellRaster(cells, up, inside)
    page = raster.page()
    assert (page[~inside] == 255).all() and np.array_equal(page[::up, ::up][inside[::up, ::up]],
                                                           cells[inside[::up, ::up]])
    for params in (PrinterParams(), PrinterParams.sample(np.random.default_rng(1))):
        pr = SimulatedPrinter(params)
        for b in (1, 2, 3):
            got = pr.print_cells(raster, b, gain=0.8)
            want = pr.print_u8(page, b) * np.float32(0.8) * inside[..., None]
            assert np.array_equal(got[..., :3], want) and np.array_equal(got[..., 3], inside.astype(np.float32))
    back = CellRaster.from_page(page, up, inside)
    assert back is not None and np.array_equal(back.page(), page)
    page[3, 3] = (page[3, 3].astype(int) + 1) % 256  # one pixel off its cell: not a cell raster any more
    assert CellRaster.from_page(page, up, inside) is None
    x = np.concatenate([np.zeros(5), np.geomspace(1e-6, 1.5, 20001)]).astype(np.float32).reshape(-1, 1, 1)
    x = np.repeat(x, 3, axis=2)
    xd = x.astype(np.float64)
    exact = np.where(xd <= 0.0031308, xd * 12.92, 1.055 * xd ** (1 / 2.4) - 0.055)
    assert np.abs(_encode_srgb_fast(x.copy()) - exact).max() < 1e-3 / 255


def test_many_photos_on_threads_are_the_photos_taken_one_by_one():
    import cv2

    from camera.simulated import InSituConfig, InSituPatch, PrintPhotoConfig, print_photograph
    from physical.universal import circle_mask
    from testbed.photos import imagenet_view

    threads = cv2.getNumThreads()
    patch = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    shooter = InSituPatch(patch, circle_mask(24).view(1, 1, 24, 24), InSituConfig(frame_size=(256, 192)))
    reqs = [("brick", 4, i) for i in range(3)] + [("grass", 5, 0)]
    many = list(shooter.shoot_many(reqs, clean=True, workers=2))
    for (scene, seed, i), shot in zip(reqs, many):
        one = shooter.shoot(scene, seed, i, clean=True)
        assert torch.equal(one.frame, shot.frame) and torch.equal(one.clean_view, shot.clean_view)
        assert one.params == shot.params
    cfg = PrintPhotoConfig(frame_size=(480, 360), dpi=150, width_mm=30)
    x = torch.cat([imagenet_view(n, 32) for n in ("coffee", "rocket", "chelsea")])
    a, b = (print_photograph(x, seed=2, keys=[5, 6, 7], config=cfg, workers=w) for w in (1, 2))
    assert torch.equal(a.images, b.images) and a.params == b.params
    assert cv2.getNumThreads() == threads  # OpenCV's own threading is restored after the pools
    with pytest.raises(ConfigError, match="workers must be a positive"):
        list(shooter.shoot_many(reqs, workers=0))


def test_view_only_photos_are_the_whole_photos_views_bit_for_bit():
    """``frame=False`` develops only the part of the frame the model's view is made of (plus the metering
    subsample): the same views, clean views and records as the whole photo, for each preset and odd frame sizes
    (blur, sharpening and JPEG blocks reach across the region's edge); ``develop_frame(region=)`` likewise."""
    from camera.simulated import InSituConfig, InSituPatch, SimulatedCamera, develop_frame
    from physical.universal import circle_mask

    patch = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    mask = circle_mask(24).view(1, 1, 24, 24)
    for preset, size in (("phone", (400, 300)), ("webcam", (333, 250)), ("harsh", (240, 320)), ("default", (320, 240))):
        shooter = InSituPatch(patch, mask, InSituConfig(preset=preset, frame_size=size))
        for i in range(3):
            whole = shooter.shoot(("brick", "coffee", "grass")[i], 9, i, clean=True)
            part = shooter.shoot(("brick", "coffee", "grass")[i], 9, i, clean=True, frame=False)
            assert part.frame is None and part.params == whole.params
            assert torch.equal(part.view, whole.view) and torch.equal(part.clean_view, whole.clean_view)
    params = SimulatedCamera(torch.rand(1, 3, 60, 80), (80.0, 60.0), seed=3).sample_params(0)
    lin = np.random.default_rng(0).random((150, 203, 3)).astype(np.float32)
    full, info = develop_frame(lin.copy(), params)
    got, info2 = develop_frame(lin.copy(), params, region=(41, 30, 150, 101))
    assert info == info2 and torch.equal(got[..., 30:101, 41:150], full[..., 30:101, 41:150])
    assert float(got[..., :8, :8].abs().max()) == 0.0  # outside the region's blocks: not developed


# --- a phone's sensor mosaic and lens distortion (preset 'kurakin-phone'; off, bit for bit, everywhere else)
def test_demosaic_returns_a_flat_colour_exactly_and_smooths_a_one_pixel_checker():
    """``cfa_demosaic``: one colour per photosite (RGGB), interpolated back by OpenCV's demosaic. A flat colour
    comes back to 16-bit precision everywhere (edges included); a 1-px black/white checker, finer than the mosaic's
    2-px period, loses most of its contrast; a part of a frame is sampled in the frame's own pattern (an odd
    origin gives the whole frame's pixels inside)."""
    from camera.simulated import cfa_demosaic

    flat = np.empty((21, 30, 3), np.float32)
    flat[...] = (0.2, 0.55, 0.9)
    for method in ("bilinear", "edge-aware"):
        for origin in ((0, 0), (1, 0), (0, 1), (3, 5)):
            assert float(np.abs(cfa_demosaic(flat, origin, method) - flat).max()) <= 1 / 65535
    checker = np.indices((40, 40)).sum(0) % 2
    img = np.repeat(checker[..., None].astype(np.float32), 3, axis=2)
    for method in ("bilinear", "edge-aware"):
        out = cfa_demosaic(img, (0, 0), method)[4:-4, 4:-4]
        amplitude = float(np.abs(out - out.mean((0, 1))).mean())  # each colour plane's spatial contrast
        assert amplitude < 0.1, (method, amplitude)  # the input's is 0.5
        false_colour = float(np.abs(out - out.mean(2, keepdims=True)).mean())  # grey in, coloured out (aliasing)
        assert false_colour > 0.2, (method, false_colour)
    rich = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    whole = cfa_demosaic(rich, (0, 0))
    part = cfa_demosaic(np.ascontiguousarray(rich[7:33, 5:41]), (5, 7))
    assert np.array_equal(part[3:-3, 3:-3], whole[10:30, 8:38])
    with pytest.raises(ConfigError, match="bilinear or edge-aware"):
        cfa_demosaic(flat, (0, 0), "none")


def test_lens_distortion_moves_the_page_where_the_reported_corners_say():
    """``distort_points`` inverts ``distort_grid``; with k1 = 0.01 (barrel) the frame's corner region moves inward
    by ~1 % of the centre-to-corner distance, and the page drawn through the distorted lens lies where
    ``page_corners_px`` (distorted) says, not where the pinhole projection would put it."""
    import cv2

    from camera.simulated import distort_grid, distort_points

    W, H = 640, 360
    ux, uy = distort_grid(0.01, (W, H))
    ideal = np.stack([ux[::37, ::41].ravel(), uy[::37, ::41].ravel()], 1)
    frame_pts = np.stack(np.meshgrid(np.arange(0, W, 41), np.arange(0, H, 37)), -1).reshape(-1, 2)
    assert float(np.abs(distort_points(0.01, (W, H), ideal) - frame_pts).max()) < 1e-3
    R = 0.5 * math.hypot(W, H)
    assert abs(float(np.hypot(ux[0, 0] - (W - 1) / 2, uy[0, 0] - (H - 1) / 2)) / R - 1.01) < 0.002
    cfg = SimCameraConfig(frame_size=(W, H), blur_probs=(1, 0, 0), read_noise=(0, 0), jpeg_quality=(100, 100),
                          scenes=("moon",), sheet_height_frac=(0.9, 0.95), max_tilt_deg=5, lens_distortion=(0.05, 0.05))
    cam = SimulatedCamera(torch.ones(1, 3, 297, 210), (210, 297), seed=1, n_frames=1, config=cfg)
    f = cam.read()
    p = SimParams.from_dict(f.meta["params"])
    assert p.distortion_k1 == 0.05
    quad = np.array(f.meta["page_corners_px"])
    pinhole = project_points_mm(p, [[0, 0], [210, 0], [210, 297], [0, 297]])
    assert float(np.linalg.norm(quad - pinhole, axis=1).max()) > 1.5  # the lens moved the corners
    bright = f.image[0].mean(0).numpy() > 0.5
    inside = np.zeros((H, W), np.uint8)
    cv2.fillConvexPoly(inside, np.round(quad * 16).astype(np.int32), 1, cv2.LINE_8, shift=4)
    agree = float((bright == inside.astype(bool)).mean())
    assert agree > 0.995, agree


def project_points_mm(params: SimParams, pts) -> np.ndarray:
    from camera.simulated import project_points

    return project_points(params.homography_mm, np.asarray(pts, float))


def _rectification_errors(camera: dict, n: int) -> list[float]:
    """Mean distance (image px) between where ``camera.rectify`` (from the markers it detects in the rendered frame)
    puts a 9 x 9 grid of the printed image's points and where they truly are in the frame, per photo."""
    import cv2

    from camera.rectify import ObjectSpec, rectify
    from camera.simulated import PrintPhotoConfig, _SheetLayout

    cfg = PrintPhotoConfig(preset="kurakin-phone", width_mm=60, frame_size=(800, 600), sample_printer=False,
                           camera=camera)
    lay = _SheetLayout(64, 64, cfg)
    img = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    cam = SimulatedCamera(lay.render(img), lay.page_mm, config=cfg.camera_config(), seed=7, n_frames=1,
                          objects=lay.sheet.objects, dpi=lay.dpi)
    obj = lay.sheet.objects[0]
    g = np.linspace(0, obj["width_mm"], 9)
    pts = np.array([[x, y] for x in g for y in g])
    out = []
    for i in range(n):
        p = cam.sample_params(i)
        r = rectify(cam.render(p)[0], ObjectSpec.from_record(obj))
        est = cv2.perspectiveTransform(pts.reshape(-1, 1, 2), r.homography).reshape(-1, 2)
        true = cam.project_mm(p, pts + [obj["x_mm"], obj["y_mm"]])
        out.append(float(np.linalg.norm(est - true, axis=1).mean()) / (r.px_per_mm * obj["width_mm"] / 64))
    return out


def test_rectification_from_detected_markers_misses_the_true_position_more_through_a_distorting_lens():
    """The print-photo path rectifies from the ArUco markers it detects in the rendered frame (as on a real photo),
    never from the true homography: its error against the true position of the image's points is small but not
    zero, and a lens distortion of 1 % at the frame corner (which the marker homography cannot express) makes it
    larger on the same draws (the distortion is drawn last: every other parameter is the same)."""
    ideal = _rectification_errors({"lens_distortion": (0.0, 0.0)}, 3)
    lens = _rectification_errors({"lens_distortion": (0.01, 0.01)}, 3)
    assert 0.0 < np.mean(ideal) < 0.3 and np.mean(lens) < 1.0, (ideal, lens)
    assert np.mean(lens) > 1.3 * np.mean(ideal), (ideal, lens)


def test_other_presets_photograph_bit_for_bit_as_before_the_sensor_and_lens_effects():
    """sha256 (first 16 hex) of print_photograph's photos and records and of an in-situ shot, per preset, on fixed
    seeds, recorded with the simulator before the Bayer mosaic and lens distortion were added (pinned OpenCV
    4.12.0.88 and torch): every preset but 'kurakin-phone' is unchanged, records included (the new SimParams fields
    are recorded only when on). Regenerate the digests only for a deliberate change of those presets."""
    import hashlib

    from camera.simulated import InSituConfig, InSituPatch, PrintPhotoConfig, print_photograph
    from physical.universal import circle_mask

    def h(t) -> str:
        return hashlib.sha256(np.ascontiguousarray(t.numpy()).tobytes()).hexdigest()[:16]

    def hj(x) -> str:
        return hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest()[:16]

    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 32, 32, generator=g)
    torch.rand(1, 3, 120, 90, generator=g)  # (a page the recording script drew next)
    patch = torch.rand(1, 3, 24, 24, generator=g)
    mask = circle_mask(24).view(1, 1, 24, 24)
    want = {"default": ["d128dfb7aaf91dc9", "57bf6499e13dcb54"], "mild": ["edcde1f44acf2633", "fcc44d4b2fa7629e"],
            "harsh": ["f3ec8186bc114f75", "50354912a19b8fb5"], "phone": ["4777b63a0f22e163", "5dbcb70350096c53"],
            "webcam": ["01c01b02e2293129", "938e139dbbd53cfb"]}
    for preset, digests in want.items():
        # recorded when the print-photo loop forced 25° on every preset: named here so the digests still apply
        cfg = PrintPhotoConfig(preset=preset, width_mm=30, frame_size=(480, 360), max_tilt_deg=25.0)
        r = print_photograph(imgs, seed=3, config=cfg, workers=1)
        assert [h(r.images), hj(r.params)] == digests, preset
    in_situ = {"default": ["8da260823161a683", "9f5afc46f4da05b6", "d5b2266435eb928b", "9754a70741fdb5a2"],
               "phone": ["957caf3d9eb229d6", "9a4cba9d7073e5c5", "0ecb464e8a437905", "374cb048d20cf84f"]}
    for preset, digests in in_situ.items():
        s = InSituPatch(patch, mask, InSituConfig(preset=preset, frame_size=(320, 240))).shoot("coffee", 9, 1,
                                                                                               clean=True)
        assert [h(s.frame), h(s.view), h(s.clean_view), hj(s.params)] == digests, preset


def test_kurakin_phone_demosaics_in_the_view_only_path_and_refuses_in_situ_lens_distortion():
    """The Bayer mosaic is part of the shared develop stage: an in-situ photo through 'kurakin-phone' (lens
    distortion turned off, which the in-situ renderer does not model and refuses) gives the same view from the
    region-only path as from the whole frame, and differs from the same photo without the mosaic."""
    from camera.simulated import InSituConfig, InSituPatch
    from physical.universal import circle_mask

    patch = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    mask = circle_mask(24).view(1, 1, 24, 24)
    with pytest.raises(ConfigError, match="lens_distortion"):
        InSituConfig(preset="kurakin-phone", frame_size=(333, 250)).validate()
    cfg = InSituConfig(preset="kurakin-phone", frame_size=(333, 251), camera={"lens_distortion": [0, 0]})
    shooter = InSituPatch(patch, mask, cfg)
    whole = shooter.shoot("coffee", 9, 1, clean=True)
    part = shooter.shoot("coffee", 9, 1, clean=True, frame=False)
    assert whole.params["camera"]["demosaic"] == "edge-aware"
    assert torch.equal(part.view, whole.view) and torch.equal(part.clean_view, whole.clean_view)
    plain = InSituPatch(patch, mask, InSituConfig(preset="kurakin-phone", frame_size=(333, 251),
                                                  camera={"lens_distortion": [0, 0], "demosaic": "none"}))
    other = plain.shoot("coffee", 9, 1)
    assert not torch.equal(other.view, whole.view) and float((other.view - whole.view).abs().mean()) < 0.05


def test_print_photo_config_keeps_each_presets_own_tilt_unless_it_names_one():
    """The harness's print-photo loop used to force 25° on every preset (a `mild` head-on photo drew ±25°): now a
    preset keeps its own tilt, the legacy `default` keeps the 25° its tables were made with, and an explicit
    ``max_tilt_deg`` still wins."""
    from camera.simulated import PrintPhotoConfig

    tilt = lambda **kw: PrintPhotoConfig(**kw).validate().camera_config().max_tilt_deg  # noqa: E731
    assert tilt() == tilt(preset="default") == 25.0
    assert tilt(preset="mild") == 12.0
    assert tilt(preset="phone") == tilt(preset="kurakin-phone") == 15.0
    assert tilt(preset="harsh") == 40.0
    assert tilt(preset="mild", max_tilt_deg=30) == 30.0
    assert tilt(preset="phone", camera={"max_tilt_deg": 5}) == 5.0
    with pytest.raises(ConfigError, match="max_tilt_deg"):
        PrintPhotoConfig(max_tilt_deg="steep").validate()
