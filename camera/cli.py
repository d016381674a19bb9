"""``testbed capture`` (save frames from any source, or the simulated camera) and ``testbed rectify``."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from testbed import cli_types
from testbed.errors import ConfigError, SourceError, TestbedError
from testbed.runs import write_atomic


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "capture", help="save frames from a webcam, video, folder, stream URL or the simulated camera",
        description="SOURCE: a device index (0), a video file, an image folder/glob, or a URL (http://.../mjpg, "
                    "rtsp://...). With --simulate SHEET.json, photograph that printout with the simulated camera.")
    p.add_argument("source", nargs="?", help="device index, file, folder, glob or URL")
    p.add_argument("--simulate", metavar="SHEET_JSON", help="printout sidecar to photograph with the simulated camera")
    p.add_argument("--page", type=cli_types.integer(0, 10_000), default=0, help="--simulate: page index of the sheet")
    p.add_argument("--seed", type=cli_types.seed, default=0, help="--simulate: seed of the camera draws")
    p.add_argument("--render-dpi", type=cli_types.number(0.0, 1200.0, lo_open=True), default=150.0,
                   help="--simulate: dpi to rasterise the PDF at, in (0, 1200]")
    p.add_argument("--out", required=True, type=cli_types.output_dir,
                   help="folder for frame_NNNNNN.png and frames.json")
    p.add_argument("--frames", type=cli_types.count_or_zero, default=10,
                   help="number of frames to save (0: until the source ends)")
    p.add_argument("--every-s", type=cli_types.number(0.0, cli_types.MAX_SECONDS), default=0.0,
                   help="minimum seconds between saved frames")
    p.add_argument("--timeout-s", type=cli_types.seconds, default=10.0,
                   help="open/read timeout for devices and streams")
    p.add_argument("--convert-images", action="store_true", help="convert grayscale/RGBA/16-bit explicitly")
    p.set_defaults(func=run_capture)

    r = subparsers.add_parser(
        "rectify", help="find a printout's markers in photos and warp the printed object to its digital frame",
        description="Writes <stem>_rectified.png per photo and rectify.json; with --palette-out on a colour "
                    "chart, also the measured printer palette (JSON/CSV) for the NPS loss.")
    r.add_argument("inputs", nargs="+", help="photos: files, folders or globs")
    r.add_argument("--sheet", required=True, help="printout sidecar JSON (from `testbed print`)")
    r.add_argument("--object", help="object name in the sidecar (default: the first)")
    r.add_argument("--out", required=True, type=cli_types.output_dir, help="folder for the rectified images")
    r.add_argument("--px-per-mm", type=cli_types.number(0.0, 100.0, lo_open=True),
                   help="output resolution in (0, 100] (default: the object's own pixels)")
    r.add_argument("--min-markers", type=cli_types.integer(1, 4), default=3, help="1..4 (default 3)")
    r.add_argument("--max-tilt-deg", type=cli_types.number(0.0, 90.0, lo_open=True, hi_open=True), default=70.0,
                   help="in (0, 90) degrees")
    r.add_argument("--palette-out", type=_palette_out,
                   help="chart only: write the measured palette here (.json or .csv)")
    r.add_argument("--convert-images", action="store_true", help="convert grayscale/RGBA/16-bit explicitly")
    r.set_defaults(func=run_rectify)


def _palette_out(text: str) -> str:
    if Path(text).suffix.lower() not in (".json", ".csv"):
        raise argparse.ArgumentTypeError(f"must end in .json or .csv, got {text!r}")
    return cli_types.output_file(text)


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2))


def _simulated_source(args: argparse.Namespace, n_frames: int | None):
    from camera.simulated import SimulatedCamera
    from printouts.sheets import rasterize_pdf

    from camera.rectify import load_sheet, sheet_pdf

    side_path = Path(args.simulate)
    side = load_sheet(side_path, need=("objects", "page", "files"))  # the input boundary: every key checked
    pdf = sheet_pdf(side_path, side)  # refuses a PDF whose sha256 differs from the sidecar's
    pages = side["page"]["pages"]
    if not 0 <= args.page < len(pages):
        raise ConfigError(f"--page {args.page}: the sheet has {len(pages)} page(s)")
    pg = pages[args.page]
    raster = rasterize_pdf(pdf, args.render_dpi, args.page)
    return SimulatedCamera(raster, (pg["width_mm"], pg["height_mm"]), seed=args.seed,
                           n_frames=n_frames, objects=side["objects"], dpi=args.render_dpi,
                           page_index=args.page)


def run_capture(args: argparse.Namespace) -> int:
    """Handler of ``testbed capture``: save ``--frames`` frames (counted as saved, after ``--every-s``).

    frames.json always lists exactly the PNGs saved: after a normal end, and also when the source fails or the
    command is interrupted part-way (then with ``"complete": false`` and the reason), so the saved frames stay
    usable; a failing source then exits with status 2 naming the failure.
    """
    from camera.sources import open_source
    from testbed.runs import save_image

    if (args.source is None) == (args.simulate is None):
        raise ConfigError("give exactly one of SOURCE or --simulate SHEET_JSON")
    # The source may deliver more frames than are saved (--every-s skips some): it is never capped by --frames.
    read_cap = (args.frames or None) if args.every_s == 0 else None
    if args.simulate:
        src = _simulated_source(args, read_cap)
    else:
        src = open_source(args.source, convert=args.convert_images, max_frames=read_cap, timeout_s=args.timeout_s)
    src.open()  # fail before creating the output folder
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index: list[dict[str, Any]] = []
    last = -1e18
    failure: BaseException | None = None
    try:
        with src:
            for frame in src:
                if args.every_s > 0 and frame.timestamp - last < args.every_s:
                    continue
                last = frame.timestamp
                name = f"frame_{len(index):06d}.png"
                save_image(frame.image, out / name)
                index.append({"file": name, "seq": frame.seq, "timestamp": frame.timestamp, "source": frame.source,
                              "meta": frame.meta})
                if args.frames and len(index) >= args.frames:
                    break
    except (TestbedError, KeyboardInterrupt) as exc:
        failure = exc
    record: dict[str, Any] = {"source": src.name, "frames": index, "saved_at": time.time(),
                              "complete": failure is None}
    if failure is not None:
        record["error"] = "interrupted" if isinstance(failure, KeyboardInterrupt) else cli_types.one_line(failure)
    _write_json(out / "frames.json", record)
    if failure is None:
        print(f"saved {len(index)} frame(s) from {src.name} to {out}")
        return 0
    print(f"saved {len(index)} frame(s) from {src.name} to {out} before the source stopped (listed in "
          f"{out / 'frames.json'})")
    if isinstance(failure, KeyboardInterrupt):
        raise failure
    raise SourceError(f"{cli_types.one_line(failure)} (the {len(index)} frame(s) saved before it are kept and "
                      f"listed in {out / 'frames.json'})") from None


def run_rectify(args: argparse.Namespace) -> int:
    import numpy as np

    from camera.palette import measure_chart
    from camera.rectify import load_object_spec, rectify
    from camera.sources import ImageSequenceSource
    from testbed.runs import save_image
    from testbed.palette import Palette

    spec = load_object_spec(args.sheet, args.object)
    if args.palette_out and "patches" not in spec.record:
        raise ConfigError(f"--palette-out needs a colour chart sheet; '{spec.name}' is a {spec.record.get('kind')}")
    paths: list[str] = []
    for item in args.inputs:
        src = ImageSequenceSource(item, convert=args.convert_images)
        src.open()
        paths += [str(p) for p in src.paths]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, palettes = [], []
    px_per_mm = args.px_per_mm or (4.0 if args.palette_out else None)
    for frame in ImageSequenceSource(paths, convert=args.convert_images):
        path = Path(frame.meta["path"])
        try:
            r = rectify(frame.image, spec, px_per_mm=px_per_mm, min_markers=args.min_markers,
                        max_tilt_deg=args.max_tilt_deg, source=str(path))
        except TestbedError as exc:
            results.append({"input": str(path), "ok": False, "error": str(exc)})
            print(f"FAILED {path}: {exc}")
            continue
        dst = out / f"{path.stem}_rectified.png"
        save_image(r.image, dst)
        entry = {"input": str(path), "ok": True, "output": dst.name, **r.summary()}
        if args.palette_out:
            pal = measure_chart(r.image, spec)
            palettes.append(pal)
            entry["palette_patches"] = len(pal.colors)
        results.append(entry)
        print(f"ok {path} -> {dst}  (markers {r.markers_used}, tilt {r.tilt_deg:.1f} deg, "
              f"RMS {r.reprojection_error_px:.2f} px)")
    if args.palette_out and palettes:
        colors = np.median(np.stack([p.colors for p in palettes]), axis=0)
        pal = Palette(colors, palettes[0].intended, {"sheet": str(args.sheet), "photos": len(palettes)})
        pal.save(args.palette_out)
        print(f"palette of {len(colors)} colours from {len(palettes)} photo(s) -> {args.palette_out}")
    _write_json(out / "rectify.json", {"sheet": str(args.sheet), "object": spec.name, "results": results})
    failed = sum(not r["ok"] for r in results)
    if failed:
        print(f"{failed} of {len(results)} photo(s) could not be rectified (see {out / 'rectify.json'})")
    return 1 if failed else 0
