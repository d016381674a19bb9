"""``testbed defences``: train the defended sign models and write the adaptive-evaluation report.

    testbed defences train [--only pgd_at,trades] [--force] [--cache DIR]
    testbed defences evaluate --out docs/reports/defences_sign [--sections table,masking,...] [--n-attack 200]
    testbed defences all --out docs/reports/defences_sign       # train (cached) + evaluate
    testbed defences merge --parts runA,runB --out docs/reports/defences_sign
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipelines.defences import DefenceError
from testbed import cli_types


def add_parser(subparsers: Any) -> None:
    """Add the ``defences`` subcommand (with ``train``, ``evaluate`` and ``all``) to ``subparsers``."""
    p = subparsers.add_parser("defences", help="defences for sign-cnn, evaluated with adaptive attacks")
    sub = p.add_subparsers(dest="defences_command", required=True)
    for name, help_ in (("train", "train the defended models (cached; seeded, deterministic)"),
                        ("evaluate", "evaluate every defence and write the report"),
                        ("all", "train (cached) then evaluate")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--cache", default=None, type=cli_types.output_dir, help="cache dir for data and weights (default: defences/ in the "
                                                     "cache root, $TESTBED_CACHE or ~/.cache/physical-testbed; "
                                                     "$TESTBED_DEFENCES_CACHE overrides)")
        if name in ("train", "all"):
            s.add_argument("--only", default="", help="comma-separated model names (default: all)")
            s.add_argument("--force", action="store_true", help="retrain even when a matching checkpoint exists")
        if name in ("evaluate", "all"):
            s.add_argument("--out", required=True, type=cli_types.output_dir, help="report directory")
            s.add_argument("--sections", default="", help="comma-separated: table,masking,smoothing,detectors,"
                                                          "channel,sticker (default: these six); the patch "
                                                          "sections patchcleanser,derandomized,patch_sticker,"
                                                          "patch_detector,patch_imagenet run only when named")
            s.add_argument("--patch-fractions", default="", help="patch sections: comma-separated patch areas as "
                                                                 "fractions of the image (default 0.01,0.04,0.1)")
            s.add_argument("--patch-images", type=cli_types.count(100_000), default=None,
                           help="patch sections: held-out images certified and attacked (default 50)")
            s.add_argument("--pc-bases", default="", help="patchcleanser: base classifiers, masked,shipped "
                                                          "(default both; only masked is attacked)")
            s.add_argument("--defences", default="", help="comma-separated defences for table/masking (default: "
                                                          "all; see pipelines.defences.evaluate.DEFENCE_NAMES)")
            s.add_argument("--n-attack", type=cli_types.count(100_000), default=None,
                           help="images per attacked cell (default 100)")
            s.add_argument("--channel-defences", default="", help="defences for the print-photo section")
            s.add_argument("--sticker-models", default="", help="defences for the sticker section")
            s.add_argument("--n-clean", type=cli_types.count(1_000_000), default=None,
                           help="images for clean accuracy (default 1000)")
            s.add_argument("--seed", type=cli_types.seed, default=None, help="evaluation seed (default 0)")
            s.add_argument("--threads", type=cli_types.threads, default=None, help="torch CPU threads (default 2)")
        s.set_defaults(func=run_defences)
    m = sub.add_parser("merge", help="merge the sections of partial runs (e.g. two processes) into one report")
    m.add_argument("--parts", required=True, help="comma-separated report directories")
    m.add_argument("--out", required=True, type=cli_types.output_dir, help="report directory to write")
    m.add_argument("--cache", default=None, type=cli_types.output_dir,
                   help="cache dir of the trained models (default: defences/ in the cache root, as for train)")
    m.set_defaults(func=run_defences)


def _names(text: str, known: tuple[str, ...] | list[str], option: str) -> tuple[str, ...]:
    names = tuple(cli_types.name_list(text))
    bad = [n for n in names if n not in known]
    if bad:
        raise DefenceError(f"{option}: unknown name(s) {bad}; known: {', '.join(known)}")
    return names


def _eval_config(args: argparse.Namespace) -> Any:
    """The evaluation settings from the options, validated (before any training or evaluation runs)."""
    from pipelines.defences.evaluate import DEFENCE_NAMES, SECTIONS, EvalConfig

    kw: dict[str, Any] = {}
    if args.defences:
        kw["defences"] = _names(args.defences, DEFENCE_NAMES, "--defences")
    for opt, key in (("channel_defences", "channel_defences"), ("sticker_models", "sticker_models")):
        if getattr(args, opt):
            kw[key] = _names(getattr(args, opt), DEFENCE_NAMES, "--" + opt.replace("_", "-"))
    if args.sections:
        kw["sections"] = _names(args.sections, SECTIONS, "--sections")
    if args.patch_fractions:
        try:
            fr = tuple(float(v) for v in cli_types.name_list(args.patch_fractions))
        except ValueError:
            raise DefenceError(f"--patch-fractions: not a list of numbers: {args.patch_fractions!r}") from None
        if not fr or not all(0 < v <= 1 for v in fr):
            raise DefenceError(f"--patch-fractions: each must be in (0, 1], got {args.patch_fractions!r}")
        kw["patch_fractions"] = fr
    if args.pc_bases:
        kw["pc_bases"] = _names(args.pc_bases, ("masked", "shipped"), "--pc-bases")
    for a, f in (("n_attack", "n_attack"), ("n_clean", "n_clean"), ("seed", "seed"), ("threads", "threads"),
                 ("patch_images", "patch_images")):
        if getattr(args, a) is not None:
            kw[f] = getattr(args, a)
    known = {f.name for f in fields(EvalConfig)}
    if not set(kw) <= known:
        raise DefenceError(f"unknown evaluation settings {sorted(set(kw) - known)}")
    return EvalConfig(**kw)


def run_defences(args: argparse.Namespace) -> int:
    from pipelines.defences.training import DEFAULT_CACHE, default_suite, train_suite

    cache = Path(args.cache).expanduser() if args.cache else DEFAULT_CACHE
    t0 = time.time()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.defences_command == "merge":
        from pipelines.defences.report import merge_reports

        merge_reports([Path(p) for p in args.parts.split(",") if p], Path(args.out))
        return 0
    # Every option is checked before anything is trained or evaluated.
    names = list(_names(args.only, list(default_suite()), "--only")) if args.defences_command != "evaluate" else None
    config = _eval_config(args) if args.defences_command in ("evaluate", "all") else None
    if args.defences_command in ("train", "all"):
        train_suite(names or None, cache_dir=cache, force=args.force, log=log)
    if config is not None:
        from pipelines.defences.evaluate import run_report

        command = "testbed " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
        run_report(config, Path(args.out), cache_dir=cache, command=command, log=log)
    log(f"done in {time.time() - t0:.0f} s")
    return 0
