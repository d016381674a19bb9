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


def add_parser(subparsers: Any) -> None:
    """Add the ``defences`` subcommand (with ``train``, ``evaluate`` and ``all``) to ``subparsers``."""
    p = subparsers.add_parser("defences", help="defences for sign-cnn, evaluated with adaptive attacks (issue 8)")
    sub = p.add_subparsers(dest="defences_command", required=True)
    for name, help_ in (("train", "train the defended models (cached; seeded, deterministic)"),
                        ("evaluate", "evaluate every defence and write the report"),
                        ("all", "train (cached) then evaluate")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--cache", default=None, help="cache dir for data and weights (default "
                                                     "~/.cache/testbed/defences or $TESTBED_DEFENCES_CACHE)")
        if name in ("train", "all"):
            s.add_argument("--only", default="", help="comma-separated model names (default: all)")
            s.add_argument("--force", action="store_true", help="retrain even when a matching checkpoint exists")
        if name in ("evaluate", "all"):
            s.add_argument("--out", required=True, help="report directory")
            s.add_argument("--sections", default="", help="comma-separated: table,masking,smoothing,detectors,"
                                                          "channel,sticker (default: all)")
            s.add_argument("--defences", default="", help="comma-separated defences for table/masking (default: "
                                                          "all; see pipelines.defences.evaluate.DEFENCE_NAMES)")
            s.add_argument("--n-attack", type=int, default=None, help="images per attacked cell (default 100)")
            s.add_argument("--channel-defences", default="", help="defences for the print-photo section")
            s.add_argument("--sticker-models", default="", help="defences for the sticker section")
            s.add_argument("--n-clean", type=int, default=None, help="images for clean accuracy (default 1000)")
            s.add_argument("--seed", type=int, default=None)
            s.add_argument("--threads", type=int, default=None)
        s.set_defaults(func=run_defences)
    m = sub.add_parser("merge", help="merge the sections of partial runs (e.g. two processes) into one report")
    m.add_argument("--parts", required=True, help="comma-separated report directories")
    m.add_argument("--out", required=True, help="report directory to write")
    m.add_argument("--cache", default=None)
    m.set_defaults(func=run_defences)


def run_defences(args: argparse.Namespace) -> int:
    from pipelines.defences.training import DEFAULT_CACHE, train_suite

    cache = Path(args.cache).expanduser() if args.cache else DEFAULT_CACHE
    t0 = time.time()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.defences_command == "merge":
        from pipelines.defences.report import merge_reports

        merge_reports([Path(p) for p in args.parts.split(",") if p], Path(args.out))
        return 0
    if args.defences_command in ("train", "all"):
        names = [n for n in args.only.split(",") if n] or None
        train_suite(names, cache_dir=cache, force=args.force, log=log)
    if args.defences_command in ("evaluate", "all"):
        from pipelines.defences.evaluate import EvalConfig, run_report

        kw: dict[str, Any] = {}
        if args.defences:
            kw["defences"] = tuple(s for s in args.defences.split(",") if s)
        for opt, key in (("channel_defences", "channel_defences"), ("sticker_models", "sticker_models")):
            if getattr(args, opt):
                kw[key] = tuple(s for s in getattr(args, opt).split(",") if s)
        if args.sections:
            kw["sections"] = tuple(s for s in args.sections.split(",") if s)
        for a, f in (("n_attack", "n_attack"), ("n_clean", "n_clean"), ("seed", "seed"), ("threads", "threads")):
            if getattr(args, a) is not None:
                kw[f] = getattr(args, a)
        known = {f.name for f in fields(EvalConfig)}
        if not set(kw) <= known:
            raise DefenceError(f"unknown evaluation settings {sorted(set(kw) - known)}")
        command = "testbed " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
        run_report(EvalConfig(**kw), Path(args.out), cache_dir=cache, command=command, log=log)
    log(f"done in {time.time() - t0:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m pipelines.defences.cli ...``) until the lead wires ``testbed``."""
    parser = argparse.ArgumentParser(prog="testbed")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
