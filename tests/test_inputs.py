"""The input boundary (``testbed.inputs``) and the loaders built on it: every refusal branch names the problem.

Files: missing, folder, FIFO (never blocks), character device, socket, symlink loop, broken symlink, unreadable,
empty, too large, non-UTF-8 (offset named), BOM, unicode names. JSON/YAML: line/column, 10^5-deep nesting,
alias bombs and self-referencing aliases, duplicate keys, python tags. Images: a PNG header claiming 20000x20000,
a valid 9000x9000 PNG refused in a few MB, the pixel-limit override. Numbers, palettes, sheet sidecars and the
PDF checksum of ``testbed capture --simulate``.
"""
from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from testbed import inputs
from testbed.errors import ConfigError, ImageError, SourceError, TestbedError
from testbed.inputs import (
    MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    bounded_int,
    check_frame_size,
    check_image_bytes,
    check_input_file,
    color_triples,
    finite_float,
    imread_checked,
    load_json,
    load_yaml,
    max_image_pixels,
    parse_json_text,
    parse_yaml_text,
    positive_int,
    read_text,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ helpers
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR (valid CRC) claims ``width`` x ``height`` 8-bit RGB; the pixel data is a stub."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def valid_black_png(width: int, height: int) -> bytes:
    """A complete, valid black RGB PNG, compressed row by row (never holds the raw image in memory)."""
    comp = zlib.compressobj(6)
    row = b"\x00" + bytes(3 * width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _refuses(fn, *words: str, exc: type[Exception] = TestbedError) -> str:
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ------------------------------------------------------------------------------------------------ files
def test_missing_folder_empty_and_too_large_files(tmp_path):
    _refuses(lambda: check_input_file(tmp_path / "nope.json", what="EOT config file", max_bytes=100),
             "EOT config file", "nope.json", "does not exist", exc=ConfigError)
    _refuses(lambda: load_json(tmp_path, what="palette file"), "palette file", "is a folder", exc=ConfigError)
    (tmp_path / "empty.json").write_bytes(b"")
    _refuses(lambda: load_json(tmp_path / "empty.json", what="sheet sidecar"), "empty.json", "is empty")
    (tmp_path / "big.json").write_bytes(b"[" + b"0," * 600 + b"0]")
    _refuses(lambda: read_text(tmp_path / "big.json", what="run file", max_bytes=1000), "big.json",
             "more than the limit of 1000 bytes")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    _refuses(lambda: load_json(tmp_path / "file" / "x.json", what="run file"), "a part of its path is a file")
    # images get ImageError, text ConfigError
    _refuses(lambda: inputs.open_image_checked(tmp_path / "dir", what="mask file"), "mask file", "folder",
             exc=ImageError)


def _returns_within(fn, seconds: float = 5.0):
    box: dict[str, object] = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return t, box


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    t, box = _returns_within(lambda: load_yaml(fifo, what="experiment config"))
    if t.is_alive():  # unblock the reader so the test process can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO blocked")
    assert time.perf_counter() - t0 < 2.0
    err = box.get("error")
    assert isinstance(err, ConfigError) and "named pipe (FIFO)" in str(err) and "config.yaml" in str(err)
    # the image loader and the OpenCV path too
    png = tmp_path / "frame.png"
    os.mkfifo(png)
    t, box = _returns_within(lambda: inputs.check_image_file(png))
    assert not t.is_alive() and isinstance(box.get("error"), ImageError) and "FIFO" in str(box["error"])


def test_devices_and_sockets_are_not_regular_files(tmp_path):
    _refuses(lambda: read_text("/dev/null", what="palette file"), "character device", exc=ConfigError)
    sock_path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(sock_path))
        _refuses(lambda: load_json(sock_path, what="labels file"), "labels file", "a socket")
    finally:
        s.close()


def test_symlink_loops_and_broken_symlinks(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.symlink_to(b)
    b.symlink_to(a)
    _refuses(lambda: load_json(a, what="run file"), "a.json", "symlink loop", exc=ConfigError)
    dangling = tmp_path / "d.json"
    dangling.symlink_to(tmp_path / "gone.json")
    _refuses(lambda: load_json(dangling, what="run file"), "d.json", "gone.json", "does not exist")
    good = tmp_path / "good.json"
    good.write_text('{"ok": 1}')
    link = tmp_path / "link.json"
    link.symlink_to(good)
    assert load_json(link, what="run file") == {"ok": 1}  # a symlink to a regular file is fine


def test_unreadable_file(tmp_path, monkeypatch):
    p = tmp_path / "secret.json"
    p.write_text("{}")
    if os.geteuid() == 0:  # root reads anything: simulate the permission check failing
        monkeypatch.setattr(inputs.os, "access", lambda path, mode: False)
    else:
        p.chmod(0)
    _refuses(lambda: load_json(p, what="EOT config file"), "secret.json", "permission denied", exc=ConfigError)


def test_unicode_paths_are_named(tmp_path):
    p = tmp_path / "配置-ü.yaml"
    p.write_text("a: [1\n", encoding="utf-8")
    _refuses(lambda: load_yaml(p, what="experiment config"), "配置-ü.yaml", "not valid YAML", "line 2")
    p.write_text("a: 1\n", encoding="utf-8")
    assert load_yaml(p, what="experiment config") == {"a": 1}


# ------------------------------------------------------------------------------------------------ text
def test_non_utf8_names_the_byte_offset_and_line(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: café\n".encode("utf-8") + "owner: Jürgen\n".encode("latin-1"))
    offset = len("name: café\n".encode("utf-8")) + len(b"owner: J")
    _refuses(lambda: read_text(p, what="experiment config"), "latin1.yaml", "not UTF-8",
             f"byte 0xfc at offset {offset}", "(line 2)", exc=ConfigError)
    utf16 = tmp_path / "utf16.json"
    utf16.write_text('{"a": 1}', encoding="utf-16")
    _refuses(lambda: load_json(utf16, what="palette file"), "offset 0", "save the file as UTF-8")


def test_a_utf8_bom_is_tolerated(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"colors": [[0, 0.5, 1]]}')
    assert load_json(p, what="palette file") == {"colors": [[0, 0.5, 1]]}
    q = tmp_path / "bom.yaml"
    q.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_yaml(q, what="x") == {"a": 1}
    bad = tmp_path / "bom_bad.json"  # the offset counts the BOM's 3 bytes
    bad.write_bytes(b"\xef\xbb\xbf" + b'{"a": "\xff"}')
    _refuses(lambda: read_text(bad, what="x"), "offset 10")


# ------------------------------------------------------------------------------------------------ JSON / YAML
def test_json_errors_give_line_and_column():
    _refuses(lambda: parse_json_text('{\n  "a": [1, 2\n}', what="sheet sidecar", source="s.json"),
             "sheet sidecar s.json", "not valid JSON", "line 3 column 1", exc=ConfigError)
    _refuses(lambda: parse_json_text('{"a": 1, "a": 2}', what="x"), "key 'a' twice")
    _refuses(lambda: parse_json_text("1" * 5000, what="x"), "could not be read as JSON", "digits")


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    "[" * 100_000,  # unterminated too
])
def test_deep_json_is_refused_without_recursion_error(text):
    _refuses(lambda: parse_json_text(text, what="run file", source="r.json"), "r.json",
             "deeper than the limit of 64 levels", exc=ConfigError)


def test_json_nesting_at_the_limit_is_accepted():
    assert parse_json_text("[" * 64 + "]" * 64, what="x") is not None
    _refuses(lambda: parse_json_text("[" * 65 + "]" * 65, what="x"), "64 levels", "line 1 column 65")
    assert parse_json_text("[[[1]]]", what="x", max_nesting=3) == [[[1]]]
    _refuses(lambda: parse_json_text("[[[[1]]]]", what="x", max_nesting=3), "3 levels")


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    "a: " + "[" * 100_000,
    "{a: " * 100_000 + "1" + "}" * 100_000,
    "".join("  " * i + "- \n" for i in range(2000)),  # block style
])
def test_deep_yaml_is_refused_without_recursion_error(text):
    _refuses(lambda: parse_yaml_text(text, what="experiment config", source="e.yaml"), "e.yaml",
             "deeper than the limit of 64 levels", exc=ConfigError)


BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
) + "\n"


def test_a_yaml_alias_bomb_is_refused_quickly():
    t0 = time.perf_counter()
    _refuses(lambda: parse_yaml_text(BILLION_LAUGHS, what="experiment config", source="bomb.yaml"),
             "bomb.yaml", "alias bomb", "100000 nodes", exc=ConfigError)
    assert time.perf_counter() - t0 < 2.0
    # modest sharing is fine: 9 x 9 = 81 leaves
    ok = parse_yaml_text("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n", what="x")
    assert len(ok["b"]) == 9 and ok["b"][0] == list(range(1, 10))


def test_self_referencing_aliases_duplicates_and_python_tags(tmp_path):
    _refuses(lambda: parse_yaml_text("a: &x [1, *x]\n", what="x"), "refers to itself")
    _refuses(lambda: parse_yaml_text("a: &x {b: *x}\n", what="x"), "refers to itself")
    _refuses(lambda: parse_yaml_text("seed: 1\nname: a\nseed: 2\n", what="x"), "key 'seed' twice", "lines 1 and 3")
    marker = tmp_path / "pwned"
    text = f"x: !!python/object/apply:os.system ['touch {marker}']\n"
    _refuses(lambda: parse_yaml_text(text, what="x"), "not valid YAML", "python/object")
    assert not marker.exists()
    _refuses(lambda: parse_yaml_text("when: 2020-13-45\n", what="x"), "could not be read as YAML", "month")
    _refuses(lambda: parse_yaml_text("--- 1\n--- 2\n", what="x"), "single document")
    assert parse_yaml_text("base: &b {x: 1}\nc: {<<: *b, y: 2}\n", what="x")["c"] == {"x": 1, "y": 2}


# ------------------------------------------------------------------------------------------------ images
def test_a_png_header_claiming_20000x20000_is_refused_before_decoding(tmp_path, monkeypatch):
    from testbed.imageio import load_image

    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_claiming(20_000, 20_000))
    assert p.stat().st_size < 200
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    msg = _refuses(lambda: load_image(p), "bomb.png", "400000000 pixels", f"limit of {MAX_IMAGE_PIXELS} pixels",
                   exc=ImageTooLargeError)
    assert "TESTBED_MAX_IMAGE_PIXELS" in msg and not decoded
    # the OpenCV paths (camera sources, the secure capture folder source) are guarded the same way
    _refuses(lambda: check_image_bytes(p.read_bytes(), what="image", source="frame 3"), "frame 3",
             "400000000 pixels", exc=ImageTooLargeError)
    _refuses(lambda: imread_checked(p), "bomb.png", "pixels", exc=ImageTooLargeError)
    from camera.sources import ImageSequenceSource

    with pytest.raises(ImageTooLargeError, match="pixels"):
        ImageSequenceSource(p).read()


def test_a_valid_9000x9000_png_is_refused_in_a_few_megabytes(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(valid_black_png(9000, 9000))
    assert p.stat().st_size < 400_000  # ~240 KB on disk, 243 MB as 8-bit RGB, 972 MB as a float tensor
    code = ("import resource, sys\n"
            "from testbed.imageio import load_image\n"
            "from testbed.errors import ImageError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    load_image(sys.argv[1]); print('LOADED')\n"
            "except ImageError as exc:\n    print('REFUSED', exc)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env={**os.environ, "TESTBED_MAX_IMAGE_PIXELS": ""})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("REFUSED") and "81000000 pixels" in lines[0], lines
    grew_kb = int(lines[-1])
    assert grew_kb < 200 * 1024, f"refusing the image grew the peak RSS by {grew_kb} KB"


def test_the_pixel_limit_override_is_validated(tmp_path, monkeypatch):
    from testbed.imageio import load_image

    p = tmp_path / "small.png"
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(p)
    assert load_image(p).shape == (1, 3, 20, 30)
    monkeypatch.setenv("TESTBED_MAX_IMAGE_PIXELS", "500")
    assert max_image_pixels() == 500
    _refuses(lambda: load_image(p), "20 = 600 pixels", "limit of 500 pixels", exc=ImageTooLargeError)
    monkeypatch.setenv("TESTBED_MAX_IMAGE_PIXELS", "600")
    assert load_image(p).shape == (1, 3, 20, 30)
    for bad in ("lots", "0", "-5", "1e9", str(2**40)):
        monkeypatch.setenv("TESTBED_MAX_IMAGE_PIXELS", bad)
        _refuses(max_image_pixels, "TESTBED_MAX_IMAGE_PIXELS", exc=ConfigError)
    monkeypatch.setenv("TESTBED_MAX_IMAGE_PIXELS", "200000000")  # above PIL's own limit: ours governs
    q = tmp_path / "wide.png"
    q.write_bytes(png_header_claiming(15_000, 10_000))  # 150 MP: PIL alone would refuse it at open
    _refuses(lambda: load_image(q), "could not be decoded", exc=ImageError)  # got past the size check


def test_eps_and_other_formats_are_not_opened(tmp_path):
    from testbed.imageio import load_image

    eps = tmp_path / "x.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    _refuses(lambda: load_image(eps), "not a readable image", exc=ImageError)


def test_video_frame_size_bound():
    check_frame_size(1920, 1080, what="video frames of", source="clip.mp4")
    check_frame_size(0, 0, what="video frames of", source="stream")  # unknown size: decided per frame later
    _refuses(lambda: check_frame_size(20000, 20000, what="video frames of", source="clip.mp4",
                                      error=SourceError), "clip.mp4", "400000000 pixels", exc=SourceError)


# ------------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("value, kw, words", [
    (float("nan"), {}, ["finite", "nan"]),
    (float("inf"), {}, ["finite"]),
    (-0.0, {"lo": 0.0, "lo_open": True}, ["> 0", "-0.0"]),
    (0.0, {"lo": 0.0, "lo_open": True}, ["> 0"]),
    (-0.1, {"lo": 0.0, "lo_open": True}, ["> 0", "-0.1"]),
    (True, {}, ["must be a number", "True"]),
    ("0.5", {}, ["must be a number"]),
    (None, {}, ["must be a number"]),
    (10**400, {}, ["too large"]),
    (1e300, {"hi": 1e6}, ["<= 1e+06"]),
    (1.0, {"hi": 1.0, "hi_open": True}, ["< 1"]),
])
def test_finite_float_refuses(value, kw, words):
    _refuses(lambda: finite_float("--area", value, **kw), "--area", *words, exc=ConfigError)


def test_finite_float_accepts_and_normalises():
    assert finite_float("x", 0.25, lo=0, hi=1) == 0.25
    assert finite_float("x", np.float32(0.5), lo=0) == 0.5
    z = finite_float("x", -0.0, lo=0.0)
    assert z == 0.0 and str(z) == "0.0"  # -0.0 becomes 0.0 where 0 is allowed
    assert finite_float("x", 3) == 3.0


@pytest.mark.parametrize("value, words", [
    (0, [">= 1", "0"]), (-3, [">= 1"]), (True, ["whole number"]), (2.0, ["whole number"]), ("5", ["whole number"]),
    (None, ["whole number"]), (2**40, ["<= 2147483647"]), (float("nan"), ["whole number"]),
])
def test_positive_int_refuses(value, words):
    _refuses(lambda: positive_int("--steps", value), "--steps", *words, exc=ConfigError)


def test_int_helpers_accept():
    assert positive_int("n", 5) == 5 and positive_int("n", np.int64(7), hi=7) == 7
    _refuses(lambda: positive_int("n", 8, hi=7), "<= 7")
    assert bounded_int("page", 0, 0, 3) == 0
    _refuses(lambda: bounded_int("page", 4, 0, 3), "between 0 and 3")


# ------------------------------------------------------------------------------------------------ palettes
@pytest.mark.parametrize("colors, words", [
    ([[0.1, 0.2]], ["colors[0]", "2 values", "triples"]),
    ([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4]], ["colors[1]", "4 values"]),
    ([[0.1, "red", 0.3]], ["colors[0]", "'red' is not a number"]),
    ([[0.1, True, 0.3]], ["True is not a number"]),
    ([[0.1, None, 0.3]], ["None is not a number"]),
    ([0.5, 0.5, 0.5], ["colors[0]", "a number; colours must be"]),
    ([[0.1, 0.2, 1.5]], ["palette values must be in [0, 1]", "colors[0]"]),
    ([[0, 0, 0], [12, 200, 255]], ["colors[1]", "look like 0-255", "divide by 255"]),
    ([[0.1, -0.2, 0.3]], ["[0, 1]"]),
    ([], ["non-empty list"]),
    ({"r": 1}, ["non-empty list"]),
])
def test_palette_colour_errors_name_the_entry(tmp_path, colors, words):
    from testbed.palette import load_palette, read_palette

    p = tmp_path / "pal.json"
    p.write_text(json.dumps({"colors": colors}))
    _refuses(lambda: read_palette(p), "pal.json", *words, exc=ConfigError)
    _refuses(lambda: load_palette(p), "pal.json", *words, exc=ConfigError)


def test_palette_nan_and_csv_errors(tmp_path):
    from testbed.palette import read_palette

    p = tmp_path / "nan.json"
    p.write_text('{"colors": [[0.1, NaN, 0.3]]}')
    _refuses(lambda: read_palette(p), "colors[0]", "nan", "not a finite number", exc=ConfigError)
    c = tmp_path / "p.csv"
    c.write_text("r,g,b\n0.1,0.2,0.3\n0.1,0.2\n")
    _refuses(lambda: read_palette(c), "p.csv line 3", "each row needs r,g,b")
    c.write_text("r,g,b\n0.1,zero,0.3\n")
    _refuses(lambda: read_palette(c), "line 2", "'zero' is not a number")
    c.write_text("r,g,b\n0.1,nan,0.3\n")
    _refuses(lambda: read_palette(c), "not a finite number")
    c.write_text("r,g,b\n0.1,0.2,0.3\n")
    assert read_palette(c).colors.shape == (1, 3)
    j = tmp_path / "i.json"
    j.write_text(json.dumps({"colors": [[0.1, 0.2, 0.3]], "intended": [[0.1, 0.2, 0.3], [0, 0, 0]]}))
    _refuses(lambda: read_palette(j), "'intended' has 2 colours but 'colors' has 1")
    assert color_triples([[0, 0.5, 1]], where="w").dtype == np.float64


# ------------------------------------------------------------------------------------------------ sheets
@pytest.fixture(scope="module")
def sheet_files(tmp_path_factory):
    from printouts.sheets import SheetConfig, patch_sheet

    out = tmp_path_factory.mktemp("sheet")
    img = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    files = patch_sheet(img, 60.0, None, SheetConfig(dpi=50)).write(out, "patch", png=False)
    return files


def _edit_sidecar(src: Path, dst_dir: Path, edit) -> Path:
    data = json.loads(src.read_text())
    edit(data)
    dst = dst_dir / src.name
    dst.write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("edit, need, words", [
    (lambda d: d.pop("page"), ("objects", "page"), ["has no 'page'"]),
    (lambda d: d.pop("objects"), ("objects",), ["has no 'objects'"]),
    (lambda d: d["objects"][0].pop("width_mm"), ("objects",), ["objects[0]", "has no 'width_mm'"]),
    (lambda d: d["objects"][0].update(width_px=10**9), ("objects",), ["'width_px'", "between 1 and"]),
    (lambda d: d["objects"][0].update(width_mm=float("nan")), ("objects",), ["'width_mm'", "finite"]),
    (lambda d: d["objects"][0]["markers"][0].update(corners_mm=[[0, 0]]), ("objects",), ["markers[0]", "4 [x, y]"]),
    (lambda d: d["objects"][0].update(dictionary="DICT_NOPE"), ("objects",), ["unknown ArUco dictionary"]),
    (lambda d: d["page"].update(pages=[{"width_mm": -1, "height_mm": 5}]), ("page",), ["pages[0].width_mm", "> 0"]),
    (lambda d: d["files"].update(pdf="../../etc/passwd"), ("files",), ["'files.pdf' must be a file name"]),
    (lambda d: d["files"].pop("pdf_sha256"), ("files",), ["no valid 'files.pdf_sha256'"]),
    (lambda d: d.update(objects={"a": 1}), ("objects",), ["'objects' must be a list"]),
])
def test_malformed_sheet_sidecars_name_the_key(sheet_files, tmp_path, edit, need, words):
    from camera.rectify import load_sheet

    side = _edit_sidecar(sheet_files.sidecar, tmp_path, edit)
    _refuses(lambda: load_sheet(side, need=need), str(side), *words, exc=ConfigError)


def test_a_malformed_sheet_json_is_a_config_error(tmp_path):
    from camera.rectify import load_object_spec

    p = tmp_path / "sheet.json"
    p.write_text('{"objects": [')
    _refuses(lambda: load_object_spec(p), "sheet.json", "not valid JSON", "line 1", exc=ConfigError)
    p.write_text('["not", "an", "object"]')
    _refuses(lambda: load_object_spec(p), "must hold a JSON object")


def test_sheet_pdf_checksum_is_checked(sheet_files, tmp_path):
    from camera.rectify import load_sheet, sheet_pdf

    side = load_sheet(sheet_files.sidecar, need=("objects", "page", "files"))
    assert sheet_pdf(sheet_files.sidecar, side) == sheet_files.pdf  # the matching PDF passes
    # the same sidecar next to a different PDF (one byte changed) is refused, naming both files
    (tmp_path / sheet_files.sidecar.name).write_bytes(sheet_files.sidecar.read_bytes())
    data = bytearray(sheet_files.pdf.read_bytes())
    data[-10] ^= 0x01
    (tmp_path / sheet_files.pdf.name).write_bytes(bytes(data))
    _refuses(lambda: sheet_pdf(tmp_path / sheet_files.sidecar.name, side), str(tmp_path / "patch.pdf"),
             str(tmp_path / "patch.json"), "sha256", exc=ConfigError)


def test_capture_simulate_refuses_a_mismatched_pdf_through_the_cli(sheet_files, tmp_path, capsys):
    from pipelines.main import main

    (tmp_path / "patch.json").write_bytes(sheet_files.sidecar.read_bytes())
    other = sheet_files.pdf.read_bytes().replace(b"testbed", b"testbee", 1)
    assert other != sheet_files.pdf.read_bytes()
    (tmp_path / "patch.pdf").write_bytes(other)
    out = tmp_path / "frames"
    rc = main(["capture", "--simulate", str(tmp_path / "patch.json"), "--out", str(out), "--frames", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "patch.pdf" in err and "patch.json" in err and "sha256" in err
    assert not out.exists()
    # a sidecar that misses 'page' is named too (it used to be a KeyError)
    _edit_sidecar(sheet_files.sidecar, tmp_path, lambda d: d.pop("page"))
    (tmp_path / "patch.pdf").write_bytes(sheet_files.pdf.read_bytes())
    rc = main(["capture", "--simulate", str(tmp_path / "patch.json"), "--out", str(out), "--frames", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "has no 'page'" in err and not out.exists(), err


# ------------------------------------------------------------------------------------------------ loaders
def test_eot_config_file_errors(tmp_path):
    from physical.eot import EOTConfig

    p = tmp_path / "eot.yaml"
    p.write_bytes(b"rotation: 10\nnote: \xe9t\xe9\n")
    _refuses(lambda: EOTConfig.load(p), "EOT config file", "eot.yaml", "not UTF-8", "offset 19", exc=ConfigError)
    p.write_text("- 1\n- 2\n")
    _refuses(lambda: EOTConfig.load(p), "must hold a mapping")
    p.write_text("rotation: 10\n")
    assert EOTConfig.load(p).rotation == 10.0
    j = tmp_path / "eot.json"
    j.write_text('{"rotation": 10,}')
    _refuses(lambda: EOTConfig.load(j), "eot.json", "not valid JSON", "line 1 column 17")


def test_experiment_config_and_mask_and_labels(tmp_path):
    from physical.universal import load_mask
    from pipelines.experiment import load_config

    p = tmp_path / "exp.yaml"
    p.write_text(BILLION_LAUGHS)
    _refuses(lambda: load_config(p), "experiment config", "alias bomb", exc=ConfigError)
    m = tmp_path / "mask.png"
    m.write_bytes(png_header_claiming(20_000, 20_000))
    _refuses(lambda: load_mask(m), "mask file", "pixels", exc=ImageTooLargeError)
    good = tmp_path / "ok.png"
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(good)
    assert float(load_mask(good).min()) == 1.0


def test_perturbation_pt_and_pdf_bounds(tmp_path):
    from printouts.sheets import load_perturbation, rasterize_pdf

    pt = tmp_path / "p.pt"
    pt.write_bytes(b"not a zip")
    _refuses(lambda: load_perturbation(pt), "p.pt", "not a readable tensor file", exc=ImageError)
    torch.save({"patch": torch.rand(2, 3, 4, 4)}, pt)
    _refuses(lambda: load_perturbation(pt), "1x3xHxW", exc=ImageError)
    pdf = tmp_path / "empty.pdf"
    pdf.write_bytes(b"")
    _refuses(lambda: rasterize_pdf(pdf, 72), "empty.pdf", "is empty", exc=ImageError)


def test_rasterize_refuses_a_page_above_the_pixel_limit(sheet_files, monkeypatch):
    from printouts.sheets import rasterize_pdf

    monkeypatch.setenv("TESTBED_MAX_IMAGE_PIXELS", "10000")
    _refuses(lambda: rasterize_pdf(sheet_files.pdf, 300), "PDF page 0 at 300 dpi", "limit of 10000 pixels",
             exc=ImageTooLargeError)


def test_decode_image_bytes_bounded():
    from camera.sources import decode_image_bytes

    buf = io.BytesIO()
    Image.fromarray(np.zeros((3, 5, 3), np.uint8)).save(buf, "PNG")
    assert decode_image_bytes(buf.getvalue(), "ok").shape == (1, 3, 3, 5)
    _refuses(lambda: decode_image_bytes(png_header_claiming(30_000, 30_000), "stream frame"), "stream frame",
             "900000000 pixels", exc=ImageTooLargeError)


# ------------------------------------------------------------------------------------------------ image folders
def test_one_image_folder_reader_for_every_folder_of_images(tmp_path):
    """``list_images`` is the one reader of a folder of images: one extension list (any case), natural name order,
    files only; the camera's image-folder source and the secure capture's folder read exactly its list."""
    from camera.secure.capture import FolderFrames
    from camera.sources import open_source
    from testbed.inputs import IMAGE_EXTENSIONS, find_image, list_images

    img = Image.new("RGB", (4, 3), (10, 20, 30))
    for name in ("img10.PNG", "img2.jpg", "img1.png", "scan.tiff"):
        img.save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image is not one
    files = list_images(tmp_path)
    assert [p.name for p in files] == ["img1.png", "img2.jpg", "img10.PNG", "scan.tiff"]
    src = open_source(tmp_path)
    src.open()
    assert src.paths == files
    assert len(list(FolderFrames(str(tmp_path))())) == 4
    assert find_image(tmp_path / "img2") == tmp_path / "img2.jpg" and find_image(tmp_path / "img3") is None
    assert ".webp" in IMAGE_EXTENSIONS and ".tif" in IMAGE_EXTENSIONS
    _refuses(lambda: list_images(tmp_path / "missing"), "missing", "does not exist or is not a folder")
    (tmp_path / "empty").mkdir()
    _refuses(lambda: list_images(tmp_path / "empty"), "empty", "no images in it", ".png .jpg")
