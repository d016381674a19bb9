"""``testbed patch`` and ``testbed sticker``: EOT-optimised universal patch and RP2 sign stickers.

    testbed patch --model mobilenet_v2 --target toaster --area 0.1 --steps 500 --out runs/patch1
    testbed sticker --model sign-cnn --sign stop --target no_entry --mask saliency --sign-size 128 --steps 300
        --batch-size 32 --eval 1000 --out runs/stk1   (one line)

Each writes a run directory (see ``testbed.runs``): config.json/.yaml, checkpoints/, perturbation.png (16-bit)
and perturbation_8bit.png, .pt, .npy, mask.png, adversarial.png, metrics.json, eval_draws.pt, train_draws.pt.
Running the same command again resumes from the latest checkpoint; a different configuration is refused.

Speed (docs/performance.md): ``--precision bf16`` (bfloat16 autocast of the optimisation; evaluation stays fp32),
``--no-channels-last``, ``--compile`` (torch.compile), ``--allocator auto|tcmalloc|glibc`` (auto, the default,
re-executes the command once with Debian's libtcmalloc-minimal4 preloaded when it is installed and not loaded).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from testbed.allocator import find_tcmalloc, tcmalloc_loaded
from testbed import cli_types
from testbed.errors import ConfigError
from testbed.machine import machine_line


def add_parser(subparsers: Any) -> None:
    """Add the ``patch`` and ``sticker`` subcommands to ``subparsers``."""
    p = subparsers.add_parser("patch", help="universal adversarial patch (Brown et al.) under EOT")
    cli_types.add_model_options(p, default="mobilenet_v2")
    p.add_argument("--target", help="target class (label name or index); omit with --untargeted")
    p.add_argument("--untargeted", action="store_true", help="push each scene away from its clean top-1 class")
    p.add_argument("--scenes", default="astronaut,chelsea,coffee,rocket,motorcycle_left,grace_hopper",
                   help="comma-separated shipped photo names, image files, folders or globs ('photos/*.jpg') "
                        "(default: astronaut,chelsea,coffee,rocket,motorcycle_left,grace_hopper)")
    p.add_argument("--area", type=cli_types.fraction, default=0.1,
                   help="max fraction of the image the patch covers, in (0, 1]")
    p.add_argument("--area-min", type=cli_types.fraction, help="min fraction (default: --area, a fixed size)")
    p.add_argument("--rotation", type=cli_types.number(0.0, 180.0), default=22.5,
                   help="max patch rotation, degrees in [0, 180]")
    p.add_argument("--shape", default="circle", help="circle, square, or a mask PNG path")
    p.add_argument("--patch-size", type=cli_types.pixels,
                   help="patch resolution in pixels (default: its size in the image)")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from the patch of this finished `testbed patch` run (e.g. to continue it under "
                        "another --eot) instead of random colours; its patch size and --shape must match")
    _common(p, default_eot="athalye-eot-2d", default_steps=500, default_lr=0.05)
    p.set_defaults(func=run_patch)

    s = subparsers.add_parser("sticker", help="RP2 sign stickers under EOT")
    cli_types.add_model_options(s, default="sign-cnn", what="sign classification model")
    s.add_argument("--sign", default="stop", help="sign class name to render (worlds.signs.render.class_names)")
    s.add_argument("--target", help="target class (label name or index); omit with --untargeted")
    s.add_argument("--untargeted", action="store_true", help="push the sign away from its true class")
    s.add_argument("--mask", default="rects",
                   help="rects (two bars above/below the legend), saliency (RP2: cells where the loss is most "
                        "sensitive), strokes, or a mask PNG path (white = sticker)")
    s.add_argument("--strokes", type=cli_types.count(1000), default=4, help="number of strokes for --mask strokes")
    s.add_argument("--sign-size", type=cli_types.pixels, default=128,
                   help="print resolution of the sign and sticker in pixels (each draw is resampled to the "
                        "model's input size, as a camera would); default 128")
    s.add_argument("--budget", type=cli_types.fraction, default=0.095,
                   help="fraction of the sign's own area that --mask rects/saliency may cover (default 0.095)")
    s.add_argument("--max-mask-fraction", type=cli_types.fraction, default=0.10,
                   help="refuse a mask covering more than this fraction of the sign's area (default 0.10)")
    s.add_argument("--cell", type=cli_types.pixels, default=8, help="sticker cell size in pixels for --mask saliency")
    s.add_argument("--saliency-samples", type=cli_types.count(), default=128, help="EOT draws for --mask saliency")
    s.add_argument("--background", default=None, help="grey level in [0, 1] or a shipped photo name (default 0.5)")
    ph = s.add_argument_group("the user's own sign photo (physical/sign_photo.py; --sign names its class)")
    ph.add_argument("--sign-photo", metavar="PHOTO",
                    help="attack the sign in this photo (image file or shipped photo name) instead of a rendering")
    ph.add_argument("--sign-polygon", metavar="X1,Y1,...",
                    help="the sign's outline in photo pixels (x right, y down, origin at the top-left corner)")
    ph.add_argument("--sign-mask", metavar="MASK.png", help="mask of the photo's size, white = the sign")
    ph.add_argument("--sign-corners", metavar="X1,Y1,...,X4,Y4",
                    help="corners TL, TR, BR, BL of the sign's bounding square (camera/rectify order): the photo is "
                         "rectified to a frontal view; the outline is --sign-polygon / --sign-mask, else the square")
    ph.add_argument("--sign-margin", type=cli_types.number(0.0, 1.0), default=0.1,
                    help="photo context kept around the sign, a fraction of its size (default 0.1)")
    aw = s.add_argument_group("artwork variation (worlds.signs.render.sample_artwork): a sticker for 'a stop sign'")
    aw.add_argument("--artwork", type=cli_types.count_or_zero, default=0, metavar="N",
                    help="optimise over N drawings of the sign from the 'train' artwork split (fonts, legend, rim, "
                         "paints, wear, dirt), one picked per EOT draw; 0 (default): the canonical drawing only")
    aw.add_argument("--eval-artwork", type=cli_types.count_or_zero, default=None, metavar="M",
                    help="evaluate on M drawings from the 'heldout-artwork' split, never optimised on (default: as "
                         "many as --artwork); 0: evaluate on the training drawings")
    s.add_argument("--sign-width-mm", type=cli_types.millimetres,
                   help="physical width of the sign (its outline's extent), recorded for `testbed print stickers`; "
                        "default for a rendered sign: its nominal size (e.g. stop 900)")
    s.add_argument("--norm", choices=["l1", "l2"], default="l2", help="norm of the sticker's change penalised by --lambda-norm")
    s.add_argument("--lambda-norm", type=cli_types.non_negative, default=0.0,
                   help="weight of ||mask * (sticker - sign)|| in the loss (0: no penalty)")
    s.add_argument("--init", choices=["random", "gray", "source"], default="random",
                   help="initial sticker colours: random, mid-grey, or the sign's own pixels")
    _common(s, default_eot="rp2", default_steps=300, default_lr=0.1)
    s.set_defaults(func=run_sticker)


def _common(p: argparse.ArgumentParser, *, default_eot: str, default_steps: int, default_lr: float) -> None:
    p.add_argument("--eot", default=default_eot, help="EOT preset name, or a JSON/YAML EOT config file")
    p.add_argument("--steps", type=cli_types.count(), default=default_steps,
                   help=f"optimisation steps, >= 1 (default {default_steps})")
    p.add_argument("--batch-size", type=cli_types.batch, default=16, help="EOT draws per step (one forward pass)")
    p.add_argument("--lr", type=cli_types.positive, default=default_lr, help="Adam learning rate (on colour logits)")
    p.add_argument("--loss", choices=["ce", "cw"], default="ce", help="attack loss: cross-entropy or C&W margin")
    p.add_argument("--kappa", type=cli_types.non_negative, default=0.0, help="confidence margin of --loss cw")
    p.add_argument("--tail-fraction", type=cli_types.fraction, default=1.0,
                   help="hard-draw weighting: minimise the mean loss of this fraction of each step's draws, the "
                        "hardest ones (CVaR; 1: the plain mean over the draws)")
    p.add_argument("--lambda-nps", type=cli_types.non_negative, default=0.0,
                   help="weight of the non-printability score against --palette (0: off)")
    p.add_argument("--lambda-tv", type=cli_types.non_negative, default=0.0,
                   help="weight of the total-variation smoothness penalty (0: off)")
    p.add_argument("--palette", help="palette JSON ({\"colors\": [[r,g,b],...]}); default: built-in")
    p.add_argument("--device", type=cli_types.device, help="cpu / cuda / cuda:N (default: CUDA when available)")
    p.add_argument("--out", required=True, type=cli_types.output_dir,
                   help="run directory (resumed if it exists with the same config)")
    add_run_options(p, checkpoint_every=50, channels_last=True)


def add_run_options(p: argparse.ArgumentParser, *, checkpoint_every: int, channels_last: bool,
                    eval_samples: int = 1000) -> None:
    """The options every physical attack's command shares (``physical.loop``): evaluation draws and seeds,
    checkpoints, progress, the speed settings, iterate selection and early stopping."""
    ev = p.add_argument("--eval-samples", type=cli_types.count(), default=eval_samples,
                        help="fresh EOT draws for the success rate, >= 1")
    cli_types.add_deprecated_alias(p, "--eval", ev)
    p.add_argument("--eval-batch-size", type=cli_types.batch, default=100,
                   help="evaluation draws per model pass")
    p.add_argument("--seed", type=cli_types.seed, default=0, help="seed of the optimisation's draws and initial colours")
    p.add_argument("--eval-seed", type=cli_types.seed, help="evaluation generator seed (default: seed + 1000003)")
    p.add_argument("--checkpoint-every", type=cli_types.count(), default=checkpoint_every,
                   help="steps between checkpoints in --out (resume and extend from there)")
    cli_types.add_progress_option(p)
    add_speed_options(p, channels_last=channels_last)


def add_speed_options(p: argparse.ArgumentParser, *, channels_last: bool) -> None:
    """The speed options of every physical attack (``physical.loop``): --precision, --channels-last /
    --no-channels-last (default ``channels_last``), --compile, --eot-batch, --allocator."""
    sp = p.add_argument_group("speed (docs/performance.md)")
    sp.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: bfloat16 autocast of the optimisation's forward/backward (evaluation stays fp32); "
                         "faster on CPUs with AMX/AVX512-BF16 and on GPUs, slower on CPUs without them")
    sp.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                    default=channels_last,
                    help=f"run the model in NHWC layout (default: {'on' if channels_last else 'off'})")
    sp.add_argument("--compile", action="store_true", help="torch.compile the model for the optimisation loop")
    sp.add_argument("--fold-bn", action="store_true",
                    help="optimise and validate on a copy of the model with each BatchNorm folded into the convolution "
                         "before it (same function up to float rounding, fewer passes; the evaluation uses the model "
                         "as given)")
    sp.add_argument("--eot-batch", type=cli_types.batch, default=None,
                    help="EOT draws per model pass within a step (default: all --batch-size draws in one pass); "
                         "the same gradient up to rounding, less activation memory")
    sp.add_argument("--allocator", choices=["auto", "tcmalloc", "glibc"], default="auto",
                    help="auto (default): re-run this command with tcmalloc preloaded when it is installed "
                         "(bash setup.sh --with-tcmalloc installs libtcmalloc-minimal4); tcmalloc: require it; glibc: as started")
    sel = p.add_argument_group("iterate selection, early stopping and learning-rate schedule (physical/loop.py)")
    sel.add_argument("--select-every", type=cli_types.count_or_zero, default=0,
                     help="every N steps score the current perturbation on fixed validation draws (their own "
                          "generator: neither the optimisation's nor --eval-samples') and keep the best iterate; 0: off, "
                          "the last iterate")
    sel.add_argument("--select-samples", type=cli_types.count(), default=200, help="validation draws per check")
    sel.add_argument("--select-from", type=cli_types.count_or_zero, default=0, metavar="STEP",
                     help="no validation check before this step (the early checks cannot reach --stop-at and cost "
                          "as much as the late ones); the last step is always checked")
    sel.add_argument("--stop-at", type=cli_types.fraction, default=None,
                     help="stop once validation success reaches this rate (needs --select-every); default: never")
    sel.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                     help="Adam's learning rate per step: constant --lr, or cosine-annealed from --lr towards 0 over "
                          "--steps (a cosine run resumes but cannot be extended)")





def ensure_allocator(choice: str) -> None:
    """For ``--allocator``: re-execute this process once with tcmalloc in LD_PRELOAD (auto / tcmalloc), or raise
    when ``tcmalloc`` is required and missing. Returns when nothing needs doing (glibc, already loaded, or auto
    without the library)."""
    if choice == "glibc" or tcmalloc_loaded():
        return
    lib = find_tcmalloc()
    if lib is None:
        if choice == "tcmalloc":
            raise ConfigError("--allocator tcmalloc: libtcmalloc_minimal.so.4 is not installed (Debian/Ubuntu: "
                              "apt-get install libtcmalloc-minimal4, which `bash setup.sh --with-tcmalloc` does)")
        return
    if os.environ.get("TESTBED_ALLOCATOR_REEXEC") == "1":  # tried once already: do not loop
        if choice == "tcmalloc":
            raise ConfigError(f"--allocator tcmalloc: {lib} did not load with LD_PRELOAD")
        return
    argv0 = sys.argv[0]
    if os.path.basename(argv0) != "testbed" or not (os.path.isfile(argv0) and os.access(argv0, os.X_OK)):
        return  # not started as the `testbed` console script (e.g. from Python or pytest): keep running as is
    env = dict(os.environ, TESTBED_ALLOCATOR_REEXEC="1")
    env["LD_PRELOAD"] = ":".join([lib] + [p for p in env.get("LD_PRELOAD", "").split(":") if p])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv0, sys.argv, env)


def _speed_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(precision=getattr(args, "precision", "fp32"), channels_last=getattr(args, "channels_last", True),
                compile=getattr(args, "compile", False), fold_bn=getattr(args, "fold_bn", False),
                eot_batch=getattr(args, "eot_batch", None),
                select_every=getattr(args, "select_every", 0), select_samples=getattr(args, "select_samples", 200),
                select_from=getattr(args, "select_from", 0),
                stop_at=getattr(args, "stop_at", None), lr_schedule=getattr(args, "lr_schedule", "constant"))


def _eot_arg(value: str) -> Any:
    if Path(value).suffix.lower() in (".json", ".yaml", ".yml"):
        from physical.eot import EOTConfig

        return EOTConfig.load(value)
    return value


def resolve_class(value: str, labels: Any) -> int:
    """A class index from an index or a label name (case-insensitive; spaces and underscores equivalent)."""
    names = [str(n) for n in labels]
    if value.strip().isdigit():
        idx = int(value)
    else:
        norm = lambda s: s.strip().lower().replace("_", " ")  # noqa: E731
        hits = [i for i, n in enumerate(names) if norm(n) == norm(value)]
        if not hits:
            close = [n for n in names if norm(value) in norm(n)][:8]
            raise ConfigError(f"--target {value!r} is not a label of this model" + (f"; close: {close}" if close else ""))
        idx = hits[0]
    if names and not 0 <= idx < len(names):
        raise ConfigError(f"--target {idx} is out of range [0, {len(names) - 1}]")
    return idx


def _device(args: argparse.Namespace) -> torch.device:
    from testbed.device import resolve_device

    return resolve_device(args.device)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_scene(name: str, size: int) -> torch.Tensor:
    from testbed.imageio import load_image
    from testbed.photos import imagenet_preprocess, list_photos, load_photo

    x = load_photo(name) if name in list_photos() else load_image(name, convert=True)
    return imagenet_preprocess(x, size)


def _attack_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        eot=_eot_arg(args.eot), steps=args.steps, batch_size=args.batch_size, lr=args.lr, loss=args.loss,
        kappa=args.kappa, tail_fraction=args.tail_fraction, lambda_nps=args.lambda_nps, lambda_tv=args.lambda_tv,
        palette=args.palette,
        eval_samples=args.eval_samples, eval_batch_size=args.eval_batch_size, seed=args.seed, eval_seed=args.eval_seed,
        checkpoint_every=args.checkpoint_every, **_speed_kwargs(args),
    )


def _report(kind: str, result: Any, args: argparse.Namespace, seconds: float, device: torch.device,
            extra: dict[str, Any]) -> int:
    summary = {
        "command": kind,
        "out": args.out,
        "success_rate": result.success_rate,
        "initial_success_rate": result.initial_success_rate,
        "eval_samples": int(result.success.numel()),
        "seconds": round(seconds, 1),
        "machine": machine_line(),
        "allocator": "tcmalloc" if tcmalloc_loaded() else "glibc",
        "precision": getattr(args, "precision", "fp32"),
        **extra,
    }
    from testbed.runs import atomic_write_json
    from testbed.inputs import load_json

    metrics_path = Path(args.out) / "metrics.json"
    metrics = load_json(metrics_path, what="run metrics file") if metrics_path.is_file() else {}
    if not isinstance(metrics, dict):
        raise ConfigError(f"run metrics file {metrics_path} must hold a JSON object")
    atomic_write_json(metrics_path, {**metrics, **summary})
    print(json.dumps(summary, indent=2))
    return 0


def run_patch(args: argparse.Namespace) -> int:
    from physical.universal import UniversalPatch, make_mask
    from testbed.models.registry import get_entry, get_model

    # Every option, file and class name is checked before the model is loaded or anything is written.
    entry = get_entry(args.model)
    device = _device(args)
    size = entry.input_size[0]
    if args.untargeted == (args.target is not None):
        raise ConfigError("give exactly one of --target CLASS or --untargeted")
    target = resolve_class(args.target, entry.labels) if args.target is not None else None
    area_max = args.area
    area_min = args.area_min if args.area_min is not None else area_max
    if area_min > area_max:
        raise ConfigError(f"--area-min {area_min:g} is larger than --area {area_max:g}")
    from testbed.photos import resolve_images

    names = resolve_images(args.scenes, what="--scenes") if args.scenes.strip(" ,") else []
    if not names:
        raise ConfigError("--scenes is empty")
    patch_size = args.patch_size
    if patch_size is None:
        fill = float(make_mask(args.shape, 64).mean())
        if fill <= 0:
            raise ConfigError(f"--shape {args.shape}: the mask is empty (no white pixel)")
        patch_size = max(8, round(math.sqrt(area_max * size * size / fill)))
    initial = _initial_patch(args.init_from, args.patch_size, args.shape) if args.init_from else None
    if initial is not None:
        patch_size = initial.shape[-1]
    attack = UniversalPatch(
        patch_size=patch_size, shape=args.shape,
        placement={"area": [area_min, area_max], "rotation": args.rotation}, **_attack_kwargs(args),
    )
    scenes = torch.cat([_load_scene(n, size) for n in names])
    cli_types.check_run_out(args.out, "patch")
    ensure_allocator(getattr(args, "allocator", "glibc"))
    model = get_model(args.model, device=device)
    scenes = scenes.to(device)
    labels = None
    if target is None:
        with torch.no_grad():
            labels = model(scenes).argmax(1)
    t0 = time.perf_counter()
    init = {"init_from": str(Path(args.init_from).resolve())} if args.init_from else {}
    result = attack(
        model, scenes, target=target, labels=labels, initial=initial, run_dir=args.out, progress=args.progress,
        run_extra={"model": args.model, "scenes": names, **init},
    )
    return _report(
        "patch", result, args, time.perf_counter() - t0, device,
        {"model": args.model, "target": target, "target_name": None if target is None else entry.labels[target],
         "area": [area_min, area_max], "patch_size": patch_size, "scenes": names, "eot": args.eot, **init},
    )


def _initial_patch(run_dir: str, patch_size: int | None, shape: str | None, kind: str = "patch") -> torch.Tensor:
    """The patch colours (1, 3, P, P) of a finished run of ``kind`` (``patch``; ``person-patch`` for
    ``testbed evade-persons``, whose patches are square: ``shape`` None), checked against this run's --shape and
    ``patch_size`` (the --patch-size given explicitly; None: the run's size is used)."""
    from testbed.runs import load_run, load_run_tensor

    config, _ = load_run(run_dir, kind)
    patch = load_run_tensor(Path(run_dir) / "perturbation.pt")
    if patch.ndim != 4 or patch.shape[:2] != (1, 3) or patch.shape[-1] != patch.shape[-2]:
        raise ConfigError(f"--init-from {run_dir}: perturbation.pt has shape {tuple(patch.shape)}, not (1, 3, P, P)")
    if patch_size is not None and patch.shape[-1] != patch_size:
        raise ConfigError(f"--init-from {run_dir}: its patch is {patch.shape[-1]} px, --patch-size is {patch_size}")
    if shape is not None and config.get("shape", "circle") != shape:
        raise ConfigError(f"--init-from {run_dir}: that run's patch shape is {config.get('shape')!r}, this run's "
                          f"--shape is {shape!r}")
    return patch.clamp(0.0, 1.0)


def _sign_photo(args: argparse.Namespace, size: int) -> Any:
    """The sign of ``--sign-photo`` located by --sign-polygon / --sign-mask / --sign-corners, at ``size`` px."""
    from physical.sign_photo import parse_points, sign_from_photo
    from testbed.imageio import load_image
    from testbed.photos import list_photos, load_photo

    given = [o for o in ("sign_polygon", "sign_mask", "sign_corners") if getattr(args, o, None)]
    if not given:
        raise ConfigError("--sign-photo needs the sign's place in it: --sign-polygon X1,Y1,..., --sign-mask MASK.png "
                          "or --sign-corners (TL, TR, BR, BL of its bounding square)")
    polygon = parse_points(args.sign_polygon, what="--sign-polygon") if args.sign_polygon else None
    corners = parse_points(args.sign_corners, what="--sign-corners", count=4) if args.sign_corners else None
    photo = (load_photo(args.sign_photo) if args.sign_photo in list_photos()
             else load_image(args.sign_photo, convert=True, what="sign photo"))
    mask = load_image(args.sign_mask, convert=True, what="sign mask")[:, :1] if args.sign_mask else None
    return sign_from_photo(photo, size, polygon=polygon, mask=mask, corners=corners, margin=args.sign_margin)


def _artwork_pools(args: argparse.Namespace, size: int, background: Any, record: dict[str, Any]) -> dict[str, Any]:
    """``signs`` / ``eval_signs`` for ``SignSticker`` from --artwork / --eval-artwork (recorded in ``record``)."""
    from physical.universal import sign_artwork_pool

    n = getattr(args, "artwork", 0) or 0
    m = getattr(args, "eval_artwork", None)
    if not n:
        if m:
            raise ConfigError("--eval-artwork needs --artwork N (the drawings the sticker is optimised over)")
        return {}
    m = n if m is None else m
    signs, _ = sign_artwork_pool(args.sign, size, n, split="train", seed=args.seed, background=background)
    record.update(artwork=n, artwork_split="train", artwork_seed=args.seed)
    pools = {"signs": signs}
    if m:
        # the held-out split, from another stream than the training pool's: drawings (and fonts) never optimised on
        eval_seed = args.seed + 1_000_003
        pools["eval_signs"], _ = sign_artwork_pool(args.sign, size, m, split="heldout-artwork", seed=eval_seed,
                                                   background=background)
        record.update(eval_artwork=m, eval_artwork_split="heldout-artwork", eval_artwork_seed=eval_seed)
    return pools


def run_sticker(args: argparse.Namespace) -> int:
    from physical.universal import (
        SignSticker, load_mask, mask_fraction_of_sign, rp2_sign_rectangles, saliency_mask, strokes_mask,
    )
    from testbed.models.registry import get_entry, get_model
    from worlds.signs.render import class_names, composite, render_sign

    # Every option, file and class name is checked before the model is loaded or anything is written.
    entry = get_entry(args.model)
    device = _device(args)
    h, w = entry.input_size
    if args.sign not in class_names():
        raise ConfigError(f"--sign {args.sign!r} is not a sign class; known: {', '.join(class_names())}")
    size = args.sign_size
    if isinstance(size, bool) or not isinstance(size, int) or size < min(h, w):
        raise ConfigError(f"--sign-size must be an integer >= the model input size {min(h, w)}, got {size!r}")
    if args.untargeted == (args.target is not None):
        raise ConfigError("give exactly one of --target CLASS or --untargeted")
    label = resolve_class(args.sign, entry.labels) if args.sign in [str(n) for n in entry.labels] else None
    target = resolve_class(args.target, entry.labels) if args.target is not None else None
    if target is None and label is None:
        raise ConfigError(f"--untargeted needs the sign {args.sign!r} to be a label of model {args.model}")
    if args.mask == "saliency" and target is None:
        raise ConfigError("--mask saliency needs --target (the saliency of the targeted loss)")
    if args.mask not in ("rects", "saliency", "strokes"):
        load_mask(args.mask, (size, size))  # a bad mask file is refused before the model is loaded
    sign_extra: dict[str, Any] = {}
    if args.sign_photo is None:
        given = [o for o in ("sign_polygon", "sign_mask", "sign_corners") if getattr(args, o, None)]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} locates the sign in a photo: give --sign-photo too")
        args.background = "0.5" if args.background is None else args.background
        try:
            background: Any = cli_types.unit_interval(args.background)
        except argparse.ArgumentTypeError as exc:
            if _is_number(args.background):
                raise ConfigError(f"--background {args.background}: {exc}") from None
            background = _load_scene(args.background, size)[..., :size, :size]
        rgba = render_sign(args.sign, size)  # the sign at print resolution; the camera resamples to (h, w)
        sign = composite(rgba, background).clamp(0, 1)
        alpha = rgba[:, 3:4]
        box = (0.0, 0.0, float(size), float(size))  # the rendered canvas is the sign's nominal size
        if args.sign_width_mm is not None:
            sign_extra["sign_width_mm"] = args.sign_width_mm
        pools = _artwork_pools(args, size, background, sign_extra)
    else:
        if args.background is not None:
            raise ConfigError("--background is for a rendered sign; the --sign-photo brings its own surroundings")
        if getattr(args, "artwork", 0) or getattr(args, "eval_artwork", None):
            raise ConfigError("--artwork varies a rendered sign's drawing; a --sign-photo is one real sign")
        pools = {}
        sp = _sign_photo(args, size)
        sign, alpha, box = sp.sign, sp.alpha, sp.box
        args.background = "photo"
        sign_extra.update(sign_photo=args.sign_photo, sign_photo_source=sp.source, sign_box_px=list(box),
                          sign_width_mm=args.sign_width_mm,
                          sign_outline_px=None if sp.outline is None else [list(q) for q in sp.outline])
    attack = SignSticker(norm=args.norm, lambda_norm=args.lambda_norm, init=args.init, input_size=(h, w),
                         max_mask_fraction=args.max_mask_fraction, **_attack_kwargs(args))
    cli_types.check_run_out(args.out, "sticker")
    ensure_allocator(getattr(args, "allocator", "glibc"))
    model = get_model(args.model, device=device)
    t0 = time.perf_counter()
    if args.mask == "rects":  # RP2's bars above / below the legend, placed within the sign's box
        (x0, y0, x1, y1), bw, bh = box, box[2] - box[0], box[3] - box[1]
        mask = rp2_sign_rectangles(alpha, args.budget, x_range=((x0 + 0.18 * bw) / size, (x0 + 0.82 * bw) / size),
                                   legend=((y0 + 0.385 * bh) / size, (y0 + 0.615 * bh) / size))
    elif args.mask == "saliency":
        sal = attack.saliency(model, sign.to(device), target=target, samples=args.saliency_samples, alpha=alpha)
        mask = saliency_mask(sal, alpha, args.budget, cell=args.cell)
    elif args.mask == "strokes":
        mask = strokes_mask(size, size, torch.Generator().manual_seed(args.seed), strokes=args.strokes) * alpha
    else:
        mask = load_mask(args.mask, (size, size)) * alpha  # stickers stay on the sign
    mask_fraction = mask_fraction_of_sign(mask, alpha)
    result = attack(
        model, sign, mask, target=target, label=None if target is not None else label, alpha=alpha,
        source_label=label, run_dir=args.out, progress=args.progress, **pools,
        run_extra={"model": args.model, "sign": args.sign, "mask": args.mask, "background": args.background,
                   "sign_size": size, "budget": args.budget, "cell": args.cell,
                   "saliency_samples": args.saliency_samples, **sign_extra},
    )
    from testbed.runs import save_image

    # the sign's own area, for `testbed print stickers RUN` (its outline on the placement guide)
    save_image(alpha.expand(1, 3, -1, -1).clamp(0, 1), Path(args.out) / "sign_alpha.png", bits=8)
    with torch.no_grad():
        small = torch.nn.functional.interpolate(sign, size=(h, w), mode="bilinear", align_corners=False,
                                                antialias=True)
        clean_pred = int(model(small.to(device)).argmax(1))
    ex = result.extras
    return _report(
        "sticker", result, args, time.perf_counter() - t0, device,
        {"model": args.model, "sign": args.sign, "target": target,
         "target_name": None if target is None else str(entry.labels[target]),
         "clean_prediction": str(entry.labels[clean_pred]) if entry.labels else clean_pred,
         "mask": args.mask, "sign_size": size, "model_input": [h, w],
         "mask_fraction_of_sign": mask_fraction, "max_mask_fraction": args.max_mask_fraction,
         "clean_accuracy": ex.get("clean_accuracy"), "clean_correct_count": ex.get("clean_correct_count"),
         "success_rate_given_clean_correct": ex.get("success_rate_given_clean_correct"), "eot": args.eot},
    )
