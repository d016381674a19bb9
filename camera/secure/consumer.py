"""The consumer (model side): receives the ring fd and key over the capture socket, copies each record out of the
shared ring into private memory *before* verifying it, and hands on only verified private copies."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from camera.secure.capture import (
    FRAME,
    HELLO,
    MAX_CONTROL_MESSAGE,
    MSG_END,
    MSG_ERROR,
    MSG_FRAME,
    MSG_HELLO,
    MSG_RELEASE,
    RELEASE,
    CaptureConfig,
    CaptureProcess,
    start_capture,
)
from camera.secure.frames import FrameRejected, FrameVerifier, VerifiedFrame, VerifyKey, VerifyPolicy
from camera.secure.ringbuffer import RingReader, SlotOverwritten, SlotRef
from testbed.errors import SourceError, TestbedError


class CaptureProtocolError(SourceError):
    """The capture process sent something unexpected, failed, or went silent."""


@dataclass
class ConsumerStats:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    overwritten: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": dict(self.rejected), "overwritten": self.overwritten}


class SecureConsumer:
    """Verifying reader of one capture stream.

    ``receive()`` returns the next :class:`VerifiedFrame`, ``None`` at the end of the stream, or raises
    :class:`FrameRejected`. Slots are released back to the producer right after the record is copied out, so the
    producer may rewrite them while (or after) the private copy is verified: that cannot change what is accepted.
    """

    def __init__(self, sock: socket.socket, policy: VerifyPolicy = VerifyPolicy(), *, timeout_s: float = 30.0,
                 clock: Callable[[], int] = time.monotonic_ns, keep_fd: bool = False) -> None:
        self.sock = sock
        self.sock.settimeout(timeout_s)
        self.policy = policy
        msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_CONTROL_MESSAGE, 4)
        try:
            if not msg:
                raise CaptureProtocolError("the capture process closed the socket before its HELLO")
            if msg[:1] == MSG_ERROR:
                raise CaptureProtocolError(f"capture process failed: {msg[1:].decode(errors='replace')}")
            if msg[:1] != MSG_HELLO or len(msg) != HELLO.size or len(fds) != 1:
                raise CaptureProtocolError(f"expected HELLO ({HELLO.size} bytes + 1 fd), got {len(msg)} bytes, "
                                           f"{len(fds)} fd(s)")
            (_, key_id, secret, stream_id, n_slots, capacity, height, width, pid) = HELLO.unpack(msg)
            self.ring = RingReader(fds[0], n_slots, capacity)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.ring_fd: int | None = fds[0]
        if not keep_fd:  # the mapping stays valid; no descriptor of the ring is left in this process
            os.close(fds[0])
            self.ring_fd = None
        self.key_id = key_id
        self.stream_id = stream_id
        self.shape = (height, width, 3)
        self.capture_pid = pid
        self.verifier = FrameVerifier(VerifyKey(key_id, secret), stream_id, policy, clock=clock)
        del secret
        self.ended = False
        self.stats = ConsumerStats()

    def _release(self, slot: int) -> None:
        try:
            self.sock.send(RELEASE.pack(MSG_RELEASE, slot))
        except OSError:
            pass

    def next_record(self) -> bytes | None:
        """The next announced record, copied out of the ring (unverified); None at the end of the stream."""
        if self.ended:
            return None
        try:
            msg = self.sock.recv(MAX_CONTROL_MESSAGE)
        except socket.timeout:
            raise CaptureProtocolError("no message from the capture process within the timeout") from None
        if not msg or msg[:1] == MSG_END:
            self.ended = True
            return None
        if msg[:1] == MSG_ERROR:
            self.ended = True
            raise CaptureProtocolError(f"capture process failed: {msg[1:].decode(errors='replace')}")
        if msg[:1] != MSG_FRAME or len(msg) != FRAME.size:
            raise CaptureProtocolError(f"unexpected control message {msg[:16]!r}")
        _, slot, gen, length = FRAME.unpack(msg)
        try:
            return self.ring.read(SlotRef(slot, gen, length))
        finally:
            self._release(slot)

    def verify(self, record: bytes) -> VerifiedFrame:
        try:
            frame = self.verifier.verify(record)
        except FrameRejected as exc:
            self.stats.rejected[exc.reason.value] = self.stats.rejected.get(exc.reason.value, 0) + 1
            raise
        self.stats.accepted += 1
        return frame

    def receive(self) -> VerifiedFrame | None:
        """Next verified frame (None at the end); raises FrameRejected for a refused record."""
        while True:
            try:
                record = self.next_record()
            except SlotOverwritten:
                self.stats.overwritten += 1
                continue  # counted; the next authentic frame then shows the gap
            if record is None:
                return None
            return self.verify(record)

    def frames(self, on_reject: str = "skip") -> Iterator[VerifiedFrame]:
        """Iterate verified frames; ``on_reject``: "skip" (count and continue) or "raise"."""
        if on_reject not in ("skip", "raise"):
            raise TestbedError(f"on_reject must be 'skip' or 'raise', got {on_reject!r}")
        while True:
            try:
                f = self.receive()
            except FrameRejected:
                if on_reject == "raise":
                    raise
                continue
            if f is None:
                return
            yield f

    def close(self) -> None:
        self.ring.close()
        if self.ring_fd is not None:
            os.close(self.ring_fd)
            self.ring_fd = None


class SecureCapture:
    """Context manager: start the capture process and return a connected :class:`SecureConsumer`.

    >>> with SecureCapture(SyntheticFrames(480, 640, 10)) as cam:   # doctest: +SKIP
    ...     for frame in cam.frames():
    ...         x = frame.to_tensor()   # 1x3x480x640 float in [0, 1], verified
    """

    def __init__(self, source_factory: Callable[[], Iterable[Any]], config: CaptureConfig = CaptureConfig(),
                 policy: VerifyPolicy = VerifyPolicy(), *, timeout_s: float = 30.0, keep_fd: bool = False) -> None:
        self.source_factory = source_factory
        self.config = config
        self.policy = policy
        self.timeout_s = timeout_s
        self.keep_fd = keep_fd
        self.handle: CaptureProcess | None = None
        self.consumer: SecureConsumer | None = None

    def __enter__(self) -> SecureConsumer:
        self.handle = start_capture(self.source_factory, self.config)
        try:
            self.consumer = SecureConsumer(self.handle.sock, self.policy, timeout_s=self.timeout_s,
                                           keep_fd=self.keep_fd)
        except BaseException:
            self.handle.stop()
            raise
        return self.consumer

    def __exit__(self, *exc: object) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.handle is not None:
            self.exitcode = self.handle.stop()


__all__ = ["SecureConsumer", "SecureCapture", "ConsumerStats", "CaptureProtocolError"]
