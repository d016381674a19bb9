"""``testbed score PHOTOS --model M --target T [--untargeted]``: how many photos of a printed attack fool the model.

Each whole photo is classified as the model sees a photo (the printed patch in its scene, not rectified); prints
k/n with a Wilson 95% interval, writes ``scores.json`` (per photo) and ``contact_sheet.png`` into ``--out``. Photos
that cannot be read are named with their reason (exit 0 when at least one photo was scored, 2 when none was).
"""
from __future__ import annotations

import argparse
import sys

from testbed import cli_types
from testbed.errors import ImageError


def _cmd_score(args: argparse.Namespace) -> int:
    from physical.cli_eot import resolve_class
    from pipelines.scoring import score_photos, write_photo_scores
    from testbed.models.registry import get_entry

    target = resolve_class(args.target, get_entry(args.model).labels)
    photos = args.photos[0] if len(args.photos) == 1 else args.photos
    res = score_photos(photos, args.model, target=target, untargeted=args.untargeted)
    for f, why in res.skipped:
        print(f"skipped {f}: {why}", file=sys.stderr)
    if not res.per_photo:
        raise ImageError(f"no photo could be scored ({len(res.skipped)} skipped, reasons above)")
    files = write_photo_scores(res, args.out)
    goal = f"top-1 is not '{res.target_name}'" if res.untargeted else f"top-1 is '{res.target_name}'"
    r = res.rate
    print(f"{args.model}: {goal} on {r.k}/{r.n} photos = {100 * r.value:.1f}% "
          f"[{100 * r.low:.1f}, {100 * r.high:.1f}] (Wilson 95%)"
          + (f"; {len(res.skipped)} photo(s) skipped" if res.skipped else ""))
    print(f"per photo: {files['scores']}; contact sheet: {files['contact_sheet']}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("score", help="classify photos of a printed attack whole: success k/n with a Wilson "
                                            "interval, per-photo JSON and a contact sheet")
    p.add_argument("photos", nargs="+", metavar="PHOTOS", help="a folder of photos, or photo files")
    cli_types.add_model_options(p, default="mobilenet_v2")
    p.add_argument("--target", required=True,
                   help="class name or index: the attack's target (or, with --untargeted, the object's true class)")
    p.add_argument("--untargeted", action="store_true", help="success = top-1 is not --target")
    p.add_argument("--out", default="runs/score", type=cli_types.output_dir,
                   help="folder for scores.json and contact_sheet.png (default: runs/score)")
    p.set_defaults(func=_cmd_score)
