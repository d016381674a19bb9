"""``testbed eyeglass``: optimise an adversarial eyeglass frame (dodging or impersonation) and write a run folder.

    testbed eyeglass --wearer astronaut --mode dodge --steps 60 --out runs/eyeglass-dodge
    testbed eyeglass --wearer astronaut --mode impersonate --target grace_hopper --steps 80 --out runs/eyeglass-imp

``--wearer``/``--target`` take shipped photo names (``testbed.photos.list_photos()``) or image files; several
wearer photos may be given (the frame is optimised over all of them and the enrolled descriptor is their mean).
Rerunning the same command on the same ``--out`` resumes from the latest checkpoint. Writes (besides the run
folder's config.json, checkpoints/, metrics.json): texture/frame/mask PNGs (16- and 8-bit) + .pt/.npy,
adversarial_chip_*.png, wearer_with_frame_*.png (the frame put back on each photo through its landmarks),
frame_print.png + frame_print_mask.png (the frame cut out for ``printouts.sheets.glasses_sheet``, with its real
width in result.json) and result.json (metrics, timings, machine, and a re-detection check of the full photo).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from testbed import cli_types
from testbed.errors import ConfigError
from testbed.machine import machine_info


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eyeglass`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "eyeglass", help="adversarial eyeglass frame (Sharif et al. 2016): dodge or impersonate the face descriptor"
    )
    p.add_argument("--wearer", nargs="+", required=True, help="photo name(s) or image file(s) of the wearer")
    p.add_argument("--mode", choices=("dodge", "impersonate"), default="dodge",
                   help="dodge: not recognised as the wearer; impersonate: recognised as --target")
    p.add_argument("--target", nargs="+", help="impersonation: photo name(s) or file(s) of the face to impersonate")
    p.add_argument("--out", required=True, type=cli_types.output_dir,
                   help="run folder (created; rerun the same command to resume)")
    p.add_argument("--steps", type=cli_types.count(), default=300, help="optimisation steps, >= 1")
    p.add_argument("--batch-size", type=cli_types.batch, default=16, help="EOT draws per step")
    p.add_argument("--lr", type=cli_types.positive, default=0.05, help="Adam learning rate (on colour logits)")
    p.add_argument("--loss", choices=("hinge", "distance"), default="hinge",
                   help="hinge on the descriptor distance around the threshold +- --margin, or the distance itself")
    p.add_argument("--margin", type=cli_types.non_negative, default=0.15,
                   help="distance margin beyond the recognition threshold")
    p.add_argument("--lambda-own", type=cli_types.non_negative, default=1.0,
                   help="impersonate: weight of 'closer to the target than to oneself'")
    p.add_argument("--lambda-tv", type=cli_types.non_negative, default=0.0,
                   help="weight of the total-variation smoothness penalty (0: off)")
    p.add_argument("--lambda-nps", type=cli_types.non_negative, default=0.0,
                   help="weight of the non-printability score against --palette (0: off)")
    p.add_argument("--palette", help="palette JSON for NPS (default: the built-in palette)")
    p.add_argument("--init", default="brown", help="brown, gray, black, uniform or random")
    p.add_argument("--eot", default="sharif", help="EOT preset name, or a JSON/YAML EOT config file")
    p.add_argument("--enroll-views", type=cli_types.count_or_zero, default=0,
                   help="also average this many clean augmented views into the enrolled descriptor")
    from physical.cli_eot import add_run_options

    # NCHW by default for the face descriptor (faster on the CPU it was measured on; docs/eyeglass.md)
    add_run_options(p, checkpoint_every=25, channels_last=False)
    p.set_defaults(func=run_eyeglass)
    return p


def _load(item: str):
    from testbed.imageio import load_image
    from testbed.photos import list_photos, load_photo

    if item in list_photos():
        return load_photo(item)
    if not Path(item).is_file():
        raise ConfigError(f"{item!r} is neither a shipped photo ({', '.join(list_photos())}) nor an image file")
    return load_image(item, convert=True)


def _eot_arg(value: str) -> Any:
    from physical.eot import EOTConfig

    if Path(value).suffix.lower() in (".json", ".yaml", ".yml"):
        return EOTConfig.load(value)
    return value


def run_eyeglass(args: argparse.Namespace) -> int:
    """Handler of ``testbed eyeglass``."""
    import torch

    from physical.cli_eot import _speed_kwargs, ensure_allocator
    from physical.eyeglass import EyeglassFrame, align_wearer, enroll, print_crop, wear
    from testbed.runs import atomic_write_json
    from worlds.faces import detect_and_align
    from testbed.runs import save_image
    from testbed.models.face_descriptor import face_distance, load_face_descriptor

    if args.mode == "impersonate" and not args.target:
        raise ConfigError("--mode impersonate needs --target (the face to impersonate)")
    if args.mode == "dodge" and args.target:
        raise ConfigError("--target is only for --mode impersonate")
    attack = EyeglassFrame(
        mode=args.mode, steps=args.steps, batch_size=args.batch_size, lr=args.lr, loss=args.loss,
        margin=args.margin, lambda_own=args.lambda_own, lambda_tv=args.lambda_tv, lambda_nps=args.lambda_nps,
        palette=args.palette, init=args.init, eot=_eot_arg(args.eot), eval_samples=args.eval_samples,
        eval_batch_size=args.eval_batch_size, seed=args.seed, eval_seed=args.eval_seed,
        checkpoint_every=args.checkpoint_every, **_speed_kwargs(args),
    )  # hyper-parameters are validated before anything is loaded
    t_start = time.perf_counter()
    photos = [_load(w) for w in args.wearer]  # every photo is read (and refused by name) before the model loads
    target_photos = [_load(t) for t in args.target or []]
    cli_types.check_run_out(args.out, "eyeglass")
    ensure_allocator(getattr(args, "allocator", "glibc"))
    model = load_face_descriptor()
    device = next(model.parameters()).device
    chips, faces = align_wearer(photos)
    chips = chips.to(device)
    enrolled = enroll(model, chips, views=args.enroll_views,
                      generator=torch.Generator().manual_seed(args.seed + 17) if args.enroll_views else None)
    target = None
    if args.target:
        t_chips, _ = align_wearer(target_photos)
        target = enroll(model, t_chips.to(device))
    run_extra = {"wearer": list(args.wearer), "target": list(args.target or []), "enroll_views": args.enroll_views}
    result = attack(model, chips, enrolled, target=target, run_dir=args.out, run_extra=run_extra,
                    progress=args.progress)
    out = Path(args.out)  # the attack wrote its run folder there (config, checkpoints, frame, metrics)

    # The frame put back on each full photo through the landmarks, and re-detected from scratch.
    recheck = []
    with torch.no_grad():
        for i, (photo, face) in enumerate(zip(photos, faces)):
            worn = wear(photo, result.texture, result.mask, face.landmarks.cpu())
            save_image(worn, out / f"wearer_with_frame_{i}.png")
            try:
                again = detect_and_align(worn.to(device))
                emb = model(again.crop)
                row = {"photo": args.wearer[i], "detected": True, "prob": again.prob,
                       "distance_enrolled": float(face_distance(emb, enrolled)[0])}
                if target is not None:
                    row["distance_target"] = float(face_distance(emb, target)[0])
            except Exception as exc:  # noqa: BLE001 - report, do not fail the run
                row = {"photo": args.wearer[i], "detected": False, "error": str(exc)}
            recheck.append(row)
    crop = print_crop(result.texture, result.mask)
    save_image(crop.image, out / "frame_print.png")
    save_image(crop.mask.float().expand(-1, 3, -1, -1), out / "frame_print_mask.png")

    elapsed = time.perf_counter() - t_start
    m = result.metrics()
    report = {
        "argv": list(sys.argv),
        "metrics": m,
        "seconds_total": round(elapsed, 1),
        "device": str(device),
        "machine": machine_info(),
        "full_photo_recheck": recheck,
        "print": {"width_mm": crop.width_mm, "box": list(crop.box)},
        "loss_history": result.loss_history,
    }
    atomic_write_json(out / "result.json", report)
    line = (f"eyeglass {args.mode}: success {m['success_rate']:.3f} on {m['eval_samples']} fresh draws "
            f"(initial frame {m['initial_success_rate']:.3f}, no frame {m['clean_success_rate']:.3f}); "
            f"distance to enrolled {m.get('distance_enrolled_mean', float('nan')):.3f}")
    if target is not None:
        line += f", to target {m.get('distance_target_mean', float('nan')):.3f}"
    print(f"{line}; mask {m['mask_fraction'] * 100:.2f}% of the chip; {elapsed:.0f}s; wrote {out}")
    return 0
