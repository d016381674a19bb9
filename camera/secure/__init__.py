"""The secure capture path: a sealed shared frame ring, AEAD-sealed frame records with fail-closed verification,
the in-path tamper attack it defends against, and multi-path synchronous prediction.

See docs/secure-path.md. Nothing here imports torch at import time (the capture process stays light).
"""
from camera.secure.errors import (
    CaptureFailed,
    CaptureProcessDied,
    CaptureProtocolError,
    CaptureStartTimeout,
    SecureStreamError,
    StreamFailure,
)
from camera.secure.frames import (
    FrameRejected,
    FrameSealer,
    FrameVerifier,
    Keyring,
    NonceExhausted,
    Rejection,
    SealError,
    SessionKey,
    VerifiedFrame,
    VerifyKey,
    VerifyPolicy,
    parse_header,
    record_size,
    verify_stream,
)

__all__ = [
    "CaptureFailed", "CaptureProcessDied", "CaptureProtocolError", "CaptureStartTimeout", "SecureStreamError",
    "StreamFailure",
    "FrameRejected", "FrameSealer", "FrameVerifier", "Keyring", "NonceExhausted", "Rejection", "SealError",
    "SessionKey", "VerifiedFrame", "VerifyKey", "VerifyPolicy", "parse_header", "record_size", "verify_stream",
]
