"""Measure the digital attacks against torchattacks 3.5.1 on a registered model and the shipped photos.

    python -m physical.attacks.bench --model mobilenet_v2 [--photos chelsea coffee ...] [--json out.json]

For each attack: success rate, median L2 / max L∞ of the perturbation, seconds; for FGSM/BIM/PGD the max abs
difference to torchattacks; for C&W-L2 and DeepFool torchattacks' success and median L2 on the same batch.
Labels are the model's clean predictions. Needs torchattacks (the ``bench`` extra).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

NATURAL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right", "grace_hopper")


def _stats(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, target=None) -> dict[str, Any]:
    with torch.no_grad():
        pred = model(adv).argmax(1)
    ok = pred == target if target is not None else pred != y
    d = (adv - x).flatten(1)
    l2 = d.norm(dim=1)
    return {
        "success": float(ok.float().mean()),
        "median_l2_success": float(l2[ok].median()) if ok.any() else None,
        "median_l2": float(l2.median()),
        "max_linf_255": float(d.abs().amax()) * 255,
        "_ok": ok,
        "_l2": l2,
    }


def main(argv: list[str] | None = None) -> int:
    import torchattacks as ta

    from physical.attacks import BIM, FGSM, PGD, PGDL2, CarliniWagnerL2, DeepFool, FoolingImages, IterLL, StepLL
    from testbed.models.registry import get_model
    from testbed.photos import imagenet_view

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--photos", nargs="*", default=list(NATURAL_PHOTOS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--cw-steps", type=int, default=100)
    ap.add_argument("--cw-search", type=int, default=5)
    ap.add_argument("--json", help="write the table as JSON here")
    ap.add_argument("--full-deepfool", action="store_true", help="also run torchattacks' DeepFool on a >100-class model")
    args = ap.parse_args(argv)

    model = get_model(args.model)
    dev = next(model.parameters()).device
    x = torch.cat([imagenet_view(p, args.size) for p in args.photos]).to(dev)
    with torch.no_grad():
        y = model(x).argmax(1)
    rows: list[dict[str, Any]] = []

    def run(name: str, attack: Any, ref: Any = None, target=None, compare: str = "equal") -> None:
        t0 = time.perf_counter()
        r = attack(model, x, y, target=target)
        sec = time.perf_counter() - t0
        row = {"attack": name, "seconds": round(sec, 2), **_stats(model, x, y, r.adversarial, target)}
        if ref is not None:
            t0 = time.perf_counter()
            a = ref(x, y)
            row["torchattacks_seconds"] = round(time.perf_counter() - t0, 2)
            if compare == "equal":
                row["max_abs_diff_vs_torchattacks"] = float((r.adversarial - a).abs().max())
            else:
                s = _stats(model, x, y, a)
                row["torchattacks_success"] = s["success"]
                row["torchattacks_median_l2_success"] = s["median_l2_success"]
                both = row["_ok"] & s["_ok"]
                if both.any():
                    row["median_l2_both_fooled"] = [float(row["_l2"][both].median()), float(s["_l2"][both].median())]
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
        print(json.dumps(rows[-1]), flush=True)

    e8 = 8 / 255
    run("fgsm eps=8", FGSM(eps=e8), ta.FGSM(model, eps=e8))
    run("step_ll eps=8", StepLL(eps=e8))
    run("bim eps=8 (alpha=1, 10 steps)", BIM(eps=e8), ta.BIM(model, eps=e8, alpha=1 / 255, steps=0))
    run("iter_ll eps=8", IterLL(eps=e8))
    run("pgd eps=8 (alpha=2, 10 steps, no random start)", PGD(eps=e8, random_start=False),
        ta.PGD(model, eps=e8, alpha=2 / 255, steps=10, random_start=False))
    run("pgd eps=8 random start", PGD(eps=e8))
    run("pgd_l2 eps=1 (alpha=0.2, 10 steps)", PGDL2(eps=1.0))
    run(f"cw_l2 ({args.cw_search}x{args.cw_steps}, c0=0.1) vs torchattacks CW(c=1, {args.cw_steps})",
        CarliniWagnerL2(binary_search_steps=args.cw_search, steps=args.cw_steps, initial_const=0.1),
        ta.CW(model, c=1, steps=args.cw_steps, lr=0.01), compare="stats")
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    # torchattacks' DeepFool builds the full K-class Jacobian per sample per step (K backward passes each):
    # on a 1000-class model that takes hours on a CPU, so it is compared only on small-K models (see the tests).
    ref_df = ta.DeepFool(model, steps=50, overshoot=0.02) if n_classes <= 100 or args.full_deepfool else None
    run("deepfool (overshoot 0.02, 50 steps, 10 candidates)", DeepFool(), ref_df, compare="stats")
    t0 = time.perf_counter()
    fool = FoolingImages(steps=300)(model, x, y, generator=torch.Generator().manual_seed(0))
    rows.append({
        "attack": "fooling images (300 signed steps, alpha=2/255, from uniform noise)",
        "seconds": round(time.perf_counter() - t0, 2),
        "success": fool.success_rate,
        "confidence": [round(float(c), 4) for c in fool.extras["confidence"]],
        "steps_used": len(fool.loss_history),
    })
    print(json.dumps(rows[-1]), flush=True)
    meta = {"model": args.model, "photos": args.photos, "device": str(dev), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(meta, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
