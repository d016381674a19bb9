"""CLI for the harness: ``testbed demo`` (the main job on built-in defaults)."""
from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=Path(args.out), seed=args.seed, quick=args.quick)
    report = run_demo(cfg)
    print(f"\nreport: {report}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job on built-in defaults: models on the shipped photos, attack, print-photo loop, report",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller budgets (for tests)")
    p.set_defaults(func=_cmd_demo)
