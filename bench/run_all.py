"""Run the testbed's engine and its peers in one run and print the comparison tables (docs/performance.md).

    .venv/bin/python -m bench.run_all                      # full: resnet18, 224x224, 16 images per step (~15 min)
    .venv/bin/python -m bench.run_all --quick              # tiny sizes, every case (a few minutes): plumbing check
    .venv/bin/python -m bench.run_all --repeat 2 --json runs/bench.json --markdown runs/bench.md
    .venv/bin/python -m bench.run_all --only patch-fp32-cl,art    # a subset (keys: --list)

Each case runs in its own subprocess (``python -m bench.cases``) so that it reports its own peak RSS, with the
allocator preloaded the same way on both sides of a comparison (tcmalloc when installed: ``bash setup.sh
--with-tcmalloc`` installs Debian's libtcmalloc-minimal4; ``--allocator glibc`` to run without it). ``--repeat N`` runs the whole
list N times, interleaved (A B C A B C), and reports the median of the per-run medians, so that drift of a
shared machine hits every case alike.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import allocator_env, find_tcmalloc, machine, median
from testbed.runs import write_atomic

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Spec:
    key: str
    case: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    allocator: str | None = None  # None: the run's allocator
    full_only: bool = False


SPECS: tuple[Spec, ...] = (
    Spec("floor", "floor", "FLOP floor (fwd + input-grad bwd) / measured matmul rate"),
    Spec("model-fp32", "model_fwdbwd", "model fwd+bwd fp32 NCHW", {"precision": "fp32", "channels_last": False}),
    Spec("model-fp32-cl", "model_fwdbwd", "model fwd+bwd fp32 channels_last",
         {"precision": "fp32", "channels_last": True}),
    Spec("model-bf16-cl", "model_fwdbwd", "model fwd+bwd bf16 channels_last",
         {"precision": "bf16", "channels_last": True}),
    Spec("art", "patch_art", "ART AdversarialPatchPyTorch (fp64 patch)"),
    Spec("patch-fp32", "patch", "testbed patch fp32 NCHW", {"precision": "fp32", "channels_last": False}),
    Spec("patch-fp32-cl", "patch", "testbed patch fp32 channels_last", {"precision": "fp32", "channels_last": True}),
    Spec("patch-bf16-cl", "patch", "testbed patch bf16 channels_last", {"precision": "bf16", "channels_last": True}),
    Spec("art-glibc", "patch_art", "ART AdversarialPatchPyTorch, glibc malloc", allocator="glibc", full_only=True),
    Spec("patch-bf16-cl-glibc", "patch", "testbed patch bf16 channels_last, glibc malloc",
         {"precision": "bf16", "channels_last": True}, allocator="glibc", full_only=True),
    Spec("success-fp32", "patch_success", "patch trained fp32 (mobilenet_v2)", {"precision": "fp32"}),
    Spec("success-bf16", "patch_success", "patch trained bf16 (mobilenet_v2)", {"precision": "bf16"}),
    Spec("eyeglass-fp32", "eyeglass", "testbed eyeglass fp32 NCHW", {"precision": "fp32", "channels_last": False}),
    Spec("eyeglass-fp32-cl", "eyeglass", "testbed eyeglass fp32 channels_last",
         {"precision": "fp32", "channels_last": True}),
    Spec("eyeglass-bf16", "eyeglass", "testbed eyeglass bf16 NCHW", {"precision": "bf16", "channels_last": False}),
    Spec("eotpgd", "eotpgd", "testbed PGD + EOTTransform (eot_batch=1, channels_last)", {"impl": "project"}),
    Spec("ta-eotpgd-eot", "eotpgd", "torchattacks EOTPGD, EOTTransform in the model",
         {"impl": "torchattacks", "transforms": "eot"}),
    Spec("ta-eotpgd-kornia", "eotpgd", "torchattacks EOTPGD, kornia.augmentation in the model",
         {"impl": "torchattacks", "transforms": "kornia"}),
    Spec("fgsm", "digital", "testbed FGSM", {"impl": "project", "attack": "fgsm"}),
    Spec("ta-fgsm", "digital", "torchattacks FGSM", {"impl": "torchattacks", "attack": "fgsm"}),
    Spec("pgd", "digital", "testbed PGD (10 steps)", {"impl": "project", "attack": "pgd"}),
    Spec("ta-pgd", "digital", "torchattacks PGD (10 steps)", {"impl": "torchattacks", "attack": "pgd"}),
    Spec("simcam", "simcam", "simulated camera (camera.simulated), frames"),
    Spec("harness", "harness", "harness simulated channel, images"),
    Spec("channel-1280", "channel", "simulated channel print_photograph at 1280x960, photos",
         {"kind": "print_photograph", "width": 1280, "height": 960}),
    Spec("insitu-1280", "channel", "simulated channel in situ at 1280x960, photos",
         {"kind": "in_situ", "width": 1280, "height": 960}),
    Spec("insitu-640", "channel", "simulated channel in situ at 640x480 (the survival default), photos",
         {"kind": "in_situ", "width": 640, "height": 480}),
    Spec("insitu-1280-view", "channel", "simulated channel in situ at 1280x960, the model's view only (as the "
         "survival rows render), photos", {"kind": "in_situ", "width": 1280, "height": 960, "frame": False}),
    Spec("secure", "secure", "secure capture path 640x480"),
    Spec("live", "live", "live loop 640x480 mobilenet_v2, plain", {"secure": False}),
    Spec("live-secure", "live", "live loop 640x480 mobilenet_v2, secure path", {"secure": True}),
    Spec("campaign-local2", "campaign", "testbed campaign run, 4 equal patch cells: serial vs --executor local "
         "--workers 2", {"cells": 4, "workers": 2, "steps": 60}),
    Spec("time-to-success", "time_to_success", "time to >= 90% targeted success on 500 fixed validation draws "
         "(mobilenet_v2, <= 10% patch): ours vs ART, one run", {"arms": "fast,art:5.0,art:0.05", "every": 20, "art_every": 50, "cap_factor": 3.5}),
    Spec("print-aware-step", "print_aware_step", "print-aware <= 10% recipe (issue 18): one batch-4 step cut into its "
         "parts, CPU s, model as registered vs --fold-bn, interleaved"),
)
BY_KEY = {s.key: s for s in SPECS}


# ------------------------------------------------------------------------------------------ running
def run_spec(spec: Spec, *, quick: bool, allocator: str, timeout: float, in_process: bool = False) -> dict[str, Any]:
    """One case in a fresh subprocess (or in this process, for tests); its result dict (``error`` on failure)."""
    alloc = spec.allocator or allocator
    if in_process:
        from bench.cases import run_case

        return {**run_case(spec.case, quick, dict(spec.params)), "key": spec.key}
    cmd = [sys.executable, "-m", "bench.cases", spec.case] + (["--quick"] if quick else [])
    cmd += [f"--param={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in spec.params.items()]
    env = allocator_env(alloc)
    env.setdefault("PYTHONPATH", str(ROOT))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"key": spec.key, "error": f"timed out after {timeout:.0f} s", "allocator": alloc}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH-RESULT ")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"key": spec.key, "error": f"exit {p.returncode}: {' | '.join(tail)}", "allocator": alloc,
                "wall_s": time.perf_counter() - t0}
    out = json.loads(lines[-1][len("BENCH-RESULT "):])
    out["key"] = spec.key
    return out


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the repetitions of a case: the median of their medians; the max of their peak RSS."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    row = dict(ok[-1])
    row["median_s"] = median([r["median_s"] for r in ok])
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    row["repeats"] = len(ok)
    for k in ("success_rate", "sys_s", "user_s", "fps", "classify_fps", "secure_fps", "plain_fps", "overhead_ms"):
        if k in ok[0]:
            row[k] = median([r[k] for r in ok])
    return row


# ------------------------------------------------------------------------------------------ tables
def _r(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def _i(v: Any) -> int | None:
    return None if v is None else int(round(v))


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
               "|" + "|".join("---" for _ in self.columns) + "|"]
        out += ["| " + " | ".join(_f(c) for c in row) + " |" for row in self.rows]
        out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out)


def build_tables(rows: dict[str, dict[str, Any]]) -> list[Table]:
    """The comparison tables from merged rows keyed by ``Spec.key`` (missing or failed rows print as —)."""

    def get(key: str, name: str = "median_s") -> Any:
        r = rows.get(key)
        return None if r is None or "error" in r else r.get(name)

    floor = rows.get("floor", {})
    floor_fp32, floor_bf16 = floor.get("floor_s_fp32"), floor.get("floor_s_bf16")
    tables = []
    # 1. patch
    model_of = {"patch-fp32": "model-fp32", "patch-fp32-cl": "model-fp32-cl", "patch-bf16-cl": "model-bf16-cl",
                "patch-bf16-cl-glibc": "model-bf16-cl", "art": "model-fp32", "art-glibc": "model-fp32"}
    art_of = {"patch-bf16-cl-glibc": "art-glibc"}
    prow = []
    for key in ("art", "patch-fp32", "patch-fp32-cl", "patch-bf16-cl", "art-glibc", "patch-bf16-cl-glibc"):
        if key not in rows:
            continue
        t = get(key)
        peer = get(art_of.get(key, "art"))
        bf = "bf16" in key
        prow.append([
            BY_KEY[key].label, rows[key].get("allocator", "—") if "error" not in rows[key] else rows[key]["error"],
            t, _i(get(key, "peak_rss_mb")), None if key.startswith("art") else _r(t, peer),
            None if key.startswith("art") else _r(peer, t), _r(t, get(model_of[key])),
            _r(t, floor_bf16 if bf else floor_fp32), get(key, "sys_s"),
        ])
    tables.append(Table(
        "Patch attack: seconds per Adam step (resnet18, random weights)",
        ["case", "allocator", "s/step", "peak RSS MiB", "time project/ART", "speed-up vs ART",
         "step / model fwd+bwd", "step / FLOP floor", "sys CPU s"],
        prow,
        ["ART: AdversarialPatchPyTorch(rotation_max=22.5, scale 0.1-1.0, circle, Adam), model weights trainable "
         "(ART's use), float64 patch; testbed: UniversalPatch, placement area 0.1 + rotation 22.5 + EOT preset "
         "athalye-eot-2d (scale, rotation, translation, brightness, Gaussian noise), Adam; ratios within the same "
         "allocator.",
         "step / model fwd+bwd: against the model's own forward + input-gradient backward in the same precision "
         "and layout (ART against fp32 NCHW).",
         f"FLOP floor: {_f(floor.get('gflop_per_image'), 2)} GFLOP per image (fwd + input-grad bwd, "
         f"torch.utils.flop_counter) at {_f(floor.get('matmul_gflops_fp32'), 0)} GFLOP/s fp32 / "
         f"{_f(floor.get('matmul_gflops_bf16'), 0)} GFLOP/s bf16 measured matmul = {_f(floor_fp32)} s / "
         f"{_f(floor_bf16)} s per step."]))
    # 2. model only
    tables.append(Table(
        "Model only: forward + input-gradient backward per batch",
        ["case", "s/step", "peak RSS MiB", "/ FLOP floor"],
        [[BY_KEY[k].label, get(k), _i(get(k, "peak_rss_mb")), _r(get(k), floor_bf16 if "bf16" in k else floor_fp32)]
         for k in ("model-fp32", "model-fp32-cl", "model-bf16-cl") if k in rows], []))
    # 3. success fp32 vs bf16
    s32, s16 = get("success-fp32", "success_rate"), get("success-bf16", "success_rate")
    tables.append(Table(
        "Patch success rate: bf16 vs fp32 training (evaluation in fp32 on the same fresh draws)",
        ["case", "targeted success", "eval draws", "s/step", "steps"],
        [[BY_KEY[k].label, get(k, "success_rate"), get(k, "eval_samples"), get(k), get(k, "steps")]
         for k in ("success-fp32", "success-bf16") if k in rows],
        [f"difference bf16 - fp32: {_f(None if s32 is None or s16 is None else 100 * (s16 - s32), 1)} points"]))
    # 4. EOT-PGD
    e = get("eotpgd")
    tables.append(Table(
        "EOT-PGD: seconds per step (S EOT draws x B images, athalye-eot-2d)",
        ["case", "s/step", "peak RSS MiB", "time project/peer", "speed-up", "step / (S x model fwd+bwd)"],
        [[BY_KEY[k].label, get(k), _i(get(k, "peak_rss_mb")), None if k == "eotpgd" else _r(e, get(k)),
          None if k == "eotpgd" else _r(get(k), e),
          _r(get(k), None if get("model-fp32") is None else get("model-fp32") * rows[k].get("workload", {}).get(
              "eot_samples", 1))]
         for k in ("eotpgd", "ta-eotpgd-eot", "ta-eotpgd-kornia") if k in rows],
        ["torchattacks' EOTPGD re-runs its model eot_iter times per step; with the transformations inside the "
         "model each pass draws new ones. kornia row: RandomAffine(22.5 deg, translate 0.1, scale 0.9-1.4) + "
         "ColorJiggle(brightness 0.05) + RandomGaussianNoise(0.05)."]))
    # 5. FGSM / PGD
    drow = []
    for ours, peer in (("fgsm", "ta-fgsm"), ("pgd", "ta-pgd")):
        if ours in rows or peer in rows:
            drow.append([ours.upper(), get(ours), get(peer), _r(get(ours), get(peer)),
                         _r(get(ours), get("model-fp32"))])
    tables.append(Table("FGSM / PGD: seconds per gradient step (fp32)",
                        ["attack", "testbed s/step", "torchattacks s/step", "time project/peer",
                         "step / model fwd+bwd"], drow, []))
    # 6. camera, harness, secure path, live
    srows = []
    if "simcam" in rows:
        srows.append([BY_KEY["simcam"].label, _r(1.0, get("simcam")), "frames/s",
                      f"frame {rows['simcam'].get('frame_size')}"])
    for key in ("channel-1280", "insitu-1280", "insitu-640", "insitu-1280-view"):
        if key in rows:
            one = rows[key].get("one_thread_s_per_photo")
            srows.append([BY_KEY[key].label, _r(1.0, get(key)), "photos/s",
                          f"frame {rows[key].get('frame_size')}; {rows[key].get('photos')} photos on "
                          f"{rows[key].get('workers')} thread(s) (CPU of all threads "
                          f"{_f(rows[key].get('many_cpu_s_per_photo'), 3)} s/photo); one photo at a time on 1 thread: "
                          f"{_f(_r(1.0, one), 1)} photos/s (CPU {_f(rows[key].get('cpu_s_per_photo'), 3)} s/photo); "
                          f"load {_f((rows[key].get('load_average') or [0])[0], 1)}"])
    if "harness" in rows:
        srows.append([BY_KEY["harness"].label, _r(1.0, get("harness")), "images/s",
                      f"classification alone: {_f(_r(1.0, get('harness', 'classify_s_per_image')), 1)} images/s"])
    if "secure" in rows:
        srows.append([BY_KEY["secure"].label, get("secure", "secure_fps"), "frames/s",
                      f"plain {_f(get('secure', 'plain_fps'), 0)} frames/s; overhead "
                      f"{_f(get('secure', 'overhead_ms'), 2)} ms/frame"])
    for k in ("live", "live-secure"):
        if k in rows:
            srows.append([BY_KEY[k].label, get(k, "fps"), "frames/s",
                          f"after the first frame {_f(get(k, 'steady_fps'), 1)} fps (start-up "
                          f"{_f(get(k, 'startup_s'), 2)} s); classify alone {_f(get(k, 'classify_fps'), 1)} fps; "
                          f"stages ms {get(k, 'stages_ms')}"])
    # 7. eyeglass (only when its rows ran)
    eye = [k for k in ("eyeglass-fp32", "eyeglass-fp32-cl", "eyeglass-bf16") if k in rows]
    if eye:
        tables.append(Table(
            "Eyeglass attack: seconds per Adam step and steps/s (face descriptor, 150x150 chips)",
            ["case", "s/step", "steps/s", "peak RSS MiB", "time / fp32 NCHW"],
            [[BY_KEY[k].label, get(k), _r(1.0, get(k)), _i(get(k, "peak_rss_mb")), _r(get(k), get("eyeglass-fp32"))]
             for k in eye],
            ["EyeglassFrame (dodge, hinge, TV + NPS, EOT preset sharif) in the shared loop (physical.loop), batch "
             "of w.batch draws of the astronaut chip per step; steps after a 3-step warm-up."]))
    if "campaign-local2" in rows:  # issue 18: the local executor's speed-up, both sides in one run
        c = rows["campaign-local2"]
        tables.append(Table(
            "Campaign: serial vs --executor local --workers 2 (same run)",
            ["case", "serial s", "local s", "speed-up", "cells identical", "load average (serial; local)"],
            [[BY_KEY["campaign-local2"].label, get("campaign-local2", "serial_s"), get("campaign-local2", "local_s"),
              get("campaign-local2", "speedup"), get("campaign-local2", "identical"),
              f"{c.get('load_serial')}; {c.get('load_local')}" if "error" not in c else c["error"]]],
            ["Whole `testbed campaign run` commands (start-up included), mobilenet_v2 patch cells of equal size (one "
             "per seed); serial: torch's default threads in one process; local: 2 worker processes with 1 torch "
             "thread each. 'cells identical': the optimised patches of the two runs compared byte for byte."]))
    if "time-to-success" in rows:  # issue 18: time to a working patch, ours vs ART in one run
        tts = rows["time-to-success"]
        trows = []
        labels = {"fast": "testbed patch, fastest setting", "fp32": "testbed patch, fp32 recipe"}
        for arm in (tts.get("arms") or []) if "error" not in tts else []:
            a = tts[arm]
            trows.append([labels.get(arm, "ART AdversarialPatchPyTorch"),
                          f"lr {a.get('lr')}, batch {a.get('batch')}, {a.get('precision', 'fp32 (float64 patch)')}"
                          + (f", {a['lr_schedule']}" if a.get("lr_schedule", "constant") != "constant" else ""),
                          a.get("reached"), a.get("steps") if a.get("reached") else a.get("steps_run"),
                          a.get("time_s"), a.get("time_with_checks_s"), a.get("cpu_s"), a.get("best_rate"),
                          a.get("s_per_step"), str(a.get("load"))])
        ratio = tts.get("ratio_art_over_ours")
        tables.append(Table(
            "Time to a working patch: first check at >= 90% targeted success (same run)",
            ["arm", "setting", "reached 90%", "steps", "time s (checks excluded)", "time s (checks included)",
             "CPU s (checks excluded)", "best validation success", "s/step", "load average (start, end)"], trows,
            [f"ART time / ours: {_f(ratio, 2)} ({tts.get('art_arm')} / {tts.get('ours_arm')}; CPU seconds: "
             f"{_f(tts.get('cpu_ratio_art_over_ours'), 2)})" + (" -- a lower bound: no ART arm reached 90% by its cap; "
                                                             f"ART's best validation success {_f(tts.get('art_best_rate'))}"
                                                             if tts.get("ratio_is_lower_bound") else ""),
             f"{tts.get('val_samples')} fixed validation draws (scene, location, rotation +-22.5 deg, each patch's "
             f"own circle covering 10% of the input), checked every {tts.get('every')} steps; 'time s' = wall "
             "seconds at the start of the first check at >= 90% minus the seconds of the earlier checks."]))
    tables.append(Table("Camera, harness, secure path and live loop", ["case", "rate", "unit", "detail"], srows,
                        ["issue-7 goal: live loop >= 25 frames/s with the secure path. 'rate' is frames / whole run (90 frames, "
                         "start-up included: the secure path starts a capture process and exchanges its key, ~1.4 s); "
                         "'after the first frame' is the steady rate a running camera sees."]))
    return tables


def headline(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The done-when numbers of issue 9."""
    def g(k: str, n: str = "median_s") -> Any:
        r = rows.get(k)
        return None if r is None or "error" in r else r.get(n)

    s32, s16 = g("success-fp32", "success_rate"), g("success-bf16", "success_rate")
    return {
        "speedup_vs_art_fp32": _r(g("art"), g("patch-fp32-cl")),
        "speedup_vs_art_fastest": _r(g("art"), g("patch-bf16-cl")),
        "step_over_model_fp32": _r(g("patch-fp32-cl"), g("model-fp32-cl")),
        "step_over_model_bf16": _r(g("patch-bf16-cl"), g("model-bf16-cl")),
        "peak_rss_project_over_art": _r(g("patch-fp32-cl", "peak_rss_mb"), g("art", "peak_rss_mb")),
        "success_points_bf16_minus_fp32": None if s32 is None or s16 is None else 100 * (s16 - s32),
        "eotpgd_speedup_vs_torchattacks_eot": _r(g("ta-eotpgd-eot"), g("eotpgd")),
        "eotpgd_speedup_vs_torchattacks_kornia": _r(g("ta-eotpgd-kornia"), g("eotpgd")),
        "live_secure_fps": g("live-secure", "fps"),
        "live_secure_steady_fps": g("live-secure", "steady_fps"),
        "campaign_local2_speedup": g("campaign-local2", "speedup"),
        "time_to_success_art_over_ours": g("time-to-success", "ratio_art_over_ours"),
    }


# ------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (64x64, 4 images, 2 steps): plumbing only")
    ap.add_argument("--only", help="comma-separated case keys (see --list)")
    ap.add_argument("--list", action="store_true", help="list the case keys and exit")
    ap.add_argument("--repeat", type=int, default=1, help="run the case list this many times, interleaved")
    ap.add_argument("--allocator", choices=["tcmalloc", "glibc"],
                    help="allocator of both sides (default: tcmalloc when installed, else glibc)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    ap.add_argument("--json", help="write every result (all repetitions) and the tables here")
    ap.add_argument("--markdown", help="write the tables as Markdown here")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests only: no peak RSS per case
    args = ap.parse_args(argv)
    if args.list:
        for s in SPECS:
            print(f"{s.key:22s} {s.label}" + ("  [full only]" if s.full_only else ""))
        return 0
    specs = [s for s in SPECS if not (args.quick and s.full_only)]
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        bad = [k for k in keys if k not in BY_KEY]
        if bad:
            ap.error(f"unknown case key(s) {bad}; known: {', '.join(BY_KEY)}")
        specs = [BY_KEY[k] for k in keys]
    allocator = args.allocator or ("tcmalloc" if find_tcmalloc() else "glibc")
    if allocator == "glibc" and args.allocator is None:
        print("# tcmalloc not found (bash setup.sh --with-tcmalloc installs libtcmalloc-minimal4): both sides use glibc malloc",
              file=sys.stderr)
    t0 = time.perf_counter()
    info = machine()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
          f"kornia {info.get('kornia')}, ART {info.get('art')}, torchattacks {info.get('torchattacks')}; "
          f"allocator {allocator} ({find_tcmalloc() or 'glibc'}); load average {info['load_average']}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in specs}
    for rep in range(max(1, args.repeat)):
        for s in specs:
            r = run_spec(s, quick=args.quick, allocator=allocator, timeout=args.timeout, in_process=args.in_process)
            runs[s.key].append(r)
            status = r.get("error") or f"median {r['median_s']:.4f} s, peak RSS {r['peak_rss_mb']:.0f} MiB"
            print(f"# [{rep + 1}/{args.repeat}] {s.key}: {status}", flush=True)
    rows = {k: merge(v) for k, v in runs.items() if v}
    tables = build_tables(rows)
    head = headline(rows)
    load_end = list(os.getloadavg())
    text = "\n\n".join(t.markdown() for t in tables)
    print()
    print(text)
    print("\nheadline: " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in head.items()}))
    print(f"# total {time.perf_counter() - t0:.0f} s; load average at the end {load_end}")
    meta = {"machine": info, "allocator": allocator, "quick": args.quick, "repeat": args.repeat,
            "command": " ".join(["python -m bench.run_all", *(argv if argv is not None else sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average_end": load_end,
            "seconds": time.perf_counter() - t0}
    if args.json:
        write_atomic(args.json, json.dumps({**meta, "headline": head, "rows": rows, "runs": runs,
                                             "tables": [t.__dict__ for t in tables]}, indent=2, default=str))
    if args.markdown:
        write_atomic(args.markdown, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
