"""Why a secure stream stopped other than by a clean end: one :class:`StreamFailure` reason per failure.

A clean end of stream is never an exception: the TCP receiver ends its iteration when the sender closed the
connection on a record boundary, and the capture consumer returns ``None`` only after the capture process sent its
explicit END message. Everything else raises one of these (all :class:`~testbed.errors.SourceError`, so the CLI
turns them into exit status 2 and a one-line message):

* :class:`StreamStalled` (``stalled``): no byte within the timeout, between records or inside one;
* :class:`StreamReset` (``reset``): the peer reset or aborted the connection;
* :class:`StreamTruncated` (``truncated``): the connection ended inside a length prefix or inside a record;
* :class:`RecordTooLarge` (``oversized``): a length prefix above the receiver's declared maximum record size;
* :class:`CaptureProtocolError` (``protocol``): the capture process sent something that is not the protocol;
  base class of the capture errors below;
* :class:`CaptureFailed` (``capture_failed``): the capture process reported an error (e.g. its source died);
* :class:`CaptureProcessDied` (``capture_died``): the capture process exited (signal or status) without END;
* :class:`CaptureStartTimeout` (``hello_timeout``): no HELLO from the capture process within the start timeout;
* :class:`CaptureStalled` (``stalled``): the running capture process sent nothing within the frame timeout.
"""
from __future__ import annotations

import enum

from testbed.errors import SourceError


class StreamFailure(str, enum.Enum):
    """Why a stream ended abnormally."""

    STALLED = "stalled"
    RESET = "reset"
    TRUNCATED = "truncated"
    OVERSIZED = "oversized"
    PROTOCOL = "protocol"
    CAPTURE_FAILED = "capture_failed"
    CAPTURE_DIED = "capture_died"
    HELLO_TIMEOUT = "hello_timeout"


class SecureStreamError(SourceError):
    """A secure stream stopped abnormally; ``reason`` names how (a :class:`StreamFailure`)."""

    reason: StreamFailure = StreamFailure.PROTOCOL

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # one line, whatever the peer sent


class StreamStalled(SecureStreamError):
    reason = StreamFailure.STALLED


class StreamReset(SecureStreamError):
    reason = StreamFailure.RESET


class StreamTruncated(SecureStreamError):
    reason = StreamFailure.TRUNCATED


class RecordTooLarge(SecureStreamError):
    reason = StreamFailure.OVERSIZED


class CaptureProtocolError(SecureStreamError):
    """The capture process sent something unexpected, failed, died or went silent (base of the capture errors)."""

    reason = StreamFailure.PROTOCOL


class CaptureFailed(CaptureProtocolError):
    """The capture process reported an error (its message is included) and ended the stream."""

    reason = StreamFailure.CAPTURE_FAILED


class CaptureProcessDied(CaptureProtocolError):
    """The capture process exited without an END message: killed by a signal, or exited with a status.

    ``signal_name`` (e.g. ``"SIGKILL"``) or ``exit_status`` say how, where the consumer could learn it."""

    reason = StreamFailure.CAPTURE_DIED

    def __init__(self, message: str, *, signal_name: str | None = None, exit_status: int | None = None) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_status = exit_status


class CaptureStartTimeout(CaptureProtocolError):
    reason = StreamFailure.HELLO_TIMEOUT


class CaptureStalled(CaptureProtocolError):
    reason = StreamFailure.STALLED


__all__ = [
    "CaptureFailed",
    "CaptureProcessDied",
    "CaptureProtocolError",
    "CaptureStalled",
    "CaptureStartTimeout",
    "RecordTooLarge",
    "SecureStreamError",
    "StreamFailure",
    "StreamReset",
    "StreamStalled",
    "StreamTruncated",
]
