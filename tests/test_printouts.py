"""printouts: true physical size on a real PDF renderer, lossless embedding, sidecar, tiling, validation."""
from __future__ import annotations

import json
import re

import numpy as np
import pypdfium2 as pdfium
import pytest
import torch
from PIL import Image

from printouts.sheets import (SheetConfig, chart_sheet, check_dpi, glasses_sheet, page_size_mm, patch_sheet,
                              poster_sheet, rasterize_pdf, sticker_sheet)
from testbed.errors import ConfigError

DPI = 300


def greenish(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A perturbation whose every pixel is clearly green (so it can be segmented from paper, markers, cut lines)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h, w, generator=g)
    x[:, 0] *= 0.3
    x[:, 2] *= 0.3
    x[:, 1] = 0.55 + 0.45 * x[:, 1]
    return x


def green_extent_mm(page: torch.Tensor, dpi: float) -> tuple[float, float]:
    """Width and height (mm) of the green region: count of rows/columns that are mostly green."""
    a = (page[0] * 255).numpy()
    mask = a[1] - np.maximum(a[0], a[2]) > 60
    cols = mask.mean(0)
    rows = mask.mean(1)
    # partial (anti-aliased) edge pixels count by their coverage along the central band
    ys, xs = np.nonzero(mask)
    band_r = mask[(ys.min() + ys.max()) // 2 - 5:(ys.min() + ys.max()) // 2 + 5].mean(0)
    band_c = mask[:, (xs.min() + xs.max()) // 2 - 5:(xs.min() + xs.max()) // 2 + 5].mean(1)
    assert cols.max() > 0 and rows.max() > 0
    return float(band_r.sum()) * 25.4 / dpi, float(band_c.sum()) * 25.4 / dpi


def test_patch_pdf_true_size_on_pdfium_and_lossless_embedding(tmp_path):
    img = greenish(40, 60)
    sheet = patch_sheet(img, width_mm=120.0, config=SheetConfig(dpi=DPI, seed=1234, palette="default"))
    files = sheet.write(tmp_path, "patch")
    page = rasterize_pdf(files.pdf, DPI)  # a real PDF renderer
    w, h = green_extent_mm(page, DPI)
    assert abs(w - 120.0) / 120.0 < 0.005, w
    assert abs(h - 80.0) / 80.0 < 0.005, h
    # the PNG raster at the chosen DPI has the same true size
    png = Image.open(files.pngs[0])
    assert png.size == (round(210 / 25.4 * DPI), round(297 / 25.4 * DPI))
    assert round(png.info["dpi"][0]) == DPI
    pw, ph = green_extent_mm(torch.from_numpy(np.array(png)).permute(2, 0, 1)[None].float() / 255, DPI)
    assert abs(pw - 120.0) / 120.0 < 0.005 and abs(ph - 80.0) / 80.0 < 0.005
    # the perturbation is embedded bit-exactly (PNG/Flate) and placed at 120 x 80 mm
    doc = pdfium.PdfDocument(str(files.pdf))
    src = (img[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    found = []
    for obj in doc[0].get_objects():
        if obj.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE:
            arr = np.array(obj.get_bitmap(render=False).to_pil().convert("RGB"))
            if arr.shape == src.shape and np.array_equal(arr, src):
                l, b, r, t = obj.get_bounds()
                found.append(((r - l) * 25.4 / 72, (t - b) * 25.4 / 72, obj.get_filters()))
    doc.close()
    assert len(found) == 1
    assert found[0][0] == pytest.approx(120.0, abs=0.01) and found[0][1] == pytest.approx(80.0, abs=0.01)
    assert found[0][2] == ["FlateDecode"]


def test_sidecar_records_provenance_and_markers(tmp_path):
    sheet = patch_sheet(greenish(32, 32), 100.0, config=SheetConfig(dpi=200, seed=7, palette="pal.json", page="Letter"))
    files = sheet.write(tmp_path, "p", png=False)
    side = json.loads(files.sidecar.read_text())
    assert side["seed"] == 7 and side["dpi"] == 200 and side["palette"] == "pal.json"
    assert side["page"]["name"] == "Letter" and side["page"]["width_mm"] == 215.9
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", side["git_revision"])
    assert re.fullmatch(r"[0-9a-f]{64}", side["config_hash"])
    assert side["files"]["pdf"] == "p.pdf" and side["files"]["png"] == []
    obj = side["objects"][0]
    assert [m["id"] for m in obj["markers"]] == [0, 1, 2, 3]
    s = obj["markers"][0]["size_mm"]
    assert obj["markers"][0]["corners_mm"][2] == pytest.approx([-6.0, -6.0])  # TL marker ends at the gap
    assert obj["markers"][2]["corners_mm"][0] == pytest.approx([106.0, 106.0])
    assert s == pytest.approx(20.0)
    # same config -> same hash; a different dpi -> a different hash
    again = patch_sheet(greenish(32, 32), 100.0, config=SheetConfig(dpi=200, seed=7, palette="pal.json", page="Letter"))
    other = patch_sheet(greenish(32, 32), 100.0, config=SheetConfig(dpi=300, seed=7, palette="pal.json", page="Letter"))
    assert again.config_hash() == side["config_hash"] != other.config_hash()


def test_markers_on_the_rendered_pdf_are_where_the_sidecar_says(tmp_path):
    import cv2

    sheet = patch_sheet(greenish(50, 50), 90.0, config=SheetConfig(dpi=DPI))
    files = sheet.write(tmp_path, "m", png=False)
    obj = json.loads(files.sidecar.read_text())["objects"][0]
    page = rasterize_pdf(files.pdf, DPI)
    gray = cv2.cvtColor((page[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    det = cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50))
    corners, ids, _ = det.detectMarkers(gray)
    assert sorted(ids.ravel().tolist()) == [0, 1, 2, 3]
    k = DPI / 25.4
    for c, i in zip(corners, ids.ravel()):
        want = (np.array(obj["markers"][i]["corners_mm"]) + [obj["x_mm"], obj["y_mm"]]) * k - 0.5
        assert np.abs(c.reshape(4, 2) - want).max() < 1.5  # px at 300 dpi (0.13 mm)


def test_glasses_template_is_at_face_scale(tmp_path):
    sheet = glasses_sheet(greenish(100, 280), width_mm=140.0, config=SheetConfig(dpi=DPI))
    files = sheet.write(tmp_path, "g", png=False)
    page = rasterize_pdf(files.pdf, DPI)
    a = (page[0] * 255).numpy()
    mask = a[1] - np.maximum(a[0], a[2]) > 60
    xs = np.nonzero(mask.any(0))[0]
    width = (xs.max() - xs.min() + 1) * 25.4 / DPI
    assert abs(width - 140.0) / 140.0 < 0.005, width  # temple stubs reach both ends of the frame
    obj = sheet.objects[0]
    assert obj["width_mm"] == 140.0 and obj["height_mm"] == pytest.approx(50.0)
    assert sum(1 for it in sheet.pages[0].items if type(it).__name__ == "LineItem" and it.closed) == 3  # outer + 2 lenses


def test_sticker_sheet_cut_lines_and_placement():
    img = greenish(100, 100)
    mask = torch.zeros(100, 100)
    mask[10:20, 10:40] = 1
    mask[50:80, 60:70] = 1
    mask[85:95, 5:15] = 1
    sheet = sticker_sheet(img, mask, sign_width_mm=300.0, config=SheetConfig(dpi=100))
    recs = sheet.objects[0]["stickers"]
    assert len(recs) == 3 and sheet.params["n_stickers"] == 3
    by_pos = sorted((r["sign_x_mm"], r["sign_y_mm"], r["width_mm"], r["height_mm"]) for r in recs)
    assert by_pos == [pytest.approx((15.0, 255.0, 30.0, 30.0)), pytest.approx((30.0, 30.0, 90.0, 30.0)),
                      pytest.approx((180.0, 150.0, 30.0, 90.0))]
    cuts = [it for it in sheet.pages[0].items if type(it).__name__ == "LineItem" and it.closed and it.color != (160, 160, 160)]
    assert len(cuts) == 3
    for c in cuts:  # rectangular stickers: cut line bounding box = sticker size
        pts = np.array(c.points)
        ext = sorted([np.ptp(pts[:, 0]), np.ptp(pts[:, 1])])
        assert any(ext == pytest.approx(sorted([r["width_mm"], r["height_mm"]]), abs=3 * 0.25) for r in recs)


def test_poster_tiles_reassemble_to_a_750mm_sign():
    # a 750 mm sign on A4 at a low dpi (keeps the test fast); tiles pasted at their recorded windows
    img = greenish(60, 60)
    dpi = 40.0
    sheet = poster_sheet(img, width_mm=750.0, config=SheetConfig(dpi=dpi, page="A4"), overlap_mm=15.0)
    obj = sheet.objects[0]
    assert obj["rows"] * obj["cols"] == len(sheet.pages) > 1
    k = dpi / 25.4
    b = obj["markers"][0]["size_mm"] + 6.0
    side_px = round((max(obj["rows"], obj["cols"]) * 300 + 2 * b) * k)
    canvas = np.zeros((side_px, side_px, 3), np.float32)
    for t in obj["tiles"]:
        page = sheet.render_page(t["page"], dpi)[0].permute(1, 2, 0).numpy()
        # the printable window of this page in object coordinates
        x0 = round(t["object_x_mm_on_page"] * k)
        y0 = round(t["object_y_mm_on_page"] * k)
        cx, cy = round(10 * k), round((10 + 9) * k)
        win = page[cy + 2:cy + round(t["window_h_mm"] * k) - 2, cx + 2:cx + round(t["window_w_mm"] * k) - 2]
        oy, ox = round((t["window_y_mm"] + b) * k) + 2, round((t["window_x_mm"] + b) * k) + 2
        canvas[oy:oy + win.shape[0], ox:ox + win.shape[1]] = np.maximum(canvas[oy:oy + win.shape[0], ox:ox + win.shape[1]], win)
    a = canvas * 255
    mask = a[..., 1] - np.maximum(a[..., 0], a[..., 2]) > 60
    xs, ys = np.nonzero(mask.any(0))[0], np.nonzero(mask.any(1))[0]
    w = (xs.max() - xs.min() + 1) / k
    h = (ys.max() - ys.min() + 1) / k
    assert abs(w - 750) / 750 < 0.005 and abs(h - 750) / 750 < 0.005, (w, h)
    assert mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].mean() > 0.97  # no gaps between tiles
    assert len([it for p in sheet.pages for it in p.items if type(it).__name__ == "MarkerItem"]) == 4


def test_chart_sheet_patches_are_exact_colours(tmp_path):
    sheet = chart_sheet(config=SheetConfig(dpi=150, marker_id_base=4))
    obj = sheet.objects[0]
    assert len(obj["patches"]) == 130 and [m["id"] for m in obj["markers"]] == [4, 5, 6, 7]
    files = sheet.write(tmp_path, "chart", png=False)
    page = rasterize_pdf(files.pdf, 150)[0]
    k = 150 / 25.4
    for p in obj["patches"][::13]:
        cx, cy = (obj["x_mm"] + p["x_mm"] + p["w_mm"] / 2) * k, (obj["y_mm"] + p["y_mm"] + p["h_mm"] / 2) * k
        got = (page[:, int(cy), int(cx)] * 255).round().tolist()
        assert got == pytest.approx(p["rgb"], abs=1)


def test_impossible_dpi_and_page_sizes_are_refused():
    for bad in (0, -5, 2401, float("nan"), "abc"):
        with pytest.raises(ConfigError, match=re.escape(repr(bad)) if not isinstance(bad, float) else "dpi"):
            check_dpi(bad)
    with pytest.raises(ConfigError, match=r"dpi -5 is impossible"):
        patch_sheet(greenish(8, 8), 50.0, config=SheetConfig(dpi=-5))
    with pytest.raises(ConfigError, match=r"dpi 5000 is impossible"):
        SheetConfig(dpi=5000).validate()
    with pytest.raises(ConfigError, match=r"patch of 300.0 x 300.0 mm .*page 'A4'.*poster"):
        patch_sheet(greenish(8, 8), 300.0)
    with pytest.raises(ConfigError, match=r"unknown page size 'B9'"):
        page_size_mm("B9")
    with pytest.raises(ConfigError, match=r"page size '10x10' is impossible"):
        page_size_mm("10x10")
    with pytest.raises(ConfigError, match=r"width_mm must be > 0 mm, got -1"):
        patch_sheet(greenish(8, 8), -1)
    mask = torch.ones(10, 10)
    with pytest.raises(ConfigError, match=r"sticker #1 is 2000.0 x 2000.0 mm"):
        sticker_sheet(greenish(10, 10), mask, 2000.0)
    assert page_size_mm("300x400") == (300.0, 400.0)
