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


# ------------------------------------------------------------------ a run directory as input; the cut line follows the mask
CUT_RGB = np.array([230, 0, 140])


def make_patch_run(root, *, size: int = 32, seed: int = 1234):
    """A finished patch run directory written by the run writers themselves (RunDir: marker, config.json,
    lossless perturbation.png and the attack's anti-aliased circular mask.png, metrics.json)."""
    from physical.universal import circle_mask
    from testbed.runs import RunDir

    cfg = {"attack": "patch", "model": "tiny-net", "target": 2, "seed": seed, "shape": "circle",
           "palette": "printer_palette.json", "lambda_nps": 0.1, "patch_size": size, "steps": 2}
    run = RunDir(root, cfg)
    run.save_image("perturbation", greenish(size, size, seed=3))
    run.save_image("mask", circle_mask(size))
    run.save_metrics({"model": "tiny-net", "target": 2, "target_name": "two", "seed": seed, "success_rate": 0.5})
    return root


def cut_pixels_mm(page: np.ndarray, dpi: float) -> tuple[np.ndarray, np.ndarray]:
    """Page positions (mm, pixel centres) of the magenta cut-line pixels of an HxWx3 uint8 page."""
    d = np.abs(page.astype(np.int32) - CUT_RGB).max(-1)
    ys, xs = np.nonzero(d < 40)
    k = dpi / 25.4
    return (xs + 0.5) / k, (ys + 0.5) / k


def test_print_patch_from_run_dir_cut_line_follows_the_circle(tmp_path, capsys):
    import hashlib

    from pipelines.main import main

    run = make_patch_run(tmp_path / "run")
    dpi, width = 200.0, 80.0
    assert main(["print", "patch", "--image", str(run), "--width-mm", str(width), "--dpi", str(dpi),
                 "--out", str(tmp_path / "prints")]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256((run / "config.json").read_bytes()).hexdigest()
    assert f"run {digest[:8]}" in out
    side = json.loads((tmp_path / "prints" / "patch.json").read_text())
    # provenance: the run's, not the print command's
    assert side["seed"] == 1234 and side["palette"] == "printer_palette.json"
    assert side["run"]["run_id"] == digest[:8] and side["run"]["config_sha256"] == digest
    assert side["run"]["model"] == "tiny-net" and side["run"]["target"] == "two" and side["run"]["kind"] == "patch"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", side["run"]["date"])
    obj = side["objects"][0]
    assert obj["width_mm"] == pytest.approx(width) and obj["height_mm"] == pytest.approx(width)
    assert (obj["width_px"], obj["height_px"]) == (32, 32)  # rectify's digital frame: the perturbation's pixels
    cx, cy, r = obj["x_mm"] + width / 2, obj["y_mm"] + width / 2, width / 2
    png = np.array(Image.open(tmp_path / "prints" / "patch_p1.png").convert("RGB"))
    pdf = (rasterize_pdf(tmp_path / "prints" / "patch.pdf", dpi)[0].permute(1, 2, 0).numpy() * 255).round()
    for page in (png, pdf.astype(np.uint8)):  # our raster and a real PDF renderer
        xs, ys = cut_pixels_mm(page, dpi)
        rad = np.hypot(xs - cx, ys - cy)
        near = rad < r + 5  # the cut line around the patch (not the page's other magenta, if any)
        assert near.sum() > 500
        assert np.abs(rad[near] - r).max() < 1.0, np.abs(rad[near] - r).max()  # on the circle within 1 mm
        ang = np.degrees(np.arctan2(ys[near] - cy, xs[near] - cx))
        assert len(np.unique(np.floor((ang + 180) / 10))) == 36  # all the way round
        k = dpi / 25.4
        for ex, ey in ((obj["x_mm"] + 2, obj["y_mm"] + 2), (obj["x_mm"] + width - 2, obj["y_mm"] + 2),
                       (obj["x_mm"] + 2, obj["y_mm"] + width - 2), (obj["x_mm"] + width - 2, obj["y_mm"] + width - 2)):
            assert (page[int(ey * k), int(ex * k)] >= 250).all()  # the square's corners are paper white
        centre = page[int(cy * k), int(cx * k)].astype(int)
        assert centre[1] - max(centre[0], centre[2]) > 60  # the perturbation inside
    # the run id, model, target in small print on the sheet
    texts = [it.text for it in __import__("printouts.sheets", fromlist=["x"]).patch_sheet(
        greenish(8, 8), 50.0, config=SheetConfig(run=side["run"])).pages[0].items if hasattr(it, "text")]
    assert any(t.startswith(f"run {digest[:8]} | patch | model tiny-net | target two | ") for t in texts)


def test_print_refuses_a_folder_that_is_not_a_run_directory(tmp_path, capsys):
    from pipelines.main import main

    folder = tmp_path / "holiday_photos"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    rc = main(["print", "patch", "--image", str(folder), "--width-mm", "50", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(folder) in err and "not a patch, sticker or eyeglass run directory" in err
    assert not (tmp_path / "o").exists()


def test_patch_sheet_with_an_arbitrary_mask_cuts_along_its_outline():
    """An L-shaped mask: white outside it, the cut line on its outline (sampled in the rendered page)."""
    img = greenish(20, 20)
    mask = torch.zeros(20, 20)
    mask[:, :8] = 1
    mask[12:, :] = 1
    sheet = patch_sheet(img, 60.0, config=SheetConfig(dpi=150), mask=mask)
    obj = sheet.objects[0]
    page = (sheet.render_page(0)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    k = 150 / 25.4
    inside_l = page[int((obj["y_mm"] + 10) * k), int((obj["x_mm"] + 10) * k)].astype(int)
    assert inside_l[1] - max(inside_l[0], inside_l[2]) > 60
    assert (page[int((obj["y_mm"] + 15) * k), int((obj["x_mm"] + 45) * k)] >= 250).all()  # the L's notch
    xs, ys = cut_pixels_mm(page, 150)
    # the notch corner (x = 24 mm, y = 36 mm in object mm) lies on the cut line
    d = np.hypot(xs - obj["x_mm"] - 24, ys - obj["y_mm"] - 36)
    assert d.min() < 0.5
    assert sheet.sidecar()["objects"][0]["masked"] is True


def test_print_from_a_real_tiny_patch_run(tmp_path, capsys):
    """`testbed patch` (2 steps, the tiny test CNN) then `testbed print patch --image RUN_DIR`: the run's circular
    mask is recognised and printed as the exact circle; the sidecar carries the run's seed and config hash."""
    import hashlib

    from pipelines.main import main
    from test_patch import _register_tiny_cli_model

    run = tmp_path / "run"
    assert main(["patch", "--model", _register_tiny_cli_model(), "--target", "two", "--scenes", "chelsea",
                 "--area", "0.2", "--steps", "2", "--batch-size", "2", "--eval", "4", "--eot", "thys",
                 "--seed", "5", "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["print", "patch", "--image", str(run), "--width-mm", "60", "--no-png", "--out",
                 str(tmp_path / "p")]) == 0
    side = json.loads((tmp_path / "p" / "patch.json").read_text())
    digest = hashlib.sha256((run / "config.json").read_bytes()).hexdigest()
    assert side["run"]["config_sha256"] == digest and side["run"]["run_id"] == digest[:8]
    assert side["seed"] == 5 == json.loads((run / "config.json").read_text())["seed"]
    assert side["palette"] == "unused (lambda_nps 0)" and side["run"]["shape"] == "circle"
    assert side["config"]["params"]["edge"] == "disc"
