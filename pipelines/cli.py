"""CLI for the harness: ``testbed demo``, ``evaluate``, ``report``, ``live``, ``survival``."""
from __future__ import annotations

import argparse
from pathlib import Path

from testbed import cli_types
from testbed.errors import ConfigError


def _existing_dir(what: str):
    """A ``type=`` for an existing folder (a run directory to read)."""

    def parse(text: str) -> str:
        p = Path(text)
        if not p.exists():
            raise argparse.ArgumentTypeError(f"{what} {p} does not exist" if what else f"{p} does not exist")
        if not p.is_dir():
            raise argparse.ArgumentTypeError(f"{p} is not a folder")
        return text

    parse.__name__ = "existing_dir"
    return parse


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import DemoConfig, run_demo

    if args.eot != "print-aware":
        from physical.eot import resolve_config

        resolve_config(args.eot)  # an unknown preset is refused before any model is loaded
    cfg = DemoConfig(out=Path(args.out), seed=args.seed, quick=args.quick, eot=args.eot, progress=args.progress)
    report = run_demo(cfg)
    print(f"\nreport: {report}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
    from pipelines.experiment import load_config, run_experiment

    config = load_config(args.config)
    out = Path(args.out) if args.out else Path("runs") / config.name
    summary = run_experiment(config, out, progress=args.progress)
    print(f"{len(summary.computed)} cell(s) computed, {len(summary.skipped)} resumed from {out}; "
          f"{summary.seconds:.0f} s\nreport: {out / 'report.md'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
    from pipelines.experiment import write_report

    print(f"report: {write_report(Path(args.run_dir))}")
    return 0


def _cmd_live(args: argparse.Namespace) -> int:
    from pipelines.live import LiveConfig, run_live
    from testbed.models.registry import get_entry

    get_entry(args.model)  # an unknown model is refused before the source is opened
    cfg = LiveConfig(source=args.source, model=args.model, out=Path(args.out), max_frames=args.max_frames,
                     secure=args.secure, rectify=args.rectify, display=args.display, width=args.width,
                     height=args.height, seconds=args.seconds, torch_threads=args.threads or None)
    cfg.validate()
    summary = run_live(cfg)
    print(f"{summary.frames} frames, {summary.fps:.1f} frames/s (pipeline), video {summary.video}, log {summary.log}")
    return 0


def _cmd_survival(args: argparse.Namespace) -> int:
    import sys

    from pipelines.survival import SurvivalConfig, run_survival

    runs = ([("patch", r) for r in args.patch or []] + [("sticker", r) for r in args.sticker or []]
            + [("eyeglass", r) for r in args.eyeglass or []])
    if not runs:
        raise ConfigError("give at least one attack run (--patch, --sticker or --eyeglass)")
    cfg = SurvivalConfig(photos=args.photos, seed=args.seed, preset=args.preset, patch_width_mm=args.patch_width_mm,
                         sign_width_mm=args.sign_width_mm, face_width_mm=args.face_width_mm).validate()
    rows = run_survival(runs, cfg, args.out, log=lambda s: print(s, file=sys.stderr, flush=True))
    for r in rows:
        print(f"{r.kind:8s} {r.goal}: digital {r.digital}; after print + photo {r.printed}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job on built-in defaults: models on the shipped photos, attack, print-photo loop, report",
    )
    p.add_argument("--out", default="runs/demo", type=cli_types.output_dir, help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=cli_types.seed, default=0)
    p.add_argument("--quick", action="store_true", help="smaller budgets (for tests)")
    p.add_argument("--eot", default="print-aware",
                   help="EOT distribution of the patch: print-aware (default) or a physical.eot preset name")
    cli_types.add_progress_option(p)
    p.set_defaults(func=_cmd_demo)

    p = subparsers.add_parser("evaluate", help="run (or resume) an experiment declared in YAML; writes a report")
    p.add_argument("config", help="experiment YAML (see experiments/)")
    p.add_argument("--out", type=cli_types.output_dir,
                   help="run directory (default: runs/<name>); an existing one of the same config resumes")
    cli_types.add_progress_option(p)
    p.set_defaults(func=_cmd_evaluate)

    p = subparsers.add_parser("report", help="(re)write report.md/.html/.json and plots of a run directory")
    p.add_argument("run_dir", type=_existing_dir("run directory"))
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser("live", help="live classification: capture -> [secure] -> [rectify] -> top-5 + FPS")
    p.add_argument("source", help="webcam index, video file, image folder or stream URL (e.g. http://127.0.0.1:8080/)")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--out", default="runs/live", type=cli_types.output_dir,
                   help="folder for annotated.mp4 and log.jsonl (headless)")
    p.add_argument("--max-frames", type=cli_types.count(), default=None)
    p.add_argument("--seconds", type=cli_types.seconds, default=None, help="stop after this many seconds")
    p.add_argument("--secure", action="store_true", help="route frames through camera.secure (sealed, authenticated)")
    p.add_argument("--rectify", default=None, type=cli_types.input_file("sheet sidecar", max_bytes=16 * 2**20),
                   help="printout sidecar JSON: rectify frames to the printed object")
    p.add_argument("--display", action="store_true", help="show a window (needs a display and a GUI OpenCV build)")
    p.add_argument("--width", type=cli_types.integer(32, 7680), default=640)
    p.add_argument("--height", type=cli_types.integer(32, 4320), default=480)
    p.add_argument("--threads", type=cli_types.integer(0, 4096), default=1,
                   help="torch threads for the model (default 1: capture and video writing use the other cores; "
                        "0 = leave torch's default)")
    p.set_defaults(func=_cmd_live)

    p = subparsers.add_parser(
        "survival", help="print + photograph finished patch / sticker / eyeglass runs: the survival table")
    run = _existing_dir("run directory")
    p.add_argument("--patch", nargs="+", type=run, help="run directories of `testbed patch`")
    p.add_argument("--sticker", nargs="+", type=run, help="run directories of `testbed sticker`")
    p.add_argument("--eyeglass", nargs="+", type=run, help="run directories of `testbed eyeglass`")
    p.add_argument("--out", default="runs/survival", type=cli_types.output_dir,
                   help="report folder (report.md, report.json, examples/)")
    p.add_argument("--photos", type=cli_types.count(100_000), default=100,
                   help="simulated print + photo draws per run (default 100)")
    p.add_argument("--seed", type=cli_types.seed, default=2026, help="print/photo and placement seed")
    p.add_argument("--preset", default="default", help="camera.simulated preset: default, mild, harsh")
    p.add_argument("--patch-width-mm", type=cli_types.number(5.0, 1000.0), default=60.0)
    p.add_argument("--sign-width-mm", type=cli_types.number(5.0, 1000.0), default=120.0)
    p.add_argument("--face-width-mm", type=cli_types.number(5.0, 1000.0), default=150.0)
    p.set_defaults(func=_cmd_survival)
