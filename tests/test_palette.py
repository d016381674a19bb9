"""Printer palette: measured from a simulated photo of the printed chart, it matches the simulated printer's
colours within CIEDE2000 < 5; palette files round-trip; the default palette loads."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from camera.palette import delta_e2000, measure_chart, measure_palette
from camera.rectify import load_object_spec
from camera.simulated import SimulatedCamera, SimulatedPrinter
from printouts.sheets import SheetConfig, chart_digital, chart_sheet, rasterize_pdf
from testbed.errors import ConfigError
from testbed.palette import Palette, default_palette, load_palette, read_palette

DPI = 150


@pytest.fixture(scope="module")
def chart(tmp_path_factory):
    out = tmp_path_factory.mktemp("chart")
    files = chart_sheet(config=SheetConfig(dpi=DPI, marker_id_base=4)).write(out, "chart", png=False)
    return files, json.loads(files.sidecar.read_text())


def test_palette_from_simulated_photo_matches_printer_within_de2000_5(chart):
    files, side = chart
    page = rasterize_pdf(files.pdf, DPI)
    printer = SimulatedPrinter()
    cam = SimulatedCamera(page, (side["page"]["width_mm"], side["page"]["height_mm"]), seed=7, n_frames=4,
                          objects=side["objects"], dpi=DPI, printer=printer)
    stats = []
    for frame in cam:
        pal, rect = measure_palette(frame.image, side, source=f"frame {frame.seq}")
        assert pal.colors.shape == (130, 3)
        truth = printer.expected_colors(pal.intended)
        de = delta_e2000(pal.colors, truth)
        stats.append((float(de.mean()), float(de.max())))
        assert de.max() < 5.0, (frame.seq, de.max(), frame.meta["params"])
        assert de.mean() < 2.0
        # the printer really compressed the gamut: intended vs printed differ far more than measured vs printed
        assert delta_e2000(pal.intended, truth).mean() > 4 * de.mean()
    print("dE2000 (mean, max) per frame:", [tuple(round(v, 2) for v in s) for s in stats])


def test_measure_chart_is_exact_on_the_digital_chart(chart):
    _, side = chart
    spec = load_object_spec(side)
    pal = measure_chart(chart_digital(side["objects"][0]), spec)
    np.testing.assert_allclose(pal.colors, pal.intended, atol=1.5e-3)


def test_palette_files_round_trip_and_default(tmp_path):
    g = np.random.default_rng(0)
    cols = g.uniform(size=(7, 3)).astype(np.float32)
    pal = Palette(cols, cols[::-1].copy(), {"note": "x"})
    for name in ("p.json", "p.csv"):
        pal.save(tmp_path / name)
        back = read_palette(tmp_path / name)
        np.testing.assert_allclose(back.colors, cols, atol=1e-6)
        t = load_palette(tmp_path / name)
        assert t.shape == (7, 3) and t.dtype == torch.float32
    d = load_palette()
    assert d.shape == (130, 3) and float(d.min()) >= 0 and float(d.max()) <= 1
    assert default_palette().intended is not None
    # the default palette is the default printer model on the default chart
    np.testing.assert_allclose(default_palette().colors, SimulatedPrinter().expected_colors(default_palette().intended),
                               atol=1e-5)
    (tmp_path / "bad.json").write_text(json.dumps({"colors": [[0.1, 0.2, 1.5]]}))
    with pytest.raises(ConfigError, match=r"bad.json: palette values must be in \[0, 1\]"):
        load_palette(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match=r"must end in .json or .csv"):
        pal.save(tmp_path / "p.txt")


def test_delta_e2000_reference_values():
    from skimage.color import deltaE_ciede2000

    # Sharma, Wu & Dalal (2005) test pair 1
    assert deltaE_ciede2000(np.array([50.0, 2.6772, -79.7751]), np.array([50.0, 0.0, -82.7485])) == pytest.approx(
        2.0425, abs=1e-4)
    assert delta_e2000(np.array([[0.2, 0.5, 0.7]]), np.array([[0.2, 0.5, 0.7]]))[0] == pytest.approx(0.0)
    assert delta_e2000(np.array([[0.0, 0.0, 0.0]]), np.array([[1.0, 1.0, 1.0]]))[0] == pytest.approx(100.0, abs=0.1)
