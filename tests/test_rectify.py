"""Rectification: a printout PDF rendered by pdfium, photographed by the simulated camera at 1080p, found and
rectified with mean corner error < 2 px; clear errors for missing markers and oblique views."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from camera.rectify import (MarkersNotFoundError, TooObliqueError, corner_error_px, load_object_spec, rectify)
from camera.simulated import SimCameraConfig, SimulatedCamera
from printouts.sheets import SheetConfig, patch_sheet, rasterize_pdf
from testbed.errors import ConfigError
from testbed.photos import load_photo

DPI = 150
N_FRAMES = 6


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    out = tmp_path_factory.mktemp("sheet")
    patch = load_photo("chelsea", size=(96, 96))
    files = patch_sheet(patch, width_mm=110.0, config=SheetConfig(dpi=DPI, seed=5)).write(out, "patch", png=False)
    side = json.loads(files.sidecar.read_text())
    page = rasterize_pdf(files.pdf, DPI)  # real PDF renderer (pypdfium2)
    return patch, files, side, page


def test_pdf_through_simulated_camera_is_rectified_within_2px(printed):
    patch, files, side, page = printed
    spec = load_object_spec(files.sidecar)
    cam = SimulatedCamera(page, (side["page"]["width_mm"], side["page"]["height_mm"]), seed=2024,
                          n_frames=N_FRAMES, objects=side["objects"], dpi=DPI)
    errors, corr = [], []
    for frame in cam:
        assert frame.image.shape == (1, 3, 1080, 1920)
        r = rectify(frame.image, spec, source=f"frame {frame.seq}")
        err = corner_error_px(r.object_corners_px, frame.meta["objects"]["patch"])
        errors.append(err)
        assert err < 2.0, (frame.seq, err, frame.meta["params"])
        assert r.image.shape == (1, 3, 96, 96)
        # the rectified patch looks like the digital one (printer + lighting change colours, not structure)
        a = r.image.mean(1).flatten()
        b = patch.mean(1).flatten()
        corr.append(float(torch.corrcoef(torch.stack([a, b]))[0, 1]))
    print(f"corner error px per frame: {np.round(errors, 3).tolist()} mean {np.mean(errors):.3f}; "
          f"correlation with digital patch: {np.round(corr, 3).tolist()}")
    assert np.mean(errors) < 2.0
    assert min(corr) > 0.9


def test_missing_markers_are_named(printed):
    _, files, side, page = printed
    spec = load_object_spec(files.sidecar)
    scene = load_photo("coffee")
    with pytest.raises(MarkersNotFoundError, match=r"found 0 of the 4 fiducial markers of 'patch' \(ids \[0, 1, 2, 3\]"):
        rectify(scene, spec, source="coffee.png")
    # cover two markers (TR and BL) with paper: 2 of 4 < min_markers=3
    covered = page.clone()
    k = DPI / 25.4
    obj = side["objects"][0]
    for i in (1, 3):
        (x0, y0), (x1, y1) = obj["markers"][i]["corners_mm"][0], obj["markers"][i]["corners_mm"][2]
        covered[..., round((obj["y_mm"] + y0 - 1) * k):round((obj["y_mm"] + y1 + 1) * k),
                round((obj["x_mm"] + x0 - 1) * k):round((obj["x_mm"] + x1 + 1) * k)] = 1.0
    cam = SimulatedCamera(covered, (side["page"]["width_mm"], side["page"]["height_mm"]), seed=1, n_frames=1,
                          dpi=DPI, config=SimCameraConfig(blur_probs=(1.0, 0.0, 0.0)))
    frame = cam.read()
    with pytest.raises(MarkersNotFoundError, match=r"found 2 of the 4 .*Seen: \[0, 2\], missing: \[1, 3\]"):
        rectify(frame.image, spec)
    r = rectify(frame.image, spec, min_markers=2)  # allowed explicitly: diagonal markers still span the patch
    assert r.markers_used == [0, 2] and r.markers_missing == [1, 3]


def test_too_oblique_view_is_refused(printed):
    _, files, side, page = printed
    spec = load_object_spec(files.sidecar)
    cfg = SimCameraConfig(max_tilt_deg=40.0, blur_probs=(1.0, 0.0, 0.0))
    cam = SimulatedCamera(page, (side["page"]["width_mm"], side["page"]["height_mm"]), seed=3, n_frames=5,
                          dpi=DPI, config=cfg)
    tilts = []
    for frame in cam:
        p = frame.meta["params"]
        r = rectify(frame.image, spec)
        true = np.degrees(np.arccos(np.cos(np.radians(p["tilt_x_deg"])) * np.cos(np.radians(p["tilt_y_deg"]))))
        tilts.append((true, r.tilt_deg))
        if r.tilt_deg > 20:
            with pytest.raises(TooObliqueError, match=r"seen too obliquely: estimated tilt \d+\.\d deg > 20"):
                rectify(frame.image, spec, max_tilt_deg=20)
    # the estimate follows the true out-of-plane angle (perspective adds a few degrees)
    t, e = np.array(tilts).T
    assert np.corrcoef(t, e)[0, 1] > 0.9 and np.abs(t - e).mean() < 8, tilts
    # a tiny, far-away sheet: too few pixels per mm
    small = F.interpolate(page, scale_factor=0.25, mode="area")
    cam = SimulatedCamera(small, (side["page"]["width_mm"], side["page"]["height_mm"]), seed=0, n_frames=1,
                          config=SimCameraConfig(blur_probs=(1.0, 0, 0), max_tilt_deg=5))
    frame = cam.read()
    with pytest.raises(TooObliqueError, match=r"px/mm"):
        rectify(frame.image, spec, min_px_per_mm=5.0)


def test_bad_sidecars_are_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_object_spec(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"has no 'objects'"):
        load_object_spec(tmp_path / "x.json")
