"""Continue a finished patch run's patch under another EOT distribution (issue 16: the print-aware <= 10 % patch
fine-tuned under experiments/eot_in_situ_10pct.yaml). Same attack, same loop (``physical.loop``: checkpoints,
resume, iterate selection, fresh-draw evaluation), same placement, scenes, model and target as the source run;
only the EOT, the steps, the learning rate and the seed are given here, and the optimisation starts from the
source run's patch instead of random colours. The output is an ordinary patch run directory
(``testbed survival --patch OUT`` reads it).

    python -m bench.patch_in_situ_finetune --from RUN --eot experiments/eot_in_situ_10pct.yaml \
        --steps 400 --lr 0.05 --seed 2 --out runs/patch-toaster-10pct-insitu-ft
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from physical.eot import EOTConfig
    from physical.loop import logit
    from physical.universal import UniversalPatch
    from testbed.models.registry import get_model
    from testbed.photos import imagenet_preprocess, load_images, resolve_images
    from pipelines.survival import _load_patch_run

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="src", required=True, help="a finished `testbed patch` run directory")
    p.add_argument("--eot", required=True, help="EOT preset name or JSON/YAML EOT config file")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--select-every", type=int, default=50)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    src = Path(a.src)
    cfg, _, _, _, patch, _ = _load_patch_run(src)  # the survival table's reader of a patch run (checked)
    patch = patch.float().reshape(1, 3, cfg["patch_size"], cfg["patch_size"])
    eot = EOTConfig.load(a.eot) if Path(a.eot).suffix.lower() in (".json", ".yaml", ".yml") else a.eot
    attack = UniversalPatch(
        patch_size=cfg["patch_size"], shape=cfg.get("shape", "circle"), placement=cfg["placement"], eot=eot,
        steps=a.steps, batch_size=cfg["batch_size"], lr=a.lr, loss=cfg.get("loss", "ce"), kappa=cfg.get("kappa", 0.0),
        eval_samples=a.eval_samples, seed=a.seed, select_every=a.select_every, checkpoint_every=50, channels_last=True,
    )
    model = get_model(cfg["model"])
    size = int(cfg["scenes_shape"][-1])
    names = resolve_images(",".join(cfg["scenes"]), what="scenes")
    scenes = torch.cat([imagenet_preprocess(x, size) for x in load_images(names)])
    ctx = attack.context(model, scenes, target=int(cfg["target"]))
    w0 = logit(patch.clamp(1e-4, 1 - 1e-4)).to(ctx.device)
    t0 = time.perf_counter()
    res = attack._attack(ctx, w0, run_dir=a.out, run_extra={
        "model": cfg["model"], "scenes": cfg["scenes"], "scenes_shape": list(scenes.shape), "target": cfg["target"],
        "labels": None, "init_from": str(src), "eot_file": a.eot})
    seconds = time.perf_counter() - t0
    # the summary `testbed patch` adds to metrics.json (the survival table reads model, scenes and eot from it)
    from testbed.inputs import load_json
    from testbed.machine import machine_line
    from testbed.runs import atomic_write_json

    metrics_path = Path(a.out) / "metrics.json"
    metrics = load_json(metrics_path, what="run metrics file") if metrics_path.is_file() else {}
    atomic_write_json(metrics_path, {**metrics, "command": "patch (bench.patch_in_situ_finetune)", "out": a.out,
                                     "success_rate": res.success_rate, "initial_success_rate": res.initial_success_rate,
                                     "eval_samples": int(res.success.numel()), "seconds": round(seconds, 1),
                                     "machine": machine_line(), "model": cfg["model"], "target": cfg["target"],
                                     "scenes": cfg["scenes"], "eot": a.eot, "init_from": str(src)})
    print(f"{a.out}: success on {a.eval_samples} fresh draws {res.success_rate:.4f} ({seconds:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    from testbed.errors import TestbedError

    try:
        sys.exit(main())
    except TestbedError as exc:  # a user mistake (bad run directory, EOT file): one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
