"""Find a sheet's ArUco markers in a photo, fit the homography and warp the printed object to its digital frame.

The printout sidecar (``printouts``' JSON) says where each marker's corners are relative to the object in mm;
every detected marker contributes 4 correspondences. Errors say which markers were expected and found, and
when the view is too oblique (estimated tilt from the homography's local anisotropy) or too inconsistent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from camera.sources import bgr_to_tensor, tensor_to_bgr
from testbed.errors import ConfigError, TestbedError


class RectifyError(TestbedError, RuntimeError):
    """A photo could not be rectified to the printed object's frame."""


class MarkersNotFoundError(RectifyError):
    """Too few of the sheet's fiducial markers are visible."""


class TooObliqueError(RectifyError):
    """The printed object is seen at too grazing an angle (or too small) to rectify reliably."""


@dataclass
class ObjectSpec:
    """One rectifiable printed object: its size, digital frame and marker corners (object mm)."""

    name: str
    width_mm: float
    height_mm: float
    width_px: int
    height_px: int
    dictionary: str
    markers: dict[int, np.ndarray]  # id -> 4x2 corners (TL, TR, BR, BL) in object mm
    record: dict[str, Any] = field(default_factory=dict)  # the full sidecar object record

    @staticmethod
    def from_record(rec: dict[str, Any], where: str = "sheet object record") -> "ObjectSpec":
        """An ObjectSpec from a sidecar object record, every field checked (ConfigError names the field)."""
        rec = check_object_record(rec, where)
        markers = {int(m["id"]): np.asarray(m["corners_mm"], np.float64).reshape(4, 2) for m in rec["markers"]}
        return ObjectSpec(str(rec["name"]), float(rec["width_mm"]), float(rec["height_mm"]),
                          int(rec["width_px"]), int(rec["height_px"]), str(rec["dictionary"]), markers, rec)


#: Largest printed object accepted from a sidecar, in mm (a 10 m poster).
MAX_OBJECT_MM = 10_000.0
#: Largest object pixel size accepted from a sidecar (the rectified output is this large).
MAX_OBJECT_PX = 100_000
#: Most markers / chart patches an object record may list.
MAX_RECORD_ITEMS = 100_000


def _num(where: str, rec: dict[str, Any], key: str, *, lo: float | None = None, lo_open: bool = False,
         hi: float | None = None) -> float:
    from testbed.inputs import finite_float

    if key not in rec:
        raise ConfigError(f"{where} has no '{key}'; expected a printouts sidecar")
    return finite_float(f"{where}: '{key}'", rec[key], lo=lo, hi=hi, lo_open=lo_open)


def _items(where: str, rec: dict[str, Any], key: str) -> list[Any]:
    if key not in rec:
        raise ConfigError(f"{where} has no '{key}'; expected a printouts sidecar")
    v = rec[key]
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where}: '{key}' must be a non-empty list, got {type(v).__name__}")
    if len(v) > MAX_RECORD_ITEMS:
        raise ConfigError(f"{where}: '{key}' has {len(v)} entries, more than the limit of {MAX_RECORD_ITEMS}")
    return v


def check_object_record(rec: Any, where: str = "sheet object record") -> dict[str, Any]:
    """Validate one sidecar object record (name, sizes, pixels, dictionary, markers, chart patches)."""
    from testbed.inputs import bounded_int, check_pixels, finite_float

    if not isinstance(rec, dict):
        raise ConfigError(f"{where} must be an object, got {type(rec).__name__}; expected a printouts sidecar")
    if not isinstance(rec.get("name"), str) or not rec.get("name"):
        raise ConfigError(f"{where} has no 'name' (a non-empty string); expected a printouts sidecar")
    where = f"{where} '{rec['name']}'"
    for k in ("width_mm", "height_mm"):
        _num(where, rec, k, lo=0.0, lo_open=True, hi=MAX_OBJECT_MM)
    for k in ("x_mm", "y_mm"):
        if k in rec:
            _num(where, rec, k, lo=-MAX_OBJECT_MM, hi=MAX_OBJECT_MM)
    for k in ("width_px", "height_px"):
        if k not in rec:
            raise ConfigError(f"{where} has no '{k}'; expected a printouts sidecar")
        bounded_int(f"{where}: '{k}'", rec[k], 1, MAX_OBJECT_PX)
    check_pixels(int(rec["width_px"]), int(rec["height_px"]), what=where, source="(width_px x height_px)",
                 error=ConfigError)
    if "page" in rec and rec["page"] is not None:
        bounded_int(f"{where}: 'page'", rec["page"], 0, 10_000)
    if not isinstance(rec.get("dictionary"), str):
        raise ConfigError(f"{where} has no 'dictionary' (an ArUco dictionary name); expected a printouts sidecar")
    if not hasattr(cv2.aruco, rec["dictionary"]) or not rec["dictionary"].startswith("DICT_"):
        raise ConfigError(f"{where}: unknown ArUco dictionary {rec['dictionary'][:40]!r}")
    seen: set[int] = set()
    for i, m in enumerate(_items(where, rec, "markers")):
        mw = f"{where}: markers[{i}]"
        if not isinstance(m, dict) or "id" not in m or "corners_mm" not in m:
            raise ConfigError(f"{mw} must be an object with 'id' and 'corners_mm'")
        mid = bounded_int(f"{mw}: 'id'", m["id"], 0, 2**20)
        if mid in seen:
            raise ConfigError(f"{mw}: marker id {mid} appears twice")
        seen.add(mid)
        c = m["corners_mm"]
        if not (isinstance(c, list) and len(c) == 4 and all(isinstance(q, list) and len(q) == 2 for q in c)):
            raise ConfigError(f"{mw}: 'corners_mm' must be 4 [x, y] points in mm")
        for q in c:
            for v in q:
                finite_float(f"{mw}: 'corners_mm'", v, lo=-2 * MAX_OBJECT_MM, hi=2 * MAX_OBJECT_MM)
    if "patches" in rec:
        _num(where, rec, "gap_mm", lo=0.0, lo_open=True, hi=MAX_OBJECT_MM)
        for i, p in enumerate(_items(where, rec, "patches")):
            pw = f"{where}: patches[{i}]"
            if not isinstance(p, dict):
                raise ConfigError(f"{pw} must be an object, got {type(p).__name__}")
            for k in ("x_mm", "y_mm"):
                _num(pw, p, k, lo=-MAX_OBJECT_MM, hi=MAX_OBJECT_MM)
            for k in ("w_mm", "h_mm"):
                _num(pw, p, k, lo=0.0, lo_open=True, hi=MAX_OBJECT_MM)
            if "index" not in p:
                raise ConfigError(f"{pw} has no 'index'")
            bounded_int(f"{pw}: 'index'", p["index"], 0, MAX_RECORD_ITEMS)
            rgb = p.get("rgb")
            if not (isinstance(rgb, list) and len(rgb) == 3):
                raise ConfigError(f"{pw}: 'rgb' must be 3 whole numbers in [0, 255], got {str(rgb)[:40]}")
            for v in rgb:
                bounded_int(f"{pw}: 'rgb'", v, 0, 255)
    return rec


def load_sheet(path: str | Path, *, need: tuple[str, ...] = ("objects",)) -> dict[str, Any]:
    """A printouts sidecar JSON read through the input boundary, with the keys in ``need`` checked.

    ``need`` may include "objects" (each record checked), "page" (``page.pages`` with positive sizes) and
    "files" (``files.pdf``, a plain file name next to the sidecar, and ``files.pdf_sha256``).
    """
    from testbed.inputs import finite_float, load_json

    p = Path(path)
    where = f"sheet sidecar {p}"
    data = load_json(p, what="sheet sidecar")
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a JSON object, got {type(data).__name__}: not a printouts sidecar")
    if "objects" in need:
        objs = data.get("objects")
        if not objs:
            raise ConfigError(f"{where} has no 'objects': not a printouts sidecar")
        if not isinstance(objs, list):
            raise ConfigError(f"{where}: 'objects' must be a list, got {type(objs).__name__}")
        for i, o in enumerate(objs):
            check_object_record(o, f"{where}: objects[{i}]")
    if "page" in need:
        page = data.get("page")
        if not isinstance(page, dict) or "pages" not in page:
            raise ConfigError(f"{where} has no 'page' with a 'pages' list: not a printouts sidecar")
        pages = page["pages"]
        if not isinstance(pages, list) or not pages:
            raise ConfigError(f"{where}: 'page.pages' must be a non-empty list of page sizes")
        for i, pg in enumerate(pages):
            if not isinstance(pg, dict) or "width_mm" not in pg or "height_mm" not in pg:
                raise ConfigError(f"{where}: page.pages[{i}] must have 'width_mm' and 'height_mm'")
            for k in ("width_mm", "height_mm"):
                finite_float(f"{where}: page.pages[{i}].{k}", pg[k], lo=0.0, lo_open=True, hi=MAX_OBJECT_MM)
    if "files" in need:
        files = data.get("files")
        if not isinstance(files, dict) or not isinstance(files.get("pdf"), str) or not files["pdf"]:
            raise ConfigError(f"{where} has no 'files.pdf' (the PDF it describes): not a printouts sidecar")
        name = files["pdf"]
        if Path(name).name != name or name in (".", "..") or "\\" in name:
            raise ConfigError(f"{where}: 'files.pdf' must be a file name next to the sidecar, got {name[:80]!r}")
        sha = files.get("pdf_sha256")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise ConfigError(f"{where} has no valid 'files.pdf_sha256': the PDF it describes cannot be checked")
    return data


#: Largest sheet PDF read, in bytes.
MAX_PDF_BYTES = 256 * 2**20


def sheet_pdf(sidecar: str | Path, data: dict[str, Any]) -> Path:
    """The PDF a sidecar describes (``files.pdf`` next to it), refused unless its sha256 matches the sidecar's."""
    import hashlib

    from testbed.inputs import read_bytes

    side = Path(sidecar)
    pdf = side.parent / data["files"]["pdf"]
    blob = read_bytes(pdf, what=f"PDF named by {side}:", max_bytes=MAX_PDF_BYTES)
    digest = hashlib.sha256(blob).hexdigest()
    want = data["files"]["pdf_sha256"]
    if digest != want:
        raise ConfigError(f"{pdf} is not the PDF that sheet sidecar {side} describes: its sha256 is "
                          f"{digest[:12]}..., the sidecar records {want[:12]}...; regenerate the sheet with "
                          "`testbed print` or use the matching sidecar")
    return pdf


def load_object_spec(sidecar: str | Path | dict[str, Any], name: str | None = None) -> ObjectSpec:
    """The object ``name`` (default: the only/first one) from a printouts JSON sidecar (path or dict)."""
    if isinstance(sidecar, dict):
        data, where = sidecar, "sidecar"
        objs = data.get("objects")
        if not objs or not isinstance(objs, list):
            raise ConfigError(f"{where} has no 'objects': not a printouts sidecar")
    else:
        where = str(sidecar)
        data = load_sheet(sidecar)
        objs = data["objects"]
    if name is None:
        return ObjectSpec.from_record(objs[0], f"{where}: objects[0]")
    for i, o in enumerate(objs):
        if isinstance(o, dict) and o.get("name") == name:
            return ObjectSpec.from_record(o, f"{where}: objects[{i}]")
    names = ", ".join(str(o.get("name", "?")) if isinstance(o, dict) else "?" for o in objs)
    raise ConfigError(f"{where} has no object {name!r}; it has {names}")


@dataclass
class DetectedMarker:
    id: int
    corners: np.ndarray  # 4x2 frame px (TL, TR, BR, BL), sub-pixel


def detect_markers(image: torch.Tensor, dictionary: str = "DICT_4X4_50") -> list[DetectedMarker]:
    """All ArUco markers of ``dictionary`` in a 1x3xHxW RGB image, with sub-pixel corners."""
    return _detect(tensor_to_bgr(image), dictionary)


def _detect(bgr: np.ndarray, dictionary: str) -> list[DetectedMarker]:
    if not hasattr(cv2.aruco, dictionary):
        raise ConfigError(f"unknown ArUco dictionary {dictionary!r}")
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    aruco_dict = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, dictionary))
    found: dict[int, DetectedMarker] = {}
    # pass 1: OpenCV defaults; pass 2: finer thresholding and a looser polygon fit for blurred/oblique markers
    for variant in range(2):
        params = cv2.aruco.DetectorParameters()
        params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
        params.cornerRefinementWinSize = 5
        params.cornerRefinementMaxIterations = 50
        params.cornerRefinementMinAccuracy = 0.01
        if variant == 1:
            params.adaptiveThreshWinSizeMin = 5
            params.adaptiveThreshWinSizeMax = 45
            params.adaptiveThreshWinSizeStep = 4
            params.polygonalApproxAccuracyRate = 0.06
            params.perspectiveRemovePixelPerCell = 8
            params.minMarkerPerimeterRate = 0.015
        corners, ids, _ = cv2.aruco.ArucoDetector(aruco_dict, params).detectMarkers(gray)
        if ids is not None:
            for i, c in zip(ids.ravel(), corners):
                if int(i) not in found:
                    found[int(i)] = DetectedMarker(int(i), c.reshape(4, 2).astype(np.float64))
        if variant == 0 and len(found) >= 4:
            break
    return list(found.values())


@dataclass
class Rectified:
    """A rectified view: the object in its digital frame plus how it was found."""

    image: torch.Tensor  # 1x3xHxW RGB in [0, 1], the object's digital frame
    homography: np.ndarray  # object mm -> frame px
    object_corners_px: np.ndarray  # 4x2: where the object's TL, TR, BR, BL corners are in the frame
    markers_used: list[int]
    markers_missing: list[int]
    reprojection_error_px: float  # RMS over used marker corners
    tilt_deg: float  # estimated viewing angle from the homography's anisotropy at the object centre
    px_per_mm: float  # frame pixels per mm at the object centre (geometric mean)

    def summary(self) -> dict[str, Any]:
        return {"markers_used": self.markers_used, "markers_missing": self.markers_missing,
                "reprojection_error_px": self.reprojection_error_px, "tilt_deg": self.tilt_deg,
                "px_per_mm": self.px_per_mm, "object_corners_px": self.object_corners_px.tolist(),
                "size_px": [int(self.image.shape[-1]), int(self.image.shape[-2])]}


def _local_jacobian(hom: np.ndarray, x: float, y: float) -> np.ndarray:
    p = np.array([x, y, 1.0])
    q = hom @ p
    J = (hom[:2, :2] * q[2] - np.outer(q[:2], hom[2, :2])) / q[2] ** 2
    return J


def rectify(image: torch.Tensor, spec: ObjectSpec, *, px_per_mm: float | None = None, min_markers: int = 3,
            max_tilt_deg: float = 70.0, min_px_per_mm: float = 0.5, max_reprojection_px: float = 4.0,
            source: str = "image") -> Rectified:
    """Warp the printed object in ``image`` (1x3xHxW RGB) back to its digital frame.

    Output size: the object's own pixel size (``spec.width_px`` x ``height_px``), or ``px_per_mm`` if given.
    Raises :class:`MarkersNotFoundError` when fewer than ``min_markers`` of the sheet's markers are seen, and
    :class:`TooObliqueError` when the estimated tilt exceeds ``max_tilt_deg`` or the object is imaged at fewer
    than ``min_px_per_mm`` pixels per mm.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[:2] != (1, 3):
        raise ConfigError(f"{source}: expected a 1x3xHxW RGB tensor, got {getattr(image, 'shape', type(image))}")
    if min_markers < 1:
        raise ConfigError(f"min_markers must be >= 1, got {min_markers}")
    bgr = tensor_to_bgr(image)
    found = _detect(bgr, spec.dictionary)
    expected = sorted(spec.markers)
    use = {}
    for m in found:  # keep the largest detection if an id appears twice
        if m.id in spec.markers:
            if m.id not in use or cv2.contourArea(m.corners.astype(np.float32)) > cv2.contourArea(
                    use[m.id].corners.astype(np.float32)):
                use[m.id] = m
    missing = [i for i in expected if i not in use]
    if len(use) < min_markers:
        others = sorted({m.id for m in found} - set(expected))
        extra = f"; other {spec.dictionary} ids seen: {others} (a different sheet?)" if others else ""
        raise MarkersNotFoundError(
            f"{source}: found {len(use)} of the {len(expected)} fiducial markers of '{spec.name}' "
            f"(ids {expected}, {spec.dictionary}); need at least {min_markers}. Seen: {sorted(use)}, missing: "
            f"{missing}{extra}. Is the whole sheet in view, in focus and evenly lit?")
    ids = sorted(use)
    obj_pts = np.concatenate([spec.markers[i] for i in ids])
    img_pts = np.concatenate([use[i].corners for i in ids])
    method = cv2.RANSAC if len(ids) >= 3 else 0
    hom, inl = cv2.findHomography(obj_pts, img_pts, method, 3.0)
    if hom is None:
        raise RectifyError(f"{source}: the marker corners of '{spec.name}' are degenerate (no homography)")
    if method == cv2.RANSAC and inl is not None and inl.sum() >= 8:
        keep = inl.ravel().astype(bool)
        hom, _ = cv2.findHomography(obj_pts[keep], img_pts[keep], 0)
    proj = cv2.perspectiveTransform(obj_pts.reshape(-1, 1, 2), hom).reshape(-1, 2)
    rms = float(np.sqrt(np.mean(np.sum((proj - img_pts) ** 2, axis=1))))
    w, h = spec.width_mm, spec.height_mm
    J = _local_jacobian(hom, w / 2, h / 2)  # frame px per object mm
    s = np.linalg.svd(J, compute_uv=False)
    tilt = float(math.degrees(math.acos(min(1.0, s[1] / s[0])))) if s[0] > 0 else 90.0
    ppmm = float(math.sqrt(abs(np.linalg.det(J))))
    if rms > max_reprojection_px:
        raise RectifyError(f"{source}: the markers of '{spec.name}' do not agree on one plane (RMS reprojection "
                           f"error {rms:.2f} px > {max_reprojection_px} px): is the sheet bent or a marker damaged?")
    if tilt > max_tilt_deg:
        raise TooObliqueError(f"{source}: '{spec.name}' is seen too obliquely: estimated tilt {tilt:.1f} deg "
                              f"> {max_tilt_deg} deg; photograph it more head-on")
    if s[1] < min_px_per_mm:
        raise TooObliqueError(f"{source}: '{spec.name}' is imaged at only {s[1]:.2f} px/mm along its most "
                              f"foreshortened direction (< {min_px_per_mm}); move closer or face it more squarely")
    corners_mm = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    corners_px = cv2.perspectiveTransform(corners_mm.reshape(-1, 1, 2), hom).reshape(-1, 2)
    if px_per_mm is not None:
        if not px_per_mm > 0:
            raise ConfigError(f"px_per_mm must be > 0, got {px_per_mm}")
        out_w, out_h = max(1, round(w * px_per_mm)), max(1, round(h * px_per_mm))
    else:
        out_w, out_h = spec.width_px, spec.height_px
    # output pixel centre (i, j) <-> object mm ((i + 0.5) * w / out_w, (j + 0.5) * h / out_h)
    out_to_mm = np.array([[w / out_w, 0, 0.5 * w / out_w], [0, h / out_h, 0.5 * h / out_h], [0, 0, 1.0]])
    out_to_frame = hom @ out_to_mm
    # area-average first when the output is coarser than the photo (avoid aliasing)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(bgr, out_to_frame, (out_w, out_h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    out_scale = math.sqrt(abs(np.linalg.det(_local_jacobian(out_to_frame, out_w / 2, out_h / 2))))
    if out_scale > 1.5:  # each output pixel covers several photo pixels: supersample then area-reduce
        f = min(8, math.ceil(out_scale))
        fine = np.array([[1 / f, 0, 0.5 / f - 0.5], [0, 1 / f, 0.5 / f - 0.5], [0, 0, 1.0]])
        big = cv2.warpPerspective(bgr, out_to_frame @ fine, (out_w * f, out_h * f), flags=flags,
                                  borderMode=cv2.BORDER_REPLICATE)
        warped = cv2.resize(big, (out_w, out_h), interpolation=cv2.INTER_AREA)
    out = bgr_to_tensor(warped)
    return Rectified(out, hom, corners_px, ids, missing, rms, tilt, ppmm)


def corner_error_px(predicted: np.ndarray | Sequence, truth: np.ndarray | Sequence) -> float:
    """Mean Euclidean distance between corresponding corners (px)."""
    a, b = np.asarray(predicted, float).reshape(-1, 2), np.asarray(truth, float).reshape(-1, 2)
    if a.shape != b.shape:
        raise ConfigError(f"corner arrays differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(np.linalg.norm(a - b, axis=1)))
