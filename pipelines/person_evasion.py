"""``testbed evade-persons``: the person-evasion patch (Thys et al. 2019) against a registry detector (task
``detector``), optimised on the people of some photos and evaluated on fresh EOT draws of HELD-OUT photos: person
recall at IoU 0.5 and a stated score threshold, counted per person box with Wilson intervals, and AP — with no
patch (clean), the unoptimised grey patch, a random-colour patch of the same size and placement (the control) and
the optimised patch on the same draws; optionally through the print-photo loop.

    testbed evade-persons --model centernet-coco --train faceapi_sample1 faceapi_sample2 faceapi_sample3 \
        faceapi_sample4 --held-out faceapi_sample5 faceapi_sample6 --steps 200 --out runs/evade-persons

A scene item is a shipped photo name, a group-photo asset (``faceapi_sample1`` .. ``faceapi_sample6``), or an
image file / folder / glob (``testbed.photos.resolve_images``). Each photo is letterboxed to a
``--scene-size`` square; its person boxes are the detector's own clean detections of ``--label`` at ``--gt-score``
or more (Thys et al. took YOLOv2's detections the same way). The attack is
``physical.detector_patch.PersonPatch`` on the one physical loop; the metrics are ``pipelines.detection_metrics``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from pipelines.face_detector_evasion import (  # the same variants, control seed and report lines
    CONTROL_SEED_OFFSET, VARIANTS, print_recall_lines)
from testbed import cli_types
from testbed.errors import ConfigError


def detection_report(scores: dict[str, dict[str, Any]], *, iou_threshold: float, score_threshold: float
                     ) -> dict[str, Any]:
    """{variant: DetectionSummary.as_dict()} from the per-draw ``detections`` / ``gt_boxes`` (every person box of the
    draw's scene) of each variant: the face report's function with the person patch's records."""
    from physical.detector_patch import detection_images
    from pipelines.face_detector_evasion import detection_report as report

    return report(scores, iou_threshold=iou_threshold, score_threshold=score_threshold, to_images=detection_images,
                  gt_key="gt_boxes")


def control_names(seed: int, count: int) -> dict[str, int]:
    """{variant name: texture seed} of ``count`` random-colour controls: the first is ``random`` (seed + 99, the
    command's one control since its first version), the others ``random_<texture seed>``."""
    first = seed + CONTROL_SEED_OFFSET
    return {("random" if j == 0 else f"random_{first + j}"): first + j for j in range(count)}


def control_summary(report: dict[str, Any], names: dict[str, int]) -> dict[str, Any]:
    """How much a random patch costs, over several random textures scored on the same draws: each texture's recall
    and its cost (points of recall below ``report["clean"]``), the mean, spread and range of the costs, and the
    recall pooled over every texture. The textures share the same person boxes, so the pooled Wilson interval is
    only indicative; the spread over textures is the texture-to-texture variation."""
    from testbed.stats import wilson

    clean = report["clean"]["recall"]["value"]
    per, costs, k_all, n_all = {}, [], 0, 0
    for name, texture_seed in names.items():
        r = report[name]["recall"]
        cost = 100.0 * (clean - r["value"])
        per[name] = {"seed": texture_seed, "recall_text": report[name]["recall_text"], "k": r["k"], "n": r["n"],
                     "cost_points": round(cost, 2)}
        costs.append(cost)
        k_all, n_all = k_all + r["k"], n_all + r["n"]
    pooled = wilson(k_all, n_all)
    return {"textures": len(names), "per_texture": per, "mean_cost_points": round(statistics.mean(costs), 2),
            "sd_cost_points": round(statistics.stdev(costs), 2) if len(costs) > 1 else 0.0,
            "min_cost_points": round(min(costs), 2), "max_cost_points": round(max(costs), 2),
            "pooled_recall": pooled.as_dict(), "pooled_text": str(pooled),
            "clean_recall_text": report["clean"]["recall_text"]}


def print_control_line(summary: dict[str, Any], prefix: str = "") -> None:
    """One line: the random controls' mean cost and range, and the pooled recall."""
    print(f"{prefix}random controls ({summary['textures']} textures): mean cost {summary['mean_cost_points']:.1f} "
          f"points (sd {summary['sd_cost_points']:.1f}, range {summary['min_cost_points']:.1f} to "
          f"{summary['max_cost_points']:.1f}); pooled recall {summary['pooled_text']}")


def recall_by_scene(detected: Any, valid: Any, scene_index: Any, names: list[str]) -> dict[str, str]:
    """{scene: "k/n"}: person boxes detected over person boxes drawn, per scene (``detected`` / ``valid`` (E, P),
    ``scene_index`` (E,))."""
    out = {}
    for i, name in enumerate(names):
        mine = scene_index == i
        out[name] = f"{int(detected[mine].sum())}/{int(valid[mine].sum())}"
    return out


def recall_by_box(detected: Any, valid: Any, scene_index: Any, names: list[str]) -> dict[str, list[str]]:
    """{scene: ["k/n", ...]}: each person box of each scene (in the order of ``held_out_boxes``), detected over drawn
    — where a patch's cost falls (e.g. on one person whose box centre is her face)."""
    out = {}
    for i, name in enumerate(names):
        mine = scene_index == i
        d, v = detected[mine], valid[mine]
        out[name] = [f"{int(d[:, j].sum())}/{int(v[:, j].sum())}" for j in range(d.shape[1]) if v[:, j].any()]
    return out


def load_scenes(items: list[str], size: int) -> tuple[Any, list[str]]:
    """(scenes (N, 3, size, size), one name per scene): every image of every item, letterboxed (aspect kept,
    centred on black) to ``size`` x ``size``."""
    import torch

    from pipelines.live import _letterbox
    from testbed.photos import load_images, resolve_images

    scenes, names = [], []
    for item in items:
        paths = resolve_images([item], what="photo")
        for path, image in zip(paths, load_images(paths)):
            scenes.append(_letterbox(image, size, size).clamp(0, 1))
            names.append(item if len(paths) == 1 else path)
    return torch.cat(scenes), names


TRAIN_AUGMENTS = ("mirror", "scale")
AUGMENT_SCALE = 0.75  # ``scale``: each training scene shrunk to this fraction of the letterbox, centred on black


def train_augment(text: str) -> tuple[str, ...]:
    """``--train-augment``: ``none`` or a comma-separated subset of ``mirror``, ``scale`` (argparse type; a bad
    value is one line and exit 2)."""
    parts = [t.strip() for t in text.split(",")]
    if parts == ["none"]:
        return ()
    bad = [t for t in parts if t not in TRAIN_AUGMENTS]
    if bad or not parts or len(set(parts)) != len(parts):
        raise argparse.ArgumentTypeError(f"expected none or a comma-separated subset of {', '.join(TRAIN_AUGMENTS)} "
                                         f"without repeats, got {text[:60]!r}")
    return tuple(t for t in TRAIN_AUGMENTS if t in parts)


def augment_scenes(scenes: Any, names: list[str], augment: tuple[str, ...]) -> tuple[Any, list[str]]:
    """The extra training scenes of ``augment`` (the originals are not repeated): ``mirror`` adds each scene
    flipped left-right; ``scale`` adds each scene so far (mirrored ones included) shrunk to ``AUGMENT_SCALE`` of its
    side (antialiased) and centred on black, so its people are smaller in the same letterbox. Returns
    (scenes (M, 3, H, W), one name per scene, e.g. ``"bus.jpg (mirrored)"``)."""
    import torch
    import torch.nn.functional as F

    pool, pool_names = [scenes], list(names)
    if "mirror" in augment:
        pool.append(scenes.flip(-1))
        pool_names += [f"{n} (mirrored)" for n in names]
    if "scale" in augment:
        base = torch.cat(pool)
        h, w = base.shape[-2:]
        sh, sw = max(1, round(h * AUGMENT_SCALE)), max(1, round(w * AUGMENT_SCALE))
        small = F.interpolate(base, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (h - sh) // 2, (w - sw) // 2
        shrunk = torch.zeros_like(base)
        shrunk[..., top : top + sh, left : left + sw] = small
        pool.append(shrunk)
        pool_names += [f"{n} (scaled {AUGMENT_SCALE})" for n in pool_names]
    extra = torch.cat(pool[1:]) if len(pool) > 1 else scenes[:0]
    return extra, pool_names[len(names):]


def detector_model(name: str) -> Any:
    """The registry model ``name`` (a model of another task than ``detector`` is refused when the command line is
    parsed: ``add_model_options``'s task check)."""
    from testbed.models.registry import get_model

    return get_model(name)


def face_detector_model(name: str) -> Any:
    """The registry face detector ``name`` of ``--avoid-faces`` (a ConfigError when it has no ``face`` label)."""
    from testbed.models.detection import Detector

    detector = detector_model(name)
    if not isinstance(detector, Detector) or "face" not in detector.labels:
        raise ConfigError(f"--avoid-faces needs a face detector (a registry detector with the label 'face'), got "
                          f"{name!r}")
    return detector


def face_boxes(detector: Any, scenes: Any) -> list[Any]:
    """Each scene's face boxes (F, 4), pixels: ``detector``'s clean detections of ``face`` at its own score
    threshold, under the model-state guard (``--avoid-faces``)."""
    from testbed.models.base import model_state_guard

    with model_state_guard(detector):
        return detector.label_boxes(scenes, detector.label_index("face"))


def face_counts(boxes: list[Any], faces: list[Any], split: str) -> dict[str, int]:
    """How many of ``split``'s person boxes hold a face (``face_floors``): the patch moves below it."""
    import math

    from physical.detector_patch import face_floors

    found = sum(not math.isnan(v) for b, f in zip(boxes, faces) for v in face_floors(b, f).tolist())
    return {f"{split}_persons_with_face": found, f"{split}_persons": sum(len(b) for b in boxes)}


def print_photo_scores(attack: Any, detector: Any, scenes: Any, boxes: list[Any], textures: dict[str, Any], *,
                       photos: int, seed: int, preset: str, width_mm: float, progress: bool = False,
                       faces: list[Any] | None = None) -> tuple[dict[str, dict[str, Any]], Any]:
    """Each held-out scene with each texture (None = no patch) at its nominal placement on every person, printed
    ``width_mm`` wide and photographed ``photos`` times through the survival table's channel
    (``pipelines.survival.print_photo``: marker sheet, sampled printer + halftoning, simulated camera, rectified
    back to the scene's grid), then the detector on the rectified photo, scored by the attack's own hook against the
    clean scene's person boxes. Photo ``j`` of scene ``i`` uses key ``i * photos + j`` for every texture (paired).
    ``progress``: a bar on stderr counting the photos (printed and detected 8 at a time; each photo's printer and
    camera depend on its key only). ``faces``: each scene's face boxes (the patch stays below each person's face, as
    in the optimisation). Returns ({texture: scores}, scene index of each photo)."""
    import torch
    from tqdm import tqdm

    from pipelines.survival import SurvivalConfig, print_photo_outputs
    from testbed.models.base import model_state_guard

    cfg = SurvivalConfig(photos=photos, seed=seed, preset=preset).validate()
    ctx = attack.context(detector, scenes, scenes, boxes=boxes, eval_boxes=boxes, faces=faces, eval_faces=faces)
    scene_index = torch.arange(len(scenes)).repeat_interleave(photos)
    keys = list(range(len(scene_index)))
    goal = ctx.boxes[scene_index.to(ctx.device)]
    out: dict[str, dict[str, Any]] = {}

    def detect(shots: Any) -> Any:
        with model_state_guard(ctx.model):
            return ctx.model(shots.to(ctx.device))

    bar = tqdm(total=len(textures) * len(keys), desc="print + photo", unit="photo", disable=not progress)
    for name, texture in textures.items():
        with torch.no_grad():
            if texture is None:
                shown = ctx.scenes
            else:
                draw = attack.nominal_draw(ctx, torch.arange(len(scenes)))
                shown = attack.composite(ctx, texture.to(ctx.device).float(), draw, ctx.scenes, ctx.boxes)
            shown = shown[scene_index.to(ctx.device)].cpu()
            outputs = print_photo_outputs(shown, keys, cfg, width_mm, detect, chunk=8, bar=bar)
        out[name] = {k: v.cpu() for k, v in attack._score(ctx, outputs, goal).items()}
    bar.close()
    return out, scene_index


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evade-persons`` subcommand."""
    p = subparsers.add_parser(
        "evade-persons", help="person-evasion patch (Thys et al. 2019) against a detector; recall / AP on held-out "
                              "photos")
    cli_types.add_model_options(p, default="centernet-coco", what="detector (task detector)")
    p.add_argument("--label", default="person", help="the detector's class to hide")
    p.add_argument("--train", nargs="+", required=True, help="photos whose people the patch is optimised on")
    p.add_argument("--held-out", nargs="+", required=True, help="photos evaluated on (never a --train photo)")
    p.add_argument("--train-augment", type=train_augment, default=(), metavar="none|mirror[,scale]",
                   help="more training scenes from the --train photos: mirror (each flipped left-right), scale (each "
                        f"scene so far shrunk to {AUGMENT_SCALE} of the letterbox, centred); their person boxes are "
                        "the detector's own clean detections on them, a copy with none is dropped (default: none)")
    p.add_argument("--out", required=True, type=cli_types.output_dir, help="run folder (rerun to resume)")
    p.add_argument("--steps", type=cli_types.count(), default=200, help="optimisation steps, >= 1")
    p.add_argument("--batch-size", type=cli_types.batch, default=8, help="EOT draws (scenes) per step")
    p.add_argument("--lr", type=cli_types.positive, default=0.03, help="Adam learning rate (on colour logits)")
    p.add_argument("--patch-fraction", type=cli_types.number(0, 0.2, lo_open=True), default=0.18,
                   help="patch area / person box area at scale 1 (the largest draw: this x --scale-max^2)")
    p.add_argument("--scale-min", type=cli_types.number(0.1, 1.5), default=0.9, help="patch side jitter, low")
    p.add_argument("--scale-max", type=cli_types.number(0.1, 1.5), default=1.05, help="patch side jitter, high")
    p.add_argument("--rotation", type=cli_types.number(0, 180), default=20.0, help="patch rotation, +- degrees")
    p.add_argument("--jitter", type=cli_types.number(0, 1), default=0.05,
                   help="patch centre shift, +- fraction of the box's width / height")
    p.add_argument("--centre-y", type=cli_types.number(0, 1), default=0.5,
                   help="patch centre, this far down the person box (0.5: the box centre, as Thys et al.)")
    p.add_argument("--avoid-faces", metavar="FACE_DETECTOR",
                   help="keep the patch below each person's face: a person box holding a face found by this registry "
                        "face detector on the clean scene (e.g. tiny-face-detector) wears the patch with its top edge "
                        "no higher than the face's bottom edge (and its bottom edge within the box); default: off")
    p.add_argument("--patch-size", type=cli_types.integer(2, 1024), default=64, help="patch resolution (pixels)")
    p.add_argument("--scene-size", type=cli_types.integer(32, 4096), default=512,
                   help="each photo letterboxed to this square (pixels)")
    p.add_argument("--reduce", choices=("max", "topk", "mean", "per-box"), default="max",
                   help="a draw's loss: max over the candidates' class confidences, mean of the top --top-k, mean, or "
                        "per-box (each person box's max over the candidates overlapping it at --overlap-iou, averaged)")
    p.add_argument("--top-k", type=cli_types.count(), default=10, help="candidates averaged by --reduce topk")
    p.add_argument("--box-hinge", type=cli_types.number(0, 1, lo_open=True, hi_open=True), default=None,
                   metavar="SCORE",
                   help="with --reduce per-box: score each person box by softplus(logit(s) - logit(SCORE)), so the "
                        "people still detected get the push, not those already hidden (default: the plain score)")
    p.add_argument("--only-overlapping", action="store_true",
                   help="the loss keeps only candidates whose box overlaps a person box (--overlap-iou)")
    p.add_argument("--overlap-iou", type=cli_types.number(0, 1), default=0.1, help="overlap of --only-overlapping")
    p.add_argument("--score-threshold", type=cli_types.number(0, 1), default=None,
                   help="a detection counts at this score or more (default: the detector's own threshold, so every "
                        "detection it returns counts; centernet-coco: 0.2)")
    p.add_argument("--gt-score", type=cli_types.number(0, 1), default=None,
                   help="person boxes: the detector's clean detections of --label at this score or more (default: "
                        "0.3 or the detector's own threshold if higher, so a ground-truth box is one the clean "
                        "detector reports; centernet-coco 0.3, tiny-face-detector 0.5, mtcnn 0.7)")
    p.add_argument("--lambda-tv", type=cli_types.non_negative, default=0.5, help="total-variation weight")
    p.add_argument("--lambda-nps", type=cli_types.non_negative, default=0.01, help="non-printability weight")
    p.add_argument("--eot", default="thys-person", help="EOT preset name (the printer's stages act on the patch)")
    p.add_argument("--init", choices=("gray", "random"), default="gray", help="initial patch colours")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from the patch of this finished evade-persons run (e.g. to continue it under another "
                        "--eot or --patch-fraction) instead of --init; its patch size must be --patch-size")
    p.add_argument("--random-controls", type=cli_types.integer(1, 100), default=1, metavar="K",
                   help="score K random-colour textures of the same size and placement on the same held-out draws "
                        "(seeds --seed + 99 ...; the first is the 'random' row) and report each one's recall, their "
                        "mean cost in points and its range (default 1)")
    p.add_argument("--print-photos", type=cli_types.integer(0, 10000), default=0,
                   help="also print and photograph each held-out scene this many times (the survival table's "
                        "simulated channel) with no patch, the random patch and the optimised patch; 0: off")
    p.add_argument("--print-width-mm", type=cli_types.number(20, 1000), default=150.0,
                   help="printed width of a scene in the print-photo loop")
    p.add_argument("--print-preset", default="default", help="camera.simulated preset of those photos")
    p.add_argument("--print-seed", type=cli_types.seed, default=2026,
                   help="seed of the printer and camera draws (independent of the EOT seeds)")
    from physical.cli_eot import add_run_options

    add_run_options(p, checkpoint_every=10, channels_last=False, eval_samples=200)
    p.set_defaults(func=run_evade_persons)
    return p


def run_evade_persons(args: argparse.Namespace) -> int:
    """Handler of ``testbed evade-persons``."""
    import torch

    from physical.cli_eot import _speed_kwargs
    from physical.detector_patch import PersonPatch, random_patch
    from pipelines.face_detector_evasion import _real
    from testbed.machine import machine_info
    from testbed.photos import resolve_images
    from testbed.runs import atomic_write_json

    overlap = sorted(set(args.train) & set(args.held_out))
    resolved = sorted(set(map(_real, resolve_images(args.train, what="photo")))
                      & set(map(_real, resolve_images(args.held_out, what="photo"))))
    if overlap or resolved:
        raise ConfigError(f"--held-out must not repeat a --train photo: {', '.join(overlap or resolved)}")
    if args.scale_min > args.scale_max:
        raise ConfigError(f"--scale-min {args.scale_min} is above --scale-max {args.scale_max}")
    face_detector = face_detector_model(args.avoid_faces) if args.avoid_faces else None
    cli_types.check_run_out(args.out, PersonPatch.name)
    initial, init = None, {}
    if args.init_from:
        from physical.cli_eot import _initial_patch

        initial = _initial_patch(args.init_from, args.patch_size, None, kind=PersonPatch.name)
        init = {"init_from": str(Path(args.init_from).resolve())}
    t0 = time.perf_counter()
    detector = detector_model(args.model)
    score_threshold = (float(getattr(detector, "score_threshold", 0.5)) if args.score_threshold is None
                       else args.score_threshold)
    attack = PersonPatch(
        label=args.label, steps=args.steps, batch_size=args.batch_size, lr=args.lr, patch_size=args.patch_size,
        patch_fraction=args.patch_fraction, scale_min=args.scale_min, scale_max=args.scale_max,
        rotation=args.rotation, jitter=args.jitter, centre_y=args.centre_y, reduce=args.reduce, top_k=args.top_k,
        box_hinge=args.box_hinge,
        only_overlapping=args.only_overlapping, overlap_iou=args.overlap_iou, score_threshold=score_threshold,
        gt_score=max(0.3, float(getattr(detector, "score_threshold", 0.3))) if args.gt_score is None
        else args.gt_score, lambda_tv=args.lambda_tv, lambda_nps=args.lambda_nps, eot=args.eot, init=args.init,
        eval_samples=args.eval_samples, eval_batch_size=args.eval_batch_size, seed=args.seed,
        eval_seed=args.eval_seed, checkpoint_every=args.checkpoint_every, **_speed_kwargs(args))
    attack.label_index(detector)  # an unknown --label: ConfigError naming the detector's labels
    train, train_names = load_scenes(list(args.train), args.scene_size)
    held, held_names = load_scenes(list(args.held_out), args.scene_size)
    train_boxes = attack.ground_truth(detector, train, train_names)
    augment: dict[str, Any] = {"kinds": list(args.train_augment), "dropped": []}
    if args.train_augment:
        extra, extra_names = augment_scenes(train, train_names, args.train_augment)
        extra_boxes = attack.ground_truth(detector, extra, extra_names, require=False)
        keep = [i for i, b in enumerate(extra_boxes) if len(b)]
        augment["dropped"] = [extra_names[i] for i in range(len(extra_names)) if i not in keep]
        train = torch.cat([train, extra[keep]])
        train_names += [extra_names[i] for i in keep]
        train_boxes += [extra_boxes[i] for i in keep]
        if "scale" in args.train_augment:
            augment["scale"] = AUGMENT_SCALE
    held_boxes = attack.ground_truth(detector, held, held_names)
    train_faces = held_faces = None
    faces_info: dict[str, Any] = {}
    if face_detector is not None:
        train_faces, held_faces = face_boxes(face_detector, train), face_boxes(face_detector, held)
        faces_info = {"avoid_faces": args.avoid_faces, **face_counts(train_boxes, train_faces, "train"),
                      **face_counts(held_boxes, held_faces, "held_out"),
                      "held_out_faces": {n: f.tolist() for n, f in zip(held_names, held_faces)}}
    persons = {"train": {n: len(b) for n, b in zip(train_names, train_boxes)},
               "held_out": {n: len(b) for n, b in zip(held_names, held_boxes)}}
    print(f"{args.label} boxes: {sum(persons['train'].values())} in {len(train)} training scenes, "
          f"{sum(persons['held_out'].values())} in {len(held)} held-out photos")
    result = attack(detector, train, eval_scenes=held, boxes=train_boxes, eval_boxes=held_boxes, faces=train_faces,
                    eval_faces=held_faces, run_dir=args.out, progress=args.progress, initial=initial,
                    run_extra={"model": args.model, "train": list(args.train), "held_out": list(args.held_out),
                               "scene_size": args.scene_size, "persons": persons, "train_augment": augment,
                               "avoid_faces": args.avoid_faces, **init})
    control_seeds = control_names(args.seed, args.random_controls)
    controls = {name: random_patch(args.patch_size, s) for name, s in control_seeds.items()}
    control = controls["random"]
    # the random-colour controls on the SAME held-out draws (the evaluation generator replays them)
    scores = attack.evaluate(detector, controls, held, boxes=held_boxes, faces=held_faces, progress=args.progress)[0]
    for name, prefix in (("final", ""), ("initial", "initial_"), ("clean", "clean_")):
        scores[name] = {k: result.scores[prefix + k] for k in ("detections", "gt_boxes", "detected", "valid")}
    shown = [*VARIANTS, *(n for n in controls if n not in VARIANTS)]
    report = detection_report({k: scores[k] for k in shown}, iou_threshold=attack.iou_threshold,
                              score_threshold=attack.score_threshold)
    scene_index = torch.cat([d["scene_index"] for d in result.eval_draws])
    for name in shown:
        detected, valid = scores[name]["detected"].cpu(), scores[name]["valid"].cpu()
        report[name]["recall_by_scene"] = recall_by_scene(detected, valid, scene_index, held_names)
        report[name]["recall_by_box"] = recall_by_box(detected, valid, scene_index, held_names)
    summary = control_summary(report, control_seeds) if args.random_controls > 1 else None
    printed = None
    if args.print_photos:
        textures = {"clean": None, **controls, "final": result.perturbation}
        p_scores, p_index = print_photo_scores(attack, detector, held, held_boxes, textures,
                                               photos=args.print_photos, seed=args.print_seed,
                                               preset=args.print_preset, width_mm=args.print_width_mm,
                                               progress=args.progress, faces=held_faces)
        printed = detection_report(p_scores, iou_threshold=attack.iou_threshold,
                                   score_threshold=attack.score_threshold)
        for name in printed:
            detected, valid = p_scores[name]["detected"], p_scores[name]["valid"]
            printed[name]["recall_by_scene"] = recall_by_scene(detected, valid, p_index, held_names)
            printed[name]["recall_by_box"] = recall_by_box(detected, valid, p_index, held_names)
        printed = {"photos_per_scene": args.print_photos, "preset": args.print_preset, "seed": args.print_seed,
                   "width_mm": args.print_width_mm, "variants": printed,
                   **({"random_controls": control_summary(printed, control_seeds)} if summary else {})}
    elapsed = time.perf_counter() - t0
    out = Path(args.out)
    atomic_write_json(out / "detection.json", {
        "model": args.model, "label": args.label, "train": list(args.train), "held_out": list(args.held_out),
        "train_scenes": train_names, "held_out_scenes": held_names, "persons": persons, "train_augment": augment,
        "ground_truth": f"the detector's clean detections of {args.label!r} at score >= {attack.gt_score} on each "
                        f"untransformed, letterboxed {args.scene_size}-px scene",
        "held_out_boxes": {n: b.tolist() for n, b in zip(held_names, held_boxes)},
        "patch_fraction": attack.patch_fraction, "max_area_fraction": attack.max_area_fraction,
        "iou_threshold": attack.iou_threshold, "score_threshold": attack.score_threshold, "gt_score": attack.gt_score,
        "eval_samples": attack.eval_samples, "eval_seed": attack.resolved_eval_seed, "seed": attack.seed,
        "variants": report, "random_controls": summary, "random_control_seeds": control_seeds,
        "loss_history": result.loss_history, "seconds_total": round(elapsed, 1),
        "optimise_seconds": result.extras.get("optimise_seconds"), "eval_seconds": result.extras.get("eval_seconds"),
        "print_photo": printed, "machine": machine_info(), **faces_info, **init})
    torch.save({"random_texture": control}, out / "random_texture.pt")
    print_recall_lines(report, printed, "recall_by_scene")
    if summary:
        print_control_line(summary)
        if printed:
            print_control_line(printed["random_controls"], "printed+photographed ")
    print(f"held-out {', '.join(args.held_out)}; IoU {attack.iou_threshold}, score >= {attack.score_threshold}; "
          f"{elapsed:.0f}s; wrote {out}")
    return 0
