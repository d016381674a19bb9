"""Write the fixed RGB inputs of the face-api reference fixtures as PNG files.

Run from the repository root with the project's Python:
  .venv/bin/python tools/face_reference/make_inputs.py                          # face descriptor, 150x150
  .venv/bin/python tools/face_reference/make_inputs.py --set tiny_face_detector  # detector, assorted sizes
Then compute their reference outputs with the original implementation:  node compute_reference.mjs /
node compute_detector_reference.mjs (see README.md). The PNGs are committed; tests read them back, so the port
sees exactly the pixels tfjs saw.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 150
# Square face boxes (left, top, side) in the shipped photos, by eye: the face filling the chip like dlib's
# 150x150 chips (eyes at ~0.4 of the height). Landmark-free; used for the reference fixtures only.
FACE_BOXES = {
    "astronaut": (160, 45, 130),
    "grace_hopper": (160, 110, 200),
}


def synthetic(name: str) -> np.ndarray:
    """Deterministic synthetic images from fixed formulas (no RNG state beyond an explicit seed)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    if name == "gradient":
        r = 127.5 + 127.5 * np.sin(2 * np.pi * x / 50.0)
        g = 255.0 * y / (SIZE - 1)
        b = 127.5 + 127.5 * np.cos(2 * np.pi * (x + y) / 75.0)
        img = np.stack([r, g, b], axis=-1)
    elif name == "noise":
        img = np.random.default_rng(20240601).integers(0, 256, size=(SIZE, SIZE, 3)).astype(np.float64)
    else:
        raise ValueError(f"unknown synthetic input {name!r}")
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def face_crop(photo: str) -> np.ndarray:
    """The face box of a shipped photo, resized to 150x150 with PIL's bicubic filter."""
    from testbed.photos import photo_path

    left, top, side = FACE_BOXES[photo]
    img = Image.open(photo_path(photo)).convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.uint8)


INPUTS = {
    "gradient": lambda: synthetic("gradient"),
    "noise": lambda: synthetic("noise"),
    "astronaut_face": lambda: face_crop("astronaut"),
    "grace_hopper_face": lambda: face_crop("grace_hopper"),
}


# --- the Tiny Face Detector's inputs: whole photos of assorted sizes and aspect ratios (face-api pads each to a
# square at the bottom / right and resizes it to inputSize with tfjs resizeBilinear), one with no face.


def _rgb_photo(name: str) -> Image.Image:
    from testbed.photos import photo_path

    return Image.open(photo_path(name)).convert("RGB")


def _faceapi_sample(i: int) -> Image.Image:
    from testbed.assets import asset_path

    return Image.open(asset_path(f"faceapi_sample{i}")).convert("RGB")


def _shrunk(img: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``img`` cropped to ``box`` (left, top, right, bottom) and resized to ``size`` (width, height), PIL bicubic."""
    if box is not None:
        img = img.crop(box)
    return np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.uint8)


#: name -> (how it is made, where it comes from); sizes are width x height
DETECTOR_INPUTS = {
    # square, upsampled 256 -> 416
    "astronaut": (lambda: _shrunk(_rgb_photo("astronaut"), (256, 256)),
                  "skimage astronaut.png (NASA, public domain), resized to 256x256"),
    # taller than wide: padded at the right to 300x300, then resized
    "grace_hopper": (lambda: _shrunk(_rgb_photo("grace_hopper"), (256, 300)),
                     "matplotlib grace_hopper.jpg, resized to 256x300"),
    # exactly 416x416: no resize in tfjs (the grayscale photo as RGB)
    "camera_crop": (lambda: np.asarray(_rgb_photo("camera").crop((48, 0, 464, 416)), dtype=np.uint8),
                    "skimage camera.png (grayscale, as RGB), crop (48, 0, 464, 416), no resize"),
    # wider than high, several faces: padded at the bottom, downsampled 480 -> 416
    "faceapi_sample1": (lambda: _shrunk(_faceapi_sample(1), (480, 320)),
                        "face-api 1.7.15 demo/sample1.jpg (MIT), resized to 480x320"),
    # a crop of a group photo, wider than high
    "faceapi_sample5_crop": (lambda: _shrunk(_faceapi_sample(5), (360, 240), (0, 100, 1200, 900)),
                             "face-api 1.7.15 demo/sample5.jpg (MIT), crop (0, 100, 1200, 900) resized to 360x240"),
    # no face
    "coffee": (lambda: _shrunk(_rgb_photo("coffee"), (300, 200)),
               "skimage coffee.png (Rachel Michetti, CC0), resized to 300x200"),
}


def _write_png(pixels: np.ndarray, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    os.chmod(tmp, 0o644)
    Image.fromarray(pixels, "RGB").save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_listing(path: Path, listing: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(listing, indent=2) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", choices=("face_descriptor", "tiny_face_detector"), default="face_descriptor",
                        help="which fixture inputs to write")
    parser.add_argument("--out", type=Path, default=None, help="default: tests/fixtures/<set>")
    args = parser.parse_args()
    out = args.out or Path("tests/fixtures") / args.set
    out.mkdir(parents=True, exist_ok=True)
    listing = []
    if args.set == "face_descriptor":
        for name, make in INPUTS.items():
            pixels = make()
            assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
            _write_png(pixels, out / f"{name}.png")
            listing.append({"name": name, "file": f"{name}.png"})
            print(f"wrote {out / f'{name}.png'}")
        _write_listing(out / "inputs.json", {"size": SIZE, "face_boxes": FACE_BOXES, "inputs": listing})
        return
    for name, (make, source) in DETECTOR_INPUTS.items():
        pixels = make()
        assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
        _write_png(pixels, out / f"{name}.png")
        listing.append({"name": name, "file": f"{name}.png", "width": pixels.shape[1], "height": pixels.shape[0],
                        "source": source})
        print(f"wrote {out / f'{name}.png'} ({pixels.shape[1]}x{pixels.shape[0]})")
    _write_listing(out / "inputs.json", {"inputs": listing})


if __name__ == "__main__":
    main()
