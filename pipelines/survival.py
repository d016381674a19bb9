"""How much of a physical attack survives printing and photographing: the patch / sign / eyeglass survival table.

For each finished attack run directory (written by ``testbed patch``, ``testbed sticker`` or ``testbed eyeglass``)
the attack is printed and photographed ``photos`` times by ``camera.simulated.print_photograph`` (a marker sheet,
a sampled printer with halftoning, ``SimulatedCamera`` — OpenCV + albumentations, independent of the kornia EOT the
attack optimised over —, ``camera.rectify``), and the model is asked again:

* **patch** (Brown et al.): each photographed-and-rectified patch is pasted, with its mask, into every scene of
  the run at a placement drawn from ``numpy.random.default_rng([seed, photo, scene])``; the digital patch is
  pasted at the *same* placements (paired). Success: top-1 = target. Destruction: the fraction of the digitally
  successful (photo, scene) pairs that fail after the photo.
* **sticker** (RP2): the stickered sign and the clean sign are printed and photographed under the *same* draw
  (same key), rectified, resampled to the model's input. Success: top-1 = target; also clean accuracy and
  success among the photos where the clean sign is recognised.
* **patch, in situ** (``patch_in_situ_survival``): the printed patch cut along its mask, lying in scenes the run
  never optimised on, the whole scene photographed by ``camera.simulated.InSituPatch`` and the frame classified as
  the model sees a photo; paired with the same photo without the patch. ``patch_photos_survival``: the same for a
  folder of real photos (``pipelines.scoring.score_photos``), unreadable photos listed as skipped.
* **eyeglass** (Sharif et al.): the wearer's photo with the frame and without it, printed and photographed under
  the same draw, then face detection + alignment (MTCNN) + descriptor. Dodging: distance to the enrolled
  descriptor > threshold; impersonation: distance to the target < threshold and < distance to the wearer.
  Photos where no face is found are counted and reported, not silently dropped.

Every rate carries k, n and a Wilson 95% interval (``testbed.stats``). The digital column is the run's own
held-out EOT success (fresh kornia draws, as recorded in its ``metrics.json``).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from testbed.errors import ConfigError
from testbed.machine import machine_line
from testbed.runs import load_run, load_run_tensor as _load_tensor  # the finished-run readers (checked)
from testbed.stats import Rate, rate, wilson

ATTACK_KINDS = ("patch", "sticker", "eyeglass")


@dataclass(frozen=True)
class SurvivalConfig:
    """The channel of the survival table (JSON-serialisable; saved next to the report)."""

    photos: int = 100  # simulated print + photo draws per attack run
    seed: int = 2026  # print/photo and placement seed; independent of every attack's training and eval seeds
    preset: str = "default"  # camera.simulated preset: default, mild, harsh
    patch_width_mm: float = 60.0
    sign_width_mm: float = 120.0
    face_width_mm: float = 150.0
    # patch rows measured in situ: the printed patch cut along its mask, lying in a held-out scene, the whole scene
    # photographed (camera.simulated.InSituPatch) and classified; 0 turns them off
    in_situ_photos: int = 600
    in_situ_preset: str = "phone"  # the camera of the in-situ photos (auto-exposure + white balance)
    in_situ_scenes: tuple[str, ...] | None = None  # default: every shipped photo the run did not optimise on
    photos_dir: str | None = None  # real photos of the printed patch in scenes (testbed score's folder reader)

    def validate(self) -> "SurvivalConfig":
        if isinstance(self.photos, bool) or not isinstance(self.photos, int) or self.photos < 1:
            raise ConfigError(f"photos must be a positive integer, got {self.photos!r}")
        if isinstance(self.in_situ_photos, bool) or not isinstance(self.in_situ_photos, int) or self.in_situ_photos < 0:
            raise ConfigError(f"in_situ_photos must be a non-negative integer, got {self.in_situ_photos!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("patch_width_mm", "sign_width_mm", "face_width_mm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 5 <= v <= 1000:
                raise ConfigError(f"{name} must be a printed width in [5, 1000] mm, got {v!r}")
        from camera.simulated import SimCameraConfig

        SimCameraConfig.preset(self.preset)  # ConfigError naming the unknown preset
        SimCameraConfig.preset(self.in_situ_preset)
        if self.in_situ_scenes is not None:
            from testbed.photos import list_photos

            bad = [n for n in self.in_situ_scenes if n not in list_photos()]
            if bad or not self.in_situ_scenes:
                raise ConfigError(f"in-situ scenes {bad or '(none)'} are not shipped photos; known: "
                                  f"{', '.join(list_photos())}")
        if self.photos_dir is not None and not Path(self.photos_dir).is_dir():
            raise ConfigError(f"--photos-dir {self.photos_dir} is not a folder of photos")
        return self

    def channel(self, width_mm: float) -> Any:
        from camera.simulated import PrintPhotoConfig

        return PrintPhotoConfig(width_mm=float(width_mm), preset=self.preset).validate()


@dataclass
class SurvivalRow:
    """One attack run through the print-photo loop."""

    kind: str
    run: str
    model: str
    goal: str  # e.g. "target toaster", "stop -> no_entry", "dodge astronaut"
    digital: Rate  # the run's held-out EOT success (fresh kornia draws)
    printed: Rate  # success after print -> photo -> rectify
    clean_printed: Rate  # the same measure on the un-attacked object through the same draws
    survival: float | None  # printed / digital success rate
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    method: str = "rectify-and-paste"  # or "in situ (simulated)", "in situ (real photos)"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["digital"], d["printed"], d["clean_printed"] = (self.digital.as_dict(), self.printed.as_dict(),
                                                          self.clean_printed.as_dict())
        d["extra"] = {k: (v.as_dict() if isinstance(v, Rate) else v) for k, v in self.extra.items()}
        return d


# ------------------------------------------------------------------------------------------------ run loading
def _recorded_digital(metrics: dict[str, Any]) -> Rate:
    n = int(metrics.get("eval_samples") or 0)
    p = metrics.get("success_rate")
    if n <= 0 or p is None:
        raise ConfigError("the run's metrics.json has no held-out success_rate / eval_samples")
    return wilson(int(round(float(p) * n)), n)


def print_photo(images: Tensor, keys: list[int], cfg: SurvivalConfig, width_mm: float) -> tuple[Tensor, list[dict]]:
    """The survival table's channel: ``images`` printed ``width_mm`` wide and photographed (draw ``keys[i]`` of
    ``cfg.seed``), rectified back; (photos, sampled parameters)."""
    from camera.simulated import print_photograph

    res = print_photograph(images.clamp(0, 1).cpu(), seed=cfg.seed, keys=keys, config=cfg.channel(width_mm))
    return res.images, res.params


def print_photo_outputs(images: Tensor, keys: list[int], cfg: SurvivalConfig, width_mm: float,
                        run: Callable[[Tensor], Tensor], *, chunk: int, bar: Any = None) -> Tensor:
    """``run`` (a model or a scorer) on :func:`print_photo`'s photos of ``images`` (photo ``i``: draw ``keys[i]``),
    ``chunk`` photos at a time (each photo's printer and camera depend on its key only, so the chunking changes no
    photo); ``bar`` (a tqdm bar) advances by one per photo. The outputs, concatenated in order."""
    parts = []
    for i in range(0, len(keys), chunk):
        shots, _ = print_photo(images[i : i + chunk], keys[i : i + chunk], cfg, width_mm)
        parts.append(run(shots))
        if bar is not None:
            bar.update(len(shots))
    return torch.cat(parts)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------------ patch
def paste_at(scene: Tensor, patch: Tensor, mask: Tensor, side: int, top: int, left: int) -> Tensor:
    """``patch`` (1x3xSxS) resized to ``side`` pixels and pasted with its ``mask`` at (top, left) of ``scene``."""
    p = F.interpolate(patch, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    m = F.interpolate(mask, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)
    out = scene.clone()
    region = out[:, :, top:top + side, left:left + side]
    out[:, :, top:top + side, left:left + side] = region * (1 - m) + p * m
    return out


def patch_survival(run_dir: str | Path, cfg: SurvivalConfig, save: Path | None = None) -> SurvivalRow:
    from testbed.models.registry import get_entry, get_model
    from testbed.photos import imagenet_preprocess, load_images, resolve_images

    t0 = time.perf_counter()
    run = Path(run_dir)
    config, metrics = load_run(run, "patch")
    model_name = metrics.get("model") or config.get("model")
    entry = get_entry(model_name)
    model = get_model(model_name)
    dev = _device(model)
    target = int(config["target"])
    patch, mask = _load_tensor(run / "perturbation.pt"), _load_tensor(run / "mask.pt")
    if patch.ndim != 4 or mask.shape[-2:] != patch.shape[-2:]:
        raise ConfigError(f"{run}: perturbation {tuple(patch.shape)} and mask {tuple(mask.shape)} do not match")
    names = list(metrics.get("scenes") or config.get("scenes") or [])
    if not names:
        raise ConfigError(f"{run}: the run records no scenes; survival needs the run's scenes")
    h, w = entry.input_size
    # the run's scenes as `testbed patch --scenes` took them: shipped photos, files, folders, globs
    scenes = torch.cat([imagenet_preprocess(x, h) for x in load_images(resolve_images(names, what=f"{run}: scene"))])
    area = float(config["placement"]["area"][1])
    if float(mask.mean()) <= 0:
        raise ConfigError(f"{run}: the patch mask (mask.pt) is empty")
    side = min(h, w, max(4, int(round((area * h * w / float(mask.mean())) ** 0.5))))

    keys = list(range(cfg.photos))
    photographed, _ = print_photo(patch.expand(cfg.photos, -1, -1, -1), keys, cfg, cfg.patch_width_mm)
    digital_ok, printed_ok, clean_ok = [], [], []
    with torch.no_grad():
        def top1(x: Tensor) -> Tensor:
            return model(x.to(dev)).argmax(1).cpu()

        clean_pred = top1(scenes)
        for k in keys:
            dig, pri = [], []
            for j in range(len(names)):
                rng = np.random.default_rng([cfg.seed, 7919, k, j])  # placement, independent of the camera draw
                top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                dig.append(paste_at(scenes[j:j + 1], patch, mask, side, top, left))
                pri.append(paste_at(scenes[j:j + 1], photographed[k:k + 1], mask, side, top, left))
            digital_ok.append(top1(torch.cat(dig)) == target)
            printed_ok.append(top1(torch.cat(pri)) == target)
            clean_ok.append(clean_pred == target)
            if save is not None and k == 0:
                _save(save / "patch_printed_example.png", torch.cat(pri)[:3])
                _save(save / "patch_digital_example.png", torch.cat(dig)[:3])
    d, p = torch.stack(digital_ok).flatten(), torch.stack(printed_ok).flatten()
    printed = rate(p)
    recorded = _recorded_digital(metrics)
    destroyed = rate((d & ~p)[d]) if bool(d.any()) else wilson(0, 0)
    label = str(entry.labels[target]) if entry.labels else str(target)
    return SurvivalRow(
        "patch", str(run), model_name,
        f"target '{label}' (patch {area:.0%} of the scene; EOT {Path(str(metrics.get('eot'))).stem}, "
        f"{config.get('steps')} steps)", recorded, printed,
        rate(torch.stack(clean_ok).flatten()),
        _ratio(printed, recorded),
        {"digital_same_placements": rate(d), "destruction_rate": destroyed, "photos": cfg.photos,
         "scenes": len(names), "per_photo_success": [float(x.float().mean()) for x in printed_ok],
         "eot": metrics.get("eot"), "steps": config.get("steps")},
        time.perf_counter() - t0,
    )


def _load_patch_run(run: Path) -> tuple[dict[str, Any], dict[str, Any], str, int, Tensor, Tensor]:
    config, metrics = load_run(run, "patch")
    model_name = metrics.get("model") or config.get("model")
    patch, mask = _load_tensor(run / "perturbation.pt"), _load_tensor(run / "mask.pt")
    if patch.ndim != 4 or mask.shape[-2:] != patch.shape[-2:]:
        raise ConfigError(f"{run}: perturbation {tuple(patch.shape)} and mask {tuple(mask.shape)} do not match")
    if float(mask.mean()) <= 0:
        raise ConfigError(f"{run}: the patch mask (mask.pt) is empty")
    return config, metrics, model_name, int(config["target"]), patch, mask


def held_out_scenes(config: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """Every shipped photo the run did not optimise on (evaluation never reuses the optimisation's scenes)."""
    from testbed.photos import list_photos

    used = set(metrics.get("scenes") or config.get("scenes") or [])
    return [n for n in list_photos() if n not in used]


def patch_in_situ_survival(run_dir: str | Path, cfg: SurvivalConfig, save: Path | None = None) -> SurvivalRow:
    """The patch printed, cut along its mask, lying in held-out scenes at its physical size, the whole scene
    photographed (``camera.simulated.InSituPatch``, preset ``cfg.in_situ_preset``) and the frame classified as the
    model sees a photo. Photo ``i`` is drawn from ``default_rng([seed, i])`` with seed = derive(cfg.seed, 'in situ')
    in scene ``scenes[i % len(scenes)]``; the un-attacked column is the same photo without the patch."""
    from camera.simulated import InSituConfig, InSituPatch
    from testbed.models.registry import get_entry, get_model

    t0 = time.perf_counter()
    run = Path(run_dir)
    config, metrics, model_name, target, patch, mask = _load_patch_run(run)
    entry, model = get_entry(model_name), get_model(model_name)
    dev = _device(model)
    scenes = list(cfg.in_situ_scenes) if cfg.in_situ_scenes else held_out_scenes(config, metrics)
    if not scenes:
        raise ConfigError(f"{run}: no shipped photo is left that the run did not optimise on; give in_situ_scenes")
    h = int(entry.input_size[0])
    area = float(config["placement"]["area"][1])
    shooter = InSituPatch(patch, mask, InSituConfig(preset=cfg.in_situ_preset, width_mm=cfg.patch_width_mm,
                                                    area=area, input_size=h))
    seed = int(np.random.default_rng([cfg.seed, 1_000_003]).integers(2**62))  # not the rectify rows' draws
    ok, clean_ok, fractions, per_scene = [], [], [], {n: [0, 0] for n in scenes}
    examples = []
    with torch.no_grad():
        reqs = [(scenes[i % len(scenes)], seed, i) for i in range(cfg.in_situ_photos)]
        # the same shots as shoot(scene, seed, i) one by one, rendered on the CPU cores while the model classifies
        # (frame=False: only the part of each frame the model's view is made of; the same views bit for bit)
        for (scene, _, _), shot in zip(reqs, shooter.shoot_many(reqs, clean=True, frame=False)):
            pred = model(torch.cat([shot.view, shot.clean_view]).to(dev)).argmax(1).cpu()
            ok.append(bool(pred[0] == target))
            clean_ok.append(bool(pred[1] == target))
            fractions.append(shot.params["patch_fraction_of_view"])
            per_scene[scene][0] += int(ok[-1])
            per_scene[scene][1] += 1
            if save is not None and len(examples) < 8:
                examples.append(shot.view)
    if save is not None and examples:
        _save(save / "patch_in_situ_examples.png", torch.cat(examples))
    printed, recorded = rate(ok), _recorded_digital(metrics)
    label = str(entry.labels[target]) if entry.labels else str(target)
    return SurvivalRow(
        "patch", str(run), model_name,
        f"target '{label}' (patch {area:.0%} of the scene; EOT {Path(str(metrics.get('eot'))).stem}, "
        f"{config.get('steps')} steps)", recorded, printed, rate(clean_ok), _ratio(printed, recorded),
        {"photos": cfg.in_situ_photos, "preset": cfg.in_situ_preset, "scenes": scenes,
         "per_scene_success": {k: f"{v[0]}/{v[1]}" for k, v in per_scene.items()},
         "patch_fraction_of_view_mean": float(np.mean(fractions)), "patch_fraction_of_view_max": float(np.max(fractions)),
         "printed_width_mm": cfg.patch_width_mm},
        time.perf_counter() - t0, method="in situ (simulated)")


def patch_photos_survival(run_dir: str | Path, cfg: SurvivalConfig, save: Path | None = None) -> SurvivalRow:
    """Real photos of the printed patch in scenes (``cfg.photos_dir``), each whole photo classified as the model sees
    a photo (``pipelines.scoring.score_photos``); unreadable photos are listed in the row, never dropped silently."""
    from pipelines.scoring import score_photos
    from testbed.models.registry import get_entry

    t0 = time.perf_counter()
    run = Path(run_dir)
    config, metrics, model_name, target, _, _ = _load_patch_run(run)
    res = score_photos(cfg.photos_dir, model_name, target=target)
    label = str(get_entry(model_name).labels[target])
    area = float(config["placement"]["area"][1])
    recorded = _recorded_digital(metrics)
    return SurvivalRow(
        "patch", str(run), model_name, f"target '{label}' (patch {area:.0%} of the scene)", recorded, res.rate,
        wilson(0, 0), _ratio(res.rate, recorded),
        {"photos_dir": str(cfg.photos_dir), "skipped": {p: why for p, why in res.skipped}},
        time.perf_counter() - t0, method="in situ (real photos)")


# ------------------------------------------------------------------------------------------------ sticker
def sticker_survival(run_dir: str | Path, cfg: SurvivalConfig, save: Path | None = None) -> SurvivalRow:
    from testbed.models.registry import get_entry, get_model
    from worlds.signs.render import composite, render_sign

    t0 = time.perf_counter()
    run = Path(run_dir)
    config, metrics = load_run(run, "sticker")
    model_name = config.get("model") or metrics.get("model")
    entry, model = get_entry(model_name), get_model(model_name)
    dev = _device(model)
    adversarial = _load_tensor(run / "adversarial.pt")
    size = int(adversarial.shape[-1])
    rgba = render_sign(config["sign"], size)
    try:
        background: Any = float(config.get("background", 0.5))
    except (TypeError, ValueError):
        raise ConfigError(f"{run}: survival supports stickers on a grey background, got {config.get('background')!r}")
    clean = composite(rgba, background).clamp(0, 1)
    target, source = int(config["target"]), config.get("source_label")
    keys = list(range(cfg.photos))
    adv_batch, clean_batch = adversarial.expand(cfg.photos, -1, -1, -1), clean.expand(cfg.photos, -1, -1, -1)
    if config.get("eval_artwork_split"):  # a sticker optimised over artwork: each photo shows a fresh held-out drawing
        from physical.universal import SignSticker, sign_artwork_pool

        clean_batch, _ = sign_artwork_pool(config["sign"], size, cfg.photos, split=config["eval_artwork_split"],
                                           seed=cfg.seed + 7, background=background)  # not the run's drawings
        adv_batch = SignSticker.stickered(clean_batch, _load_tensor(run / "mask.pt"), _load_tensor(run / "colours.pt"))
    both = torch.cat([adv_batch, clean_batch])
    shots, _ = print_photo(both, keys + keys, cfg, cfg.sign_width_mm)  # same key: same printer, same photo
    h, w = entry.input_size
    small = F.interpolate(shots, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        pred = model(small.to(dev)).argmax(1).cpu()
    adv_pred, clean_pred = pred[:cfg.photos], pred[cfg.photos:]
    if save is not None:
        _save(save / "sticker_printed_example.png", torch.cat([shots[:2], shots[cfg.photos:cfg.photos + 2]]))
    printed = rate(adv_pred == target)
    recorded = _recorded_digital(metrics)
    extra: dict[str, Any] = {"photos": cfg.photos, "mask_fraction_of_sign": metrics.get("mask_fraction_of_sign"),
                             "steps": config.get("steps"), "eot": metrics.get("eot")}
    if source is not None:
        clean_correct = clean_pred == int(source)
        extra["clean_sign_accuracy"] = rate(clean_correct)
        extra["success_given_clean_correct"] = rate((adv_pred == target)[clean_correct])
    labels = [str(n) for n in entry.labels]
    return SurvivalRow(
        "sticker", str(run), model_name, f"{config['sign']} -> {labels[target]}", recorded, printed,
        rate(clean_pred == target), _ratio(printed, recorded), extra, time.perf_counter() - t0,
        method="rectified photo of the printed sign",
    )


# ------------------------------------------------------------------------------------------------ eyeglass
def eyeglass_survival(run_dir: str | Path, cfg: SurvivalConfig, save: Path | None = None) -> SurvivalRow:
    from physical.eyeglass import align_wearer, enroll, wear
    from testbed.errors import ImageError
    from worlds.faces import detect_and_align
    from testbed.models.face_descriptor import face_distance, load_face_descriptor
    from testbed.photos import list_photos, load_photo

    t0 = time.perf_counter()
    run = Path(run_dir)
    config, metrics = load_run(run, "eyeglass")
    wearers, targets = list(config.get("wearer") or []), list(config.get("target") or [])
    for name in wearers + targets:
        if name not in list_photos():
            raise ConfigError(f"{run}: wearer/target {name!r} is not a shipped photo; survival needs shipped photos")
    mode, threshold = config["mode"], float(config.get("threshold", 0.6))
    model = load_face_descriptor()
    dev = _device(model)
    photo = load_photo(wearers[0])
    chips, faces = align_wearer([load_photo(n) for n in wearers])
    enrolled = enroll(model, chips.to(dev))
    target = enroll(model, align_wearer([load_photo(n) for n in targets])[0].to(dev)) if targets else None
    texture, mask = _load_tensor(run / "texture.pt"), _load_tensor(run / "mask.pt")
    with torch.no_grad():
        worn = wear(photo, texture, mask, faces[0].landmarks.cpu())
    keys = list(range(cfg.photos))
    shots, _ = print_photo(torch.cat([worn.expand(cfg.photos, -1, -1, -1), photo.expand(cfg.photos, -1, -1, -1)]),
                            keys + keys, cfg, cfg.face_width_mm)
    if save is not None:
        _save(save / f"eyeglass_{mode}_printed_example.png", torch.cat([shots[:1], shots[cfg.photos:cfg.photos + 1]]))

    def outcome(img: Tensor) -> tuple[bool | None, float | None, float | None]:
        try:
            face = detect_and_align(img[None].to(dev))
        except ImageError:
            return None, None, None
        with torch.no_grad():
            emb = model(face.crop)
        d_e = float(face_distance(emb, enrolled)[0])
        d_t = float(face_distance(emb, target)[0]) if target is not None else None
        ok = d_e > threshold if mode == "dodge" else (d_t is not None and d_t < threshold and d_t < d_e)
        return ok, d_e, d_t

    adv = [outcome(s) for s in shots[:cfg.photos]]
    cln = [outcome(s) for s in shots[cfg.photos:]]
    adv_found = [o for o in adv if o[0] is not None]
    cln_found = [o for o in cln if o[0] is not None]
    printed = rate([bool(o[0]) for o in adv_found])
    recorded = _recorded_digital(metrics)
    goal = f"dodge {wearers[0]}" if mode == "dodge" else f"impersonate {targets[0]} as {wearers[0]}"
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    extra = {"photos": cfg.photos, "threshold": threshold,
             "no_face_found_adversarial": len(adv) - len(adv_found), "no_face_found_clean": len(cln) - len(cln_found),
             "distance_enrolled_mean_adversarial": mean([o[1] for o in adv_found]),
             "distance_enrolled_mean_clean": mean([o[1] for o in cln_found]),
             "steps": config.get("steps")}
    if target is not None:
        extra["distance_target_mean_adversarial"] = mean([o[2] for o in adv_found])
        extra["distance_target_mean_clean"] = mean([o[2] for o in cln_found])
    return SurvivalRow("eyeglass", str(run), "face-descriptor-dlib", goal, recorded, printed,
                       rate([bool(o[0]) for o in cln_found]), _ratio(printed, recorded), extra,
                       time.perf_counter() - t0, method="rectified photo of the printed face")


SURVIVAL_FUNCTIONS: dict[str, Callable[..., SurvivalRow]] = {
    "patch": patch_survival, "sticker": sticker_survival, "eyeglass": eyeglass_survival,
}


def _ratio(printed: Rate, digital: Rate) -> float | None:
    return None if digital.value == 0 else printed.value / digital.value


def _save(path: Path, images: Tensor) -> None:
    from testbed.runs import save_image
    from torchvision.utils import make_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(images.clamp(0, 1), nrow=images.shape[0], padding=4, pad_value=1.0)[None], path)


_LEGACY_METHOD = {"patch": "rectify-and-paste", "sticker": "rectified photo of the printed sign",
                  "eyeglass": "rectified photo of the printed face"}


def rows_from_dicts(rows: list[dict[str, Any]]) -> list[SurvivalRow]:
    """The rows of a stored ``report.json`` (``SurvivalRow.as_dict()``) back as SurvivalRows (``testbed report``)."""

    def as_rate(d: Any) -> Any:
        return wilson(d["k"], d["n"]) if isinstance(d, dict) and {"k", "n"} <= set(d) else d

    out = []
    for d in rows:
        d = dict(d)
        for k in ("digital", "printed", "clean_printed"):
            d[k] = as_rate(d[k])
        d["extra"] = {k: as_rate(v) for k, v in (d.get("extra") or {}).items()}
        d.setdefault("method", _LEGACY_METHOD.get(d.get("kind"), "rectify-and-paste"))  # reports before issue 16
        out.append(SurvivalRow(**d))
    return out


# ------------------------------------------------------------------------------------------------ the table
def run_survival(runs: list[tuple[str, str]], cfg: SurvivalConfig, out: str | Path,
                 log: Callable[[str], None] | None = None) -> list[SurvivalRow]:
    """Evaluate each (kind, run_dir) and write ``report.md`` + ``report.json`` (+ example photos) into ``out``."""
    from testbed.runs import write_atomic

    cfg = cfg.validate()
    if not runs:
        raise ConfigError("give at least one attack run (--patch, --sticker or --eyeglass)")
    for kind, _ in runs:
        if kind not in ATTACK_KINDS:
            raise ConfigError(f"unknown attack kind {kind!r}; known: {', '.join(ATTACK_KINDS)}")
    for kind, run in runs:  # fail before any work on a bad run directory
        load_run(run, kind)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = []
    for kind, run in runs:
        if log:
            log(f"survival: {kind} {run} ({cfg.photos} photos)")
        rows.append(SURVIVAL_FUNCTIONS[kind](run, cfg, save=out / "examples"))
        if kind == "patch" and cfg.in_situ_photos:
            if log:
                log(f"survival: patch {run} in situ ({cfg.in_situ_photos} photos, preset {cfg.in_situ_preset})")
            rows.append(patch_in_situ_survival(run, cfg, save=out / "examples"))
        if kind == "patch" and cfg.photos_dir:
            rows.append(patch_photos_survival(run, cfg, save=out / "examples"))
    data = {"config": asdict(cfg), "rows": [r.as_dict() for r in rows], "seconds": round(time.time() - started, 1),
            "machine": machine_line(), "date": time.strftime("%Y-%m-%d")}
    write_atomic(out / "report.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    from pipelines.report import survival_plots

    write_atomic(out / "report.md", render_markdown(rows, cfg, data) + "\n" + "\n".join(survival_plots(data["rows"], out)))
    return rows


def _fmt(r: Rate) -> str:
    return f"{r.k}/{r.n} = {100 * r.value:.1f}% [{100 * r.low:.1f}, {100 * r.high:.1f}]" if r.n else "n/a (n = 0)"


def render_markdown(rows: list[SurvivalRow], cfg: SurvivalConfig, data: dict[str, Any]) -> str:
    lines = ["# Survival of the physical attacks through the print-and-photograph loop", "",
             f"Channel: `camera.simulated.print_photograph` (preset `{cfg.preset}`; sheet with ArUco markers, sampled "
             "printer with halftoning, SimulatedCamera, camera.rectify), seed "
             f"{cfg.seed}, {cfg.photos} photos per attack; printed widths: patch {cfg.patch_width_mm:g} mm, sign "
             f"{cfg.sign_width_mm:g} mm, face photo {cfg.face_width_mm:g} mm. The channel shares no code and no "
             "random draws with the kornia EOT the attacks optimised over.", "",
             f"Machine: {data['machine']}; date {data['date']}; {data['seconds']:.0f} s.", "",
             "Rates: k/n = rate [Wilson 95% interval].", "",
             "| attack | how measured | model | goal | digital (held-out EOT draws) | after print + photo "
             "| un-attacked, same photos | survival (printed / digital) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        surv = "n/a" if r.survival is None else f"{r.survival:.2f}"
        lines.append(f"| {r.kind} | {r.method} | {r.model} | {r.goal} | {_fmt(r.digital)} | {_fmt(r.printed)} | "
                     f"{_fmt(r.clean_printed)} | {surv} |")
    lines += ["", "## Details", ""]
    for r in rows:
        lines.append(f"### {r.kind}, {r.method}: `{r.run}` ({r.seconds:.0f} s)")
        lines.append("")
        for k, v in r.extra.items():
            if k == "per_photo_success":
                continue
            lines.append(f"* {k}: {_fmt(v) if isinstance(v, Rate) else v}")
        lines.append("")
    lines += ["## How to read it", "",
              "* *digital*: the run's own success on fresh kornia EOT draws (its `metrics.json`), the number an "
              "attack paper reports.",
              "* *after print + photo*: success once the attack is printed at true size and photographed by the "
              "simulated camera. For the patch, n = photos × scenes (the same photographed patch is pasted into "
              "every scene, so the trials are clustered by photo; `per_photo_success` in report.json shows the "
              "spread). For the sticker and the eyeglass frame, n = photos (photos with no face found are "
              "reported, not counted).",
              "* *un-attacked, same photos*: the same measure on the clean object under the same printer and camera "
              "draws (clean sign, the wearer without the frame, scenes without a patch) — the false-success "
              "baseline.",
              "* *destruction rate* (patch): of the (photo, scene) pairs where the digital patch at the same "
              "placement succeeds, the fraction where the printed one fails (Kurakin et al. 2016's definition "
              "applied to a targeted patch).",
              "* *how measured* (patch): **in situ (simulated)** is how a patch is used: printed, cut along its "
              "mask, lying in a scene the attack never optimised on at its physical size (at most its nominal "
              "share of the view), the whole scene photographed (auto-exposure and white balance meter the "
              "whole frame) and the photo classified; n = in-situ photos, one scene each, the un-attacked "
              "column is the same photo without the patch. **rectify-and-paste** photographs the printed sheet, "
              "rectifies the patch from its markers and pastes the recovered pixels digitally into the run's "
              "scenes: it measures the print's colour fidelity through a second resampling (the patch is "
              "photographed at ~300 px, rectified back and resized again), lit by a camera that exposes the "
              "sheet, not the scene, so it is a lower bound on what the print keeps, not the way the patch is "
              "used. **in situ (real photos)**: photos of the printed patch in scenes (`--photos-dir`), each "
              "whole photo classified, unreadable photos listed as skipped.", ""]
    return "\n".join(lines) + "\n"
