"""Done-when: a rendered stop sign, printed to PDF and photographed through the simulated camera, is 'stop'.

Chain: worlds.signs.render -> printouts.patch_sheet (PDF at true size, ArUco markers) -> PDF rasterised by
pypdfium2 -> camera.simulated.SimulatedCamera (printer gamut + halftone, 3-D pose in a scene photo, lighting,
blur, noise, JPEG) -> camera.rectify (markers -> homography) -> 32x32 -> sign-cnn.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

N_FRAMES = 6


def _rasterise_pdf(pdf_path, dpi: float = 150.0) -> torch.Tensor:
    import numpy as np
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf_path))
    try:
        pil = doc[0].render(scale=dpi / 72.0).to_pil().convert("RGB")
    finally:
        doc.close()
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def printed_stop(tmp_path_factory):
    from printouts.sheets import patch_sheet
    from worlds.signs.render import composite, get_sign, render_sign

    out = tmp_path_factory.mktemp("stop_print")
    # the octagon on white paper, with a 12 % paper margin (as a sign crop is framed, e.g. in GTSRB)
    sign = F.pad(composite(render_sign("stop", 256), 1.0), (31, 31, 31, 31), value=1.0)
    files = patch_sheet(sign, width_mm=120.0).write(out, "stop", png=False)
    sidecar = json.loads(files.sidecar.read_text())
    page = sidecar["page"]["pages"][0]
    assert get_sign("stop").size_mm == 900  # real size; printed here scaled down to fit A4
    return _rasterise_pdf(files.pdf), (page["width_mm"], page["height_mm"]), sidecar


def test_printed_and_photographed_stop_sign_is_classified_stop(printed_stop):
    from camera.rectify import load_object_spec, rectify
    from camera.simulated import SimCameraConfig, SimulatedCamera
    from testbed.models.registry import get_entry, get_model

    page, page_mm, sidecar = printed_stop
    cam = SimulatedCamera(page, page_mm, config=SimCameraConfig(frame_size=(1280, 720)), seed=11,
                          n_frames=N_FRAMES, objects=sidecar["objects"], dpi=150.0)
    spec = load_object_spec(sidecar)
    model = get_model("sign-cnn", device="cpu")
    labels = get_entry("sign-cnn").labels
    preds, confs = [], []
    for i in range(N_FRAMES):
        frame, _ = cam.render(cam.sample_params(i))
        rect = rectify(frame, spec, source=f"simulated frame {i}")
        x = F.interpolate(rect.image, size=get_entry("sign-cnn").input_size, mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            p = model(x.clamp(0, 1)).softmax(-1)[0]
        preds.append(labels[int(p.argmax())])
        confs.append(round(float(p.max()), 3))
    assert preds == ["stop"] * N_FRAMES, list(zip(preds, confs))
