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
    from pipelines.executors import executor_from_args

    summary = run_experiment(config, out, progress=args.progress, executor=executor_from_args(args))
    print(f"{len(summary.computed)} cell(s) computed, {len(summary.skipped)} resumed from {out}; "
          f"{summary.seconds:.0f} s\nreport: {out / 'report.md'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pipelines.run_reports import compare, run_kind, write_run_report

    for d in args.run_dirs:  # every folder is recognised (or refused by name) before anything is written
        run_kind(d)
    if args.compare or args.csv:
        table, rows = compare(args.run_dirs, csv_path=args.csv)
        print(table, end="")
        if args.csv:
            print(f"{len(rows)} row(s) from {len(args.run_dirs)} run(s) written to {args.csv}")
        return 0
    for d in args.run_dirs:
        print(f"report: {write_run_report(d)}")
    return 0


def _live_report(summary) -> list[str]:
    """The printed summary of a live run: steady rate and start-up apart, the video's codec and rate, and the
    secure path's accepted / rejected counts by reason."""
    lines = [(f"{summary.frames} frames in {summary.seconds:.1f} s: start-up {summary.startup_s:.2f} s, then "
              f"{summary.steady_fps:.1f} frames/s steady ({summary.fps:.1f} frames/s over the whole run incl. "
              f"start-up; model alone {summary.classify_fps:.1f} frames/s); stopped by {summary.stopped_by}")]
    if summary.frames:  # (a run stopped before its first frame wrote nothing and removed its folder)
        lines.append(f"video {summary.video} ({summary.video_frames} frames, {summary.codec}, "
                     f"{summary.video_fps:g} fps from {summary.video_fps_from}), log {summary.log}")
    if summary.secure is not None:
        rejected = summary.secure.get("rejected", {})
        by_reason = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"
        lines.append(f"secure path: {summary.secure.get('accepted', 0)} frames accepted, {sum(rejected.values())} "
                     f"rejected ({by_reason}), {summary.secure.get('overwritten', 0)} overwritten in the ring")
    if summary.rectify_failures:
        lines.append(f"rectify: {summary.rectify_failures} frame(s) not rectified (classified as captured)")
    return lines


def _cmd_live(args: argparse.Namespace) -> int:
    """``testbed live``: SIGINT (Ctrl-C) and SIGTERM stop the run in order -- the video and the log are finalised
    -- and exit 130 and 143 (128 + the signal); a second signal aborts at once. A source that dies mid-run keeps
    the video and log, prints the summary, then the error on one line (exit 2)."""
    import signal
    import sys

    from pipelines.live import LiveConfig, StopRequest, run_live
    from testbed.errors import TestbedError
    from testbed.models.registry import get_entry

    get_entry(args.model)  # an unknown model is refused before the source is opened
    cfg = LiveConfig(source=args.source, model=args.model, out=Path(args.out), max_frames=args.frames,
                     secure=args.secure, rectify=args.rectify, display=args.display, width=args.width,
                     height=args.height, seconds=args.seconds, torch_threads=args.threads or None,
                     video_fps=args.video_fps, codec=args.codec, timeout_s=args.timeout_s)
    cfg.validate()
    stop = StopRequest()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():  # a second signal: abort now
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)
        print(f"testbed live: {signal.Signals(signum).name} received: stopping, finishing the video and log "
              "(send it again to abort)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_live(cfg, stop)
    except TestbedError as exc:
        partial = getattr(exc, "live_summary", None)
        if partial is not None:
            print("\n".join(_live_report(partial)), flush=True)
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    print("\n".join(_live_report(summary)), flush=True)
    if summary.stopped_by in ("SIGINT", "SIGTERM"):
        status = 128 + int(getattr(signal, summary.stopped_by))
        kept = "video and log kept" if summary.frames else "no frame had arrived: nothing written"
        print(f"testbed live: interrupted by {summary.stopped_by} after {summary.frames} frame(s); {kept} "
              f"(exit {status})", file=sys.stderr)
        return status
    return 0


def _cmd_survival(args: argparse.Namespace) -> int:
    import sys

    from pipelines.survival import SurvivalConfig, run_survival

    runs = ([("patch", r) for r in args.patch or []] + [("sticker", r) for r in args.sticker or []]
            + [("eyeglass", r) for r in args.eyeglass or []])
    if not runs:
        raise ConfigError("give at least one attack run (--patch, --sticker or --eyeglass)")
    cfg = SurvivalConfig(photos=args.eval_samples, seed=args.seed, preset=args.preset, patch_width_mm=args.patch_width_mm,
                         sign_width_mm=args.sign_width_mm, face_width_mm=args.face_width_mm,
                         in_situ_photos=args.in_situ_photos, in_situ_preset=args.in_situ_preset,
                         photos_dir=args.photos_dir).validate()
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
    p.add_argument("--seed", type=cli_types.seed, default=0, help="seed of the patch, the printout and the photos")
    p.add_argument("--quick", action="store_true", help="smaller budgets (for tests)")
    p.add_argument("--eot", default="in-situ-sharp",
                   help="EOT distribution of the patch: in-situ-sharp (default: a phone photo of the printed patch "
                        "lying in the scene) or another physical.eot preset name (e.g. print-aware)")
    cli_types.add_progress_option(p)
    p.set_defaults(func=_cmd_demo)

    p = subparsers.add_parser("evaluate", help="run (or resume) an experiment declared in YAML; writes a report")
    p.add_argument("config", help="experiment YAML (see experiments/)")
    p.add_argument("--out", type=cli_types.output_dir,
                   help="run directory (default: runs/<name>); an existing one of the same config resumes")
    cli_types.add_progress_option(p)
    from pipelines.executors import add_executor_options

    add_executor_options(p)  # --executor serial|local|ray (docs/campaigns.md)
    p.set_defaults(func=_cmd_evaluate)

    p = subparsers.add_parser(
        "report", help="(re)write report.md/.html and plots of run directories of any kind (patch, sticker, eyeglass, "
                       "evaluate, campaign, survival, demo, live, secure-eval, defences), or compare several runs in one table")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", type=_existing_dir("run directory"),
                   help="run directories (each gets its report.md, report.html and plots/)")
    p.add_argument("--compare", action="store_true",
                   help="print one Markdown table of every run's headline rates (k/n, Wilson 95%% interval) instead "
                        "of writing the reports")
    p.add_argument("--csv", type=cli_types.output_file, default=None,
                   help="also write the --compare table as CSV to this file (implies --compare)")
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser("live", help="live classification or detection: capture -> [secure] -> [rectify] -> "
                                           "top-5 (a detector: boxes, labels, scores) + FPS")
    p.add_argument("source", help="webcam index, video file, image folder or stream URL (e.g. http://127.0.0.1:8080/)")
    cli_types.add_model_options(p, default="mobilenet_v2", what="classification model, or a detector (task detector, "
                                "e.g. tiny-face-detector, mtcnn: boxes with label and score drawn and logged)",
                                tasks=("classification", "detector"))
    p.add_argument("--out", default="runs/live", type=cli_types.output_dir,
                   help="folder for annotated.webm (VP8; annotated.mp4 with mp4v where OpenCV has no "
                        "browser-playable encoder) and log.jsonl (headless)")
    frames = p.add_argument("--frames", type=cli_types.count(), default=None,
                            help="stop after this many frames (default: until the source ends or a signal)")
    cli_types.add_deprecated_alias(p, "--max-frames", frames)
    p.add_argument("--seconds", type=cli_types.seconds, default=None, help="stop after this many seconds")
    p.add_argument("--secure", action="store_true", help="route frames through camera.secure (sealed, authenticated)")
    p.add_argument("--rectify", default=None, type=cli_types.input_file("sheet sidecar", max_bytes=16 * 2**20),
                   help="printout sidecar JSON: rectify frames to the printed object")
    p.add_argument("--display", action="store_true", help="show a window (needs a display and a GUI OpenCV build)")
    p.add_argument("--width", type=cli_types.integer(32, 7680), default=640, help="capture width asked of a webcam")
    p.add_argument("--height", type=cli_types.integer(32, 4320), default=480, help="capture height asked of a webcam")
    p.add_argument("--threads", type=cli_types.integer(0, 4096), default=1,
                   help="torch threads for the model (default 1: capture and video writing use the other cores; "
                        "0 = leave torch's default)")
    p.add_argument("--video-fps", type=cli_types.number(0.1, 1000.0), default=None,
                   help="frame rate of the annotated video (default: the source's, or measured over the first "
                        "frames when the source declares none)")
    p.add_argument("--timeout-s", type=cli_types.seconds, default=10.0,
                   help="how long to wait for the source to open and for each frame before it counts as dead "
                        "(default: 10)")
    p.add_argument("--codec", default="auto",
                   help="video fourcc, or auto: the first of avc1, H264, VP80 (webm) this OpenCV can encode, else "
                        "mp4v (default: auto)")
    p.set_defaults(func=_cmd_live)

    p = subparsers.add_parser(
        "survival", help="print + photograph finished patch / sticker / eyeglass runs: the survival table")
    run = _existing_dir("run directory")
    p.add_argument("--patch", nargs="+", type=run, help="run directories of `testbed patch`")
    p.add_argument("--sticker", nargs="+", type=run, help="run directories of `testbed sticker`")
    p.add_argument("--eyeglass", nargs="+", type=run, help="run directories of `testbed eyeglass`")
    p.add_argument("--out", default="runs/survival", type=cli_types.output_dir,
                   help="report folder (report.md, report.json, examples/)")
    ev = p.add_argument("--eval-samples", type=cli_types.count(100_000), default=100,
                        help="simulated print + photo draws per run (default 100)")
    cli_types.add_deprecated_alias(p, "--photos", ev)
    p.add_argument("--seed", type=cli_types.seed, default=2026, help="print/photo and placement seed")
    p.add_argument("--preset", default="default", help="camera.simulated preset: default, mild, harsh")
    p.add_argument("--patch-width-mm", type=cli_types.number(5.0, 1000.0), default=60.0, help="printed patch width")
    p.add_argument("--sign-width-mm", type=cli_types.number(5.0, 1000.0), default=120.0, help="printed sign width")
    p.add_argument("--face-width-mm", type=cli_types.number(5.0, 1000.0), default=150.0,
                   help="printed width of the face photo wearing the frame")
    p.add_argument("--in-situ-photos", type=cli_types.integer(0, 100_000), default=600,
                   help="patch runs: photos of the printed patch lying in held-out scenes, whole frame classified "
                        "(default 600; 0 = only the rectify-and-paste rows)")
    p.add_argument("--in-situ-preset", default="phone", help="camera of the in-situ photos (default: phone)")
    p.add_argument("--photos-dir", type=_existing_dir("photo folder"), default=None,
                   help="patch runs: a folder of real photos of the printed patch in scenes (a row scored like "
                        "`testbed score`)")
    p.set_defaults(func=_cmd_survival)
