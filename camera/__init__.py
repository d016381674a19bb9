"""camera package: frame sources, rectification, printer palette, simulated print-photo camera.

The public API is imported lazily (``from camera import open_source``) so that importing a submodule such as
``camera.secure`` does not pull in OpenCV-heavy modules it does not need.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Frame": "camera.sources", "FrameSource": "camera.sources", "VideoCaptureSource": "camera.sources",
    "ImageSequenceSource": "camera.sources", "open_source": "camera.sources",
    "ObjectSpec": "camera.rectify", "load_object_spec": "camera.rectify", "detect_markers": "camera.rectify",
    "rectify": "camera.rectify", "Rectified": "camera.rectify", "RectifyError": "camera.rectify",
    "MarkersNotFoundError": "camera.rectify", "TooObliqueError": "camera.rectify",
    "Palette": "testbed.palette", "measure_palette": "camera.palette", "load_palette": "testbed.palette",
    "default_palette": "testbed.palette", "delta_e2000": "camera.palette",
    "SimulatedCamera": "camera.simulated", "SimCameraConfig": "camera.simulated", "SimParams": "camera.simulated",
    "SimulatedPrinter": "camera.simulated", "PrinterParams": "camera.simulated",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'camera' has no attribute {name!r}")
