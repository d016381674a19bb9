"""The main job on built-in defaults (``testbed demo``): an adversarial patch against MobileNetV2 -> a printout ->
the simulated camera -> rectification -> a report with the before / after table.

1. The ImageNet models' top-1 on the shipped photos (what the models see without any attack).
2. A targeted universal patch (Brown et al. 2017; ``physical.universal.UniversalPatch``, optimised under the
   kornia EOT distribution) towards ``target`` over the shipped colour photos.
3. The patch as a print-ready sheet at true size with ArUco markers (``printouts.patch_sheet``: PDF, PNG, JSON).
4. ``frames`` photos of that printed sheet from ``camera.simulated.SimulatedCamera`` (OpenCV + albumentations,
   independent of the optimiser's kornia code), each rectified back with ``camera.rectify``.
5. Before / after: every scene with no patch, with the digital patch, and with each photographed-and-rectified patch
   pasted at a fixed place; target success (top-1 = target) with n and Wilson 95% intervals.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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
    target: str = "toaster"  # an ImageNet class name (Brown et al.'s target)
    steps: int | None = None  # default: 12 quick, 150 full
    frames: int | None = None  # photos of the printed patch; default 2 quick, 6 full
    patch_area: float = 0.1  # fraction of the scene the patch's mask covers (training and pasting)
    width_mm: float = 60.0  # printed patch width
    eot: str | dict | None = "print-aware"  # a preset name of physical.eot_presets.PRESETS, or a dict
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


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo and return the path of its Markdown report."""
    from camera.rectify import ObjectSpec, rectify
    from camera.simulated import SimCameraConfig, SimulatedCamera
    from physical.universal import UniversalPatch
    from printouts.sheets import SheetConfig, patch_sheet

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    steps = cfg.steps if cfg.steps is not None else (12 if cfg.quick else 150)
    n_frames = cfg.frames if cfg.frames is not None else (2 if cfg.quick else 6)
    lines = ["# testbed demo: adversarial patch -> printout -> simulated camera", "",
             f"seed {cfg.seed}; machine: {machine_line()}; quick: {cfg.quick}", ""]
    results: dict = {"config": {k: str(v) for k, v in asdict(cfg).items()}}

    # 1. what the models see
    photos = list_photos("photo")
    imagenet_models = [m for m in list_models("classification") if len(get_entry(m).labels) == 1000]
    lines += ["## 1. ImageNet models on the shipped photos (top-1, probability)", "",
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

    # 2. the patch
    entry = get_entry(cfg.model)
    labels = list(entry.labels)
    if cfg.target not in labels:
        from testbed.errors import ConfigError

        raise ConfigError(f"target class {cfg.target!r} is not a class of {cfg.model}")
    target = labels.index(cfg.target)
    model = get_model(cfg.model)
    device = next(model.parameters()).device
    scenes = torch.cat([imagenet_view(p, entry.input_size[0]) for p in photos])
    eot = PRESETS.get(cfg.eot, cfg.eot) if isinstance(cfg.eot, str) else cfg.eot  # a preset: its row (reported)
    attack = UniversalPatch(eot=eot, steps=steps, batch_size=8, lr=0.1, seed=cfg.seed, eval_samples=32 if cfg.quick else 200,
                            eval_batch_size=16, patch_size=64, shape="circle",
                            placement={"area": (cfg.patch_area, cfg.patch_area), "rotation": 22.5})
    t0 = time.time()
    res = attack(model, scenes.to(device), target=target, progress=cfg.progress)
    t_patch = time.time() - t0
    patch = res.perturbation.cpu()
    _save_png(patch, out / "patch.png")
    eot_success = rate(res.success)
    eot_init = rate(res.initial_success)

    # 3. printout
    sheet = patch_sheet(patch, width_mm=cfg.width_mm, config=SheetConfig(dpi=300, seed=cfg.seed, title=""))
    files = sheet.write(out / "printout", "patch")
    spec = ObjectSpec.from_record(sheet.objects[0])

    # 4. photos of the printed sheet, rectified
    pg = sheet.pages[0]
    cam = SimulatedCamera(sheet.render_page(0, 300), (pg.width_mm, pg.height_mm), seed=cfg.seed + 17,
                          n_frames=n_frames, objects=sheet.objects, dpi=300,
                          config=SimCameraConfig(frame_size=(1280, 960), max_tilt_deg=25.0))
    photographed, rect_info = [], []
    for frame in cam:
        try:
            r = rectify(frame.image, spec, source=f"simulated photo {frame.seq}")
        except Exception as exc:  # a failed rectification is a result, reported, not hidden
            rect_info.append({"frame": frame.seq, "error": f"{type(exc).__name__}: {exc}"})
            continue
        photographed.append(F.interpolate(r.image, size=patch.shape[-2:], mode="bilinear", antialias=True,
                                          align_corners=False))
        rect_info.append({"frame": frame.seq, **r.summary()})
        if frame.seq == 0:
            _save_png(frame.image, out / "photo_0.png")
            _save_png(r.image, out / "photo_0_rectified.png")

    # 5. before / after
    mask = res.mask.cpu()
    with torch.no_grad():
        def top1(x: torch.Tensor) -> torch.Tensor:
            return model(x.to(device)).argmax(1).cpu()

        clean = top1(scenes)
        digital = top1(paste(scenes, patch, mask, cfg.patch_area))
        printed = [top1(paste(scenes, p, mask, cfg.patch_area)) for p in photographed]
    _save_png(paste(scenes[:1], patch, mask, cfg.patch_area), out / "example_digital.png")
    if photographed:
        _save_png(paste(scenes[:1], photographed[0], mask, cfg.patch_area), out / "example_printed.png")
    r_clean, r_dig = rate(clean == target), rate(digital == target)
    r_print = rate(torch.cat(printed) == target) if printed else None
    lines += ["", f"## 2. Targeted patch towards '{cfg.target}' on {cfg.model}", "",
              f"{steps} Adam steps x 8 EOT draws (kornia; EOT `{cfg.eot if isinstance(cfg.eot, str) else 'custom'}`: "
              f"`{json.dumps(eot)}`), circle patch 64 px; {t_patch:.0f} s. "
              f"Held-out EOT success (fresh draws, seed {res.eval_seed}): **{eot_success}**; the random initial "
              f"patch on the same draws: {eot_init}.", "", "![patch](patch.png)", "",
              "## 3. Printout", "", f"`printout/patch.pdf` ({cfg.width_mm:.0f} mm wide, 4 ArUco markers, print at 100 %), "
              "`printout/patch_p1.png` (300 dpi), `printout/patch.json` (sidecar).", "",
              "## 4. Simulated camera", "",
              f"{n_frames} photos of the printed sheet (camera.simulated: printer + halftone, scene, 3-D pose, light, "
              f"blur, noise, JPEG), rectified with camera.rectify: {len(photographed)} rectified.", "",
              "![photo](photo_0.png)", "", "![rectified](photo_0_rectified.png)", "",
              "## 5. Before / after: target success (top-1 = target) over the scenes", "",
              "| condition | target success | n |", "|---|---|---|",
              f"| no patch | {r_clean} | {r_clean.n} |", f"| digital patch pasted | {r_dig} | {r_dig.n} |",
              f"| printed + photographed + rectified patch pasted | {r_print if r_print else 'n/a'} | "
              f"{r_print.n if r_print else 0} |", "",
              "| scene | no patch | digital patch | printed patch (frame 0) |", "|---|---|---|---|"]
    for i, p in enumerate(photos):
        pr = labels[int(printed[0][i])] if printed else "n/a"
        lines.append(f"| {p} | {labels[int(clean[i])]} | {labels[int(digital[i])]} | {pr} |")
    lines += ["", "![digital](example_digital.png)", ""]
    if photographed:
        lines += ["![printed](example_printed.png)", ""]
    lines += [f"Total time {time.time() - started:.0f} s."]
    results.update({"patch": res.metrics(), "eot_success": eot_success.as_dict(),
                    "target_success": {"none": r_clean.as_dict(), "digital": r_dig.as_dict(),
                                       "printed": r_print.as_dict() if r_print else None},
                    "rectify": rect_info, "printout": {"pdf": str(files.pdf), "sidecar": str(files.sidecar)},
                    "seconds": time.time() - started})
    from pipelines.report import demo_plots

    lines += [""] + demo_plots(results, out)  # plots/target_success.png (the same section as `testbed report`)
    report = out / "report.md"
    write_atomic(report, "\n".join(lines) + "\n")
    write_atomic(out / "results.json", json.dumps(results, indent=2, default=str))
    from pipelines.report import md_to_html

    write_atomic(out / "report.html", md_to_html("\n".join(lines), "testbed demo"))
    return report
