"""One benchmark case per process: ``python -m bench.cases CASE [--quick] [--param k=v ...]`` prints one JSON line.

``bench.run_all`` starts every case in its own subprocess (so that each reports its own peak RSS) with the
chosen allocator preloaded; a case can also be run by hand. Every case returns a dict with ``seconds`` (the
timed repetitions, one per unit of work: a step, a frame, an image) and the case's own extras; the wrapper adds
``peak_rss_mb``, CPU user/system seconds, the allocator and the machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench.common import (
    Workload, active_allocator, build_resnet18, cpu_times, machine, median, peak_rss_mb, scenes, time_calls,
)

CASES: dict[str, Callable[..., dict[str, Any]]] = {}
TARGET = 859  # ImageNet "toaster" (Brown et al.'s target)


def case(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    CASES[fn.__name__] = fn
    return fn


def _batch(w: Workload):
    import torch

    s = scenes(w.size)
    return s.repeat(math.ceil(w.batch / s.shape[0]), 1, 1, 1)[: w.batch].contiguous(), torch.full((w.batch,), 1)


# ------------------------------------------------------------------------------------------ model only / floor
@case
def model_fwdbwd(w: Workload, precision: str = "fp32", channels_last: bool = False) -> dict[str, Any]:
    """The model's own forward + input-gradient backward on one batch (weights frozen), per batch."""
    import torch
    import torch.nn.functional as F

    model = build_resnet18(channels_last=channels_last)
    x, _ = _batch(w)
    y = torch.full((w.batch,), TARGET)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        xx = x.detach().requires_grad_(True)
        with torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16,
                            enabled=precision == "bf16"):
            logits = model(xx)
        loss = F.cross_entropy(logits.float(), y)
        torch.autograd.grad(loss, xx)

    return {"seconds": time_calls(step, w.steps, warmup=2), "unit": "s/step"}


@case
def floor(w: Workload) -> dict[str, Any]:
    """FLOPs of forward + input-gradient backward (torch.utils.flop_counter) and the measured matmul rate."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    model = build_resnet18()
    x, _ = _batch(w)
    xx = x.detach().requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        loss = F.cross_entropy(model(xx), torch.full((w.batch,), TARGET))
        loss.backward()  # weights frozen: only the input gradient (FlopCounterMode refuses autograd.grad)
    flops = fc.get_total_flops()
    n = 512 if w.size < 224 else 2048
    rates = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n).to(dt)
        b = torch.randn(n, n).to(dt)
        ts = time_calls(lambda: a @ b, 5, warmup=2)
        rates[name] = 2 * n**3 / median(ts) / 1e9
    return {"seconds": [flops / (rates["fp32"] * 1e9)], "unit": "s/step", "flops_per_step": flops,
            "gflop_per_image": flops / w.batch / 1e9, "matmul_gflops_fp32": rates["fp32"],
            "matmul_gflops_bf16": rates["bf16"], "floor_s_fp32": flops / (rates["fp32"] * 1e9),
            "floor_s_bf16": flops / (rates["bf16"] * 1e9)}


# ------------------------------------------------------------------------------------------ patch
# Steps run and discarded before timing a patch attack (ours and ART's alike): the first bf16 steps run ~1.5x slower
# than the steady state (measured 0.37 s -> 0.21-0.27 s on the 2-core CPU after ~6 steps), so a short warm-up
# measures start-up, not the hundreds of steps a real run takes.
ATTACK_WARMUP = 6


def _patch_attack(w: Workload, steps: int, area: float = 0.1, **kw: Any):
    from physical.universal import UniversalPatch, make_mask

    fill = float(make_mask("circle", 64).mean())
    size = max(8, round(math.sqrt(area * w.size * w.size / fill)))
    return UniversalPatch(eot="athalye-eot-2d", steps=steps, batch_size=w.batch, patch_size=size, shape="circle",
                          placement={"area": [area, area], "rotation": 22.5}, keep_draws=False, **kw)


@case
def patch(w: Workload, precision: str = "fp32", channels_last: bool = True, compile: bool = False) -> dict[str, Any]:
    """The project's UniversalPatch: seconds per Adam step (placement + athalye-eot-2d + model fwd/bwd)."""
    model = build_resnet18(frozen=False)  # as a user passes it: the engine freezes the weights itself
    warm = ATTACK_WARMUP
    stamps: list[float] = []
    attack = _patch_attack(w, w.steps + warm, eval_samples=0, precision=precision, channels_last=channels_last,
                           compile=compile)
    t0 = time.perf_counter()
    attack(model, scenes(w.size), target=TARGET, callback=lambda i, loss: stamps.append(time.perf_counter()))
    diffs = [b - a for a, b in zip(stamps, stamps[1:])][warm - 1:]
    return {"seconds": diffs, "unit": "s/step", "first_step_s": stamps[0] - t0,
            "weights_still_trainable": all(p.requires_grad for p in model.parameters())}


@case
def patch_art(w: Workload) -> dict[str, Any]:
    """ART 1.20 AdversarialPatchPyTorch on the same model, batch and image size: seconds per Adam step."""
    import numpy as np
    import torch
    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier

    model = build_resnet18(frozen=False)  # ART's documented use: the model as it is (weights trainable)
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, w.size, w.size),
                            nb_classes=1000, clip_values=(0.0, 1.0), device_type="cpu" if not torch.cuda.is_available()
                            else "gpu")
    attack = AdversarialPatchPyTorch(clf, rotation_max=22.5, scale_min=0.1, scale_max=1.0, learning_rate=0.05,
                                     max_iter=w.steps + ATTACK_WARMUP, batch_size=w.batch, patch_shape=(3, w.size, w.size),
                                     patch_type="circle", targeted=True, verbose=False)
    stamps: list[float] = []
    inner = attack._train_step

    def timed(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = inner(*a, **k)
        stamps.append(time.perf_counter() - t0)
        return out

    attack._train_step = timed
    x, _ = _batch(w)
    y = np.zeros((w.batch, 1000), dtype=np.float32)
    y[:, TARGET] = 1
    attack.generate(x=x.numpy(), y=y)
    return {"seconds": stamps[ATTACK_WARMUP:], "unit": "s/step", "patch_dtype": str(attack._patch.dtype)}


@case
def patch_success(w: Workload, precision: str = "fp32", steps: int = 60, eval_samples: int = 300,
                  area: float = 0.2) -> dict[str, Any]:
    """Targeted success rate (fresh EOT draws, fp32 evaluation) of a patch trained in ``precision``:
    mobilenet_v2 (real weights), the 6 shipped scenes, target 'toaster', circle covering ``area``,
    athalye-eot-2d, Adam lr 0.1, the same seeds for both precisions."""
    from testbed.models.registry import get_model

    if w.size < 224:
        steps, eval_samples = 2, 8
    model = get_model("mobilenet_v2", device="cpu")
    attack = _patch_attack(w, steps, area, eval_samples=eval_samples, eval_batch_size=50, precision=precision, lr=0.1)
    t0 = time.perf_counter()
    res = attack(model, scenes(w.size), target=TARGET)
    return {"seconds": [res.extras["optimise_seconds"] / max(steps, 1)], "unit": "s/step",
            "success_rate": res.success_rate, "initial_success_rate": res.initial_success_rate,
            "eval_samples": int(res.success.numel()), "steps": steps, "total_s": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------ eyeglass
EYEGLASS_WARMUP = 3  # steps run and discarded before timing the eyeglass (the first steps carry one-time costs)


@case
def eyeglass(w: Workload, precision: str = "fp32", channels_last: bool = False, eot_batch: int = 0
             ) -> dict[str, Any]:
    """The project's EyeglassFrame (Sharif et al.) in the shared physical-attack loop: seconds per Adam step and
    steps/s (frame composite + sharif EOT + dlib face descriptor fwd/bwd on ``w.batch`` 150x150 chips of the
    shipped astronaut photo, dodging, hinge loss, TV + NPS on); ``eot_batch`` 0 = one pass."""
    from physical.eyeglass import EyeglassFrame, align_wearer, enroll
    from testbed.models.face_descriptor import load_face_descriptor
    from testbed.photos import load_photo

    net = load_face_descriptor()  # CUDA when available, as the CLI runs it
    dev = next(net.parameters()).device
    chips, _ = align_wearer([load_photo("astronaut")])
    chips = chips.to(dev)
    enrolled = enroll(net, chips)
    stamps: list[float] = []
    attack = EyeglassFrame(mode="dodge", steps=w.steps + EYEGLASS_WARMUP, batch_size=w.batch, eval_samples=0,
                           lambda_tv=0.1, lambda_nps=0.1, keep_draws=False, precision=precision,
                           channels_last=channels_last, eot_batch=eot_batch or None)
    t0 = time.perf_counter()
    attack(net, chips, enrolled, callback=lambda i, loss: stamps.append(time.perf_counter()))
    diffs = [b - a for a, b in zip(stamps, stamps[1:])][EYEGLASS_WARMUP - 1:]
    return {"seconds": diffs, "unit": "s/step", "steps_per_s": 1.0 / median(diffs), "first_step_s": stamps[0] - t0,
            "images_per_step": w.batch, "chip": int(chips.shape[-1]), "device": str(dev),
            "weights_still_trainable": all(p.requires_grad for p in net.parameters())}


# ------------------------------------------------------------------------------------------ EOT-PGD
def _kornia_aug():
    """torchattacks' usual EOT: kornia.augmentation modules in the model, the athalye-eot-2d ranges."""
    import kornia.augmentation as K
    import torch

    return torch.nn.Sequential(
        K.RandomAffine(degrees=22.5, translate=(0.1, 0.1), scale=(0.9, 1.4), padding_mode="border", p=1.0),
        K.ColorJiggle(brightness=0.05, p=1.0),
        K.RandomGaussianNoise(mean=0.0, std=0.05, p=1.0),
    )


class _EOTModule:
    """The project's EOTTransform as a model layer (for torchattacks): a fresh draw per forward."""

    def __new__(cls, transform: Any, seed: int = 0):
        import torch

        class M(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.t, self.g = transform, torch.Generator().manual_seed(seed)

            def forward(self, x):
                return self.t(x, self.g)

        return M()


@case
def eotpgd(w: Workload, impl: str = "project", transforms: str = "eot") -> dict[str, Any]:
    """EOT-PGD (L∞ 8/255, α 2/255, random start), ``eot_samples`` draws of the athalye-eot-2d distribution per
    step; seconds per step. impl=project: physical.attacks.PGD with eot_batch=1 (S passes of B images, gradients
    summed, as torchattacks; channels_last=True, same fp32 arithmetic; eot_batch=None would run one pass of S*B images at S times the activation memory);
    impl=torchattacks: EOTPGD(eot_iter=S) on nn.Sequential(transforms, model) (S passes of B images);
    transforms=eot: the project's EOTTransform; kornia: kornia.augmentation RandomAffine + ColorJiggle + noise."""
    import torch

    from physical.eot import EOTTransform

    model = build_resnet18()
    x, _ = _batch(w)
    y = torch.full((w.batch,), 1)
    steps = max(1, w.steps // 4)  # S x B images per step: fewer timed steps (after one warm-up step)
    if impl == "project":
        from physical.attacks import PGD

        t = EOTTransform("athalye-eot-2d")
        stamps: list[float] = []

        def eot(images, generator):
            stamps.append(time.perf_counter())
            return t(images, generator)

        attack = PGD(eps=8 / 255, alpha=2 / 255, steps=steps + 1, random_start=True, eot=eot,
                     eot_samples=w.eot_samples, eot_batch=1, channels_last=True)
        t_end = [0.0]
        attack(model, x, y, generator=torch.Generator().manual_seed(0))
        t_end[0] = time.perf_counter()
        stamps = stamps[::w.eot_samples] + [t_end[0]]  # one eot call per pass: a step starts every S calls
        return {"seconds": [b - a for a, b in zip(stamps[1:], stamps[2:])], "unit": "s/step",
                "images_per_step": w.batch * w.eot_samples}
    import torchattacks

    aug = _EOTModule(EOTTransform("athalye-eot-2d")) if transforms == "eot" else _kornia_aug()
    wrapped = torch.nn.Sequential(aug, model).eval()
    calls: list[float] = []
    wrapped.register_forward_pre_hook(lambda m, a: calls.append(time.perf_counter()))
    attack = torchattacks.EOTPGD(wrapped, eps=8 / 255, alpha=2 / 255, steps=steps + 1, eot_iter=w.eot_samples)
    attack(x, y)
    calls.append(time.perf_counter())
    starts = calls[:: w.eot_samples]
    per = [b - a for a, b in zip(starts, starts[1:])]
    # the last recorded start is the end stamp only when calls == steps * eot_iter + 1
    return {"seconds": per[1:], "unit": "s/step", "images_per_step": w.batch * w.eot_samples,
            "transforms": transforms}


# ------------------------------------------------------------------------------------------ FGSM / PGD
@case
def digital(w: Workload, impl: str = "project", attack: str = "pgd") -> dict[str, Any]:
    """FGSM (1 step) or PGD (10 steps, no random start) on the batch: seconds per gradient step."""
    import torch

    model = build_resnet18()
    x, _ = _batch(w)
    y = torch.full((w.batch,), 1)
    n = 1 if attack == "fgsm" else 10
    if impl == "project":
        from physical.attacks import FGSM, PGD

        a = FGSM(eps=8 / 255) if attack == "fgsm" else PGD(eps=8 / 255, alpha=2 / 255, steps=n, random_start=False)
        fn = lambda: a(model, x, y)  # noqa: E731
    else:
        import torchattacks as ta

        a = ta.FGSM(model, eps=8 / 255) if attack == "fgsm" else ta.PGD(model, eps=8 / 255, alpha=2 / 255, steps=n,
                                                                       random_start=False)
        fn = lambda: a(x, y)  # noqa: E731
    if attack == "fgsm":
        times = time_calls(fn, max(2, w.steps), warmup=1)
    else:  # one 10-step run, no warm-up (its first step's one-time costs are spread over 10 steps, both sides)
        times = time_calls(fn, 1, warmup=0)
    return {"seconds": [t / n for t in times], "unit": "s/step", "steps": n}


# ------------------------------------------------------------------------------------------ camera / harness / live
@case
def simcam(w: Workload) -> dict[str, Any]:
    """camera.simulated.SimulatedCamera frames/s: a printed A4 page photographed in a scene, default preset."""
    import torch.nn.functional as F

    from camera.simulated import SimCameraConfig, SimulatedCamera

    page = F.interpolate(scenes(512, 1), size=(1169, 827), mode="bilinear")  # A4 at 100 dpi
    frame = (1920, 1080) if w.size >= 224 else (320, 240)
    n = 12 if w.size >= 224 else 2
    t0 = time.perf_counter()
    cam = SimulatedCamera(page, (210.0, 297.0), config=SimCameraConfig(frame_size=frame), seed=0, n_frames=n + 1)
    setup = time.perf_counter() - t0
    stamps = []
    with cam:
        for _ in cam:
            stamps.append(time.perf_counter())
    return {"seconds": [b - a for a, b in zip(stamps, stamps[1:])], "unit": "s/frame", "frame_size": list(frame),
            "print_setup_s": setup}


@case
def channel(w: Workload, kind: str = "print_photograph", width: int = 1280, height: int = 960,
            workers: int = 0, frame: bool = True) -> dict[str, Any]:
    """Photos/s of the simulated channel at a frame size: ``print_photograph`` (the harness's channel: a 224-px
    image printed on a marker sheet, photographed, rectified) or ``in_situ`` (a printed 80-px circular patch lying in
    a scene, photographed whole). Two passes over the same photos: one photo per call on one thread (OpenCV and
    torch limited to 1 thread: the CPU cost of a photo) and the many-photo call (``InSituPatch.shoot_many`` /
    ``print_photograph`` of the whole batch) on ``workers`` threads (0: the CPU cores), whose wall seconds per
    photo are the row's rate (what a survival row of many photos gets); the load average is taken around each.
    ``frame=False`` (in situ): only the part of the frame the model's view is made of, as the survival rows render
    (the same views bit for bit)."""
    import cv2
    import torch

    from camera.simulated import InSituConfig, InSituPatch, PrintPhotoConfig, photo_workers, print_photograph
    from physical.universal import circle_mask

    small = w.size < 224
    size = (320, 240) if small else (int(width), int(height))
    n = 4 if small else 24
    imgs = scenes(64 if small else 224, 2)
    threads = photo_workers(workers or None, n)
    if kind == "print_photograph":
        cfg = PrintPhotoConfig(frame_size=size)
        print_photograph(imgs[:1], seed=0, keys=[99], config=cfg, workers=1)  # warm-up: sheet layout, caches
        batch = imgs[torch.arange(n) % 2]
        def one(i: int) -> None:
            print_photograph(batch[i:i + 1], seed=0, keys=[i], config=cfg, workers=1)
        def many() -> None:
            print_photograph(batch, seed=0, keys=list(range(n)), config=cfg, workers=threads)
    elif kind == "in_situ":
        side = 32 if small else 80
        patch = torch.nn.functional.interpolate(imgs[:1], size=(side, side), mode="bilinear", antialias=True)
        shooter = InSituPatch(patch, circle_mask(side).view(1, 1, side, side), InSituConfig(frame_size=size))
        shooter.shoot("brick", 0, 999)
        reqs = [(("brick", "grass", "gravel")[i % 3], 0, i) for i in range(n)]
        def one(i: int) -> None:
            shooter.shoot(*reqs[i], frame=frame)
        def many() -> None:
            for _ in shooter.shoot_many(reqs, workers=threads, frame=frame):
                pass
    else:
        raise ValueError(f"unknown channel kind {kind!r}")
    load = [os.getloadavg()[0]]
    saved = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    wall1, cpu1 = [], []
    try:
        for i in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            one(i)
            wall1.append(time.perf_counter() - t0)
            cpu1.append(time.process_time() - c0)
    finally:
        cv2.setNumThreads(saved[0])
        torch.set_num_threads(saved[1])
    load.append(os.getloadavg()[0])
    t0, c0 = time.perf_counter(), time.process_time()
    many()
    per_photo, many_cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
    load.append(os.getloadavg()[0])
    # many_cpu_s_per_photo: CPU of all threads per photo in the many-photo call; on an idle machine its rate is
    # about workers / many_cpu_s_per_photo photos/s (the wall rate at load L is about the cores' share left)
    return {"seconds": [per_photo], "unit": "s/photo", "frame_size": list(size), "kind": kind, "photos": n,
            "whole_frame": bool(frame),
            "workers": threads, "one_thread_s_per_photo": median(wall1), "cpu_s_per_photo": median(cpu1),
            "many_cpu_s_per_photo": many_cpu, "load_average": list(os.getloadavg()), "load_1min_around": load}


@case
def harness(w: Workload) -> dict[str, Any]:
    """The harness's per-image costs: the simulated channel (print -> photograph -> rectify, one image per call)
    and classification (mobilenet_v2, batch of 16, no grad); seconds per image."""
    import torch

    from pipelines.channels import SimulatedChannel
    from testbed.models.registry import get_model

    imgs = scenes(w.size, 4 if w.size >= 224 else 2)
    ch = SimulatedChannel(seed=0)
    per_img = []
    for i in range(imgs.shape[0]):
        t0 = time.perf_counter()
        ch.transmit(imgs[i: i + 1], [f"img{i}"])
        per_img.append(time.perf_counter() - t0)
    model = get_model("mobilenet_v2", device="cpu")
    x, _ = _batch(w)
    with torch.no_grad():
        cls = time_calls(lambda: model(x), max(2, w.steps), warmup=1)
    return {"seconds": per_img[1:] or per_img, "unit": "s/image", "classify_s_per_image": median(cls) / w.batch,
            "channel": "simulated (default preset)"}


@case
def secure(w: Workload) -> dict[str, Any]:
    """The secure capture path's overhead (camera.secure.benchmark, as bench/bench_secure.py), 640x480."""
    from camera.secure.benchmark import measure_throughput

    frames = 60 if w.size >= 224 else 5
    rows = [measure_throughput(480, 640, frames)] + ([measure_throughput(1080, 1920, frames)] if w.size >= 224 else [])
    r = rows[0]
    return {"seconds": [1.0 / r.secure_fps], "unit": "s/frame", "rows": [x.as_dict() for x in rows],
            "plain_fps": r.plain_fps, "secure_fps": r.secure_fps, "overhead_ms": r.overhead_ms}


def _video(path: Path, n: int, width: int = 640, height: int = 480) -> Path:
    import cv2
    import numpy as np

    from camera.sources import tensor_to_bgr

    img = tensor_to_bgr(scenes(512, 1))
    img = cv2.resize(img, (width + 64, height + 64))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (width, height))
    for i in range(n):
        dx = (3 * i) % 64
        writer.write(np.ascontiguousarray(img[dx // 2: dx // 2 + height, dx: dx + width]))
    writer.release()
    return path


@case
def live(w: Workload, secure: bool = False) -> dict[str, Any]:
    """pipelines.live.run_live at 640x480 on a video file (mp4v), mobilenet_v2; frames/s of the whole loop.

    The annotated video is written with mp4v, as in the earlier rows (the live command's default, VP8 where the
    OpenCV build has no H.264 encoder, costs ~70 ms per 640x480 frame against ~11 ms: docs/harness.md)."""
    from pipelines.live import LiveConfig, run_live

    n = 90 if w.size >= 224 else 6
    with tempfile.TemporaryDirectory() as tmp:
        src = _video(Path(tmp) / "in.mp4", n)
        s = run_live(LiveConfig(source=str(src), model="mobilenet_v2", out=Path(tmp) / "out", max_frames=n,
                                secure=secure, codec="mp4v"))
    return {"seconds": [1.0 / s.fps], "unit": "s/frame", "fps": s.fps, "classify_fps": s.classify_fps,
            "steady_fps": s.steady_fps, "startup_s": s.startup_s,
            "frames": s.frames, "stages_ms": s.stages_ms, "secure": secure}


# ------------------------------------------------------------------------------------------ campaigns
def _campaign_cells(run_dir: Path) -> dict[str, bytes]:
    return {c.name: (c / "perturbation.npy").read_bytes() for c in sorted((run_dir / "cells").iterdir())}


@case
def campaign(w: Workload, cells: int = 4, steps: int = 12, workers: int = 2,
             torch_threads: int = 0) -> dict[str, Any]:
    """``testbed campaign run`` on ``cells`` equal patch cells (mobilenet_v2, one per seed), serially and with
    ``--executor local --workers N``, each as the real command in a subprocess, one after the other in this run:
    wall seconds of each, the speed-up, whether the cells came out identical, and the load average around each.
    ``torch_threads`` > 0 sets the campaign's ``torch_threads`` (the same count in every cell on every executor:
    what makes the cells bit-identical across executors); 0 leaves the campaign default (1); -1 writes
    ``torch_threads: null``, each executor's own choice (serial: torch's default, all cores; local: 1 per worker)."""
    import os
    import subprocess

    import yaml

    opts = ({"model": "sign-cnn", "sign": "stop", "target": "yield", "steps": 2, "batch_size": 2, "device": "cpu"}
            if w.size < 100 else {"model": "mobilenet_v2", "target": "toaster", "steps": steps, "batch_size": 8,
                                  "area": 0.1, "device": "cpu"})
    spec = {"name": "bench-campaign", "attack": "sticker" if w.size < 100 else "patch",
            "grid": {"seed": list(range(cells))}, "options": opts,
            "evaluation": {"eot_draws": 16 if w.size < 100 else 100}}
    if torch_threads > 0 or torch_threads == -1:
        spec["torch_threads"] = torch_threads if torch_threads > 0 else None
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "campaign.yaml"
        f.write_text(yaml.safe_dump(spec))
        for name, extra in (("serial", []), ("local", ["--executor", "local", "--workers", str(workers)])):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "pipelines.main", "campaign", "run", str(f), "--out",
                                str(Path(tmp) / name), *extra], capture_output=True, text=True)
            out[f"{name}_s"] = time.perf_counter() - t0
            out[f"load_{name}"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            if p.returncode != 0:
                raise RuntimeError(f"campaign {name}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
        out["identical"] = _campaign_cells(Path(tmp) / "serial") == _campaign_cells(Path(tmp) / "local")
    out.update(seconds=[out["local_s"]], speedup=out["serial_s"] / out["local_s"], cells=cells, workers=workers,
               campaign=spec)
    return out


# ------------------------------------------------------------------------------------------ time to success
TTS_AREA = 0.1  # the patch covers at most 10% of the model's input (the validation draws place it at exactly 10%)
TTS_STOP = 0.9  # "a working patch": >= 90% targeted success on the fixed validation draws


class _TTSDone(Exception):
    """Raised from ART's hooked ``_train_step`` to end its ``generate`` at success or at the cap."""


def _tts_validator(model: Any, sc: Any, size: int, val_samples: int, seed: int):
    """The fixed validation draws shared by every arm and their scorer. Draws: ``val_samples`` placements of one
    distribution (scene uniform over the 6, centre uniform with the rotated patch inside the scene, rotation
    uniform in +-22.5 deg, the patch's own mask covering exactly ``TTS_AREA`` of the 224 x 224 input; no other
    transformation), from their own generator (``seed + physical.loop.VALIDATION_SEED_OFFSET``). ``score(colours,
    mask)`` renders a patch with ITS OWN mask (scaled so that the mask covers the drawn area) on those draws and
    returns the fraction classified as the target, in fp32 (model in eval mode, channels_last)."""
    from physical.speed import prepared_model
    from physical.universal import UniversalPatch
    from physical.loop import replace_context

    val = UniversalPatch(eot={}, patch_size=size, shape="circle", placement={"area": [TTS_AREA, TTS_AREA],
                         "rotation": 22.5}, select_samples=val_samples, eval_batch_size=100, seed=seed,
                         eval_samples=0)
    ctx = val.context(model, sc, target=TARGET)
    draws = val._validation_draws(ctx)

    def score(colours: Any, mask: Any) -> float:
        c = replace_context(ctx, mask=mask.to(ctx.device), fill=float(mask.mean()))
        with prepared_model(model, channels_last=True, compile=False) as net:
            return val._validation_rate(net, c, colours.to(ctx.device).float(), draws)

    return draws, score


def _tts_warmup(model: Any, sc: Any) -> None:
    """Two forward + input-gradient backward passes in each layout before any arm is timed, so that the first
    arm does not pay the process's one-time kernel set-up for the others."""
    import torch

    for fmt in (torch.contiguous_format, torch.channels_last):
        for _ in range(2):
            x = sc.detach().clone(memory_format=fmt).requires_grad_(True)
            torch.autograd.grad(model(x).logsumexp(1).sum(), x)


def _tts_ours(model: Any, sc: Any, score: Any, *, size: int, batch: int, lr: float, precision: str, every: int,
              max_steps: int, seed: int, lr_schedule: str = "constant") -> dict[str, Any]:
    """The project's UniversalPatch (placement only: area 0.1, rotation 22.5; no other EOT stage) with the loop's
    own early stopping (``select_every=every``, ``stop_at=TTS_STOP``); the loop's validation call is replaced by
    the shared scorer on the shared draws, and timed."""
    import dataclasses

    from physical.universal import UniversalPatch

    checks: list[dict[str, float]] = []
    clock: dict[str, float] = {}

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class TimedPatch(UniversalPatch):
        def _validation_rate(self, net: Any, ctx: Any, colours: Any, validation: Any) -> float:
            t, c = time.perf_counter(), time.process_time()
            rate = score(colours, ctx.mask)
            checks.append({"start": t - clock["t0"], "seconds": time.perf_counter() - t, "rate": rate,
                           "cpu_start": c - clock["c0"], "cpu": time.process_time() - c})
            return rate

    kw: dict[str, Any] = {"lr_schedule": lr_schedule} if lr_schedule != "constant" else {}
    attack = TimedPatch(eot={}, steps=max_steps, batch_size=batch, lr=lr, patch_size=size, shape="circle",
                        placement={"area": [TTS_AREA, TTS_AREA], "rotation": 22.5}, eval_samples=0, seed=seed,
                        keep_draws=False, precision=precision, select_every=every, select_samples=1,
                        stop_at=TTS_STOP, **kw)
    clock["t0"], clock["c0"] = time.perf_counter(), time.process_time()
    res = attack(model, sc, target=TARGET)
    total = time.perf_counter() - clock["t0"]
    steps = [c[0] for c in res.extras.get("validation_checks", [])]
    return _tts_summary(checks, steps, total, len(res.loss_history))


def _tts_summary(checks: list[dict[str, float]], steps: list[int], total: float, steps_run: int,
                 cap_s: float | None = None) -> dict[str, Any]:
    """Times of one arm: to the first check at >= TTS_STOP, without the checks' own time (``time_s``: the wall
    time at the start of that check minus the seconds spent in the earlier checks) and with it
    (``time_with_checks_s``: the wall time at the end of that check); ``cpu_s``: this process's CPU seconds to
    the same point, the checks' CPU excluded (steadier than wall time on a shared machine). ``checks``: [step,
    validation success, wall s, CPU s] per check."""
    spent = cpu_spent = 0.0
    out: dict[str, Any] = {"reached": False, "checks": [], "steps_run": steps_run, "wall_s": total}
    for i, c in enumerate(checks):
        train_s, cpu_s = c["start"] - spent, c["cpu_start"] - cpu_spent
        out["checks"].append([steps[i] if i < len(steps) else None, round(c["rate"], 4), round(train_s, 2),
                              round(cpu_s, 2)])
        if c["rate"] >= TTS_STOP and not out["reached"]:
            out.update(reached=True, time_s=train_s, cpu_s=cpu_s, time_with_checks_s=c["start"] + c["seconds"],
                       steps=steps[i] if i < len(steps) else None)
        spent += c["seconds"]
        cpu_spent += c["cpu"]
    out["check_seconds"] = spent
    out["train_s"] = total - spent
    out["best_rate"] = max((c["rate"] for c in checks), default=float("nan"))
    out["s_per_step"] = (total - spent) / max(steps_run, 1)
    if not out["reached"] and checks:  # lower bounds: not reached by the last check
        out["time_s"] = checks[-1]["start"] - (spent - checks[-1]["seconds"])
        out["cpu_s"] = checks[-1]["cpu_start"] - (cpu_spent - checks[-1]["cpu"])
    if cap_s is not None:
        out["cap_s"] = cap_s
    return out


def _tts_art(model: Any, sc: Any, score: Any, *, size: int, batch: int, lr: float, every: int, max_steps: int,
             cap_s: float, seed: int, area_min: float, cap_cpu_s: float = 0.0) -> dict[str, Any]:
    """ART 1.20 AdversarialPatchPyTorch with its own transformations (random location, rotation +-22.5 deg, scale
    so that its circle covers ``area_min``..TTS_AREA of the image) and its default optimiser (Adam), a
    ``size`` x ``size`` patch; every ``every`` of its steps the patch is scored by the shared scorer with ART's own
    circle mask; it stops at TTS_STOP or once its training time (checks excluded) passes ``cap_s`` wall seconds
    or, when given, ``cap_cpu_s`` CPU seconds of this process (steadier on a shared machine)."""
    import numpy as np
    import torch
    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(seed)
    torch.manual_seed(seed)
    n = sc.shape[-1]
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, n, n), nb_classes=1000,
                            clip_values=(0.0, 1.0), device_type="gpu" if torch.cuda.is_available() else "cpu")
    # the circle mask's fill: ART resizes the patch and its mask to the image's side, then scales both by its scale
    probe = AdversarialPatchPyTorch(clf, patch_shape=(3, size, size), patch_type="circle", targeted=True,
                                    verbose=False)
    fill = float(probe._get_circular_patch_mask(nb_samples=1)[0, 0].mean())
    s_max, s_min = math.sqrt(TTS_AREA / fill), math.sqrt(area_min / fill)
    attack = AdversarialPatchPyTorch(clf, rotation_max=22.5, scale_min=s_min, scale_max=s_max, learning_rate=lr,
                                     max_iter=math.ceil(max_steps / sc.shape[0]), batch_size=batch,
                                     patch_shape=(3, size, size), patch_type="circle", targeted=True, verbose=False)
    mask = attack._get_circular_patch_mask(nb_samples=1)[0, :1][None].float().cpu()
    checks: list[dict[str, float]] = []
    steps: list[int] = []
    clock = {"t0": 0.0, "c0": 0.0, "spent": 0.0, "n": 0}
    inner = attack._train_step

    def hooked(*a: Any, **k: Any) -> Any:
        out = inner(*a, **k)
        clock["n"] += 1
        if clock["n"] % every == 0 or clock["n"] >= max_steps:
            t, c = time.perf_counter(), time.process_time()
            rate = score(attack._patch.detach().float()[None].cpu(), mask)
            checks.append({"start": t - clock["t0"], "seconds": time.perf_counter() - t, "rate": rate,
                           "cpu_start": c - clock["c0"], "cpu": time.process_time() - c})
            steps.append(clock["n"])
            clock["spent"] += checks[-1]["seconds"]
            cpu_spent = sum(ch["cpu"] for ch in checks[:-1])
            if rate >= TTS_STOP or t - clock["t0"] - (clock["spent"] - checks[-1]["seconds"]) >= cap_s \
                    or 0 < cap_cpu_s <= c - clock["c0"] - cpu_spent or clock["n"] >= max_steps:
                raise _TTSDone
        return out

    attack._train_step = hooked
    x = sc.repeat(batch, 1, 1, 1).numpy()  # each scene `batch` times: one epoch = 6 steps of `batch` images
    y = np.zeros((x.shape[0], 1000), dtype=np.float32)
    y[:, TARGET] = 1
    clock["t0"], clock["c0"] = time.perf_counter(), time.process_time()
    try:
        attack.generate(x=x, y=y)
    except _TTSDone:
        pass
    total = time.perf_counter() - clock["t0"]
    out = _tts_summary(checks, steps, total, clock["n"], cap_s)
    out.update(lr=lr, scale=[s_min, s_max], mask_fill=fill, patch_dtype=str(attack._patch.dtype))
    if cap_cpu_s > 0:
        out["cap_cpu_s"] = cap_cpu_s
    return out


@case
def time_to_success(w: Workload, arms: str = "fast,fp32,art:5.0,art:0.05", every: int = 20, val_samples: int = 500,
                    seed: int = 0, fp32_lr: float = 0.1, fp32_batch: int = 8, fast_lr: float = 0.3,
                    fast_batch: int = 8, fast_precision: str = "fp32", fast_schedule: str = "constant",
                    art_batch: int = 8, art_area_min: float = 0.09, max_steps: int = 3000, cap_factor: float = 3.5,
                    cap_s: float = 0.0, cap_cpu_s: float = 0.0, art_every: int = 0) -> dict[str, Any]:
    """Wall time until a <= 10% patch first reaches >= 90% targeted success (toaster) on a FIXED set of
    ``val_samples`` validation draws, checked every ``every`` steps, mobilenet_v2 and the 6 shipped scenes, for
    each arm in order in this one process (same model, threads, allocator): ``fast`` (ours, the fastest setting:
    ``fast_*``), ``fp32`` (ours, ``fp32_*``: the documented recipe's lr 0.1, batch 8), ``art:LR`` (ART's
    AdversarialPatchPyTorch at learning rate LR; its documented default is 5.0). The times exclude the checks (each
    check's seconds are subtracted); ``time_with_checks_s`` includes them. Each ART arm stops at ``cap_s`` seconds
    of training, or (``cap_s`` = 0) at ``cap_factor`` x the fastest of our arms' times; not reaching 90% by then
    makes the ratio a lower bound; each ART arm is also capped at ``cap_cpu_s`` CPU seconds of training (0: at
    ``cap_factor`` x our fastest arm's CPU seconds), whichever cap comes first.
    ``art_every`` > 0 checks the ART arms every ``art_every`` steps instead (fewer costly checks; the time to 90% is
    then known to that resolution). The ratio compares ART's fastest arm with our fastest."""
    import os

    from testbed.models.registry import get_model

    size = 80 if w.size >= 224 else 24  # a circle covering 10% of 224 x 224 (64 x 64 in --quick: 24 px)
    if w.size < 224:
        every, val_samples, max_steps = 1, 8, 2
        fp32_batch = fast_batch = art_batch = w.batch
    model = get_model("mobilenet_v2", device="cpu")
    sc = scenes(w.size)
    draws, score = _tts_validator(model, sc, size, val_samples, seed)
    _tts_warmup(model, sc)
    out: dict[str, Any] = {"val_samples": val_samples, "every": every, "area": TTS_AREA, "stop_at": TTS_STOP,
                           "arms": []}
    for arm in [a.strip() for a in arms.split(",") if a.strip()]:
        load0 = os.getloadavg()[0]
        if arm in ("fast", "fp32"):
            cfg = (dict(lr=fast_lr, batch=fast_batch, precision=fast_precision, lr_schedule=fast_schedule)
                   if arm == "fast" else dict(lr=fp32_lr, batch=fp32_batch, precision="fp32"))
            r = _tts_ours(model, sc, score, size=size, every=every, max_steps=max_steps, seed=seed, **cfg)
            r.update(cfg)
        elif arm.startswith("art:"):
            ours = [out[a] for a in ("fast", "fp32") if a in out and out[a]["reached"]]
            cap = cap_s if cap_s > 0 else (cap_factor * min(o["time_s"] for o in ours) if ours else 600.0)
            cpu_cap = cap_cpu_s if cap_cpu_s > 0 else (cap_factor * min(o["cpu_s"] for o in ours) if ours else 0.0)
            r = _tts_art(model, sc, score, size=size, batch=art_batch, lr=float(arm[4:]), every=art_every or every,
                         max_steps=max_steps, cap_s=cap, seed=seed, area_min=art_area_min, cap_cpu_s=cpu_cap)
            r["batch"] = art_batch
        else:
            raise SystemExit(f"unknown arm {arm!r}: fast, fp32 or art:LR")
        r["load"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        out[arm] = r
        out["arms"].append(arm)
        print(f"# time_to_success {arm}: " + json.dumps(r), file=sys.stderr, flush=True)  # survives a killed run
    ours = [a for a in ("fast", "fp32") if a in out and out[a]["reached"]]
    arts = [a for a in out["arms"] if a.startswith("art:")]
    if ours and arts:
        best = min(ours, key=lambda a: out[a]["time_s"])
        reached = [a for a in arts if out[a]["reached"]]
        art = min(reached, key=lambda a: out[a]["time_s"]) if reached else max(arts, key=lambda a: out[a]["time_s"])
        out.update(ours_arm=best, art_arm=art, ratio_art_over_ours=out[art]["time_s"] / out[best]["time_s"],
                   ratio_is_lower_bound=not reached, art_best_rate=max(out[a]["best_rate"] for a in arts))
        if "cpu_s" in out[art] and out[best].get("cpu_s"):
            out["cpu_ratio_art_over_ours"] = out[art]["cpu_s"] / out[best]["cpu_s"]
    first = next((out[a] for a in out["arms"]), {"time_s": float("nan")})
    out["seconds"] = [first.get("time_s", float("nan"))]
    return out


# ------------------------------------------------------------------------------------------ print-aware step
@case
def print_aware_step(w: Workload, arms: str = "plain,fold_bn", rounds: int = 6, steps: int = 6,
                     batch: int = 4) -> dict[str, Any]:
    """One step of issue 18's print-aware <= 10% recipe (MobileNetV2, toaster, area 0.1, 80 px circle,
    experiments/eot_print_aware_10pct.yaml, the six scenes, ``batch`` draws), cut into its parts and timed in CPU
    seconds (``time.process_time``; the threads torch was started with): drawing the parameters, rendering (placement
    + print + geometry + light + optics + sensor), the model's forward and loss, the model's input-gradient backward,
    the backward through the rendering to the colour logits, Adam. Arms (``plain``: the model as registered,
    ``fold_bn``: BatchNorm folded, as ``--fold-bn``) alternate, ``rounds`` x ``steps`` steps each after a warm-up
    round, in one process; medians per part (seconds per step), and whether the arms' weights stay frozen."""
    import torch

    from physical.cli_eot import _eot_arg, _load_scene
    from physical.speed import prepared_model
    from physical.universal import UniversalPatch, make_mask
    from testbed.models.registry import get_model

    if w.size < Workload().size:  # --quick: the same step, fewer repetitions
        rounds, steps = 1, 2
    names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "grace_hopper")
    size = 224
    patch_size = max(8, round(math.sqrt(0.1 * size * size / float(make_mask("circle", 64).mean()))))
    eot = _eot_arg(str(Path(__file__).resolve().parent.parent / "experiments" / "eot_print_aware_10pct.yaml"))
    model = get_model("mobilenet_v2")
    scene_batch = torch.cat([_load_scene(n, size) for n in names])
    attacks = {arm: UniversalPatch(patch_size=patch_size, shape="circle", placement={"area": [0.1, 0.1], "rotation": 22.5},
                                   eot=eot, batch_size=batch, lr=0.3, fold_bn=arm == "fold_bn")
               for arm in arms.split(",")}
    parts = ("sample", "render", "model_forward", "model_backward", "render_backward", "adam", "step")
    times: dict[str, dict[str, list[float]]] = {arm: {p: [] for p in parts} for arm in attacks}
    frozen: dict[str, bool] = {}
    w0 = torch.logit(torch.rand(1, 3, patch_size, patch_size, generator=torch.Generator().manual_seed(7)).clamp(1e-4, 1 - 1e-4))
    for r in range(rounds + 1):
        for arm, attack in attacks.items():
            ctx = attack.context(model, scene_batch, target=TARGET)
            gen = torch.Generator().manual_seed(r)
            wt = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([wt], lr=attack.lr)
            with prepared_model(model, channels_last=True, compile=False, fold_bn=attack.fold_bn) as net:
                frozen[arm] = all(not p.requires_grad for p in net.parameters())
                for _ in range(steps):
                    t = [time.process_time()]
                    draw = attack._sample(ctx, batch, gen)
                    t.append(time.process_time())
                    colours = torch.sigmoid(wt)
                    x = attack._render(ctx, colours, draw)
                    t.append(time.process_time())
                    loss = attack._attack_loss(ctx, attack._forward(net, x, train=True), attack._goal(ctx, draw))
                    t.append(time.process_time())
                    (gx,) = torch.autograd.grad(loss, [x])
                    t.append(time.process_time())
                    (g,) = torch.autograd.grad([x], [wt], grad_outputs=[gx])
                    t.append(time.process_time())
                    wt.grad = g
                    opt.step()
                    t.append(time.process_time())
                    if r:  # round 0 warms up
                        for p, a, b in zip(parts, t, t[1:]):
                            times[arm][p].append(b - a)
                        times[arm]["step"].append(t[-1] - t[0])
    out: dict[str, Any] = {"unit": "CPU s/step", "batch": batch, "patch_size": patch_size,
                           "threads": torch.get_num_threads(), "weights_frozen": frozen,
                           "parts": {arm: {p: median(v) for p, v in d.items()} for arm, d in times.items()}}
    first = next(iter(times))
    out["seconds"] = times[first]["step"]
    if "plain" in times and "fold_bn" in times:
        out["fold_bn_over_plain"] = median(times["fold_bn"]["step"]) / median(times["plain"]["step"])
    return out


# ------------------------------------------------------------------------------------------ entry point
def _value(v: str) -> Any:
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def run_case(name: str, quick: bool, params: dict[str, Any]) -> dict[str, Any]:
    import torch

    if name not in CASES:
        raise SystemExit(f"unknown case {name!r}; known: {', '.join(CASES)}")
    w = Workload.quick() if quick else Workload()
    before = cpu_times()
    t0 = time.perf_counter()
    out = CASES[name](w, **params)
    after = cpu_times()
    out.update(case=name, params=params, quick=quick, median_s=median(out["seconds"]),
               wall_s=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(), allocator=active_allocator(),
               user_s=after["user_s"] - before["user_s"], sys_s=after["sys_s"] - before["sys_s"],
               threads=torch.get_num_threads(), workload={"size": w.size, "batch": w.batch, "steps": w.steps,
                                                          "eot_samples": w.eot_samples})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=sorted(CASES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--param", action="append", default=[], help="k=v keyword argument of the case")
    ap.add_argument("--machine", action="store_true", help="also report the machine")
    args = ap.parse_args(argv)
    params = dict(p.split("=", 1) for p in args.param)
    out = run_case(args.case, args.quick, {k: _value(v) for k, v in params.items()})
    if args.machine:
        out["machine"] = machine()
    sys.stdout.write("BENCH-RESULT " + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
