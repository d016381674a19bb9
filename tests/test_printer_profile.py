"""Printer profile (issue 16 point 1): CIEDE2000, the fitted colour model, its JSON file, the EOT stage, the NPS
gamut, the simulated printer's colour hook and the `testbed printer-profile` command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000, rgb2lab

from camera.printer_profile import (
    ColourError,
    ProfiledPrinter,
    measure_chart_photos,
    transform_u8,
)
from camera.simulated import PrinterParams, SimCameraConfig, SimulatedCamera
from physical.eot import EOTConfig, EOTTransform
from physical.printer_profile import (
    PROFILE_FORMAT,
    delta_e2000,
    delta_e2000_rgb,
    fit_profile,
    load_profile,
    srgb_to_lab,
)
from physical.regularizers import nps
from pipelines.main import main
from printouts.sheets import SheetConfig, chart_sheet, rasterize_pdf
from testbed.errors import ConfigError, ImageError
from testbed.palette import load_palette
from testbed.runs import save_image

STRENGTH = 0.3  # the known colour error of the simulated printer: hue_shift(0.3)
DPI = 100


# ------------------------------------------------------------------------------------------------ colour science
def test_delta_e2000_matches_scikit_image_and_sharmas_table():
    g = np.random.default_rng(0)
    lab1 = g.uniform([0, -110, -110], [100, 110, 110], size=(4000, 3))
    scale = g.choice([0.3, 3.0, 30.0], size=(4000, 1))
    lab2 = lab1 + g.normal(size=(4000, 3)) * scale
    lab1[:40, 1:] = 0  # achromatic colours (hue undefined): both conventions at zero chroma
    lab2[20:60, 1:] = 0
    lab2[60:100] = lab1[60:100]  # identical colours
    ours = delta_e2000(torch.as_tensor(lab1), torch.as_tensor(lab2)).numpy()
    np.testing.assert_allclose(ours, deltaE_ciede2000(lab1, lab2), atol=1e-9)
    assert np.all(ours[60:100] == 0)
    # Sharma, Wu & Dalal 2005, table 1: pairs 1, 7, 17 (mean hue across 0/360), 25, 34
    pairs = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425), ((50, 0, 0), (50, -1, 2), 2.3669),
             ((50, 2.5, 0), (73, 25, -18), 27.1492), ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
             ((2.0776, 0.0795, -1.135), (0.9033, -0.0636, -0.5514), 0.9082)]
    for a, b, want in pairs:
        got = float(delta_e2000(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))
        assert got == pytest.approx(want, abs=1e-4)


def test_srgb_to_lab_matches_scikit_image_and_is_differentiable():
    rgb = torch.rand(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = rgb2lab(rgb.numpy().reshape(-1, 1, 3)).reshape(-1, 3)
    np.testing.assert_allclose(srgb_to_lab(rgb).numpy(), ref, atol=2e-3)
    x = rgb.clone().requires_grad_(True)
    srgb_to_lab(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------------ fitting
def _printer() -> ProfiledPrinter:
    return ProfiledPrinter(PrinterParams(), ColourError.hue_shift(STRENGTH))


@pytest.fixture(scope="module")
def chart_photos(tmp_path_factory):
    """The chart printed by a printer with a known colour error, 2 simulated photos (1280 x 960)."""
    out = tmp_path_factory.mktemp("pp_chart")
    files = chart_sheet(config=SheetConfig(dpi=DPI, marker_id_base=4)).write(out, "chart", png=False)
    side = json.loads(files.sidecar.read_text())
    cam = SimulatedCamera(rasterize_pdf(files.pdf, DPI), (side["page"]["width_mm"], side["page"]["height_mm"]),
                          seed=3, n_frames=2, objects=side["objects"], dpi=DPI, printer=_printer(),
                          config=SimCameraConfig(frame_size=(1280, 960)))
    photos = out / "photos"
    photos.mkdir()
    for f in cam:
        save_image(f.image, photos / f"chart_{f.seq}.png")
    return photos, files.sidecar


@pytest.fixture(scope="module")
def fitted(chart_photos, tmp_path_factory):
    photos, sidecar = chart_photos
    out = tmp_path_factory.mktemp("pp_profile") / "profile.json"
    assert main(["printer-profile", str(photos), "--sheet", str(sidecar), "--out", str(out)]) == 0
    return out, load_profile(out)


def test_profile_from_simulated_chart_photos_predicts_held_out_patches_within_de2000_3(fitted):
    _, prof = fitted
    fit = prof.fit
    assert fit["n_patches"] == 130 and prof.meta["photos_used"] == 2
    held = fit["held_out_de2000"]
    assert held["mean"] <= 3.0, fit
    assert fit["chosen"] in fit["candidates"]
    assert held["mean"] == min(c["mean"] for c in fit["candidates"].values())  # chosen by held-out error
    assert {c["kind"] for c in fit["candidates"].values()} == {"lut", "poly", "mlp"}
    assert fit["unprofiled_de2000"]["mean"] > 4 * held["mean"]  # the colour error is strong, the profile is not
    # fresh colours (not chart patches) against the simulated printer's true colours
    x = np.random.default_rng(5).uniform(size=(300, 3)).astype(np.float32)
    pred = prof.colours(torch.as_tensor(x)).numpy()
    assert delta_e2000_rgb(pred, _printer().expected_colors(x)).mean() <= 3.0


def test_profile_file_is_plain_json_validated_on_load(fitted, tmp_path):
    path, _ = fitted
    doc = json.loads(path.read_text())
    assert doc["format"] == PROFILE_FORMAT and doc["model"]["kind"] in ("lut", "poly", "mlp")
    # the gamut doubles as a palette file for NPS
    pal = load_palette(path)
    assert pal.shape == (9 ** 3, 3)
    bad_cases = {
        "format": {**doc, "format": "testbed-printer-profile/9"},
        "kind": {**doc, "model": {"kind": "pickle", "data": "x"}},
        "shape": {**doc, "model": {"kind": "lut", "grid": 3, "table": [[0.5, 0.5, 0.5]]}},
        "nan": {**doc, "model": {"kind": "poly", "degree": 1, "coef": [[float("nan")] * 3] * 4}},
        "extra": {**doc, "code": "__import__('os')"},
    }
    for name, bad in bad_cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match="printer profile"):
            load_profile(p)
    assert main(["printer-profile", "--check", str(path)]) == 0


def test_bad_profile_exits_2_with_one_line(tmp_path, capsys):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"format": PROFILE_FORMAT, "model": {"kind": "lut", "grid": 99, "table": []}}))
    assert main(["printer-profile", "--check", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lut grid" in err and "Traceback" not in err
    assert main(["printer-profile", "--check", str(tmp_path / "missing.json")]) == 2


def test_each_model_kind_round_trips_through_json(tmp_path):
    g = np.random.default_rng(2)
    x = g.uniform(size=(60, 3))
    y = np.clip(x ** 1.3 * 0.9 + 0.04, 0, 1)
    for label, kind, opts in (("lut", "lut", {"grid": 5, "smooth": 1e-3}), ("poly", "poly", {"degree": 2}),
                              ("mlp", "mlp", {"hidden": 8, "steps": 50})):
        prof = fit_profile(x, y, candidates=[(label, kind, opts)])
        prof.save(tmp_path / f"{kind}.json")
        back = load_profile(tmp_path / f"{kind}.json")
        q = torch.rand(40, 3, generator=torch.Generator().manual_seed(0))
        np.testing.assert_allclose(back.colours(q).detach().numpy(), prof.colours(q).detach().numpy(), atol=2e-5)


# ------------------------------------------------------------------------------------------------ EOT stage, NPS gamut
def test_profile_stage_in_an_eot_config_prints_only_the_printed_part(fitted):
    path, prof = fitted
    cfg = EOTConfig.from_dict({"preset": "print-aware-10pct", "printer_profile": str(path)})
    assert cfg.stage_names[:2] == ("profile", "print")
    t, t0 = EOTTransform(cfg), EOTTransform("print-aware-10pct")
    p = t.sample(6, torch.Generator().manual_seed(4))
    p0 = t0.sample(6, torch.Generator().manual_seed(4))
    for stage in t0.cfg.stage_names:  # its own stream: every other stage's draws bit-identical
        for k, v in p0[stage].items():
            assert torch.equal(v, p[stage][k]), (stage, k)
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(0), requires_grad=True)
    printed = t.apply_print(x, p)
    expected = t0.apply_print(prof.apply(x), p0)
    torch.testing.assert_close(printed, expected)
    printed.sum().backward()
    assert x.grad.abs().sum() > 0  # differentiable w.r.t. the intended colours
    # the scene is not printed: print_stage=False skips the profile as it skips the print error
    torch.testing.assert_close(t.apply(x, p, print_stage=False), t0.apply(x, p0, print_stage=False))
    # round trip of the config (a run directory stores it)
    assert EOTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="printer profile"):
        EOTConfig(printer_profile=str(path.with_name("nope.json")))


def test_profile_gamut_is_the_nps_palette(fitted):
    _, prof = fitted
    _, printed = prof.gamut(5)
    pal = torch.as_tensor(printed, dtype=torch.float32)
    on_gamut = pal[:4].reshape(1, 4, 1, 3).permute(0, 3, 1, 2)
    assert float(nps(on_gamut, pal)) == pytest.approx(0.0, abs=1e-6)
    saturated = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    assert float(nps(saturated, pal)) > 0.05  # pure red is outside this printer's gamut


# ------------------------------------------------------------------------------------------------ simulated printer
def test_simulated_printer_colour_hook_and_profile_driven_printer(fitted):
    _, prof = fitted
    err = ColourError.hue_shift(STRENGTH)
    page = np.full((8, 8, 3), 255, np.uint8)
    page[2:6, 2:6] = (200, 40, 40)
    mapped = transform_u8(page, err)
    assert (mapped[0, 0] == 255).all() and not (mapped[3, 3] == page[3, 3]).all()  # paper stays paper
    hooked = ProfiledPrinter(PrinterParams(halftone_cell=0), err).print_u8(page)
    plain = ProfiledPrinter(PrinterParams(halftone_cell=0)).print_u8(mapped)
    np.testing.assert_allclose(hooked, plain)
    # the simulated printer driven by the fitted profile prints what the profile predicts
    x = np.random.default_rng(9).uniform(size=(100, 3)).astype(np.float32)
    driven = ProfiledPrinter.from_profile(prof).expected_colors(x)
    assert delta_e2000_rgb(driven, prof.colours(torch.as_tensor(x)).numpy()).max() < 0.5


def test_chart_photos_that_cannot_be_read_are_named(chart_photos, tmp_path):
    photos, sidecar = chart_photos
    blank = tmp_path / "blank.png"
    save_image(torch.full((1, 3, 120, 160), 0.5), blank)
    m = measure_chart_photos([str(blank), str(min(photos.iterdir()))], sidecar)
    assert [r["ok"] for r in m.photos] == [False, True] and "blank.png" in m.photos[0]["photo"]
    assert m.measured.shape == (130, 3)
    with pytest.raises(ImageError, match="no chart photo"):
        measure_chart_photos([str(blank)], sidecar)
