"""``testbed print``: print-ready sheets (PDF at true size + PNG at a DPI + JSON sidecar)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any


from testbed import cli_types
from testbed.errors import ConfigError

if TYPE_CHECKING:
    import torch

KINDS = ("patch", "stickers", "glasses", "poster", "chart")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "print", help="make a print-ready sheet (patch, stickers, glasses, poster, chart) at true size",
        description="Write NAME.pdf (true size in mm, lossless images), NAME_p<N>.png (at --dpi) and NAME.json "
                    "(sidecar: markers, seed, config hash, DPI, palette, page size, git revision).")
    p.add_argument("kind", choices=KINDS, help="what is printed")
    p.add_argument("--image", help="perturbation: lossless PNG, .pt tensor (1x3xHxW in [0, 1]), or a patch, sticker "
                                   "or eyeglass run directory (its perturbation, mask and provenance are used)")
    p.add_argument("--mask", help="mask PNG (white = patch/sticker/frame pixels), same size as --image; "
                                  "default: the run directory's mask.png when --image is a run directory")
    p.add_argument("--width-mm", type=cli_types.millimetres,
                   help="printed width (patch/glasses/poster); glasses default 140, poster default 750")
    p.add_argument("--height-mm", type=cli_types.millimetres, help="printed height (default: keep aspect)")
    p.add_argument("--sign-width-mm", type=cli_types.millimetres,
                   help="stickers: width of the sign (default from a sticker run directory: its --sign-width-mm, "
                        "or a rendered sign's nominal size)")
    p.add_argument("--no-split", action="store_true",
                   help="stickers: refuse a sticker larger than the page instead of cutting it into page-sized pieces")
    p.add_argument("--overlap-mm", type=cli_types.millimetres_or_zero, default=15.0, help="poster: tile overlap")
    p.add_argument("--levels", type=cli_types.integer(2, 16), default=5,
                   help="chart: RGB cube levels per channel, 2..16")
    p.add_argument("--patch-mm", type=cli_types.millimetres, default=10.0, help="chart: patch side")
    p.add_argument("--out", required=True, type=cli_types.output_dir, help="output folder")
    p.add_argument("--name", type=cli_types.file_name, help="file stem (default: the kind)")
    p.add_argument("--dpi", type=cli_types.number(0.0, 2400.0, lo_open=True), default=300.0,
                   help="PNG resolution, in (0, 2400]")
    p.add_argument("--page", default="A4", help="A4, Letter, A3, ... or WIDTHxHEIGHT in mm")
    p.add_argument("--margin-mm", type=cli_types.millimetres_or_zero, default=10.0, help="page margin in mm")
    p.add_argument("--marker-mm", type=cli_types.millimetres, help="ArUco marker side (default: from the object size)")
    p.add_argument("--marker-id-base", type=cli_types.integer(0, 1_000_000),
                   help="first marker id (default 0; chart 4)")
    p.add_argument("--seed", type=cli_types.seed, help="seed of the run that made the perturbation (provenance)")
    p.add_argument("--palette", help="palette used by the NPS loss (provenance)")
    p.add_argument("--no-png", action="store_true", help="write only the PDF and sidecar")
    p.set_defaults(func=run)
    return p


def _seed_from_run(image: Path) -> int | None:
    """The seed recorded in the run folder the image comes from (provenance only: an unreadable file is skipped)."""
    from testbed.inputs import load_json

    for name in ("config.json", "run.json"):
        f = image.parent / name
        if f.is_file():
            try:
                data = load_json(f, what="run file")
            except ConfigError:
                continue
            seed = data.get("seed") if isinstance(data, dict) else None
            if isinstance(seed, int) and not isinstance(seed, bool):
                return seed
    return None


def _run_sign(run: Path, config: dict[str, Any], image: torch.Tensor, width_mm: float | None
              ) -> tuple[float | None, list[float] | None, torch.Tensor | None]:
    """A sticker run's sign: (physical width in mm, its box in image pixels, its alpha) from the run's config and
    ``sign_alpha.png``. A rendered sign's default width is its nominal size (``worlds.signs.render``)."""
    from testbed.imageio import load_image

    box = config.get("sign_box_px")
    box = [float(v) for v in box] if isinstance(box, list) and len(box) == 4 else None
    if width_mm is None:
        w = config.get("sign_width_mm")
        if isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0:
            width_mm = float(w)
        elif not config.get("sign_photo"):
            from worlds.signs.render import class_names, get_sign

            if config.get("sign") in class_names():
                width_mm = get_sign(config["sign"]).size_mm  # the rendered canvas is the sign's nominal size
    alpha = None
    if (run / "sign_alpha.png").is_file():
        alpha = load_image(run / "sign_alpha.png", convert=True, what="run sign alpha")[:, :1]
        if alpha.shape[-2:] != image.shape[-2:]:
            alpha = None
    return width_mm, box, alpha


def run(args: argparse.Namespace) -> int:
    from printouts import sheets
    from printouts.runinput import load_run_input
    from testbed.imageio import load_image

    seed, palette, provenance, run_config = args.seed, args.palette, None, None
    image = mask = None
    sheets.page_size_mm(args.page)  # a bad --page is refused before any image is read
    if args.kind != "chart":
        if not args.image:
            raise ConfigError(f"`print {args.kind}` needs --image (the perturbation PNG or .pt, or a run directory)")
        if Path(args.image).is_dir():  # a run directory: its image, mask and provenance
            src = load_run_input(args.image)
            image, mask, provenance, run_config = src.image, src.mask, src.provenance, src.config
            seed = src.provenance.seed if seed is None else seed
            palette = src.provenance.palette if palette is None else palette
        else:
            image = sheets.load_perturbation(args.image)
            if seed is None:
                seed = _seed_from_run(Path(args.image))
    base = args.marker_id_base if args.marker_id_base is not None else (4 if args.kind == "chart" else 0)
    cfg = sheets.SheetConfig(dpi=args.dpi, page=args.page, margin_mm=args.margin_mm, marker_mm=args.marker_mm,
                             marker_id_base=base, seed=seed, palette=palette,
                             run=provenance.as_dict() if provenance is not None else None)
    if args.mask:
        mask = load_image(args.mask, convert=True)[:, :1]
    if args.kind == "patch":
        if args.width_mm is None and args.height_mm is None:
            raise ConfigError("`print patch` needs --width-mm and/or --height-mm")
        sheet = sheets.patch_sheet(image, args.width_mm, args.height_mm, cfg, mask=mask)
    elif args.kind == "stickers":
        width, box, alpha = args.sign_width_mm, None, None
        if run_config is not None and provenance is not None and provenance.kind == "sticker":
            width, box, alpha = _run_sign(Path(args.image), run_config, image, width)
        if mask is None or width is None:
            raise ConfigError("`print stickers` needs --mask and --sign-width-mm (the sign's physical width; a sticker "
                              "run on a sign photo made without --sign-width-mm needs it here)")
        sheet = sheets.sticker_sheet(image, mask, width, cfg, sign_box_px=box, sign_alpha=alpha,
                                     split=not args.no_split)
    elif args.kind == "glasses":
        sheet = sheets.glasses_sheet(image, mask, args.width_mm or 140.0, cfg)
    elif args.kind == "poster":
        sheet = sheets.poster_sheet(image, args.width_mm or 750.0, args.height_mm, cfg, overlap_mm=args.overlap_mm)
    else:
        sheet = sheets.chart_sheet(sheets.default_chart_colors(args.levels), patch_mm=args.patch_mm, config=cfg)
    files = sheet.write(args.out, args.name, png=not args.no_png)
    print(f"{files.pdf}  ({len(sheet.pages)} page(s), {args.page}, print at 100 %)")
    for p in files.pngs:
        print(f"{p}  ({args.dpi:g} dpi)")
    print(f"{files.sidecar}  (sidecar: markers for `testbed rectify --sheet`)")
    if provenance is not None:
        print(f"from {provenance.footnote()}  (config sha256 {provenance.config_sha256})")
    return 0
