"""Channels: what happens to an image between the attacker's file and the model's input.

A channel takes a batch of digital images (BCHW RGB float in [0, 1], each with a stable id) and returns what the
model sees after the physical loop, at the same size:

* ``none``       - the identity (digital evaluation);
* ``simulated``  - print -> photograph -> rectify, simulated by the one simulated camera of the testbed,
  ``camera.simulated.print_photograph`` (a ``printouts`` sheet with ArUco markers, a printer with halftoning at
  its dot pitch, ``camera.simulated.SimulatedCamera``, ``camera.rectify``);
* ``folder``     - a folder of real photos of the printouts, one file per (tag, image id), already rectified
  or rectified with ``camera.rectify``;
* ``live``       - one frame per image from a live source (webcam index, video file, stream URL);
* ``transform``  - one of Kurakin et al. 2016's artificial image transformations (their section 4) in place of
  the print and the photo: brightness, contrast, Gaussian blur, Gaussian noise or JPEG.

Evaluation independence: ``camera.simulated`` is OpenCV + albumentations with its own parameter ranges and its own
``numpy`` Generators, seeded from (experiment seed, a key derived from the image id, repetition). It shares no code
and no random draws with ``physical.eot`` (kornia), which attacks optimise over; so an evaluation never reuses a
transformation an attack optimised on. The draw depends on the image id and the repetition only, not on the cell:
the clean and the adversarial version of an image are "photographed" under the same conditions, as on one printed
page in Kurakin et al. 2016.
"""
from __future__ import annotations

import hashlib
import math
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from testbed.errors import ConfigError, SourceError
from testbed.imageio import check_images

CHANNEL_KINDS = ("none", "simulated", "folder", "live", "transform")


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across runs and machines)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


@dataclass
class ChannelOutput:
    """Images after the channel (same shape as the input) and the per-image parameters that produced them."""

    images: Tensor
    params: list[dict[str, Any]]


class Channel(ABC):
    """``transmit(images, ids, rep=, tag=)`` -> ChannelOutput."""

    kind: str = "channel"

    @abstractmethod
    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput: ...

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


class IdentityChannel(Channel):
    kind = "none"

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        check_images(images)
        return ChannelOutput(images.clone(), [{} for _ in ids])


# ------------------------------------------------------------------------------------------ simulator
SIMULATOR_KEYS = ("width_mm", "dpi", "printer_dpi", "halftone_cell", "halftone_screen", "grain", "grain_mm",
                  "sample_printer", "frame_size", "max_tilt_deg", "camera")


class SimulatedChannel(Channel):
    """The simulated camera (``camera.simulated.print_photograph``): each image printed at ``width_mm`` on a sheet
    with 4 ArUco markers, halftoned by a sampled printer, photographed in a scene (3-D pose, lighting, blur, noise,
    JPEG), rectified from its markers back to the image's grid. One independent printer + photo draw per
    (seed, repetition, image id); ``preset``: the camera's ranges (``phone``: modelled on Kurakin et al.'s phone photos,
    with auto-exposure and white balance; ``webcam``; ``harsh``; the legacy ``default`` and ``mild``)."""

    kind = "simulated"

    def __init__(self, seed: int, preset: str = "default", **simulator: Any) -> None:
        from camera.simulated import PrintPhotoConfig

        bad = sorted(set(simulator) - set(SIMULATOR_KEYS))
        if bad:
            raise ConfigError(f"channel.simulator has no parameter(s) {bad}; known: {', '.join(SIMULATOR_KEYS)}")
        if "frame_size" in simulator:
            simulator["frame_size"] = tuple(simulator["frame_size"])
        try:
            self.config = PrintPhotoConfig(preset=preset, **simulator).validate()
        except TypeError as exc:
            raise ConfigError(f"channel.simulator: {exc}") from None
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"channel seed must be a non-negative integer, got {seed!r}")
        self.seed, self.preset = seed, preset

    @staticmethod
    def key(iid: str) -> int:
        """The per-image key of the camera's draw: a stable hash of the image id (namespace 'channel')."""
        return derive_seed("channel", iid)

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        from camera.simulated import print_photograph

        check_images(images)
        if len(ids) != images.shape[0]:
            raise ConfigError(f"got {images.shape[0]} images but {len(ids)} ids")
        res = print_photograph(images, seed=self.seed, rep=rep, keys=[self.key(i) for i in ids], config=self.config)
        return ChannelOutput(res.images, [{"id": i, **p} for i, p in zip(ids, res.params)])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "backend": "camera.simulated.print_photograph (printouts sheet -> printer -> "
                "SimulatedCamera -> camera.rectify)", "preset": self.preset, "config": asdict(self.config)}


# ------------------------------------------------------------------------------------------ real photos
def tag_dirname(tag: str) -> str:
    """A cell tag as a folder name: 'mobilenet_v2/fgsm/eps8' -> 'mobilenet_v2__fgsm__eps8'."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "__", tag)


class FolderChannel(Channel):
    """Real photos of the printouts: ``<folder>/<tag dir>/rep<r>/<image id>.<png|jpg|...>``.

    The harness writes the images to print under ``<run dir>/to_print/`` with the same layout. Photos must be
    rectified already (cropped to the printed image) unless ``rectify`` is given: a callable
    ``(photo 1x3xHxW, image id) -> 1x3xhxw`` (e.g. from ``camera.rectify``), which raises when it finds no markers.
    """

    kind = "folder"

    def __init__(self, folder: str | Path, rectify: Any = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"channel folder {self.folder} does not exist or is not a folder")
        if not any(self.folder.rglob("*")):
            raise SourceError(f"channel folder {self.folder} is empty: expected photos of the printouts under "
                              "<tag>/rep<r>/<image id>.png|jpg")
        self.rectify = rectify

    def path_for(self, tag: str, rep: int, iid: str) -> Path:
        from testbed.inputs import find_image

        d = self.folder / tag_dirname(tag) / f"rep{rep}"
        q = find_image(d / iid)
        if q is not None:
            return q
        raise SourceError(f"channel folder: no photo for image {iid!r} of {tag!r} repetition {rep}: expected "
                          f"{d / iid}.png (or .jpg)")

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        from camera.sources import decode_image_bytes
        from testbed.inputs import MAX_IMAGE_BYTES, read_bytes

        check_images(images)
        h, w = images.shape[-2:]
        outs, params = [], []
        for iid in ids:
            path = self.path_for(tag, rep, iid)
            data = read_bytes(path, what="photo", max_bytes=MAX_IMAGE_BYTES, error=SourceError)
            photo = decode_image_bytes(data, str(path))  # grayscale / RGBA / 16-bit / too many pixels refused there
            if self.rectify is not None:
                photo = self.rectify(photo, iid)
            outs.append(F.interpolate(photo, size=(h, w), mode="bilinear", antialias=True, align_corners=False))
            params.append({"path": str(path)})
        return ChannelOutput(torch.cat(outs).clamp(0, 1).to(images.device), params)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "folder": str(self.folder)}


class LiveChannel(Channel):
    """One frame per image from a live source (the printout held in front of the camera), resized to the image."""

    kind = "live"

    def __init__(self, source: Any, rectify: Any = None, timeout_s: float = 10.0) -> None:
        from camera.sources import open_source

        self.spec = source
        self.source = open_source(source, timeout_s=timeout_s) if not hasattr(source, "read") else source
        self.rectify = rectify

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        check_images(images)
        h, w = images.shape[-2:]
        outs, params = [], []
        for iid in ids:
            try:
                frame = self.source.read()
            except StopIteration:
                raise SourceError(f"live channel {self.source!r} ended before image {iid!r}") from None
            photo = frame.image if self.rectify is None else self.rectify(frame.image, iid)
            outs.append(F.interpolate(photo, size=(h, w), mode="bilinear", antialias=True, align_corners=False))
            params.append({"seq": frame.seq, "source": frame.source})
        return ChannelOutput(torch.cat(outs).clamp(0, 1).to(images.device), params)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": str(self.spec)}


# ------------------------------------------------------------------------------------------ artificial transforms
#: Kurakin et al. 2016 section 4's transformations: kind -> (its one parameter, lowest, highest, what it does)
TRANSFORMS: dict[str, tuple[str, float, float, str]] = {
    "brightness": ("delta", -255.0, 255.0, "X + delta / 255"),
    "contrast": ("factor", 0.05, 5.0, "X * factor"),
    "blur": ("sigma", 0.1, 20.0, "Gaussian blur of std sigma pixels (reflected border)"),
    "noise": ("sigma", 0.1, 255.0, "X + N(0, (sigma / 255)^2), one draw per (seed, image id, repetition)"),
    "jpeg": ("quality", 1, 100, "JPEG round trip at quality (the testbed's one codec, 4:2:0)"),
}


class TransformChannel(Channel):
    """One artificial transformation (``TRANSFORMS``) of every image, then clipping to [0, 1]: Kurakin et al.
    2016's section 4, which measured the destruction rate of each transformation alone. ``spec`` is
    ``{"kind": "jpeg", "quality": 75}`` etc. The noise of an image is the same for its clean and adversarial
    versions (drawn from the seed, the image id and the repetition, as the simulated camera's draws)."""

    kind = "transform"

    def __init__(self, seed: int, spec: Any) -> None:
        if not isinstance(spec, dict) or spec.get("kind") not in TRANSFORMS:
            raise ConfigError(f"channel.transform must be a mapping with kind one of {', '.join(TRANSFORMS)}, "
                              f"got {spec!r:.80}")
        name, lo, hi, _ = TRANSFORMS[spec["kind"]]
        extra = sorted(set(spec) - {"kind", name})
        value = spec.get(name)
        if extra or isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi \
                or (spec["kind"] == "jpeg" and value != int(value)):
            raise ConfigError(f"channel.transform {spec['kind']} takes one parameter {name} in [{lo:g}, {hi:g}]"
                              f"{' (an integer)' if spec['kind'] == 'jpeg' else ''}, got {dict(spec)!r:.80}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"channel seed must be a non-negative integer, got {seed!r}")
        self.seed, self.transform, self.value = seed, spec["kind"], float(value)

    def transmit(self, images: Tensor, ids: Sequence[str], *, rep: int = 0, tag: str = "") -> ChannelOutput:
        check_images(images)
        if len(ids) != images.shape[0]:
            raise ConfigError(f"got {images.shape[0]} images but {len(ids)} ids")
        x, v = images.detach().float(), self.value
        if self.transform == "brightness":
            out = x + v / 255.0
        elif self.transform == "contrast":
            out = x * v
        elif self.transform == "blur":
            from torchvision.transforms.functional import gaussian_blur

            k = 2 * int(math.ceil(3 * v)) + 1
            out = gaussian_blur(x, [k, k], [v, v])
        elif self.transform == "noise":
            noise = []
            for iid in ids:
                g = torch.Generator().manual_seed(derive_seed("transform-noise", self.seed, iid, rep) % (2**62))
                noise.append(torch.randn(x.shape[1:], generator=g))
            out = x + torch.stack(noise).to(x.device) * (v / 255.0)
        else:
            from pipelines.defences.transforms import JPEG

            out = JPEG(quality=int(v)).apply(x)
        return ChannelOutput(out.clamp(0, 1).to(images.dtype), [{"id": i, "rep": int(rep)} for i in ids])

    def describe(self) -> dict[str, Any]:
        name, _, _, what = TRANSFORMS[self.transform]
        value = int(self.value) if self.transform == "jpeg" else self.value
        return {"kind": self.kind, "transform": {"kind": self.transform, name: value}, "what": what}


def make_channel(spec: dict[str, Any], seed: int) -> Channel:
    """A channel from the experiment's ``channel:`` section (validated by ``pipelines.experiment``)."""
    kind = spec.get("kind", "none")
    if kind == "none":
        return IdentityChannel()
    if kind == "simulated":
        return SimulatedChannel(seed, spec.get("preset", "default"), **dict(spec.get("simulator") or {}))
    if kind == "folder":
        return FolderChannel(spec["folder"])
    if kind == "live":
        return LiveChannel(spec["source"])
    if kind == "transform":
        return TransformChannel(seed, spec.get("transform"))
    raise ConfigError(f"channel.kind must be one of {CHANNEL_KINDS}, got {kind!r}")
