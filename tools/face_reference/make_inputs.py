"""Write the fixed 150x150 RGB inputs of the face-descriptor fixtures as PNG files.

Run from the repository root with the project's Python:  .venv/bin/python tools/face_reference/make_inputs.py
Then compute their reference descriptors with the original implementation:  node compute_reference.mjs
(see README.md). The PNGs are committed; tests read them back, so the port sees exactly the pixels tfjs saw.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/face_descriptor"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    listing = []
    for name, make in INPUTS.items():
        pixels = make()
        assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
        path = args.out / f"{name}.png"
        fd, tmp = tempfile.mkstemp(dir=args.out, suffix=".png")
        os.close(fd)
        os.chmod(tmp, 0o644)
        Image.fromarray(pixels, "RGB").save(tmp, format="PNG")
        os.replace(tmp, path)
        listing.append({"name": name, "file": path.name})
        print(f"wrote {path}")
    listing_path = args.out / "inputs.json"
    tmp_listing = listing_path.with_suffix(".json.tmp")
    tmp_listing.write_text(json.dumps({"size": SIZE, "face_boxes": FACE_BOXES, "inputs": listing}, indent=2) + "\n")
    os.replace(tmp_listing, listing_path)


if __name__ == "__main__":
    main()
