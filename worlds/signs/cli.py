"""``testbed signs {render,dataset,train,evaluate}``: the traffic-sign world from the command line."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from testbed import cli_types
from testbed.errors import ConfigError


def _write_png(x, path: Path) -> None:
    """Write a 1xCxHxW tensor (C = 3 or 4) in [0, 1] as an 8-bit PNG, atomically."""
    import numpy as np
    from PIL import Image

    from testbed.runs import write_atomic

    arr = (x[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    image = Image.fromarray(arr, "RGBA" if arr.shape[2] == 4 else "RGB")
    write_atomic(path, lambda fh: image.save(fh, format="PNG"))


def _png_out(text: str) -> str:
    """A ``type=`` for an output PNG path."""
    if Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"must be a .png file, got {text!r}")
    return cli_types.output_file(text)


def _cmd_render(args: argparse.Namespace) -> int:
    from worlds.signs.render import SIGN_CLASSES, composite, get_sign, render_sheet, render_sign

    if args.list:
        for s in SIGN_CLASSES:
            gid = "-" if s.gtsrb_id is None else str(s.gtsrb_id)
            print(f"{s.name:32s} GTSRB {gid:>3s}  VZ {s.vz:7s} {s.shape:18s} {s.size_mm:6.0f} mm  {s.title}")
        return 0
    if args.out is None:
        raise ConfigError("testbed signs render: give --out PATH (a .png file), or --list")
    out = Path(args.out)
    if args.name in (None, "all"):
        _write_png(render_sheet(args.size), out)
        print(f"wrote contact sheet of {len(SIGN_CLASSES)} classes to {out}")
        return 0
    sign = get_sign(args.name)
    x = render_sign(sign.name, args.size)
    _write_png(x if args.rgba else composite(x, 1.0), out)
    print(f"wrote {sign.name} ({args.size}x{args.size} px, physical side {sign.size_mm:.0f} mm) to {out}")
    return 0


def _cmd_dataset(args: argparse.Namespace) -> int:
    import torch

    from worlds.signs.dataset import DatasetConfig, generate_dataset

    cfg = DatasetConfig(n=args.n, size=args.size, split=args.split, seed=args.seed)
    ds = generate_dataset(cfg, progress=args.progress)
    if args.out:
        from testbed.runs import write_atomic

        out = Path(args.out)
        data = {"images": ds.images, "labels": ds.labels, "class_names": list(ds.class_names), "config": cfg.to_dict()}
        write_atomic(out, lambda fh: torch.save(data, fh))
        print(f"wrote {len(ds)} images ({args.size}x{args.size}, split {args.split}, seed {args.seed}) to {out}")
    if args.preview:
        from torchvision.utils import make_grid

        grid = make_grid(ds.images[: min(len(ds), 120)], nrow=15, padding=1)[None]
        _write_png(grid, Path(args.preview))
        print(f"wrote preview grid to {args.preview}")
    if not args.out and not args.preview:
        raise ConfigError("testbed signs dataset: give --out PATH.pt and/or --preview PATH.png")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from worlds.signs.train import TrainConfig, save_checkpoint, train

    kw = {k: getattr(args, k) for k in ("data", "seed", "n_train", "epochs", "batch_size", "lr", "threads",
                                        "n_heldout", "heldout_seed", "gtsrb_root", "download")
          if getattr(args, k) is not None}
    cfg = TrainConfig(**kw)
    result = train(cfg, progress=args.progress, log=print, cache_dir=args.data_cache)
    command = "testbed " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["signs"] else None
    out, card = save_checkpoint(result, args.out, args.card, command=command)
    ev = result.heldout
    print(f"held-out top-1 {ev.top1:.2f}% top-5 {ev.top5:.2f}% (n={ev.n}); training {result.train_seconds:.0f} s, "
          f"total {result.total_seconds:.0f} s")
    print(f"wrote {out} and {card}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from worlds.signs.train import evaluate_checkpoint

    if args.record_card:
        from worlds.signs.train import record_independent_eval

        if args.data != "independent" or not args.weights:
            raise ConfigError("--record-card needs --data independent and --weights (the card's weights file)")
        rec = record_independent_eval(args.record_card, args.weights, n=args.eval_samples, seed=args.seed,
                                      threads=args.threads)
        print(f"independent held-out top-1 {rec['top1']:.2f}% [{rec['top1_low']:.2f}, {rec['top1_high']:.2f}] "
              f"(k={rec['k']}, n={rec['n']}); lowest class {rec['lowest_class']} "
              f"{rec['per_class'][rec['lowest_class']]['top1']:.1f}%; written to {args.record_card}")
        return 0
    ev = evaluate_checkpoint(args.weights, data=args.data, n=args.eval_samples, seed=args.seed, gtsrb_root=args.gtsrb_root,
                             download=args.download, threads=args.threads)
    if args.json:
        print(json.dumps({"n": ev.n, "top1": ev.top1, "top5": ev.top5, "per_class_top1": ev.per_class_top1}, indent=2))
    else:
        print(f"top-1 {ev.top1:.2f}%  top-5 {ev.top5:.2f}%  (n={ev.n}, data={args.data})")
        worst = sorted(ev.per_class_top1.items(), key=lambda kv: kv[1])[:5]
        print("lowest per-class top-1: " + ", ".join(f"{k} {v:.1f}%" for k, v in worst))
    return 0


def add_parser(subparsers) -> None:
    """Add ``signs`` (with subcommands render, dataset, train, evaluate) to the testbed CLI."""
    from worlds.signs.train import TrainConfig

    p = subparsers.add_parser("signs", help="traffic-sign world: render signs, generate data, train/evaluate sign-cnn")
    sub = p.add_subparsers(dest="signs_command", metavar="SUBCOMMAND", required=True)

    r = sub.add_parser("render", help="render one sign class (or a contact sheet of all) to PNG")
    r.add_argument("name", nargs="?", help="class name (see --list); omit or 'all' for a contact sheet")
    r.add_argument("--size", type=cli_types.integer(8, 4096), default=256, help="side in pixels, 8..4096 (default 256)")
    r.add_argument("--out", type=_png_out, help="output PNG")
    r.add_argument("--rgba", action="store_true", help="keep the alpha mask (default: composite on white)")
    r.add_argument("--list", action="store_true", help="list classes with GTSRB ids and physical sizes")
    r.set_defaults(func=_cmd_render)

    d = sub.add_parser("dataset", help="generate a rendered dataset (deterministic by seed)")
    d.add_argument("--split", choices=["train", "heldout"], default="heldout",
                   help="training or held-out split (disjoint backgrounds, fonts, seeds)")
    d.add_argument("--n", type=cli_types.count(10_000_000), default=1000, help="number of images")
    d.add_argument("--size", type=cli_types.integer(8, 1024), default=32, help="image side in pixels")
    d.add_argument("--seed", type=cli_types.seed, default=1, help="dataset seed")
    d.add_argument("--out", type=cli_types.output_file, help="output .pt with images, labels, class_names, config")
    d.add_argument("--preview", type=_png_out, help="PNG grid of the first 120 images")
    cli_types.add_progress_option(d)
    d.set_defaults(func=_cmd_dataset)

    t = sub.add_parser("train", help="train sign-cnn from scratch (reproducible by --seed)")
    t.add_argument("--out", required=True, type=cli_types.output_file,
                   help="weights file to write (.pt); the card goes next to it")
    t.add_argument("--card", type=cli_types.output_file, help="model card path (default: OUT with .card.json)")
    t.add_argument("--data", choices=["rendered", "gtsrb"], default=None,
                   help="rendered signs (default, offline) or GTSRB's 43 classes (torchvision)")
    t.add_argument("--seed", type=cli_types.seed, help=f"training seed (default {TrainConfig.seed})")
    t.add_argument("--n-train", type=cli_types.count(10_000_000),
                   help=f"rendered training images (default {TrainConfig.n_train})")
    t.add_argument("--epochs", type=cli_types.count(100_000), help=f"default {TrainConfig.epochs}")
    t.add_argument("--batch-size", type=cli_types.batch, help=f"images per step (default {TrainConfig.batch_size})")
    t.add_argument("--lr", type=cli_types.positive, help=f"learning rate (default {TrainConfig.lr:g})")
    t.add_argument("--threads", type=cli_types.threads, help=f"torch CPU threads (default {TrainConfig.threads}; "
                                                              "part of what makes a run reproducible)")
    t.add_argument("--n-heldout", type=cli_types.count(10_000_000),
                   help=f"held-out images scored after training (default {TrainConfig.n_heldout})")
    t.add_argument("--heldout-seed", type=cli_types.seed, help=f"held-out set seed (default {TrainConfig.heldout_seed})")
    t.add_argument("--gtsrb-root", help=f"GTSRB folder (default {TrainConfig.gtsrb_root})")
    t.add_argument("--download", action="store_true", default=None, help="download GTSRB if missing (internet)")
    t.add_argument("--data-cache", type=cli_types.output_dir,
                   help="keep the rendered datasets in this folder (checked files, keyed by their config) so a "
                        "second run on the same data skips rendering")
    cli_types.add_progress_option(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="top-1/top-5 of sign-cnn on a fresh rendered held-out set or GTSRB test")
    e.add_argument("--weights", type=cli_types.input_file("weights file"),
                   help="checkpoint (default: the committed sign_cnn.pt)")
    e.add_argument("--data", choices=["rendered", "independent", "gtsrb"], default="rendered",
                   help="fresh rendered held-out signs (offline), the independent held-out set "
                        "(worlds.signs.independent: another drawing method, never trained on) or the GTSRB test set")
    ev = e.add_argument("--eval-samples", type=cli_types.count(10_000_000), default=2000,
                        help="rendered images to score")
    cli_types.add_deprecated_alias(e, "--n", ev)
    e.add_argument("--seed", type=cli_types.seed, default=1, help="seed of the rendered held-out set "
                   "(the card's independent set uses seed 0)")
    e.add_argument("--gtsrb-root", default=TrainConfig.gtsrb_root, help="GTSRB folder")
    e.add_argument("--download", action="store_true", help="download GTSRB if missing (internet)")
    e.add_argument("--threads", type=cli_types.threads, help="torch CPU threads (default: torch's)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--record-card", type=cli_types.output_file,
                   help="with --data independent: write the result into this model card (independent_eval)")
    e.set_defaults(func=_cmd_evaluate)
