"""CLI: ``testbed secure-eval`` — the end-to-end evaluation of the secure capture path on real models.

Wire with ``pipelines.cli_secure.add_parser(subparsers)``.
"""
from __future__ import annotations

import argparse
import time

from testbed import cli_types


def _cmd_secure_eval(args: argparse.Namespace) -> int:
    from pipelines.secure_eval import SecureEvalConfig, run_secure_eval, write_results

    cfg = SecureEvalConfig(frames=args.frames, eps=args.eps, pgd_steps=args.steps, patch=args.patch,
                           patch_steps=args.patch_steps, patch_batch=args.patch_batch, patch_area=args.patch_area,
                           multipath=not args.no_multipath, seed=args.seed)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result, artefacts = run_secure_eval(cfg, log=lambda s: print(s, flush=True))
    report = write_results(result, artefacts, args.out, command=cfg.command(args.out), started=started)
    up, pr = result.unprotected["pgd_all"], result.protected["pgd_all"]
    print(f"unprotected top-1 under PGD: {up['top1']}; protected: {pr['tampered_delivered'] - pr['tampered_accepted']}"
          f"/{pr['tampered_delivered']} tampered frames rejected {pr['rejected']}")
    print(f"report: {report}")
    return 0


def add_parser(subparsers) -> None:
    """Add the ``secure-eval`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "secure-eval",
        help="secure capture path end to end on MobileNetV2: tamperer with/without protection, patch, multi-path",
    )
    p.add_argument("--frames", type=cli_types.count(80), default=50,
                   help="frames cut from the shipped photos (default 50, max 80)")
    p.add_argument("--eps", type=cli_types.number(0.0, 255.0, lo_open=True), default=8.0,
                   help="PGD L-inf budget on the 0-255 scale, in (0, 255] (default 8)")
    p.add_argument("--steps", type=cli_types.count(), default=5, help="PGD steps (step 2/255; default 5)")
    p.add_argument("--patch", choices=("universal", "masked-pgd", "none"), default="universal",
                   help="patch in the scene: EOT UniversalPatch, per-frame masked PGD (fallback), or none")
    p.add_argument("--patch-steps", type=cli_types.count(), default=60, help="patch optimisation steps (default 60)")
    p.add_argument("--patch-batch", type=cli_types.batch, default=8,
                   help="universal patch: EOT draws per step (default 8)")
    p.add_argument("--patch-area", type=cli_types.fraction, default=0.12,
                   help="fraction of the frame the patch covers, in (0, 1]")
    p.add_argument("--no-multipath", action="store_true", help="skip the multi-path experiment")
    p.add_argument("--seed", type=cli_types.seed, default=0, help="seed of the frames, attacks and patch")
    p.add_argument("--out", default="runs/secure-eval", type=cli_types.output_dir,
                   help="output folder (docs/reports/secure-path holds the shipped report)")
    p.set_defaults(func=_cmd_secure_eval)
