"""Issue 16 point 1's experiment: does optimising through the user's fitted printer profile rescue a patch printed
by a printer with a strong colour error? (docs/printer-profile.md has the commands and figures.)

Sub-commands (a script, not installed; ``python -m bench.printer_profile_insitu ...``):

* ``chart OUT --strength S [--photos N] [--preset phone]``: the colour chart (``testbed print chart``) printed by
  ``camera.printer_profile.ProfiledPrinter`` with ``ColourError.hue_shift(S)`` over the default printer model,
  photographed ``N`` times by the simulated camera (``preset``), photos in ``OUT/photos``; then fit the profile
  with ``testbed printer-profile``.
* ``insitu RUN_DIR --strength S [--photos N] [--seed K]``: the run's patch printed by the same erroneous printer,
  cut along its mask, lying in the shipped photos the run did not optimise on, photographed whole and classified
  (``camera.simulated.InSituPatch``, preset ``phone``, fixed default printer + the colour error); prints k/n with
  a Wilson interval and per-scene counts, and writes ``RUN_DIR/insitu_strength_S.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def make_chart(out: Path, strength: float, photos: int, preset: str, seed: int) -> None:
    from camera.printer_profile import ColourError, ProfiledPrinter
    from camera.simulated import PrinterParams, SimCameraConfig, SimulatedCamera
    from printouts.sheets import SheetConfig, chart_sheet, rasterize_pdf
    from testbed.runs import save_image

    dpi = 100
    out.mkdir(parents=True, exist_ok=True)
    files = chart_sheet(config=SheetConfig(dpi=dpi, marker_id_base=4)).write(out, "chart", png=False)
    side = json.loads(files.sidecar.read_text())
    printer = ProfiledPrinter(PrinterParams(), ColourError.hue_shift(strength))
    cam = SimulatedCamera(rasterize_pdf(files.pdf, dpi), (side["page"]["width_mm"], side["page"]["height_mm"]),
                          seed=seed, n_frames=photos, objects=side["objects"], dpi=dpi, printer=printer,
                          config=SimCameraConfig.preset(preset, frame_size=(1280, 960)))
    (out / "photos").mkdir(exist_ok=True)
    for f in cam:
        save_image(f.image, out / "photos" / f"chart_{f.seq:03d}.png")
    print(f"{photos} chart photos (strength {strength}, preset {preset}) in {out / 'photos'}; sidecar {files.sidecar}")


def in_situ(run: Path, strength: float, photos: int, seed: int, preset: str, frame: tuple[int, int]) -> dict:
    from camera.printer_profile import ColourError, transform_u8
    from camera.simulated import InSituConfig, InSituPatch
    from testbed.models.registry import get_entry, get_model
    from testbed.runs import read_json_file
    from testbed.stats import rate

    t0 = time.perf_counter()
    config, metrics = read_json_file(run / "config.json", "config"), read_json_file(run / "metrics.json", "metrics")
    # the run's own tensors (plain tensors, weights_only: nothing in them runs)
    patch = torch.load(run / "perturbation.pt", map_location="cpu", weights_only=True)
    mask = torch.load(run / "mask.pt", map_location="cpu", weights_only=True)
    model_name = metrics.get("model") or config.get("model")
    target = int(metrics.get("target", config.get("target")))
    entry, model = get_entry(model_name), get_model(model_name)
    area = float(config["placement"]["area"][1])
    shooter = InSituPatch(patch.float(), mask.float(), InSituConfig(preset=preset, area=area, sample_printer=False,
                                                                    input_size=int(entry.input_size[0]),
                                                                    frame_size=frame))
    if strength > 0:  # the printer's driver maps every inked colour through the known error first
        shooter.raster = transform_u8(shooter.raster, ColourError.hue_shift(strength))
    from testbed.photos import list_photos

    used = set(metrics.get("scenes") or config.get("scenes") or [])
    scenes = [n for n in list_photos() if n not in used]  # evaluation never reuses the optimisation's scenes
    ok, per_scene = [], {s: [0, 0] for s in scenes}
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(photos):
            scene = scenes[i % len(scenes)]
            shot = shooter.shoot(scene, seed, i)
            hit = bool(model(shot.view.to(dev)).argmax(1).item() == target)
            ok.append(hit)
            per_scene[scene][0] += int(hit)
            per_scene[scene][1] += 1
    r = rate(ok)
    res = {"run": str(run), "strength": strength, "preset": preset, "frame": list(frame), "seed": seed, "in_situ": r.as_dict(),
           "summary": str(r), "per_scene": {k: f"{a}/{b}" for k, (a, b) in per_scene.items()},
           "eot": config.get("eot"), "steps": config.get("steps"), "seconds": round(time.perf_counter() - t0, 1)}
    (run / f"insitu_strength_{strength:g}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.printer_profile_insitu")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("chart")
    c.add_argument("out", type=Path)
    c.add_argument("--strength", type=float, required=True)
    c.add_argument("--photos", type=int, default=6)
    c.add_argument("--preset", default="phone")
    c.add_argument("--seed", type=int, default=7)
    s = sub.add_parser("insitu")
    s.add_argument("run", type=Path)
    s.add_argument("--strength", type=float, required=True)
    s.add_argument("--photos", type=int, default=300)
    s.add_argument("--seed", type=int, default=16016)
    s.add_argument("--preset", default="phone")
    s.add_argument("--frame", type=int, nargs=2, default=(1280, 960), metavar=("W", "H"))
    a = ap.parse_args(argv)
    if a.cmd == "chart":
        make_chart(a.out, a.strength, a.photos, a.preset, a.seed)
    else:
        in_situ(a.run, a.strength, a.photos, a.seed, a.preset, tuple(a.frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
