"""``testbed secure``: demo (capture process -> sealed ring -> verified frames), matrix (threat matrix), bench."""
from __future__ import annotations

import argparse
import json
import time


def _cmd_demo(args: argparse.Namespace) -> int:
    from camera.secure.capture import CaptureConfig, FolderFrames, SyntheticFrames
    from camera.secure.consumer import SecureCapture
    from camera.secure.frames import VerifyPolicy

    source = FolderFrames(args.folder) if args.folder else SyntheticFrames(args.height, args.width, args.frames,
                                                                           args.seed)
    t0 = time.perf_counter()
    with SecureCapture(source, CaptureConfig(n_slots=args.slots, max_frames=args.frames),
                       VerifyPolicy(max_age_s=args.max_age)) as cam:
        print(f"capture process pid {cam.capture_pid}: stream {cam.stream_id.hex()[:16]}..., key id {cam.key_id}, "
              f"frames {cam.shape[1]}x{cam.shape[0]}, ring fd sealed (SHRINK|GROW|FUTURE_WRITE|SEAL), read-only")
        n = 0
        for frame in cam.frames():
            n += 1
            if args.verbose:
                print(f"  verified seq {frame.seq} captured at {frame.timestamp:.6f}")
        stats = cam.stats.as_dict()
    dt = time.perf_counter() - t0
    print(f"verified {n} frame(s) in {dt:.2f} s ({n / dt:.1f} frames/s incl. start-up); {json.dumps(stats)}")
    return 0


def _cmd_matrix(args: argparse.Namespace) -> int:
    from camera.secure.threats import format_matrix, run_threat_matrix

    rows = run_threat_matrix()
    print(format_matrix(rows))
    bad = [r.name for r in rows if not r.passed]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} cases rejected with the expected reason; none accepted"
          if not bad else f"\nFAILED: {', '.join(bad)}")
    return 1 if bad else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from camera.secure.benchmark import format_table, measure_throughput

    print(format_table([measure_throughput(480, 640, args.frames), measure_throughput(1080, 1920, args.frames)]))
    return 0


def add_parser(subparsers) -> None:
    """Register ``testbed secure {demo,matrix,bench}``."""
    p = subparsers.add_parser("secure", help="secure capture path: sealed frame ring, AEAD frames, threat matrix")
    sub = p.add_subparsers(dest="secure_command", metavar="ACTION", required=True)
    d = sub.add_parser("demo", help="run a capture process and verify its frames through the sealed ring")
    d.add_argument("--frames", type=int, default=30, help="number of frames (default 30)")
    d.add_argument("--width", type=int, default=640, help="frame width in pixels")
    d.add_argument("--height", type=int, default=480, help="frame height in pixels")
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic frames")
    d.add_argument("--folder", help="read frames from this image folder instead of synthetic ones")
    d.add_argument("--slots", type=int, default=4, help="ring slots (default 4)")
    d.add_argument("--max-age", type=float, default=1.0, help="reject frames older than this many seconds")
    d.add_argument("-v", "--verbose", action="store_true", help="print every verified frame")
    d.set_defaults(func=_cmd_demo)
    m = sub.add_parser("matrix", help="attack sealed records every record-level way; print the reasons")
    m.set_defaults(func=_cmd_matrix)
    b = sub.add_parser("bench", help="frames/s with and without the secure path at 640x480 and 1920x1080")
    b.add_argument("--frames", type=int, default=40, help="frames per measurement")
    b.set_defaults(func=_cmd_bench)
