"""Overhead of the secure capture path: frames/s with and without it at 640x480 and 1920x1080.

Usage: .venv/bin/python bench/bench_secure.py [--frames 60] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from camera.secure.benchmark import format_table, measure_throughput
from testbed.machine import machine_line
from testbed.runs import write_atomic


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=60, help="frames per measurement (default 60)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = [measure_throughput(480, 640, args.frames), measure_throughput(1080, 1920, args.frames)]
    print(f"# {machine_line()}, Python "
          f"{platform.python_version()}; {args.frames} frames per cell; {time.perf_counter() - t0:.1f} s total")
    print(format_table(rows))
    if args.json:
        write_atomic(args.json, json.dumps([r.as_dict() for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
