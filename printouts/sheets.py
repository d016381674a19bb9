"""Print-ready sheets at true physical size: patch, sticker sheet, eyeglass frame, tiled poster, colour chart.

Every sheet is first laid out in millimetres (a list of items per page: images, ArUco markers, filled
rectangles, cut lines, text). The same layout is then written twice:

* a PDF (fpdf2) whose page is the paper size in mm and whose images are embedded losslessly (PNG/Flate),
  the perturbation at its own pixel resolution, so a printer at 100 % scale prints it at the requested size;
* a PNG raster of each page at a chosen DPI.

Each printed object is surrounded by four ArUco markers (``cv2.aruco``, default ``DICT_4X4_50``); the JSON
sidecar records where the markers are relative to the object (mm), so ``camera.rectify`` can warp a photo
back to the object's digital frame. The sidecar also records seed, config hash, DPI, palette, page size and
the git revision.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from testbed.errors import ConfigError, ImageError
from testbed.inputs import check_pixels
from testbed.runs import write_atomic

MAX_DPI = 2400.0
MAX_PDF_BYTES = 256 * 2**20  # largest sheet PDF rasterised
PAGE_SIZES_MM: dict[str, tuple[float, float]] = {
    "A5": (148.0, 210.0),
    "A4": (210.0, 297.0),
    "A3": (297.0, 420.0),
    "Letter": (215.9, 279.4),
    "Legal": (215.9, 355.6),
    "Tabloid": (279.4, 431.8),
}
ARUCO_DICTS = {name: getattr(cv2.aruco, name) for name in dir(cv2.aruco) if name.startswith("DICT_")}
HEADER_MM = 9.0  # title line above the content area
FOOTER_MM = 11.0  # scale bar below the content area
CUT_COLOR = (230, 0, 140)  # magenta hairline: visible, not confused with content
MARK_COLOR = (0, 0, 0)


# ----------------------------------------------------------------------------------------------- config
@dataclass
class SheetConfig:
    """Options shared by all sheet kinds (JSON-serialisable; its hash goes into the sidecar)."""

    dpi: float = 300.0  # PNG raster resolution
    page: str = "A4"  # A4, Letter, A3, ... or "WIDTHxHEIGHT" in mm
    margin_mm: float = 10.0  # unprintable border kept white on every page
    marker_mm: float | None = None  # ArUco marker side; None: 15 % of the object's long side, in [20, 40]
    marker_gap_mm: float = 6.0  # white quiet zone between object and markers (keep >= 1 marker cell)
    marker_dict: str = "DICT_4X4_50"
    marker_id_base: int = 0  # ids base..base+3 (TL, TR, BR, BL)
    seed: int | None = None  # seed of the run that produced the perturbation (provenance)
    palette: str | None = None  # palette file/name used by the NPS loss (provenance)
    title: str = ""
    run: dict[str, Any] | None = None  # provenance of the run the image comes from (printouts.runinput.RunProvenance)

    def validate(self) -> "SheetConfig":
        check_dpi(self.dpi)
        page_size_mm(self.page)
        _positive("margin_mm", self.margin_mm, allow_zero=True)
        if self.marker_mm is not None:
            _positive("marker_mm", self.marker_mm)
        _positive("marker_gap_mm", self.marker_gap_mm, allow_zero=True)
        if self.marker_dict not in ARUCO_DICTS:
            raise ConfigError(f"marker_dict {self.marker_dict!r} is not a cv2.aruco dictionary; "
                              f"e.g. DICT_4X4_50, DICT_5X5_100")
        n = _dict_size(self.marker_dict)
        if not (0 <= self.marker_id_base and self.marker_id_base + 4 <= n):
            raise ConfigError(f"marker_id_base {self.marker_id_base} needs ids up to {self.marker_id_base + 3}, "
                              f"but {self.marker_dict} has ids 0..{n - 1}")
        return self


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'} mm, got {value!r}")
    return v


def check_dpi(dpi: float) -> float:
    """A printable resolution: 0 < dpi <= 2400; otherwise ConfigError naming the value."""
    try:
        v = float(dpi)
    except (TypeError, ValueError):
        raise ConfigError(f"dpi must be a number, got {dpi!r}") from None
    if not math.isfinite(v) or v <= 0 or v > MAX_DPI:
        raise ConfigError(f"dpi {dpi!r} is impossible: expected 0 < dpi <= {MAX_DPI:g}")
    return v


def page_size_mm(page: str | Sequence[float]) -> tuple[float, float]:
    """(width, height) in mm, portrait, of a named page ('A4', 'Letter', ...) or 'WxH' in mm."""
    if not isinstance(page, str):
        try:
            w, h = (float(v) for v in page)
        except (TypeError, ValueError):
            raise ConfigError(f"page size {page!r} must be a name or (width_mm, height_mm)") from None
    else:
        for name, size in PAGE_SIZES_MM.items():
            if page.lower() == name.lower():
                return size
        parts = page.lower().replace("mm", "").split("x")
        try:
            w, h = (float(p) for p in parts)
        except ValueError:
            raise ConfigError(f"unknown page size {page!r}; use one of {', '.join(PAGE_SIZES_MM)} "
                              "or 'WIDTHxHEIGHT' in mm") from None
    if not (math.isfinite(w) and math.isfinite(h)) or w < 50 or h < 50 or w > 5000 or h > 5000:
        raise ConfigError(f"page size {page!r} is impossible: each side must be in [50, 5000] mm")
    return (w, h)


def _dict_size(name: str) -> int:
    return int(cv2.aruco.getPredefinedDictionary(ARUCO_DICTS[name]).bytesList.shape[0])


# ----------------------------------------------------------------------------------------------- layout
@dataclass
class ImageItem:
    x: float
    y: float
    w: float
    h: float
    rgb: np.ndarray  # HxWx3 uint8 RGB (printouts-internal; tensors in and out of the API)
    clip: tuple[float, float, float, float] | None = None  # (x, y, w, h) on the page, mm


@dataclass
class MarkerItem:
    x: float
    y: float
    size: float
    marker_id: int
    dictionary: str


@dataclass
class RectItem:
    x: float
    y: float
    w: float
    h: float
    fill: tuple[int, int, int]


@dataclass
class LineItem:
    points: list[tuple[float, float]]
    closed: bool = False
    width_mm: float = 0.2
    color: tuple[int, int, int] = CUT_COLOR
    dash_mm: float = 0.0


@dataclass
class TextItem:
    x: float
    y: float  # baseline
    text: str
    size_mm: float = 3.0


Item = ImageItem | MarkerItem | RectItem | LineItem | TextItem


@dataclass
class Page:
    width_mm: float
    height_mm: float
    items: list[Item] = field(default_factory=list)


@dataclass
class Sheet:
    """A laid-out sheet: pages of items in mm plus the objects that can be rectified from photos."""

    kind: str
    config: SheetConfig
    pages: list[Page]
    objects: list[dict[str, Any]]
    params: dict[str, Any]  # kind-specific parameters (sizes, overlap, ...)
    image_sha256: str | None = None

    def render_page(self, index: int, dpi: float | None = None) -> torch.Tensor:
        """Page ``index`` rasterised at ``dpi`` (default: the config's) as a 1x3xHxW float tensor."""
        rgb = render_page_rgb(self.pages[index], check_dpi(dpi if dpi is not None else self.config.dpi))
        return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)

    def config_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": asdict(self.config), "params": self.params,
                "image_sha256": self.image_sha256}

    def config_hash(self) -> str:
        blob = json.dumps(self.config_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def sidecar(self, files: dict[str, Any] | None = None) -> dict[str, Any]:
        w, h = page_size_mm(self.config.page)
        return {
            "format": "testbed-printout/1",
            "kind": self.kind,
            "seed": self.config.seed,
            "config_hash": self.config_hash(),
            "dpi": self.config.dpi,
            "palette": self.config.palette,
            "run": self.config.run,
            "page": {"name": self.config.page, "width_mm": w, "height_mm": h,
                     "pages": [{"width_mm": p.width_mm, "height_mm": p.height_mm} for p in self.pages]},
            "git_revision": git_revision(),
            "config": self.config_dict(),
            "objects": self.objects,
            "files": files or {},
            "print_instructions": "Print at 100 % / actual size (no 'fit to page'); check the scale bar.",
        }

    def write(self, out_dir: str | Path, name: str | None = None, *, png: bool = True) -> "SheetFiles":
        """Write ``name.pdf``, ``name_p<N>.png`` (one per page) and ``name.json`` atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = name or self.kind
        pdf_path = out / f"{name}.pdf"
        write_atomic(pdf_path, render_pdf(self.pages, title=self.config.title or f"testbed {self.kind}"))
        pngs: list[Path] = []
        if png:
            for i, page in enumerate(self.pages):
                rgb = render_page_rgb(page, self.config.dpi)
                p = out / f"{name}_p{i + 1}.png"
                write_atomic(p, _png_bytes(rgb, self.config.dpi))
                pngs.append(p)
        files = {"pdf": pdf_path.name, "pdf_sha256": _sha256_file(pdf_path),
                 "png": [p.name for p in pngs], "png_sha256": [_sha256_file(p) for p in pngs]}
        side = out / f"{name}.json"
        write_atomic(side, json.dumps(self.sidecar(files), indent=2).encode())
        return SheetFiles(pdf=pdf_path, pngs=pngs, sidecar=side)


@dataclass
class SheetFiles:
    pdf: Path
    pngs: list[Path]
    sidecar: Path


def git_revision() -> str:
    """``git rev-parse HEAD`` of the checkout this package lives in, or 'unknown'."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    rev = res.stdout.strip()
    return rev if res.returncode == 0 and len(rev) == 40 else "unknown"


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png_bytes(rgb: np.ndarray, dpi: float | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    kw = {"dpi": (dpi, dpi)} if dpi else {}
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", **kw)
    return buf.getvalue()


# -------------------------------------------------------------------------------------------- rendering
def marker_bitmap(marker_id: int, dictionary: str = "DICT_4X4_50") -> np.ndarray:
    """The marker as a (bits+2)x(bits+2) uint8 bitmap (one pixel per cell, 1-cell black border)."""
    d = cv2.aruco.getPredefinedDictionary(ARUCO_DICTS[dictionary])
    cells = d.markerSize + 2
    return cv2.aruco.generateImageMarker(d, int(marker_id), cells, borderBits=1)


def _axis_map(n_out: int, k: float, start_mm: float, size_mm: float, n_src: int,
              lo_mm: float, hi_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Output pixel indices whose centres fall in the item and clip window, and the source index for each."""
    centres_mm = (np.arange(n_out) + 0.5) / k
    u = (centres_mm - start_mm) / size_mm
    ok = (u >= 0) & (u < 1) & (centres_mm >= lo_mm) & (centres_mm < hi_mm)
    idx = np.nonzero(ok)[0]
    src = np.minimum((u[idx] * n_src).astype(np.int64), n_src - 1)
    return idx, src


def _blit(canvas: np.ndarray, k: float, x: float, y: float, w: float, h: float, src: np.ndarray,
          clip: tuple[float, float, float, float] | None = None) -> None:
    """Nearest-neighbour placement by pixel centres (area-averaged first when the source is finer)."""
    H, W = canvas.shape[:2]
    tw, th = max(1, round(w * k)), max(1, round(h * k))
    if src.shape[1] > tw or src.shape[0] > th:
        src = cv2.resize(src, (min(tw, src.shape[1]), min(th, src.shape[0])), interpolation=cv2.INTER_AREA)
    cx0, cy0, cx1, cy1 = (0.0, 0.0, W / k, H / k) if clip is None else (
        clip[0], clip[1], clip[0] + clip[2], clip[1] + clip[3])
    cols, scol = _axis_map(W, k, x, w, src.shape[1], cx0, cx1)
    rows, srow = _axis_map(H, k, y, h, src.shape[0], cy0, cy1)
    if len(cols) and len(rows):
        patch = src[srow][:, scol]
        if patch.ndim == 2:
            patch = patch[..., None]
        canvas[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = patch


def render_page_rgb(page: Page, dpi: float) -> np.ndarray:
    """Rasterise a page at ``dpi`` into an HxWx3 uint8 RGB array (white paper)."""
    k = check_dpi(dpi) / 25.4
    W, H = round(page.width_mm * k), round(page.height_mm * k)
    if W * H > 400e6:
        raise ConfigError(f"a {page.width_mm:.0f} x {page.height_mm:.0f} mm page at {dpi} dpi is "
                          f"{W} x {H} px; lower the dpi")
    canvas = np.full((H, W, 3), 255, np.uint8)
    for it in page.items:
        if isinstance(it, ImageItem):
            _blit(canvas, k, it.x, it.y, it.w, it.h, it.rgb, it.clip)
        elif isinstance(it, MarkerItem):
            bmp = marker_bitmap(it.marker_id, it.dictionary)
            _blit(canvas, k, it.x, it.y, it.size, it.size, np.repeat(bmp[..., None], 3, axis=2))
        elif isinstance(it, RectItem):
            _blit(canvas, k, it.x, it.y, it.w, it.h, np.array(it.fill, np.uint8).reshape(1, 1, 3))
        elif isinstance(it, LineItem):
            pts = np.round((np.asarray(it.points, np.float64) * k - 0.5) * 16).astype(np.int32)
            thick = max(1, round(it.width_mm * k))
            color = tuple(int(c) for c in it.color)
            if it.dash_mm > 0:
                segs = _dash_segments(np.asarray(it.points, np.float64), it.closed, it.dash_mm)
                for a, b in segs:
                    pa = tuple(int(v) for v in np.round((a * k - 0.5) * 16))
                    pb = tuple(int(v) for v in np.round((b * k - 0.5) * 16))
                    cv2.line(canvas, pa, pb, color, thick, cv2.LINE_AA, shift=4)
            else:
                cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], it.closed, color, thick, cv2.LINE_AA, shift=4)
        elif isinstance(it, TextItem):
            scale = it.size_mm * k / 22.0  # Hershey simplex cap height ~22 px at scale 1
            thick = max(1, round(scale * 1.5))
            cv2.putText(canvas, it.text, (round(it.x * k), round(it.y * k)), cv2.FONT_HERSHEY_SIMPLEX,
                        scale, (0, 0, 0), thick, cv2.LINE_AA)
    return canvas


def _dash_segments(pts: np.ndarray, closed: bool, dash: float) -> list[tuple[np.ndarray, np.ndarray]]:
    if closed:
        pts = np.vstack([pts, pts[:1]])
    out = []
    for a, b in zip(pts[:-1], pts[1:]):
        length = float(np.hypot(*(b - a)))
        n = max(1, int(length // dash))
        for i in range(0, n, 2):
            t0, t1 = i * dash / length, min(1.0, (i + 1) * dash / length)
            out.append((a + (b - a) * t0, a + (b - a) * t1))
    return out


def render_pdf(pages: list[Page], title: str = "testbed printout") -> bytes:
    """The pages as a PDF (fpdf2, unit mm); images embedded losslessly as PNG/Flate at native resolution."""
    from fpdf import FPDF
    from PIL import Image

    pdf = FPDF(unit="mm", format=(pages[0].width_mm, pages[0].height_mm))
    pdf.set_auto_page_break(False)
    pdf.set_margins(0, 0, 0)
    pdf.set_title(title)
    pdf.set_creator("physical-testbed printouts")
    marker_cache: dict[tuple[int, str], Image.Image] = {}
    for page in pages:
        pdf.add_page(format=(page.width_mm, page.height_mm))
        for it in page.items:
            if isinstance(it, ImageItem):
                img = Image.fromarray(np.ascontiguousarray(it.rgb), mode="RGB")
                if it.clip is not None:
                    with pdf.rect_clip(*it.clip):
                        pdf.image(img, x=it.x, y=it.y, w=it.w, h=it.h)
                else:
                    pdf.image(img, x=it.x, y=it.y, w=it.w, h=it.h)
            elif isinstance(it, MarkerItem):
                key = (it.marker_id, it.dictionary)
                if key not in marker_cache:
                    bmp = marker_bitmap(it.marker_id, it.dictionary)
                    bmp = np.kron(bmp, np.ones((20, 20), np.uint8))  # crisp cells even if a viewer smooths
                    marker_cache[key] = Image.fromarray(np.repeat(bmp[..., None], 3, axis=2), mode="RGB")
                pdf.image(marker_cache[key], x=it.x, y=it.y, w=it.size, h=it.size)
            elif isinstance(it, RectItem):
                pdf.set_fill_color(*it.fill)
                pdf.rect(it.x, it.y, it.w, it.h, style="F")
            elif isinstance(it, LineItem):
                pdf.set_draw_color(*it.color)
                pdf.set_line_width(it.width_mm)
                pdf.set_dash_pattern(dash=it.dash_mm, gap=it.dash_mm) if it.dash_mm > 0 else pdf.set_dash_pattern()
                pdf.polyline([tuple(map(float, p)) for p in it.points], polygon=it.closed, style="D")
                pdf.set_dash_pattern()
            elif isinstance(it, TextItem):
                pdf.set_font("helvetica", size=it.size_mm / 0.3528 / 0.72)  # cap height ~0.72 em
                pdf.set_text_color(0, 0, 0)
                pdf.text(it.x, it.y, it.text)
    return bytes(pdf.output())


# ------------------------------------------------------------------------------------------ helpers
def _to_rgb_uint8(image: torch.Tensor | np.ndarray, name: str = "image") -> np.ndarray:
    """A 1x3xHxW / 3xHxW float tensor in [0, 1] as HxWx3 uint8 RGB."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise ImageError(f"{name} must be a torch.Tensor (1x3xHxW RGB in [0, 1]), got {type(image).__name__}")
    x = image.detach().float().cpu()
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ImageError(f"{name}: expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ImageError(f"{name} must be 1x3xHxW or 3xHxW RGB, got shape {tuple(image.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ImageError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _to_mask(mask: torch.Tensor | np.ndarray, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = np.squeeze(m)
    if m.ndim != 2:
        raise ImageError(f"{name} must be HxW (or 1x1xHxW), got shape {tuple(np.shape(mask))}")
    if m.shape != shape:
        raise ImageError(f"{name} is {m.shape[0]}x{m.shape[1]} but the image is {shape[0]}x{shape[1]}")
    return m > 0.5


def _image_hash(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def default_marker_mm(w: float, h: float) -> float:
    return float(min(40.0, max(20.0, 0.15 * max(w, h))))


def _marker_frame(cfg: SheetConfig, w: float, h: float) -> tuple[float, float, list[dict[str, Any]]]:
    """Marker size, border width and the 4 markers (TL, TR, BR, BL) in object mm coordinates."""
    s = cfg.marker_mm if cfg.marker_mm is not None else default_marker_mm(w, h)
    g = cfg.marker_gap_mm
    b = s + g
    origins = [(-b, -b), (w + g, -b), (w + g, h + g), (-b, h + g)]
    markers = []
    for i, (mx, my) in enumerate(origins):
        corners = [[mx, my], [mx + s, my], [mx + s, my + s], [mx, my + s]]
        markers.append({"id": cfg.marker_id_base + i, "corners_mm": corners, "size_mm": s})
    return s, b, markers


def _content_area(page_w: float, page_h: float, cfg: SheetConfig) -> tuple[float, float, float, float]:
    m = cfg.margin_mm
    return (m, m + HEADER_MM, page_w - 2 * m, page_h - 2 * m - HEADER_MM - FOOTER_MM)


def _choose_page(cfg: SheetConfig, need_w: float, need_h: float, what: str) -> tuple[float, float]:
    """Portrait or landscape page on which a need_w x need_h mm block fits, else ConfigError."""
    pw, ph = page_size_mm(cfg.page)
    for w, h in ((pw, ph), (ph, pw)):
        _, _, cw, ch = _content_area(w, h, cfg)
        if need_w <= cw + 1e-9 and need_h <= ch + 1e-9:
            return w, h
    _, _, cw, ch = _content_area(pw, ph, cfg)
    raise ConfigError(
        f"{what} needs {need_w:.1f} x {need_h:.1f} mm (object plus fiducial border) but page {cfg.page!r} "
        f"({pw:g} x {ph:g} mm, {cfg.margin_mm:g} mm margins) has a printable area of {cw:.1f} x {ch:.1f} mm "
        "in either orientation; use a larger page, a smaller object, or the tiled `poster` sheet")


def _decorate(page: Page, cfg: SheetConfig, title: str) -> None:
    """Title line and a 100 mm (or 50 mm) scale bar for checking the print scale."""
    m = cfg.margin_mm
    page.items.append(TextItem(m, m + 4.0, title[:120], 3.0))
    bar = 100.0 if page.width_mm - 2 * m >= 110 else 50.0
    y = page.height_mm - m - 3.0
    page.items.append(LineItem([(m, y), (m + bar, y)], width_mm=0.3, color=MARK_COLOR))
    for t in range(0, int(bar) + 1, 10):
        tick = 3.0 if t % 50 == 0 else 1.5
        page.items.append(LineItem([(m + t, y), (m + t, y - tick)], width_mm=0.2, color=MARK_COLOR))
    page.items.append(TextItem(m + bar + 3.0, y, f"{bar:.0f} mm: measure to check 100 % print scale", 2.2))
    if cfg.run:  # small print above the scale bar: which run this sheet comes from
        page.items.append(TextItem(m, y - 4.5, run_footnote(cfg.run)[:150], 1.8))


def run_footnote(run: dict[str, Any]) -> str:
    """'run 1a2b3c4d | patch | model M | target T | 2026-12-06 | seed 0' from a run provenance dict."""
    parts = [f"run {run.get('run_id', '?')}", str(run.get("kind") or "run")]
    if run.get("model"):
        parts.append(f"model {run['model']}")
    if run.get("target"):
        parts.append(f"target {run['target']}")
    if run.get("date"):
        parts.append(str(run["date"]))
    parts.append(f"seed {run['seed']}" if run.get("seed") is not None else "seed ?")
    return " | ".join(parts)


def _place_object(page: Page, cfg: SheetConfig, ox: float, oy: float, w: float, h: float,
                  markers: list[dict[str, Any]]) -> None:
    for mk in markers:
        x, y = mk["corners_mm"][0]
        page.items.append(MarkerItem(ox + x, oy + y, mk["size_mm"], mk["id"], cfg.marker_dict))


def _object_record(name: str, kind: str, page: int | None, ox: float, oy: float, w: float, h: float,
                   width_px: int, height_px: int, cfg: SheetConfig, markers: list[dict[str, Any]],
                   **extra: Any) -> dict[str, Any]:
    rec = {"name": name, "kind": kind, "page": page, "x_mm": ox, "y_mm": oy, "width_mm": w, "height_mm": h,
           "width_px": int(width_px), "height_px": int(height_px), "dictionary": cfg.marker_dict,
           "markers": markers}
    rec.update(extra)
    return rec


def _single_object_sheet(kind: str, rgb: np.ndarray, w: float, h: float, cfg: SheetConfig,
                         cut_lines: list[list[tuple[float, float]]], params: dict[str, Any],
                         extra_items: list[Item] | None = None, **record_extra: Any) -> Sheet:
    """One object centred in the content area of one page with 4 markers around it."""
    _, b, markers = _marker_frame(cfg, w, h)
    pw, ph = _choose_page(cfg, w + 2 * b, h + 2 * b, f"{kind} of {w:.1f} x {h:.1f} mm")
    cx, cy, cw, ch = _content_area(pw, ph, cfg)
    ox, oy = cx + (cw - w) / 2, cy + (ch - h) / 2
    page = Page(pw, ph)
    _decorate(page, cfg, cfg.title or f"{kind} {w:.1f} x {h:.1f} mm @ true size - do not scale")
    if rgb is not None:
        page.items.append(ImageItem(ox, oy, w, h, rgb))
    for it in extra_items or []:
        _shift_item(it, ox, oy)
        page.items.append(it)
    for line in cut_lines:
        page.items.append(LineItem([(ox + x, oy + y) for x, y in line], closed=True))
    _place_object(page, cfg, ox, oy, w, h, markers)
    px_h, px_w = (rgb.shape[:2] if rgb is not None else (round(h * 4), round(w * 4)))
    obj = _object_record(kind, kind, 0, ox, oy, w, h, px_w, px_h, cfg, markers, **record_extra)
    return Sheet(kind, cfg, [page], [obj], params)


def _shift_item(it: Item, dx: float, dy: float) -> None:
    if isinstance(it, LineItem):
        it.points = [(x + dx, y + dy) for x, y in it.points]
    else:
        it.x += dx
        it.y += dy


def _size_from(rgb: np.ndarray, width_mm: float | None, height_mm: float | None) -> tuple[float, float]:
    H, W = rgb.shape[:2]
    if width_mm is None and height_mm is None:
        raise ConfigError("give the printed size: width_mm and/or height_mm")
    if width_mm is not None:
        w = _positive("width_mm", width_mm)
        h = _positive("height_mm", height_mm) if height_mm is not None else w * H / W
    else:
        h = _positive("height_mm", height_mm)
        w = h * W / H
    return w, h


# ------------------------------------------------------------------------------------------- sheets
def patch_sheet(image: torch.Tensor, width_mm: float | None = None, height_mm: float | None = None,
                config: SheetConfig | None = None, mask: torch.Tensor | np.ndarray | None = None) -> Sheet:
    """An adversarial patch at ``width_mm`` (aspect kept unless ``height_mm`` is given).

    Without ``mask`` (or with an all-ones one) the patch is its full rectangle with a rectangular cut line and
    is embedded at its own resolution. With a mask (HxW or 1x1xHxW in [0, 1], soft edges allowed, e.g. the
    anti-aliased disc of a circular patch) the printing edge is the mask's 0.5 level after bilinear upsampling
    (:func:`mask_edge`): inside it the perturbation's pixels (nearest-neighbour, exact colours), outside paper
    white, and the cut line is that edge's outline.
    """
    cfg = (config or SheetConfig()).validate()
    rgb = _to_rgb_uint8(image)
    w, h = _size_from(rgb, width_mm, height_mm)
    params: dict[str, Any] = {"width_mm": w, "height_mm": h}
    soft = None if mask is None else _to_soft_mask(mask, rgb.shape[:2])
    if soft is None or bool((soft >= 0.5).all()):
        cut = [[(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]]
        sheet = _single_object_sheet("patch", rgb, w, h, cfg, cut, params)
        sheet.image_sha256 = _image_hash(rgb) if soft is None else _image_hash(rgb, soft)
        return sheet
    up = _edge_upsampling(rgb.shape[:2], w)
    edge = mask_edge(soft, up)
    if not edge.any():
        raise ImageError("patch mask is empty (no value >= 0.5): nothing to print")
    big = np.repeat(np.repeat(rgb, up, 0), up, 1)
    big[~edge] = 255
    cut = _mask_contours_mm(edge, w / edge.shape[1], up=1)
    params.update({"mask": True, "edge": edge_method(soft), "edge_px_per_source_px": up, "edge_mm_per_px": w / edge.shape[1]})
    sheet = _single_object_sheet("patch", big, w, h, cfg, cut, params, masked=True)
    sheet.objects[0]["width_px"], sheet.objects[0]["height_px"] = rgb.shape[1], rgb.shape[0]
    sheet.image_sha256 = _image_hash(rgb, soft)
    return sheet


EDGE_MM = 0.1  # target resolution of a masked patch's printing edge and cut line
MAX_EDGE_PX = 4096  # longest side of the upsampled masked patch


def _edge_upsampling(shape: tuple[int, int], width_mm: float) -> int:
    """Integer factor taking the perturbation to about EDGE_MM per pixel (1..MAX_EDGE_PX / longest side)."""
    H, W = shape
    want = math.ceil(width_mm / W / EDGE_MM)
    return int(max(1, min(want, MAX_EDGE_PX // max(H, W))))


def _to_soft_mask(mask: torch.Tensor | np.ndarray, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    """An HxW float mask in [0, 1] (soft edges kept) of the image's size."""
    m = mask.detach().float().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask, np.float32)
    m = np.squeeze(m)
    if m.ndim != 2:
        raise ImageError(f"{name} must be HxW (or 1x1xHxW), got shape {tuple(np.shape(mask))}")
    if m.shape != shape:
        raise ImageError(f"{name} is {m.shape[0]}x{m.shape[1]} but the image is {shape[0]}x{shape[1]}")
    if not np.isfinite(m).all() or m.min() < -1e-6 or m.max() > 1 + 1e-6:
        raise ImageError(f"{name} must lie in [0, 1]")
    return m.astype(np.float32)


def _disc_mask(size: int) -> np.ndarray:
    """The circular patch attack's anti-aliased disc (``physical.universal.circle_mask``) as HxW float."""
    ax = np.arange(size, dtype=np.float32) - (size - 1) / 2
    return np.clip(size / 2 - np.hypot(ax[:, None], ax[None, :]) + 0.5, 0.0, 1.0)


def edge_method(mask: np.ndarray) -> str:
    """How a mask's printing edge is drawn: 'disc' (the circular patch's anti-aliased disc, to 2/255), 'pixel'
    (a hard 0/1 mask: its pixel edges) or 'bilinear' (a soft mask: the 0.5 level of its bilinear upsampling)."""
    m = np.asarray(mask)
    if m.shape[0] == m.shape[1] and np.abs(m - _disc_mask(m.shape[0])).max() <= 2.0 / 255.0:
        return "disc"
    if bool((np.minimum(m, 1.0 - m) <= 1.0 / 255.0).all()):
        return "pixel"
    return "bilinear"


def mask_edge(mask: np.ndarray, up: int) -> np.ndarray:
    """The printing region of an HxW mask in [0, 1] at ``up`` x its resolution, (H*up)x(W*up) bool, drawn as
    :func:`edge_method` says: the circular patch's disc as the exact circle of radius size/2 (its 0.5 level); a hard
    0/1 mask along its pixel edges (corners stay square); any other soft mask as the 0.5 level of its bilinear
    upsampling (pixel centres, ``align_corners=False``, one pixel of linear extrapolation at the border)."""
    import torch.nn.functional as F

    method = edge_method(mask)
    m = np.asarray(mask)
    H = m.shape[0]
    if method == "disc":
        # the circular patch's own anti-aliased disc (physical.universal.circle_mask): its 0.5 level is exactly
        # the circle of radius size/2 about the image centre, drawn here at full resolution
        c = (np.arange(H * up) + 0.5) / up - H / 2
        return np.hypot(c[:, None], c[None, :]) <= H / 2
    if up <= 1 or method == "pixel":  # a hard mask: its pixel edges exactly
        return np.repeat(np.repeat(m >= 0.5, up, 0), up, 1)
    # one pixel of linear extrapolation around the mask (not edge replication): a disc that reaches the image's
    # border keeps its round edge between the last pixel centres and the border
    padded = np.clip(np.pad(np.asarray(mask, np.float32), 1, mode="reflect", reflect_type="odd"), 0.0, 1.0)
    t = torch.from_numpy(np.ascontiguousarray(padded))[None, None]
    big = F.interpolate(t, scale_factor=up, mode="bilinear", align_corners=False)[0, 0, up:-up, up:-up]
    return big.numpy() >= 0.5


def _mask_contours_mm(mask: np.ndarray, mm_per_px: float, up: int = 4) -> list[list[tuple[float, float]]]:
    """Outer and hole boundaries of a pixel mask (on pixel edges) as closed polylines in mm."""
    big = np.kron(mask.astype(np.uint8), np.ones((up, up), np.uint8))
    big = np.pad(big, 1)
    contours, _ = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    lines = []
    for c in contours:
        if len(c) < 3:
            continue
        pts = (c[:, 0, :].astype(np.float64) - 1 + 0.5) / up * mm_per_px
        lines.append([(float(x), float(y)) for x, y in pts])
    return lines


def glasses_sheet(image: torch.Tensor, mask: torch.Tensor | np.ndarray | None = None, width_mm: float = 140.0,
                  config: SheetConfig | None = None) -> Sheet:
    """An eyeglass-frame template at real face scale (default 140 mm wide), cut lines along the mask (default: the
    eyeglass attack's frame fitted to the image, ``physical.eyeglass.fitted_frame_mask``)."""
    cfg = (config or SheetConfig()).validate()
    rgb = _to_rgb_uint8(image)
    H, W = rgb.shape[:2]
    if mask is None:  # the attack's own frame shape, fitted to the image (physical.eyeglass: the one frame mask)
        from physical.eyeglass import fitted_frame_mask

        m = fitted_frame_mask(H, W)[0, 0].numpy() >= 0.5
    else:
        m = _to_mask(mask, (H, W))
    if not m.any():
        raise ImageError("eyeglass mask is empty: nothing to print")
    w, h = _size_from(rgb, width_mm, None)
    masked = rgb.copy()
    masked[~m] = 255
    cut = _mask_contours_mm(m, w / W)
    sheet = _single_object_sheet("glasses", masked, w, h, cfg, cut, {"width_mm": w, "height_mm": h})
    sheet.image_sha256 = _image_hash(rgb, m)
    return sheet


def sticker_sheet(image: torch.Tensor, mask: torch.Tensor | np.ndarray, sign_width_mm: float,
                  config: SheetConfig | None = None, spacing_mm: float = 5.0, min_area_px: int = 4, *,
                  sign_box_px: Sequence[float] | None = None, sign_alpha: torch.Tensor | np.ndarray | None = None,
                  guide: bool = True, split: bool = False) -> Sheet:
    """Stickers cut from a sign-sized perturbation: each connected mask region at true scale, with cut lines, and a
    placement guide.

    ``image`` shows the sign; ``mask`` marks the sticker pixels. The sign spans ``sign_box_px`` = (x0, y0, x1, y1)
    of the image (pixel edges; default: the whole image), ``sign_width_mm`` wide: that fixes the millimetres per
    pixel, and every sticker position is measured from the box's top-left corner. Stickers are packed onto as many
    pages as needed; the sidecar records where each goes on the sign (mm from top-left). With ``guide`` a last page
    draws the sign's outline (``sign_alpha``, the sign's own area in the image, > 0.5; default: its box) to scale
    with each sticker in place, numbered, and a table of positions and sizes in mm. Stickers are the 4-connected
    regions of the mask (two squares touching at a corner are two stickers); with ``split`` a region larger than the
    page's free area is cut into page-sized pieces along a pixel grid, each placed by its own position.
    """
    cfg = (config or SheetConfig()).validate()
    rgb = _to_rgb_uint8(image)
    H, W = rgb.shape[:2]
    m = _to_mask(mask, (H, W))
    bx0, by0, bx1, by1 = _sign_box(sign_box_px, W, H)
    mm = _positive("sign_width_mm", sign_width_mm) / (bx1 - bx0)
    _positive("spacing_mm", spacing_mm)
    outline_mask = None if sign_alpha is None else _to_mask(sign_alpha, (H, W), "sign alpha")
    label_h = 4.0
    pw, ph = page_size_mm(cfg.page)
    # markers sized for the page, not the sign
    s_mk = cfg.marker_mm if cfg.marker_mm is not None else 15.0
    b = s_mk + cfg.marker_gap_mm
    tile = None
    if split:  # pieces no larger than the portrait page's free area, cut along a grid of whole pixels
        _, _, cw0, ch0 = _content_area(pw, ph, cfg)
        tile = (max(1, int((cw0 - 2 * b) / mm)), max(1, int((ch0 - 2 * b - label_h) / mm)))
    stickers = []
    for x, y, comp in _sticker_regions(m, min_area_px, tile):
        bh, bw = comp.shape
        crop = rgb[y:y + bh, x:x + bw].copy()
        crop[~comp] = 255
        stickers.append({"crop": crop, "comp": comp, "sign_x_mm": (x - bx0) * mm, "sign_y_mm": (y - by0) * mm,
                         "w": bw * mm, "h": bh * mm})
    if not stickers:
        raise ImageError(f"sticker mask has no region of at least {min_area_px} px: nothing to print")
    for i, s in enumerate(stickers):
        s["index"] = i + 1
    for pw, ph in ((pw, ph), (ph, pw)):
        cx, cy, cw, ch = _content_area(pw, ph, cfg)
        avail_w, avail_h = cw - 2 * b, ch - 2 * b
        if all(s["w"] <= avail_w and s["h"] + label_h <= avail_h for s in stickers):
            break
    else:
        big = max(stickers, key=lambda s: s["w"] * s["h"])
        raise ConfigError(
            f"sticker #{big['index']} is {big['w']:.1f} x {big['h']:.1f} mm at a sign width of {sign_width_mm:g} mm "
            f"and does not fit the printable area of page {cfg.page!r} (minus {b:.0f} mm fiducial border) in "
            "either orientation; use a larger page, split=True (CLI: the default) or the tiled `poster` sheet")
    # shelf packing, tallest first
    order = sorted(stickers, key=lambda s: -s["h"])
    pages_pack: list[list[dict]] = [[]]
    x = y = shelf_h = 0.0
    for s in order:
        if x > 0 and x + s["w"] > avail_w:
            x, y, shelf_h = 0.0, y + shelf_h + spacing_mm, 0.0
        if y + s["h"] + label_h > avail_h:
            pages_pack.append([])
            x = y = shelf_h = 0.0
        s["px"], s["py"] = x, y + label_h
        pages_pack[-1].append(s)
        x += s["w"] + spacing_mm
        shelf_h = max(shelf_h, s["h"] + label_h)
    pages, objects = [], []
    for pi, group in enumerate(pages_pack):
        bw_ = max(s["px"] + s["w"] for s in group)
        bh_ = max(s["py"] + s["h"] for s in group)
        _, b, markers = _marker_frame(SheetConfig(**{**asdict(cfg), "marker_mm": s_mk}), bw_, bh_)
        ox, oy = cx + (cw - bw_) / 2, cy + (ch - bh_) / 2
        page = Page(pw, ph)
        _decorate(page, cfg, cfg.title or f"stickers p{pi + 1}/{len(pages_pack)} for a {sign_width_mm:g} mm sign"
                  " @ true size - do not scale")
        block_px_per_mm = 1.0 / mm
        block = np.full((max(1, round(bh_ * block_px_per_mm)), max(1, round(bw_ * block_px_per_mm)), 3), 255,
                        np.uint8)
        recs = []
        for s in group:
            page.items.append(ImageItem(ox + s["px"], oy + s["py"], s["w"], s["h"], s["crop"]))
            for line in _mask_contours_mm(s["comp"], mm):
                page.items.append(LineItem([(ox + s["px"] + a, oy + s["py"] + c) for a, c in line], closed=True))
            page.items.append(TextItem(ox + s["px"], oy + s["py"] - 1.0,
                                       f"#{s['index']} @ ({s['sign_x_mm']:.0f},{s['sign_y_mm']:.0f}) mm", 2.0))
            r0, c0 = round(s["py"] * block_px_per_mm), round(s["px"] * block_px_per_mm)
            hh = min(s["crop"].shape[0], block.shape[0] - r0)
            ww = min(s["crop"].shape[1], block.shape[1] - c0)
            comp = s["comp"][:hh, :ww]
            block[r0:r0 + hh, c0:c0 + ww][comp] = s["crop"][:hh, :ww][comp]
            recs.append({"index": s["index"], "sign_x_mm": s["sign_x_mm"], "sign_y_mm": s["sign_y_mm"],
                         "width_mm": s["w"], "height_mm": s["h"], "x_mm": s["px"], "y_mm": s["py"]})
        _place_object(page, cfg, ox, oy, bw_, bh_, markers)
        pages.append(page)
        objects.append(_object_record(f"stickers_p{pi + 1}", "stickers", pi, ox, oy, bw_, bh_, block.shape[1],
                                      block.shape[0], cfg, markers, stickers=sorted(recs, key=lambda r: r["index"])))
    sign_mm = ((bx1 - bx0) * mm, (by1 - by0) * mm)
    params = {"sign_width_mm": float(sign_width_mm), "spacing_mm": spacing_mm, "n_stickers": len(stickers),
              "sign_box_px": [bx0, by0, bx1, by1], "sign_height_mm": sign_mm[1], "mm_per_px": mm}
    if guide:
        pages.append(_placement_guide(cfg, pages[0].width_mm, pages[0].height_mm, stickers, mm, (bx0, by0),
                                      sign_mm, outline_mask))
        params["guide_page"] = len(pages) - 1
    sheet = Sheet("stickers", cfg, pages, objects, params)
    sheet.image_sha256 = _image_hash(rgb, m) if outline_mask is None else _image_hash(rgb, m, outline_mask)
    return sheet


def _sticker_regions(m: np.ndarray, min_area_px: int, tile: tuple[int, int] | None
                     ) -> list[tuple[int, int, np.ndarray]]:
    """(x, y, region mask of its bounding box) for each 4-connected region of ``m`` of at least ``min_area_px``
    pixels; with ``tile`` = (w, h) pixels, each region cut by a grid of that cell size first."""
    grids = [(0, 0, m)]
    if tile is not None:
        tw, th = tile
        grids = [(x, y, m[y:y + th, x:x + tw]) for y in range(0, m.shape[0], th) for x in range(0, m.shape[1], tw)]
    out = []
    for gx, gy, part in grids:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(part.astype(np.uint8), connectivity=4)
        for lab in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[lab])
            if area >= min_area_px:
                out.append((gx + x, gy + y, labels[y:y + bh, x:x + bw] == lab))
    return sorted(out, key=lambda r: (r[1], r[0]))


def _sign_box(box: Sequence[float] | None, W: int, H: int) -> tuple[float, float, float, float]:
    """The sign's extent (x0, y0, x1, y1) in image pixels, checked; None: the whole image."""
    if box is None:
        return 0.0, 0.0, float(W), float(H)
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ConfigError(f"sign box must be four numbers x0, y0, x1, y1 (image pixels), got {box!r}") from None
    if not (all(math.isfinite(v) for v in (x0, y0, x1, y1)) and -W <= x0 < x1 <= 2 * W and -H <= y0 < y1 <= 2 * H):
        raise ConfigError(f"sign box {box!r} must satisfy x0 < x1, y0 < y1 near the {W}x{H} image")
    return x0, y0, x1, y1


GUIDE_ROW_MM = 3.6  # line spacing of the placement guide's table


def _placement_guide(cfg: SheetConfig, pw: float, ph: float, stickers: list[dict[str, Any]], mm: float,
                     origin_px: tuple[float, float], sign_mm: tuple[float, float],
                     outline: np.ndarray | None) -> Page:
    """The placement guide: the sign (its outline, else its box) drawn to scale with every sticker in place and
    numbered, its width and height, and a table of each sticker's position (from the sign's top-left) and size."""
    page = Page(pw, ph)
    sw, sh = sign_mm
    n = len(stickers)
    cx, cy, cw, ch = _content_area(pw, ph, cfg)
    col_w = 78.0
    cols = max(1, int(cw // col_w))
    rows = math.ceil(n / cols)
    table_h = (rows + 1) * GUIDE_ROW_MM
    draw_h = ch - table_h - 14.0
    if draw_h < 40.0:  # too many stickers for one page: keep the drawing, list the first rows that fit
        draw_h = 40.0
        rows = max(1, int((ch - draw_h - 14.0) // GUIDE_ROW_MM) - 1)
    k = min((cw - 16.0) / sw, draw_h / sh)  # page mm per sign mm
    ox, oy = cx + 12.0 + (cw - 16.0 - sw * k) / 2, cy + 6.0
    _decorate(page, cfg, cfg.title or f"placement guide: {sw:.0f} x {sh:.0f} mm sign at 1:{1 / k:.3g}; "
              "positions in mm from its top-left")
    box = [(ox, oy), (ox + sw * k, oy), (ox + sw * k, oy + sh * k), (ox, oy + sh * k)]
    page.items.append(LineItem(box, closed=True, width_mm=0.15, color=(150, 150, 150), dash_mm=1.5))
    # dimensions: width above the drawing, height to its left
    page.items.append(LineItem([(ox, oy - 2.0), (ox + sw * k, oy - 2.0)], width_mm=0.15, color=MARK_COLOR))
    page.items.append(TextItem(ox + sw * k / 2 - 6.0, oy - 3.0, f"{sw:.0f} mm", 2.2))
    page.items.append(LineItem([(ox - 2.0, oy), (ox - 2.0, oy + sh * k)], width_mm=0.15, color=MARK_COLOR))
    page.items.append(TextItem(ox - 12.0, oy + sh * k / 2, f"{sh:.0f} mm", 2.2))
    for s in stickers:
        x, y = ox + s["sign_x_mm"] * k, oy + s["sign_y_mm"] * k
        page.items.append(ImageItem(x, y, s["w"] * k, s["h"] * k, s["crop"]))
        for line in _mask_contours_mm(s["comp"], mm * k):
            page.items.append(LineItem([(x + a, y + b) for a, b in line], closed=True, width_mm=0.15))
        page.items.append(TextItem(x + s["w"] * k + 0.5, y + 2.0, f"#{s['index']}", 1.8))
    if outline is not None:
        x0, y0 = origin_px
        for line in _mask_contours_mm(outline, mm * k):
            page.items.append(LineItem([(ox + a - x0 * mm * k, oy + b - y0 * mm * k) for a, b in line], closed=True,
                                       width_mm=0.35, color=MARK_COLOR))
    ty = oy + sh * k + 10.0
    page.items.append(TextItem(cx, ty, "#  left, top (mm from the sign's top-left)  width x height (mm)", 2.2))
    shown = stickers[: rows * cols]
    for i, s in enumerate(shown):
        c, r = divmod(i, rows)
        page.items.append(TextItem(cx + c * col_w, ty + (r + 1) * GUIDE_ROW_MM,
                                   f"#{s['index']}  {s['sign_x_mm']:.0f}, {s['sign_y_mm']:.0f}   "
                                   f"{s['w']:.0f} x {s['h']:.0f}", 2.2))
    if len(shown) < n:
        page.items.append(TextItem(cx, ty + (rows + 1) * GUIDE_ROW_MM, f"... {n - len(shown)} more: see the "
                                   "sidecar's 'stickers' records", 2.2))
    return page


def poster_sheet(image: torch.Tensor, width_mm: float = 750.0, height_mm: float | None = None,
                 config: SheetConfig | None = None, overlap_mm: float = 15.0) -> Sheet:
    """A full-size poster (e.g. a 750 mm stop sign) tiled over pages with overlap, trim lines and alignment marks.

    Tiles are laid out row-major. Assemble by trimming each tile's left/top edge along the dashed trim line
    (except first column/row) and laying it over the neighbour so the ``+`` alignment marks coincide.
    """
    cfg = (config or SheetConfig()).validate()
    rgb = _to_rgb_uint8(image)
    w, h = _size_from(rgb, width_mm, height_mm)
    ov = _positive("overlap_mm", overlap_mm)
    _, b, markers = _marker_frame(cfg, w, h)
    pw, ph = page_size_mm(cfg.page)
    if (h > w) != (ph > pw):
        pass  # keep the page orientation the user asked for; tiling handles any aspect
    cx, cy, cw, ch = _content_area(pw, ph, cfg)
    if ov * 2 >= min(cw, ch):
        raise ConfigError(f"overlap_mm {overlap_mm!r} is too large for the {cw:.0f} x {ch:.0f} mm printable area")
    canvas_w, canvas_h = w + 2 * b, h + 2 * b
    step_x, step_y = cw - ov, ch - ov
    n_cols = max(1, math.ceil((canvas_w - ov) / step_x))
    n_rows = max(1, math.ceil((canvas_h - ov) / step_y))
    pages, tiles = [], []
    for r in range(n_rows):
        for c in range(n_cols):
            wx, wy = -b + c * step_x, -b + r * step_y  # window origin in object mm
            ox, oy = cx - wx, cy - wy  # object origin on this page
            page = Page(pw, ph)
            _decorate(page, cfg, cfg.title or f"poster {w:.0f} x {h:.0f} mm - tile row {r + 1}/{n_rows} "
                      f"col {c + 1}/{n_cols} - print at 100 %")
            clip = (cx, cy, cw, ch)
            page.items.append(ImageItem(ox, oy, w, h, rgb, clip=clip))
            for mk in markers:
                mx, my = mk["corners_mm"][0]
                s = mk["size_mm"]
                if mx >= wx - 1e-9 and my >= wy - 1e-9 and mx + s <= wx + cw + 1e-9 and my + s <= wy + ch + 1e-9:
                    page.items.append(MarkerItem(ox + mx, oy + my, s, mk["id"], cfg.marker_dict))
            if c > 0:  # trim line at the start of the overlap on the left
                page.items.append(LineItem([(cx, cy), (cx, cy + ch)], dash_mm=2.0))
            if r > 0:
                page.items.append(LineItem([(cx, cy), (cx + cw, cy)], dash_mm=2.0))
            page.items.append(LineItem([(cx, cy), (cx + cw, cy), (cx + cw, cy + ch), (cx, cy + ch)],
                                       closed=True, width_mm=0.1, color=(160, 160, 160)))
            # alignment marks: at the centre of each overlap band, shared by both neighbouring tiles
            marks = []
            for xm in (cx + ov / 2, cx + cw - ov / 2):
                for frac in (0.25, 0.5, 0.75):
                    marks.append((xm, cy + ch * frac))
            for ym in (cy + ov / 2, cy + ch - ov / 2):
                for frac in (0.25, 0.5, 0.75):
                    marks.append((cx + cw * frac, ym))
            for mx, my in marks:
                page.items.append(LineItem([(mx - 3, my), (mx + 3, my)], width_mm=0.25, color=MARK_COLOR))
                page.items.append(LineItem([(mx, my - 3), (mx, my + 3)], width_mm=0.25, color=MARK_COLOR))
            page.items.append(TextItem(cx + ov + 1, cy + ov + 4, f"R{r + 1}C{c + 1}", 3.0))
            pages.append(page)
            tiles.append({"page": len(pages) - 1, "row": r, "col": c, "window_x_mm": wx, "window_y_mm": wy,
                          "window_w_mm": cw, "window_h_mm": ch, "object_x_mm_on_page": ox,
                          "object_y_mm_on_page": oy})
    obj = _object_record("poster", "poster", None, 0.0, 0.0, w, h, rgb.shape[1], rgb.shape[0], cfg, markers,
                         tiles=tiles, rows=n_rows, cols=n_cols, overlap_mm=ov)
    params = {"width_mm": w, "height_mm": h, "overlap_mm": ov, "rows": n_rows, "cols": n_cols}
    sheet = Sheet("poster", cfg, pages, [obj], params)
    sheet.image_sha256 = _image_hash(rgb)
    return sheet


def default_chart_colors(levels: int = 5) -> np.ndarray:
    """RGB cube with ``levels`` steps per channel plus extra greys, as Nx3 uint8 (125 + 5 for 5 levels)."""
    v = np.round(np.linspace(0, 255, levels)).astype(np.uint8)
    cube = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
    greys = np.round(np.linspace(0, 255, 2 * levels + 1)[1::2]).astype(np.uint8)
    greys = np.stack([greys] * 3, -1)
    return np.concatenate([cube, greys], 0)


def chart_sheet(colors: np.ndarray | torch.Tensor | None = None, patch_mm: float = 10.0, gap_mm: float = 3.0,
                cols: int = 10, config: SheetConfig | None = None, px_per_mm: float = 4.0) -> Sheet:
    """A colour-chart page for measuring the printer: solid patches on white paper, markers around.

    ``colors``: Nx3 RGB (uint8, or float in [0, 1]). Patches are vector fills in the PDF (exact colours);
    the white gaps between patches let ``camera.palette`` correct uneven lighting.
    """
    cfg = (config or SheetConfig(marker_id_base=4)).validate()
    if cfg.marker_mm is None:
        cfg = SheetConfig(**{**asdict(cfg), "marker_mm": 20.0})
    if colors is None:
        cols_u8 = default_chart_colors()
    else:
        c = colors.detach().cpu().numpy() if isinstance(colors, torch.Tensor) else np.asarray(colors)
        if c.ndim != 2 or c.shape[1] != 3 or len(c) == 0:
            raise ConfigError(f"chart colors must be Nx3 RGB, got shape {c.shape}")
        cols_u8 = np.round(c * 255).astype(np.uint8) if c.dtype.kind == "f" else c.astype(np.uint8)
    _positive("patch_mm", patch_mm)
    _positive("gap_mm", gap_mm)
    if cols < 1:
        raise ConfigError(f"cols must be >= 1, got {cols}")
    n = len(cols_u8)
    rows = math.ceil(n / cols)
    w = cols * patch_mm + (cols + 1) * gap_mm
    h = rows * patch_mm + (rows + 1) * gap_mm
    patches, items = [], []
    digital = np.full((round(h * px_per_mm), round(w * px_per_mm), 3), 255, np.uint8)
    for i, rgb in enumerate(cols_u8):
        r, c = divmod(i, cols)
        x, y = gap_mm + c * (patch_mm + gap_mm), gap_mm + r * (patch_mm + gap_mm)
        items.append(RectItem(x, y, patch_mm, patch_mm, tuple(int(v) for v in rgb)))
        patches.append({"index": i, "x_mm": x, "y_mm": y, "w_mm": patch_mm, "h_mm": patch_mm,
                        "rgb": [int(v) for v in rgb]})
        digital[round(y * px_per_mm):round((y + patch_mm) * px_per_mm),
                round(x * px_per_mm):round((x + patch_mm) * px_per_mm)] = rgb
    params = {"patch_mm": patch_mm, "gap_mm": gap_mm, "cols": cols, "rows": rows, "n": n}
    sheet = _single_object_sheet("chart", None, w, h, cfg, [], params, extra_items=items,
                                 patches=patches, gap_mm=gap_mm, patch_mm=patch_mm)
    sheet.objects[0]["width_px"], sheet.objects[0]["height_px"] = digital.shape[1], digital.shape[0]
    sheet.image_sha256 = _image_hash(cols_u8)
    return sheet


def chart_digital(obj: dict[str, Any], px_per_mm: float = 4.0) -> torch.Tensor:
    """The chart's digital frame (what a perfect rectification returns) as a 1x3xHxW tensor."""
    W, H = round(obj["width_mm"] * px_per_mm), round(obj["height_mm"] * px_per_mm)
    img = np.full((H, W, 3), 255, np.uint8)
    for p in obj["patches"]:
        img[round(p["y_mm"] * px_per_mm):round((p["y_mm"] + p["h_mm"]) * px_per_mm),
            round(p["x_mm"] * px_per_mm):round((p["x_mm"] + p["w_mm"]) * px_per_mm)] = p["rgb"]
    return torch.from_numpy(img).permute(2, 0, 1)[None].float().div_(255.0)


def load_perturbation(path: str | Path) -> torch.Tensor:
    """A perturbation from a lossless PNG or a ``.pt`` tensor (1x3xHxW or 3xHxW in [0, 1])."""
    from testbed.imageio import load_image
    from testbed.inputs import MAX_IMAGE_BYTES, check_input_file

    p = Path(path)
    if p.suffix.lower() == ".pt":
        check_input_file(p, what="perturbation file", max_bytes=MAX_IMAGE_BYTES, error=ImageError)
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)  # tensors and plain data only: no code runs
        except Exception as exc:  # noqa: BLE001 - pickle/zip errors of a damaged or foreign file
            raise ImageError(f"perturbation file {p} is not a readable tensor file "
                             f"({' '.join(str(exc).split())[:160]})") from None
        if isinstance(obj, dict):
            for key in ("perturbation", "patch", "delta", "image"):
                if key in obj and isinstance(obj[key], torch.Tensor):
                    obj = obj[key]
                    break
        if not isinstance(obj, torch.Tensor):
            raise ImageError(f"{p} does not hold a tensor (or a dict with 'perturbation'/'patch')")
        if obj.ndim == 3:
            obj = obj[None]
        if obj.ndim != 4 or obj.shape[0] != 1 or obj.shape[1] != 3:
            raise ImageError(f"{p}: a perturbation must be 1x3xHxW or 3xHxW, got shape {tuple(obj.shape)}")
        check_pixels(int(obj.shape[2]), int(obj.shape[3]), what="perturbation file", source=str(p))
        x = obj.float()
        _to_rgb_uint8(x, str(p))
        return x
    return load_image(p, what="perturbation file")


def rasterize_pdf(pdf_path: str | Path, dpi: float, page: int = 0) -> torch.Tensor:
    """Render one page of a PDF with a real PDF renderer (pypdfium2) as a 1x3xHxW RGB tensor in [0, 1]."""
    import pypdfium2 as pdfium

    from testbed.inputs import check_input_file

    check_dpi(dpi)
    p = check_input_file(pdf_path, what="PDF", max_bytes=MAX_PDF_BYTES, error=ImageError)
    try:
        doc = pdfium.PdfDocument(str(p))
    except pdfium.PdfiumError as exc:
        raise ImageError(f"{p} is not a readable PDF: {exc}") from None
    try:
        if not 0 <= page < len(doc):
            raise ImageError(f"{p} has {len(doc)} page(s); page index {page} does not exist")
        w_pt, h_pt = doc[page].get_size()  # refuse a page that would rasterise above the pixel limit
        check_pixels(max(1, math.ceil(w_pt * dpi / 72.0)), max(1, math.ceil(h_pt * dpi / 72.0)),
                     what=f"PDF page {page} at {dpi:g} dpi of", source=str(p))
        bitmap = doc[page].render(scale=dpi / 72.0)
        rgb = np.array(bitmap.to_pil().convert("RGB"))
    finally:
        doc.close()
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)
