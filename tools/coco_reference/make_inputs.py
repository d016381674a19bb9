"""Write the fixed RGB inputs of the COCO-detector fixtures as small PNG files (photos with people).

Run from the repository root with the project's Python, after `testbed assets fetch` (for face-api's demo photos):
    .venv/bin/python tools/coco_reference/make_inputs.py
Then compute the reference detections with the original graph model under tfjs:  node compute_reference.mjs
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

MAX_SIDE = 320
# (name, source): shipped photos (testbed.photos) and face-api's demo group photos (testbed.assets)
SOURCES = (
    ("astronaut", "photo"),
    ("grace_hopper", "photo"),
    ("camera", "photo"),
    ("faceapi_sample1", "asset"),
    ("faceapi_sample3", "asset"),
    ("faceapi_sample5", "asset"),
)


def load(name: str, kind: str) -> np.ndarray:
    """The photo as uint8 HWC RGB, its longer side resized to MAX_SIDE with PIL's Lanczos filter."""
    from testbed.assets import asset_path
    from testbed.photos import photo_path

    path = photo_path(name) if kind == "photo" else asset_path(name)
    img = Image.open(path).convert("RGB")
    scale = MAX_SIDE / max(img.size)
    size = (round(img.size[0] * scale), round(img.size[1] * scale))
    return np.asarray(img.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/coco_detector"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    listing = []
    for name, kind in SOURCES:
        pixels = load(name, kind)
        path = args.out / f"{name}.png"
        fd, tmp = tempfile.mkstemp(dir=args.out, suffix=".png")
        os.close(fd)
        os.chmod(tmp, 0o644)
        Image.fromarray(pixels, "RGB").save(tmp, format="PNG", optimize=True)
        os.replace(tmp, path)
        listing.append({"name": name, "file": path.name, "source": kind, "width": pixels.shape[1],
                        "height": pixels.shape[0]})
        print(f"wrote {path} ({pixels.shape[1]}x{pixels.shape[0]}, {path.stat().st_size} bytes)")
    listing_path = args.out / "inputs.json"
    tmp_listing = listing_path.with_suffix(".json.tmp")
    tmp_listing.write_text(json.dumps({"max_side": MAX_SIDE, "inputs": listing}, indent=2) + "\n")
    os.replace(tmp_listing, listing_path)


if __name__ == "__main__":
    main()
