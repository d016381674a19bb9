"""The secure capture path: a sealed shared frame ring, AEAD-sealed frame records with fail-closed verification,
the in-path tamper attack it defends against, and multi-path synchronous prediction.

See docs/secure-path.md. Nothing here imports torch at import time (the capture process stays light): the public
names below are imported from their modules on first use (``from camera.secure import FrameSealer``).
"""
from __future__ import annotations

import importlib
from typing import Any

#: module -> the names it contributes to the package's public API
_EXPORTS: dict[str, tuple[str, ...]] = {
    "camera.secure.errors": ("CaptureFailed", "CaptureProcessDied", "CaptureProtocolError", "CaptureStartTimeout",
                             "SecureStreamError", "StreamFailure"),
    "camera.secure.frames": ("FrameRejected", "FrameSealer", "FrameVerifier", "Keyring", "NonceExhausted",
                             "Rejection", "SealError", "SessionKey", "VerifiedFrame", "VerifyKey", "VerifyPolicy",
                             "parse_header", "record_size", "verify_stream"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'camera.secure' has no attribute {name!r}")
