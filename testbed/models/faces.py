"""Registration of the face models (imported by ``testbed.models.registry`` on first use).

* ``face-descriptor-dlib``: dlib's ResNet 128-d face descriptor, ported from face-api's tfjs weights
  (``testbed.models.face_descriptor``).
* ``mtcnn``: the MTCNN face detector with 5 landmarks, ``testbed.models.mtcnn.MTCNN_ENTRY``; ``mtcnn-facenet``: the
  same weights with facenet-pytorch's exact cascade (``MTCNN_FACENET_ENTRY``, cascade ``"reference"``).
* ``tiny-face-detector``: face-api's Tiny Face Detector (tiny YOLOv2), ported from its tfjs weights
  (``testbed.models.tiny_face_detector``).

Face *alignment* (landmarks to dlib-style chips, used by the eyeglass attack) is not a model: it lives in
``worlds.faces``.
"""
from __future__ import annotations

from torch import nn

from testbed.models.base import Accuracy, ModelEntry, register_model
from testbed.models.face_descriptor import (
    FACE_DESCRIPTOR_MEAN,
    FACE_DESCRIPTOR_STD,
    INPUT_SIZE,
    MATCH_THRESHOLD,
    load_face_descriptor,
)
from testbed.models.mtcnn import MTCNN_ENTRY, MTCNN_FACENET_ENTRY
from testbed.models.tiny_face_detector import TINY_FACE_DETECTOR_ENTRY


def _face_descriptor() -> nn.Module:
    return load_face_descriptor(device="cpu")  # get_model moves it to the requested device


register_model(
    ModelEntry(
        name="face-descriptor-dlib",
        task="face-descriptor",
        builder=_face_descriptor,
        input_size=(INPUT_SIZE, INPUT_SIZE),
        mean=FACE_DESCRIPTOR_MEAN,
        std=FACE_DESCRIPTOR_STD,
        labels=(),
        accuracy=(
            Accuracy(
                "LFW (dlib's published measurement for dlib_face_recognition_resnet_model_v1)",
                6000,
                99.38,
                None,
                note=f"pair verification accuracy at Euclidean distance < {MATCH_THRESHOLD}; not re-measured here "
                "(LFW is not available offline). The port matches face-api's tfjs output to < 1e-4 "
                "(tests/test_face_descriptor.py).",
            ),
        ),
        assets=("face_recognition_manifest", "face_recognition_weights"),
        description="dlib ResNet 128-d face descriptor (face-api 1.7.15 tfjs weights ported to PyTorch); "
        "input: aligned 150x150 RGB face chip in [0, 1]; output: 128-d descriptor, same person if distance < 0.6",
    )
)

register_model(MTCNN_ENTRY)
register_model(MTCNN_FACENET_ENTRY)
register_model(TINY_FACE_DETECTOR_ENTRY)
