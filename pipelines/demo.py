"""The user's walkthrough on built-in defaults (``testbed demo``), the same steps in the same order as with a real
printer and camera (README, "With a real printer and a phone or webcam"), each step timed:

1. Print the colour chart (``printouts.chart_sheet``, as ``testbed print chart``).
2. Photograph it: ``chart_photos`` simulated phone photos (``camera.simulated.SimulatedCamera``, preset ``phone``,
   the default simulated printer) - with a real printer, phone photos of the printed chart.
3. Fit the printer profile from those photos (``camera.printer_profile.fit_from_photos``, as
   ``testbed printer-profile``): held-out CIEDE2000 reported.
4. Attack through the profile: a targeted universal patch (``physical.universal.UniversalPatch``) under a
   print-robust EOT (default: the ``in-situ-sharp`` preset, a phone photo of the printed patch lying in the scene,
   with the patch's size drawn from 64-100% of its area as the in-situ camera's zoom does) with the profile as its
   ``printer_profile`` stage, written as a ``testbed patch`` run directory (``patch/``). Target ``banana``: chosen
   for the <= 10% patch on in-situ validation photos of its training scenes (docs/harness.md, "Fourth pass").
5. Print it in its mask shape at true size (``printouts.patch_sheet`` with the mask: the cut line follows the
   mask), as ``testbed print patch --image RUN``.
6. Photograph it in situ: the printed patch cut out along its mask, lying in the shipped photos the patch was not
   optimised on, the whole scene photographed (``camera.simulated.InSituPatch``, preset ``phone``, the same
   printer as the chart), the photos written to ``photos/``.
7. Score the photos as ``testbed score`` does (``pipelines.scoring.score_photos``): each whole photo classified
   as the model sees a photo, target success k/n with a Wilson 95% interval, per-photo JSON and a contact sheet
   (``score/``); beside it the same photos without the patch (the control).

The report also has the models' top-1 on the shipped photos and, for reference, the patch pasted digitally into
its own optimisation scenes.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from physical.eot_presets import PRESETS
from testbed.runs import write_atomic
from pipelines.metrics import rate
from testbed.machine import machine_line
from testbed.models.registry import get_entry, get_model, list_models
from testbed.photos import imagenet_view, list_photos


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    seed: int = 0
    quick: bool = False
    model: str = "mobilenet_v2"
    target: str = "banana"  # an ImageNet class name (toaster is Brown et al.'s; banana wins in situ: docs/harness.md)
    steps: int | None = None  # default: 12 quick, 150 full
    photos: int | None = None  # in-situ photos of the printed patch; default 10 quick, 120 full
    chart_photos: int = 3  # simulated photos of the printed colour chart for the profile
    patch_area: float = 0.1  # fraction of the scene the patch's mask covers (training, pasting and in situ)
    width_mm: float = 60.0  # printed patch width
    eot: str | dict | None = "in-situ-sharp"  # a preset name of physical.eot_presets.PRESETS, or a dict
    lr: float = 0.3  # Adam's step on the patch's colour logits (the fourth pass's screen)
    profile: bool = True  # optimise through the fitted printer profile (the EOT's printer_profile stage)
    progress: bool = False  # the attack's progress bar (CLI: --progress / --no-progress)


def _save_png(x: torch.Tensor, path: Path) -> str:
    from testbed.runs import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x.detach().cpu().clamp(0, 1), path)
    return path.name


def paste(scenes: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, area: float) -> torch.Tensor:
    """The patch (1x3xSxS, resized so that its mask covers ``area`` of the scene, as in training) pasted with its
    mask at a fixed place (lower right, 6% in) in every scene."""
    n, _, h, w = scenes.shape
    side = min(h, w, max(4, int(round((area * h * w / float(mask.mean())) ** 0.5))))
    p = F.interpolate(patch, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    m = F.interpolate(mask, size=(side, side), mode="bilinear", align_corners=False)
    top, left = h - side - int(0.06 * h), w - side - int(0.06 * w)
    out = scenes.clone()
    region = out[:, :, top:top + side, left:left + side]
    out[:, :, top:top + side, left:left + side] = region * (1 - m) + p * m
    return out


def demo_eot(cfg: DemoConfig, profile: Path | None) -> dict[str, Any]:
    """The patch's EOT config as a flat dict: ``cfg.eot`` (a preset: its row of the one preset table) with the
    fitted profile as its ``printer_profile`` stage (jittered ±0.03, as experiments/eot_in_situ_sharp_profile_10pct.yaml)."""
    from physical.eot import resolve_config

    base = dict(PRESETS[cfg.eot]) if isinstance(cfg.eot, str) and cfg.eot in PRESETS else \
        resolve_config(cfg.eot).to_dict()
    if profile is not None:
        base["printer_profile"] = str(profile)
        base.setdefault("printer_profile_jitter", 0.03)
    return base


def _area_text(area: tuple[float, float]) -> str:
    lo, hi = area
    return f"{hi:.0%}" if lo == hi else f"{lo:.1%}-{hi:.0%}"


def _no_geometry(eot: dict[str, Any]) -> bool:
    """True when the EOT leaves the scene unwarped (identity scale, rotation, translation, perspective)."""
    scale = eot.get("scale", (1.0, 1.0))
    return tuple(scale) == (1.0, 1.0) and not any(eot.get(k) for k in ("rotation", "translate", "perspective"))


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo and return the path of its Markdown report."""
    from camera.printer_profile import fit_from_photos
    from camera.simulated import InSituConfig, InSituPatch, PrinterParams, SimCameraConfig, SimulatedCamera, \
        SimulatedPrinter
    from physical.universal import UniversalPatch
    from pipelines.scoring import score_photos, write_photo_scores
    from pipelines.survival import held_out_scenes
    from printouts.sheets import SheetConfig, chart_sheet, patch_sheet, rasterize_pdf
    from testbed.errors import ConfigError
    from testbed.runs import save_image

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    steps = cfg.steps if cfg.steps is not None else (12 if cfg.quick else 150)
    n_photos = cfg.photos if cfg.photos is not None else (10 if cfg.quick else 120)
    if n_photos < 1 or cfg.chart_photos < 1:
        raise ConfigError("the demo needs at least one in-situ photo and one chart photo")
    lines = ["# testbed demo: the walkthrough on built-in defaults", "",
             f"seed {cfg.seed}; machine: {machine_line()}; quick: {cfg.quick}", ""]
    results: dict = {"config": {k: str(v) for k, v in asdict(cfg).items()}}
    timings: list[dict[str, Any]] = []

    def timed(step: str, command: str, t0: float) -> float:
        seconds = time.perf_counter() - t0
        timings.append({"step": step, "command": command, "seconds": round(seconds, 1)})
        return seconds

    # 0. what the models see
    photos = list_photos("photo")
    imagenet_models = [m for m in list_models("classification") if len(get_entry(m).labels) == 1000]
    lines += ["## 0. ImageNet models on the shipped photos (top-1, probability)", "",
              "| photo | " + " | ".join(imagenet_models) + " |", "|---" * (len(imagenet_models) + 1) + "|"]
    preds: dict[str, dict[str, tuple[str, float]]] = {}
    for name in imagenet_models:
        model = get_model(name)
        device = next(model.parameters()).device
        with torch.no_grad():
            probs = model(torch.cat([imagenet_view(p) for p in photos]).to(device)).softmax(-1).cpu()
        for p, row in zip(photos, probs):
            conf, idx = row.max(0)
            preds.setdefault(p, {})[name] = (get_entry(name).labels[int(idx)], float(conf))
    for p in photos:
        lines.append(f"| {p} | " + " | ".join(f"{preds[p][m][0]} ({preds[p][m][1]:.2f})" for m in imagenet_models) + " |")
    results["classification"] = preds

    entry = get_entry(cfg.model)
    labels = list(entry.labels)
    if cfg.target not in labels:
        raise ConfigError(f"target class {cfg.target!r} is not a class of {cfg.model}")
    target = labels.index(cfg.target)

    # 1. print the colour chart; 2. photograph it (the simulated phone, the default simulated printer)
    t0 = time.perf_counter()
    chart_dpi = 100
    chart = chart_sheet(config=SheetConfig(dpi=chart_dpi, marker_id_base=4, seed=cfg.seed)).write(
        out / "prints", "chart", png=False)
    timed("1. print the colour chart", "testbed print chart --out prints/ --page A4", t0)
    t0 = time.perf_counter()
    side = json.loads(chart.sidecar.read_text())
    printer = PrinterParams()  # the "user's printer": the chart and the patch are printed by the same one
    cam = SimulatedCamera(rasterize_pdf(chart.pdf, chart_dpi), (side["page"]["width_mm"], side["page"]["height_mm"]),
                          seed=cfg.seed + 7, n_frames=cfg.chart_photos, objects=side["objects"], dpi=chart_dpi,
                          printer=SimulatedPrinter(printer), config=SimCameraConfig.preset("phone",
                                                                                             frame_size=(1280, 960)))
    chart_files = []
    for f in cam:
        chart_files.append(save_image(f.image, out / "chart_photos" / f"chart_{f.seq:03d}.png"))
    timed(f"2. photograph the chart ({cfg.chart_photos} simulated phone photos)",
          "phone photos of the printed chart -> chart_photos/", t0)

    # 3. the printer profile
    t0 = time.perf_counter()
    profile_path = None
    fit = None
    if cfg.profile:
        prof, measured = fit_from_photos(chart_files, chart.sidecar, seed=cfg.seed)
        profile_path = out / "profile.json"
        prof.save(profile_path)
        fit = {"chosen": prof.fit["chosen"], "held_out_de2000": prof.fit["held_out_de2000"],
               "photos_used": prof.meta["photos_used"], "patches": len(measured.intended)}
    timed("3. fit the printer profile",
          "testbed printer-profile chart_photos/ --sheet prints/chart.json --out profile.json", t0)
    results["profile"] = fit

    # 4. the attack through the profile (a `testbed patch` run directory)
    model = get_model(cfg.model)
    device = next(model.parameters()).device
    scenes = torch.cat([imagenet_view(p, entry.input_size[0]) for p in photos])
    eot = demo_eot(cfg, profile_path)
    # the patch's size from 64-100% of its area: the in-situ camera is never closer than the nominal distance and
    # zooms 0.8-1.0 (an EOT without whole-image geometry leaves the patch's size to the placement)
    area = (0.64 * cfg.patch_area, cfg.patch_area) if _no_geometry(eot) else (cfg.patch_area, cfg.patch_area)
    attack = UniversalPatch(eot=eot, steps=steps, batch_size=8, lr=cfg.lr, seed=cfg.seed,
                            eval_samples=32 if cfg.quick else 200, eval_batch_size=16, patch_size=64,
                            shape="circle", placement={"area": area, "rotation": 22.5})
    t0 = time.perf_counter()
    run_dir = out / "patch"
    res = attack(model, scenes.to(device), target=target, progress=cfg.progress, run_dir=run_dir,
                 run_extra={"model": cfg.model, "scenes": photos, "target": target})
    t_patch = timed(f"4. attack through the profile ({steps} steps)",
                    f"testbed patch --model {cfg.model} --target {cfg.target} --area {cfg.patch_area:g} "
                    + (f"--area-min {area[0]:g} " if area[0] != area[1] else "")
                    + f"--steps {steps} --lr {cfg.lr:g} --eot eot_profiled.yaml --out runs/{cfg.target}", t0)
    patch, mask = res.perturbation.cpu(), res.mask.cpu()
    from testbed.inputs import load_json
    from testbed.runs import atomic_write_json

    metrics = load_json(run_dir / "metrics.json", what="run metrics file")  # what `testbed patch` records too
    atomic_write_json(run_dir / "metrics.json", {**metrics, "model": cfg.model, "target": target,
                                                 "target_name": cfg.target, "scenes": photos,
                                                 "seconds": round(t_patch, 1), "machine": machine_line()})
    _save_png(patch, out / "patch.png")
    eot_success, eot_init = rate(res.success), rate(res.initial_success)

    # 5. print it in its mask shape
    t0 = time.perf_counter()
    sheet = patch_sheet(patch, width_mm=cfg.width_mm, config=SheetConfig(dpi=300, seed=cfg.seed, title=""), mask=mask)
    files = sheet.write(out / "prints", "patch")
    timed("5. print the patch in its mask shape",
          f"testbed print patch --image runs/{cfg.target} --width-mm {cfg.width_mm:g} --out prints/", t0)

    # 6. photograph it in situ: cut out, lying in the scenes the patch was not optimised on
    t0 = time.perf_counter()
    held_out = held_out_scenes({"scenes": photos}, {})
    shooter = InSituPatch(patch, mask, InSituConfig(preset="phone", width_mm=cfg.width_mm, area=cfg.patch_area,
                                                    input_size=int(entry.input_size[0]), sample_printer=False,
                                                    halftone_cell=printer.halftone_cell, printer_dpi=printer.dpi))
    reqs = [(held_out[i % len(held_out)], cfg.seed + 1_000_003, i) for i in range(n_photos)]
    photo_dir = out / "photos"
    clean_views, records = [], []
    for (scene, _, i), shot in zip(reqs, shooter.shoot_many(reqs, clean=True)):
        save_image(shot.frame, photo_dir / f"photo_{i:04d}_{scene}.png")
        clean_views.append(shot.clean_view)
        records.append({"file": f"photo_{i:04d}_{scene}.png", "scene": scene,
                        "patch_fraction_of_view": round(shot.params["patch_fraction_of_view"], 4)})
    timed(f"6. photograph it in situ ({n_photos} simulated phone photos, {len(held_out)} held-out scenes)",
          "cut it out, place it, photograph the scene -> photos/", t0)

    # 7. score the photos (testbed score) and the same photos without the patch
    t0 = time.perf_counter()
    scored = score_photos(photo_dir, cfg.model, target=target)
    score_files = write_photo_scores(scored, out / "score")
    timed("7. score the photos",
          f"testbed score photos/ --model {cfg.model} --target {cfg.target} --out score/", t0)
    with torch.no_grad():
        clean_pred = torch.cat([model(torch.cat(clean_views[i:i + 16]).to(device)).argmax(1).cpu()
                                for i in range(0, len(clean_views), 16)])
    r_situ, r_situ_clean = scored.rate, rate(clean_pred == target)

    # reference: the digital patch pasted into its own optimisation scenes
    with torch.no_grad():
        def top1(x: torch.Tensor) -> torch.Tensor:
            return model(x.to(device)).argmax(1).cpu()

        clean = top1(scenes)
        digital = top1(paste(scenes, patch, mask, cfg.patch_area))
    _save_png(paste(scenes[:1], patch, mask, cfg.patch_area), out / "example_digital.png")
    r_clean, r_dig = rate(clean == target), rate(digital == target)

    total = time.time() - started
    lines += ["", "## The walkthrough, step by step (measured on this machine)", "",
              "| step | with a real printer and camera | seconds |", "|---|---|---|"]
    lines += [f"| {t['step']} | `{t['command']}` | {t['seconds']:.1f} |" for t in timings]
    lines += ["", f"Total (with the models' table and the reference rows) {total:.0f} s.", ""]
    if fit is not None:
        de = fit["held_out_de2000"]
        lines += ["## 1-3. Printer profile", "",
                  f"Chart `prints/chart.pdf` ({fit['patches']} patches), {fit['photos_used']} of {cfg.chart_photos} "
                  f"simulated phone photos measured (`chart_photos/`); chosen model **{fit['chosen']}**, held-out "
                  f"CIEDE2000 mean {de['mean']:.2f}, p95 {de['p95']:.2f} (`profile.json`).", ""]
    lines += [f"## 4. Targeted patch towards '{cfg.target}' on {cfg.model}, through the profile", "",
              f"{steps} Adam steps x 8 EOT draws (EOT `{cfg.eot if isinstance(cfg.eot, str) else 'custom'}`"
              f"{' + printer_profile profile.json' if profile_path else ''}; lr {cfg.lr:g}), circle patch 64 px "
              f"covering {_area_text(area)} of the scene; {t_patch:.0f} s; run directory `patch/`. Held-out EOT success "
              f"(fresh draws, seed {res.eval_seed}): **{eot_success}**; the random initial patch on the same draws: "
              f"{eot_init}.", "", "![patch](patch.png)", "",
              "## 5. Printout", "", f"`prints/patch.pdf` ({cfg.width_mm:.0f} mm wide, cut line along the mask, "
              "4 ArUco markers, print at 100 %), `prints/patch_p1.png` (300 dpi), `prints/patch.json` (sidecar).", "",
              "## 6-7. In situ: photographed where it is used, scored as `testbed score` does", "",
              f"{n_photos} simulated phone photos (`photos/`) of the printed patch cut out along its mask, "
              f"{cfg.width_mm:.0f} mm wide, lying in the shipped photos it was not optimised on "
              f"({', '.join(held_out)}); each whole photo classified as the model sees a photo "
              "(`score/scores.json`, `score/contact_sheet.png`).", "",
              "| condition | target success | n |", "|---|---|---|",
              f"| **in situ: printed, cut out, photographed in the scene** | **{r_situ}** | {r_situ.n} |",
              f"| the same photos without the patch | {r_situ_clean} | {r_situ_clean.n} |", "",
              "![contact sheet](score/contact_sheet.png)", "",
              "## Reference: the digital patch in its own optimisation scenes", "",
              "| condition | target success | n |", "|---|---|---|",
              f"| no patch | {r_clean} | {r_clean.n} |", f"| digital patch pasted | {r_dig} | {r_dig.n} |", "",
              "| scene | no patch | digital patch |", "|---|---|---|"]
    for i, p in enumerate(photos):
        lines.append(f"| {p} | {labels[int(clean[i])]} | {labels[int(digital[i])]} |")
    lines += ["", "![digital](example_digital.png)", ""]
    results.update({"patch": res.metrics(), "eot": eot, "eot_success": eot_success.as_dict(),
                    "target_success": {"none": r_clean.as_dict(), "digital": r_dig.as_dict(),
                                       "printed": r_situ.as_dict()},
                    "in_situ": {"method": "in situ (simulated phone), scored as testbed score",
                                "success": r_situ.as_dict(), "clean_same_photos": r_situ_clean.as_dict(),
                                "scenes": held_out, "photos": records, "skipped": scored.skipped,
                                "scores": str(score_files["scores"])},
                    "steps": timings, "printout": {"pdf": str(files.pdf), "sidecar": str(files.sidecar)},
                    "seconds": total})
    from pipelines.report import demo_plots

    lines += [""] + demo_plots(results, out)  # plots/target_success.png (the same section as `testbed report`)
    report = out / "report.md"
    write_atomic(report, "\n".join(lines) + "\n")
    write_atomic(out / "results.json", json.dumps(results, indent=2, default=str))
    from pipelines.report import md_to_html

    write_atomic(out / "report.html", md_to_html("\n".join(lines), "testbed demo"))
    return report
