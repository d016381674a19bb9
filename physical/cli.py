"""``testbed attack digital``: run one digital attack on one image and write the result to a folder.

    testbed attack digital --attack pgd --eps 8 --model mobilenet_v2 --image chelsea --out runs/pgd

``--eps``/``--alpha`` are in each attack's declared budget units (``physical.attacks.get_attack_spec(name)``): the
0-255 scale for the L∞ attacks, L2 radii on [0, 1] images for the L2 ones; attacks without a budget refuse ``--eps``
(their ``--alpha`` is absolute). Any other hyper-parameter: ``--param KEY=VALUE`` (VALUE parsed as JSON).
The label attacked is the model's clean top-1 prediction unless ``--label`` is given.
Writes: clean.png, adversarial.png (lossless), perturbation.pt and .npy (float32, adversarial - clean),
result.json (config, seed, success, top-5 before/after, L2/L∞ norms, loss history, time).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from testbed import cli_types
from testbed.errors import ConfigError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``attack`` subcommand (with its ``digital`` action) to ``subparsers``."""
    p = subparsers.add_parser("attack", help="run an adversarial attack (digital attacks for now)")
    sub = p.add_subparsers(dest="attack_kind", metavar="KIND", required=True)
    d = sub.add_parser("digital", help="FGSM, Step-LL, BIM, Iter-LL, PGD (L∞/L2), C&W-L2, DeepFool on one image")
    d.add_argument("--attack", required=True, type=_attack_name, choices=_AttackNames(), metavar="NAME",
                   help=_attack_help())
    cli_types.add_model_options(d, default="mobilenet_v2")
    d.add_argument("--image", required=True, help="image file or shipped photo name (e.g. chelsea); a folder or "
                                                  "glob must name exactly one image")
    d.add_argument("--out", required=True, type=cli_types.output_dir, help="output folder (created)")
    d.add_argument("--eps", type=cli_types.positive, help="budget in the attack's units: " + _units_help())
    d.add_argument("--alpha", type=cli_types.positive,
                   help="step size, in the units of --eps (absolute for attacks without a budget)")
    d.add_argument("--steps", type=cli_types.count(), help="number of steps")
    d.add_argument("--target", help="target class (index or label name) for a targeted attack")
    d.add_argument("--label", type=cli_types.count_or_zero,
                   help="true label index (default: the model's clean prediction)")
    d.add_argument("--seed", type=cli_types.seed, default=0, help="generator seed (random start, EOT)")
    d.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="other hyper-parameter (JSON value)")
    d.set_defaults(func=run_digital)
    return p


class _AttackNames:
    """The registered attack names, read when argparse checks or shows them (attacks registered after the
    parser was built, e.g. by a test or a plugin, are accepted too)."""

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Any:
        return iter(self._names())

    @staticmethod
    def _names() -> list[str]:
        from physical.attacks.registry import list_attacks

        return list_attacks()


def _attack_name(value: str) -> str:
    """A registered attack name (argparse reports the message, naming the known ones)."""
    names = _AttackNames._names()
    if value not in names:
        raise argparse.ArgumentTypeError(f"unknown attack {value[:40]!r}; known attacks: {', '.join(names)}")
    return value


def _attack_help() -> str:
    from physical.attacks.registry import get_attack_spec, list_attacks

    return "the attack, one of: " + "; ".join(get_attack_spec(n).describe() for n in list_attacks())


def _units_help() -> str:
    """Which attacks take their budget on which scale, from the registry."""
    from physical.attacks.registry import get_attack_spec, list_attacks

    groups: dict[str | None, list[str]] = {}
    for n in list_attacks():
        groups.setdefault(get_attack_spec(n).budget_units, []).append(n)
    text = {"pixel/255": "0-255 scale (8 means 8/255)", "absolute": "absolute L2 radius on [0, 1] images",
            None: "no budget (--eps refused)"}
    return "; ".join(f"{text[u]} for {', '.join(names)}" for u, names in groups.items())


def _parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # a bare string such as norm=l2
        except RecursionError:
            raise ConfigError(f"--param {key}: the JSON value nests too deeply") from None
        except ValueError:  # e.g. an integer of more than 4300 digits
            raise ConfigError(f"--param {key}: the JSON value cannot be read (a number far too large?)") from None
    return out


def _resolve_class(value: str, labels: Any) -> int:
    if value.lstrip("-").isdigit():
        if len(value) > 12:
            raise ConfigError(f"--target {value[:20]}... is not a class index of this model")
        idx = int(value)
    else:
        names = [str(n) for n in labels]
        if value not in names:
            raise ConfigError(f"--target {value!r} is not a label name of this model (give an index or an exact name)")
        idx = names.index(value)
    if labels and not 0 <= idx < len(labels):
        raise ConfigError(f"--target {idx} is out of range [0, {len(labels) - 1}]")
    return idx


def _check_out(out: Path) -> None:
    """Refuse a non-empty --out that holds no earlier digital-attack result (the user's own files stay untouched)."""
    if out.is_dir() and not (out / "result.json").is_file() and next(out.iterdir(), None) is not None:
        raise ConfigError(f"--out {out} is not empty and holds no earlier `testbed attack digital` result; give a new "
                          "or empty folder (nothing was written there)")


def run_digital(args: argparse.Namespace) -> int:
    """Handler of ``testbed attack digital``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from physical.attacks.registry import build_attack_in_units, get_attack_spec
    from testbed.runs import save_image, write_atomic
    from testbed.models.registry import get_entry, get_model  # lazily: the registry loads model modules
    from testbed.photos import center_crop, load_images, resolve_images

    hp = _parse_params(args.param)
    _, units = get_attack_spec(args.attack).budget(hp)  # --param norm=l2 makes pgd an L2 attack
    for opt, value in (("--eps", args.eps), ("--alpha", args.alpha)):
        if value is not None and units == "pixel/255" and value > 255:
            raise ConfigError(f"{opt} {value:g} is out of range for {args.attack}: give it on the 0-255 scale, in (0, 255]")
    if args.steps is not None:
        hp["steps"] = args.steps
    hp.setdefault("seed", args.seed)
    # --eps/--alpha in the attack's budget units; every hyper-parameter is checked before the model is loaded
    attack = build_attack_in_units(args.attack, eps=args.eps, alpha=args.alpha, **hp)

    entry = get_entry(args.model)
    target_index = _resolve_class(args.target, entry.labels) if args.target is not None else None
    if args.label is not None and entry.labels and args.label >= len(entry.labels):
        raise ConfigError(f"--label {args.label} is out of range [0, {len(entry.labels) - 1}]")
    images = resolve_images(args.image, what="--image")
    if len(images) != 1:
        raise ConfigError(f"--image {args.image} names {len(images)} images; this command attacks one")
    x = load_images(images, convert=False)[0]
    _check_out(Path(args.out))
    model = get_model(args.model)  # only once every option and the image are known to be good
    device = next(model.parameters()).device

    h = entry.input_size[0]
    x = F.interpolate(x, size=round(h * 256 / 224), mode="bilinear", antialias=True).clamp(0, 1)
    x = center_crop(x, h).contiguous().to(device)

    with torch.no_grad():
        clean_logits = model(x)
    label = torch.tensor([args.label if args.label is not None else int(clean_logits.argmax(1))], device=device)
    target = None
    if target_index is not None:
        target = torch.tensor([target_index], device=device)

    t0 = time.perf_counter()
    result = attack(model, x, label, target=target, generator=torch.Generator().manual_seed(args.seed))
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        adv_logits = model(result.adversarial)

    def top5(logits: torch.Tensor) -> list[dict[str, Any]]:
        p = logits.softmax(1)[0]
        top = p.topk(min(5, p.numel()))
        names = list(entry.labels)
        return [
            {"index": int(i), "label": names[int(i)] if names else str(int(i)), "prob": float(v)}
            for v, i in zip(top.values, top.indices)
        ]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_image(x.cpu(), out / "clean.png")
    save_image(result.adversarial.cpu(), out / "adversarial.png")
    pert = result.perturbation.detach().float().cpu()
    write_atomic(out / "perturbation.pt", lambda fh: torch.save(pert, fh))
    write_atomic(out / "perturbation.npy", lambda fh: np.save(fh, pert.numpy()))
    report = {
        "command": "testbed attack digital",
        "model": args.model,
        "image": args.image,
        "input_size": list(entry.input_size),
        "seconds": round(elapsed, 3),
        "device": str(device),
        "clean_top5": top5(clean_logits),
        "adversarial_top5": top5(adv_logits),
        **result.summary(),
    }
    text = json.dumps(report, indent=2)
    write_atomic(out / "result.json", text)
    goal = f"target {int(target[0])}" if target is not None else f"label {int(label[0])}"
    print(
        f"{args.attack} on {args.model} ({goal}): success={bool(result.success[0])} "
        f"pred {report['clean_top5'][0]['label']} -> {report['adversarial_top5'][0]['label']} "
        f"({report['adversarial_top5'][0]['prob']:.3f}); L2 {report['l2'][0]:.4f} Linf {report['linf'][0] * 255:.2f}/255; "
        f"{elapsed:.1f}s; wrote {out}"
    )
    return 0
