"""``testbed evade-detector``: an eyeglass frame that hides faces from MTCNN, optimised on some faces and
evaluated on fresh EOT draws of HELD-OUT faces (recall at IoU 0.5 per ground-truth box with Wilson intervals, and
AP), beside no frame, the unoptimised brown frame and a random-colour frame of the same mask (the control).

    testbed evade-detector --train astronaut camera --held-out grace_hopper --steps 40 --out runs/evade-mtcnn
    testbed evade-detector --train faceapi_sample1 faceapi_sample2 faceapi_sample3 faceapi_sample4 astronaut camera \
        --held-out faceapi_sample5 faceapi_sample6 grace_hopper --out runs/evade-mtcnn-group

A face item is a shipped photo name, a group-photo asset (``faceapi_sample1`` .. ``faceapi_sample6``: face-api's demo
photos, ``testbed assets fetch``), or an image file / folder / glob (``testbed.photos.resolve_images``). Every face
MTCNN finds in an item with probability >= ``--min-face-prob`` becomes a face chip (a group photo gives several).

The attack is ``physical.face_detector_attack.FaceDetectorFrame`` (the eyeglass attack on the one physical loop);
the metrics are ``pipelines.detection_metrics``. Writes the run folder (config, checkpoints, frame, metrics) and
``detection.json`` (recall / AP per variant, thresholds, faces, machine, timings).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from testbed import cli_types
from testbed.errors import ConfigError

#: the variants scored on the same held-out draws, in report order
VARIANTS = ("clean", "initial", "random", "final")
CONTROL_SEED_OFFSET = 99  # the random-colour control texture: seed + 99 (person evasion: + 99, + 100, ...)


def detection_report(scores: dict[str, dict[str, Any]], *, iou_threshold: float, score_threshold: float,
                     to_images: Any = None, gt_key: str = "gt_box") -> dict[str, Any]:
    """{variant: DetectionSummary.as_dict()} from the per-draw ``detections`` and ground truth (``gt_key``) of each
    variant; ``to_images(detections, gt)`` turns them into ``ImageDetections`` rows (default: one face per draw)."""
    from pipelines.detection_metrics import ImageDetections, summarise

    if to_images is None:
        from physical.face_detector_attack import detection_images as to_images
    out = {}
    for name, s in scores.items():
        images = [ImageDetections(*row) for row in to_images(s["detections"], s[gt_key])]
        out[name] = summarise(images, iou_threshold=iou_threshold, score_threshold=score_threshold).as_dict()
    return out


def print_recall_lines(report: dict[str, Any], printed: dict[str, Any] | None, by: str) -> None:
    """One line per variant (recall, AP, the ``by`` breakdown), digital then printed + photographed."""
    printed_variants = (printed or {}).get("variants", {})
    for prefix, variants in (("", {k: report[k] for k in VARIANTS}),
                             ("printed+photographed ", {k: printed_variants[k] for k in VARIANTS
                                                        if k in printed_variants})):
        for name, r in variants.items():
            parts = ", ".join(f"{k} {v}" for k, v in r[by].items())
            print(f"{prefix}{name:8s} recall {r['recall_text']}  AP {r['average_precision']:.3f}  ({parts})")


def face_chips(items: list[str], detector: Any, *, min_prob: float) -> tuple[Any, list[dict[str, Any]]]:
    """(chips (N, 3, 150, 150), [{"item", "faces"}] in chip order): every face of probability >= ``min_prob`` in
    each image of each item (an item that is a folder or a glob is listed once per image file)."""
    import torch

    from physical.face_detector_attack import align_all_faces
    from testbed.photos import load_images, resolve_images

    chips, counts = [], []
    for item in items:
        paths = resolve_images([item], what="face photo")  # photo assets (faceapi_sample*, person_*) by name too
        for path, image in zip(paths, load_images(paths)):
            c = align_all_faces(image, detector, min_prob=min_prob)
            chips.append(c)
            counts.append({"item": item if len(paths) == 1 else path, "faces": len(c)})
    return torch.cat(chips), counts


def recall_by_item(detected: Any, chip_index: Any, faces: list[dict[str, Any]]) -> dict[str, str]:
    """{item: "k/n"}: detected draws over draws of each item's faces (``faces`` as ``face_chips`` returns it, in
    chip order; ``chip_index`` (E,) the chip of each evaluation draw)."""
    out, start = {}, 0
    for row in faces:
        mine = (chip_index >= start) & (chip_index < start + row["faces"])
        out[row["item"]] = f"{int(detected[mine].sum())}/{int(mine.sum())}"
        start += row["faces"]
    return out


def print_photo_scores(attack: Any, detector: Any, chips: Any, textures: dict[str, Any], mask: Any, *,
                       photos: int, seed: int, preset: str, face_width_mm: float, progress: bool = False
                       ) -> tuple[dict[str, dict[str, Any]], Any]:
    """Each face chip wearing each texture (None = no frame) printed and photographed ``photos`` times through the
    survival table's channel (``camera.simulated.print_photograph`` with ``pipelines.survival.SurvivalConfig``'s
    print-photo config: marker sheet, sampled printer + halftoning, simulated camera, rectified back to the chip),
    then MTCNN on the rectified photo, scored by the attack's own success hook against the chip's clean ground-truth
    box. Draw ``j`` of chip ``i`` uses key ``i * photos + j`` for every texture (paired). ``progress``: a bar on
    stderr counting the photos (printed and detected 50 at a time; each photo's printer and camera depend on its key
    only). Returns ({texture: {"detected", "detections", "gt_box", ...}}, chip index of each photo)."""
    import torch
    from tqdm import tqdm

    from pipelines.survival import SurvivalConfig, print_photo_outputs

    cfg = SurvivalConfig(photos=photos, seed=seed, preset=preset, face_width_mm=face_width_mm).validate()
    scorer = attack.scorer(detector)
    boxes = attack.ground_truth(detector, chips)
    chip_index = torch.arange(len(chips)).repeat_interleave(photos)
    keys = list(range(len(chip_index)))
    mask = mask.to(chips)
    out: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(textures) * len(keys), desc="print + photo", unit="photo", disable=not progress)
    for name, texture in textures.items():
        worn = (chips if texture is None else mask * texture.to(chips) + (1 - mask) * chips)[chip_index]
        with torch.no_grad():
            outputs = print_photo_outputs(worn, keys, cfg, cfg.face_width_mm, scorer, chunk=50, bar=bar)
        out[name] = {k: v.cpu() for k, v in attack._score(None, outputs, boxes[chip_index]).items()}
    bar.close()
    return out, chip_index


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evade-detector`` subcommand."""
    p = subparsers.add_parser(
        "evade-detector", help="eyeglass frame that hides faces from MTCNN; recall / AP on held-out faces")
    p.add_argument("--train", nargs="+", required=True, help="photo names or files of the faces optimised on")
    p.add_argument("--held-out", nargs="+", required=True, help="photo names or files of the faces evaluated on")
    p.add_argument("--out", required=True, type=cli_types.output_dir, help="run folder (rerun to resume)")
    p.add_argument("--steps", type=cli_types.count(), default=40, help="optimisation steps, >= 1")
    p.add_argument("--batch-size", type=cli_types.batch, default=8, help="EOT draws per step")
    p.add_argument("--lr", type=cli_types.positive, default=0.1, help="Adam learning rate (on colour logits)")
    p.add_argument("--reduce", choices=("max", "topk"), default="max",
                   help="face score of an image: max over candidate windows, or mean of the top --top-k")
    p.add_argument("--top-k", type=cli_types.count(), default=5, help="windows averaged by --reduce topk")
    p.add_argument("--stage-loss", choices=("sum", "min"), default="sum",
                   help="a draw's loss: the sum of the three stages' hinges, or only the stage nearest to failing")
    p.add_argument("--logit-margin", type=cli_types.non_negative, default=1.0,
                   help="push each stage's face log-odds this far below its threshold")
    p.add_argument("--score-threshold", type=cli_types.number(0, 1), default=0.7,
                   help="a detection counts at this probability or more (0.7: every detection MTCNN returns)")
    p.add_argument("--lambda-tv", type=cli_types.non_negative, default=0.0, help="total-variation weight")
    p.add_argument("--lambda-nps", type=cli_types.non_negative, default=0.0, help="non-printability weight")
    p.add_argument("--eot", default="sharif", help="EOT preset name")
    p.add_argument("--frame-thickness", type=cli_types.number(0.01, 0.3), default=None,
                   help="rim width in eye distances (physical.eyeglass.FrameGeometry.thickness; default 0.115, "
                        "6.5%% of the chip; 0.2: 10.2%%)")
    p.add_argument("--min-face-prob", type=cli_types.number(0, 0.999), default=0.9,
                   help="every face MTCNN finds at this probability or more in a photo becomes a face chip")
    p.add_argument("--print-photos", type=cli_types.integer(0, 10000), default=0,
                   help="also print and photograph each held-out face this many times (the survival table's "
                        "simulated channel) with no frame, the random frame and the optimised frame; 0: off")
    p.add_argument("--print-preset", default="default", help="camera.simulated preset of those photos")
    p.add_argument("--print-seed", type=cli_types.seed, default=2026,
                   help="seed of the printer and camera draws (independent of the EOT seeds)")
    from physical.cli_eot import add_run_options

    add_run_options(p, checkpoint_every=10, channels_last=False, eval_samples=200)
    p.set_defaults(func=run_evade_detector)
    return p


def _real(item: str) -> str:
    """A resolved face item (shipped photo name or path) as the real path of its file."""
    import os

    from testbed.photos import list_photos, photo_path

    return os.path.realpath(photo_path(item) if item in list_photos() else item)


def run_evade_detector(args: argparse.Namespace) -> int:
    """Handler of ``testbed evade-detector``."""
    import torch

    from physical.cli_eot import _speed_kwargs
    from physical.face_detector_attack import FaceDetectorFrame, random_texture
    from testbed.machine import machine_info
    from testbed.models.mtcnn import build_mtcnn
    from testbed.photos import resolve_images
    from testbed.runs import atomic_write_json

    overlap = sorted(set(args.train) & set(args.held_out))
    resolved_overlap = sorted(set(map(_real, resolve_images(args.train, what="face photo")))
                              & set(map(_real, resolve_images(args.held_out, what="face photo"))))
    if overlap or resolved_overlap:
        raise ConfigError(f"--held-out must not repeat a --train face: {', '.join(overlap or resolved_overlap)}")
    attack = FaceDetectorFrame(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, reduce=args.reduce, top_k=args.top_k,
        logit_margin=args.logit_margin, stage_loss=args.stage_loss, score_threshold=args.score_threshold,
        lambda_tv=args.lambda_tv, lambda_nps=args.lambda_nps, eot=args.eot, eval_samples=args.eval_samples,
        eval_batch_size=args.eval_batch_size, seed=args.seed, eval_seed=args.eval_seed,
        checkpoint_every=args.checkpoint_every,
        geometry=None if args.frame_thickness is None else {"thickness": args.frame_thickness},
        **_speed_kwargs(args))
    t0 = time.perf_counter()
    cli_types.check_run_out(args.out, FaceDetectorFrame.name)
    detector = build_mtcnn()
    train_chips, train_faces = face_chips(list(args.train), detector, min_prob=args.min_face_prob)
    held_chips, held_faces = face_chips(list(args.held_out), detector, min_prob=args.min_face_prob)
    print(f"faces: {len(train_chips)} optimised on, {len(held_chips)} held out")
    result = attack(detector, train_chips, eval_chips=held_chips, run_dir=args.out, progress=args.progress,
                    run_extra={"train": list(args.train), "held_out": list(args.held_out),
                               "train_faces": train_faces, "held_out_faces": held_faces})
    size = int(held_chips.shape[-1])
    control = random_texture(size, args.seed + CONTROL_SEED_OFFSET)
    # the random-colour control on the SAME held-out draws (the evaluation generator replays them)
    control_scores = attack.evaluate(detector, {"random": control}, held_chips, progress=args.progress)["random"]
    scores = {"random": control_scores}
    for name, prefix in (("final", ""), ("initial", "initial_"), ("clean", "clean_")):
        scores[name] = {"detections": result.scores[prefix + "detections"], "gt_box": result.scores[prefix + "gt_box"]}
    report = detection_report({k: scores[k] for k in VARIANTS}, iou_threshold=attack.iou_threshold,
                              score_threshold=attack.score_threshold)
    chip_index = torch.cat([d["chip_index"] for d in result.eval_draws])
    detected = {"random": control_scores["detected"], "final": result.scores["detected"],
                "initial": result.scores["initial_detected"], "clean": result.scores["clean_detected"]}
    for name in VARIANTS:
        report[name]["recall_by_item"] = recall_by_item(detected[name].cpu(), chip_index, held_faces)
    printed = None
    if args.print_photos:
        from pipelines.survival import SurvivalConfig

        textures = {"clean": None, "random": control, "final": result.perturbation}
        face_width_mm = SurvivalConfig().face_width_mm
        p_scores, p_index = print_photo_scores(attack, detector, held_chips, textures, result.mask,
                                               photos=args.print_photos, seed=args.print_seed,
                                               preset=args.print_preset, face_width_mm=face_width_mm,
                                               progress=args.progress)
        printed = detection_report(p_scores, iou_threshold=attack.iou_threshold,
                                   score_threshold=attack.score_threshold)
        for name in printed:
            printed[name]["recall_by_item"] = recall_by_item(p_scores[name]["detected"], p_index, held_faces)
        printed = {"photos_per_face": args.print_photos, "preset": args.print_preset, "seed": args.print_seed,
                   "face_width_mm": face_width_mm, "variants": printed}
    elapsed = time.perf_counter() - t0
    out = Path(args.out)
    atomic_write_json(out / "detection.json", {
        "train": list(args.train), "held_out": list(args.held_out), "train_faces": train_faces,
        "held_out_faces": held_faces, "min_face_prob": args.min_face_prob, "eval_samples": attack.eval_samples,
        "eval_seed": attack.resolved_eval_seed, "variants": report, "mask_fraction": float(result.mask.mean()),
        "loss_history": result.loss_history, "seconds_total": round(elapsed, 1),
        "optimise_seconds": result.extras.get("optimise_seconds"), "print_photo": printed,
        "machine": machine_info()})
    torch.save({"random_texture": control}, out / "random_texture.pt")
    print_recall_lines(report, printed, "recall_by_item")
    print(f"held-out {', '.join(args.held_out)}; IoU {attack.iou_threshold}, score >= {attack.score_threshold}; "
          f"{elapsed:.0f}s; wrote {out}")
    return 0
