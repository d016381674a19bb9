"""Validation of a patch recipe in situ, on the run's OWN training scenes (issue 16; docs/harness.md, "The sharp-scene
recipe"): the printed patch photographed where it lies (``camera.simulated.InSituPatch``, preset ``phone``), exactly
as the survival table's in-situ row (``pipelines.survival.patch_in_situ_survival``), but on the shipped photos the
run optimised on and with its own seed (77), so that choosing between recipes never looks at the survival's 11
held-out scenes or its in-situ draws (seed 2026). motorcycle_left is the proxy of the held-out motorcycle_right.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.patch_in_situ_validation RUN [RUN ...] [--photos 180] [--seed 77]

Prints, per run directory, k/n with a Wilson interval and the per-scene counts; ``--json FILE`` writes them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testbed.errors import ConfigError

def survival_seed() -> int:
    """The survival table's photo seed (``SurvivalConfig.seed``): never used to choose a recipe."""
    from pipelines.survival import SurvivalConfig

    return SurvivalConfig().seed


def training_scenes(run: Path) -> list[str]:
    """The shipped photos the run optimised on (image files among its scenes cannot be photographed in situ)."""
    from testbed.photos import list_photos
    from testbed.runs import load_run

    config, metrics = load_run(run, "patch")
    used = list(metrics.get("scenes") or config.get("scenes") or [])
    shipped = set(list_photos())
    return list(dict.fromkeys(n for n in used if n in shipped))


def validate_run(run: Path, photos: int, seed: int, scenes: list[str] | None = None) -> dict:
    """In-situ success of ``run``'s patch on its own training scenes (``scenes``: a subset of them)."""
    from pipelines.survival import SurvivalConfig, patch_in_situ_survival

    if seed == survival_seed():
        raise ConfigError(f"seed {seed} is the survival table's: validation uses its own draws")
    own = training_scenes(run)
    chosen = list(scenes) if scenes else own
    outside = [s for s in chosen if s not in own]
    if outside or not chosen:
        raise ConfigError(f"{run}: validation scenes {outside or '(none)'} are not among the run's training scenes "
                          f"({', '.join(own) or 'none shipped'}): held-out scenes are for the survival table only")
    cfg = SurvivalConfig(seed=seed, in_situ_photos=photos, in_situ_scenes=tuple(chosen)).validate()
    row = patch_in_situ_survival(run, cfg)
    return {"run": str(run), "seed": seed, "success": row.printed.as_dict(), "clean": row.clean_printed.as_dict(),
            "per_scene_success": row.extra["per_scene_success"], "seconds": round(row.seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished patch run directories")
    ap.add_argument("--photos", type=int, default=180, help="in-situ photos per run (photo i in scene i mod k)")
    ap.add_argument("--seed", type=int, default=77, help="photo seed (never the survival table's, 2026)")
    ap.add_argument("--scenes", default=None, help="comma-separated subset of the run's training scenes")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()] if args.scenes else None
    out = []
    try:
        for run in args.runs:
            r = validate_run(Path(run), args.photos, args.seed, scenes)
            s = r["success"]
            print(f"{run}: {s['k']}/{s['n']} = {100 * s['value']:.1f}% [{100 * s['low']:.1f}, {100 * s['high']:.1f}] "
                  f"(un-attacked {r['clean']['k']}/{r['clean']['n']}); {r['per_scene_success']}; {r['seconds']:.0f} s",
                  flush=True)
            out.append(r)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        from testbed.runs import atomic_write_json

        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
