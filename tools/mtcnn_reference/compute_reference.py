"""Write tests/fixtures/mtcnn/reference.json: facenet-pytorch's own ``MTCNN.detect`` on fixed committed images.

Run from the repository root with facenet-pytorch importable but NOT installed into the project's environment
(it would pull another torch); see README.md in this folder:

    .venv/bin/pip install --no-deps --target /tmp/fnp facenet-pytorch==2.6.0
    PYTHONPATH=/tmp/fnp .venv/bin/python tools/mtcnn_reference/compute_reference.py

It records facenet-pytorch's version, torch's version, the sha256 of facenet-pytorch's P-/R-/O-Net weight files
(the testbed's ``mtcnn_*`` assets are the same files) and, per image, the PNG's path, the sha256 of its decoded
RGB pixels and the reference's boxes, probabilities and landmarks (float32 values written in full).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "mtcnn" / "reference.json"

#: Committed PNGs of other fixtures (sources and licences in their folders' inputs.json), reused as they are.
IMAGES: tuple[tuple[str, str], ...] = (
    ("astronaut", "tests/fixtures/tiny_face_detector/astronaut.png"),
    ("grace_hopper", "tests/fixtures/tiny_face_detector/grace_hopper.png"),
    ("camera_crop", "tests/fixtures/tiny_face_detector/camera_crop.png"),
    ("faceapi_sample1", "tests/fixtures/tiny_face_detector/faceapi_sample1.png"),
    ("faceapi_sample5_crop", "tests/fixtures/tiny_face_detector/faceapi_sample5_crop.png"),
    ("coffee", "tests/fixtures/tiny_face_detector/coffee.png"),
    ("faceapi_sample3_small", "tests/fixtures/coco_detector/faceapi_sample3.png"),
    ("faceapi_sample5_small", "tests/fixtures/coco_detector/faceapi_sample5.png"),
)

#: facenet-pytorch's MTCNN arguments (its defaults, except select_largest=False: most probable face first).
SETTINGS = {"min_face_size": 20, "thresholds": [0.6, 0.7, 0.7], "factor": 0.709, "select_largest": False}


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB pixels of a PNG."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import facenet_pytorch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    detector = MTCNN(device="cpu", **SETTINGS)
    data = Path(facenet_pytorch.__file__).parent / "data"
    weights = {name: hashlib.sha256((data / f"{name}.pt").read_bytes()).hexdigest()
               for name in ("pnet", "rnet", "onet")}
    images = []
    for name, rel in IMAGES:
        pixels = read_rgb(REPO / rel)
        boxes, probs, points = detector.detect(pixels, landmarks=True)
        if boxes is None:
            boxes, probs, points = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        images.append({
            "name": name,
            "file": rel,
            "width": int(pixels.shape[1]),
            "height": int(pixels.shape[0]),
            "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
            "boxes": np.asarray(boxes, dtype=np.float64).tolist(),
            "probs": np.asarray(probs, dtype=np.float64).tolist(),
            "landmarks": np.asarray(points, dtype=np.float64).tolist(),
        })
        print(f"{name}: {len(images[-1]['probs'])} face(s)")
    out = {
        "reference": "facenet-pytorch MTCNN(...).detect(pixels, landmarks=True) on H x W x 3 uint8 RGB arrays, CPU",
        "facenet_pytorch": importlib.metadata.version("facenet-pytorch"),
        "torch": torch.__version__,
        "settings": SETTINGS,
        "weights_sha256": weights,
        "images": images,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
