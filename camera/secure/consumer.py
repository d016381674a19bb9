"""The consumer (model side): receives the ring fd and key over the capture socket, copies each record out of the
shared ring into private memory *before* verifying it, and hands on only verified private copies.

End of stream. ``receive()`` returns ``None`` only after the capture process's explicit END message. Every other
way the stream can stop raises a :class:`~camera.secure.errors.CaptureProtocolError` subclass with a named reason:
the capture process reported an error (:class:`CaptureFailed`), it vanished without END -- killed by a signal,
crashed, exited (:class:`CaptureProcessDied`, naming the signal or the exit status when the consumer knows the
process) -- it sent no HELLO within the start timeout (:class:`CaptureStartTimeout`) or nothing within the frame
timeout (:class:`CaptureStalled`). A socket reset is never raised as such: the kernel reports ``ECONNRESET`` when
the capture process closes with unread RELEASE messages, so the consumer then reads on to the messages still queued
(an ERROR among them is reported as such) and to the end of the socket, and names what happened.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import KW_ONLY, dataclass, field
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
from camera.secure.errors import (
    CaptureFailed,
    CaptureProcessDied,
    CaptureProtocolError,
    CaptureStalled,
    CaptureStartTimeout,
)
from camera.secure.frames import (
    FrameRejected,
    FrameVerifier,
    VerifiedFrame,
    VerifyKey,
    VerifyPolicy,
)
from camera.secure.ringbuffer import RingReader, SlotOverwritten, SlotRef
from testbed.errors import ConfigError, TestbedError

EXIT_GRACE_S = 2.0  # after the socket closed: how long to wait for the capture process's exit status


@dataclass
class ConsumerStats:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    overwritten: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": dict(self.rejected), "overwritten": self.overwritten}


def describe_exit(returncode: int) -> tuple[str, str | None, int | None]:
    """``(text, signal name, exit status)`` for a ``Popen.returncode`` (negative: killed by that signal)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"exited with signal {name}", name, None
    return f"exited with status {returncode}", None, returncode


class SecureConsumer:
    """Verifying reader of one capture stream.

    ``receive()`` returns the next :class:`VerifiedFrame`, ``None`` at the (explicit) end of the stream, or raises
    :class:`FrameRejected` for a refused record or a :class:`CaptureProtocolError` subclass when the stream broke.
    Slots are released back to the producer right after the record is copied out, so the producer may rewrite them
    while (or after) the private copy is verified: that cannot change what is accepted.

    ``process``: the capture process's ``Popen`` (given by :class:`SecureCapture`), used to name the signal or exit
    status when the process dies. ``start_timeout_s`` bounds the wait for HELLO (default ``timeout_s``).
    """

    def __init__(self, sock: socket.socket, policy: VerifyPolicy = VerifyPolicy(), *, timeout_s: float = 30.0,
                 clock: Callable[[], int] = time.monotonic_ns, keep_fd: bool = False,
                 start_timeout_s: float | None = None, process: subprocess.Popen | None = None) -> None:
        for name, value in (("timeout_s", timeout_s), ("start_timeout_s", start_timeout_s)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        self.sock = sock
        self.policy = policy
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(timeout_s if start_timeout_s is None else start_timeout_s)
        self.process = process
        self.capture_pid: int | None = None if process is None else int(process.pid)
        self.ended = False
        self.failure: CaptureProtocolError | None = None
        self.frames_announced = 0
        self._peer_reset = False
        self.stats = ConsumerStats()
        self.sock.settimeout(self.start_timeout_s)
        msg, fds = self._recv_control(hello=True)
        try:
            if not msg:
                raise self._fail(self._death("before its HELLO"))
            if msg[:1] == MSG_ERROR:
                raise self._fail(CaptureFailed(f"capture process failed: {msg[1:].decode(errors='replace')}"))
            if msg[:1] != MSG_HELLO or len(msg) != HELLO.size or len(fds) != 1:
                raise self._fail(CaptureProtocolError(f"expected HELLO ({HELLO.size} bytes + 1 fd), got {len(msg)} "
                                                      f"bytes, {len(fds)} fd(s)"))
            (_, key_id, secret, stream_id, n_slots, capacity, height, width, pid) = HELLO.unpack(msg)
            self.ring = RingReader(fds[0], n_slots, capacity)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.sock.settimeout(self.timeout_s)
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

    # ------------------------------------------------------------------------------------------ control socket
    def _recv_control(self, hello: bool = False) -> tuple[bytes, list[int]]:
        """The next control message (b"" once the capture side is gone) and any descriptors with it.

        A reset is read through: the queued messages are still delivered after it, then the end of the socket."""
        while True:
            try:
                if hello:
                    msg, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_CONTROL_MESSAGE, 4)
                    return msg, list(fds)
                return self.sock.recv(MAX_CONTROL_MESSAGE), []
            except TimeoutError:
                if hello:
                    raise self._fail(CaptureStartTimeout(
                        f"the capture process sent no HELLO within {self.start_timeout_s:g} s (its source is slow to "
                        "open or it hangs); raise the start timeout or check the source")) from None
                raise self._fail(CaptureStalled(
                    f"no message from the capture process within {self.timeout_s:g} s after "
                    f"{self.frames_announced} frame(s)")) from None
            except (ConnectionResetError, ConnectionAbortedError):
                if self._peer_reset:  # a second reset: nothing more is queued
                    return b"", []
                self._peer_reset = True

    def _fail(self, exc: CaptureProtocolError) -> CaptureProtocolError:
        self.failure = exc
        return exc

    def _death(self, when: str) -> CaptureProcessDied:
        """The error for a capture side that hung up without END: its exit status where the process is known."""
        who = "capture process" + (f" {self.capture_pid}" if self.capture_pid else "")
        rc = None
        if self.process is not None:
            try:
                rc = self.process.wait(EXIT_GRACE_S)
            except subprocess.TimeoutExpired:
                rc = None
        if rc is None:
            return CaptureProcessDied(f"{who} closed its control socket {when} without END (it died, was killed or "
                                      "closed the socket)")
        text, sig, status = describe_exit(rc)
        return CaptureProcessDied(f"{who} {text} {when}, without END", signal_name=sig, exit_status=status)

    def _release(self, slot: int) -> None:
        try:
            self.sock.send(RELEASE.pack(MSG_RELEASE, slot))
        except OSError:
            pass

    def next_record(self) -> bytes | None:
        """The next announced record, copied out of the ring (unverified); None at the end of the stream."""
        if self.failure is not None:
            raise self.failure
        if self.ended:
            return None
        msg, _ = self._recv_control()
        if not msg:
            raise self._fail(self._death(f"after {self.frames_announced} frame(s)"))
        if msg == MSG_END:
            self.ended = True
            return None
        if msg[:1] == MSG_ERROR:
            raise self._fail(CaptureFailed(f"capture process failed after {self.frames_announced} frame(s): "
                                           f"{msg[1:].decode(errors='replace')}"))
        if msg[:1] != MSG_FRAME or len(msg) != FRAME.size:
            raise self._fail(CaptureProtocolError(f"unexpected control message {msg[:16]!r}"))
        _, slot, gen, length = FRAME.unpack(msg)
        self.frames_announced += 1
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
        """Next verified frame (None at the explicit end); raises FrameRejected for a refused record and a
        CaptureProtocolError subclass when the stream broke (again on every later call)."""
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


@dataclass(eq=False)
class SecureCapture:
    """Context manager: start the capture process and return a connected :class:`SecureConsumer`.

    >>> with SecureCapture(SyntheticFrames(480, 640, 10)) as cam:   # doctest: +SKIP
    ...     for frame in cam.frames():
    ...         x = frame.to_tensor()   # 1x3x480x640 float in [0, 1], verified
    """

    source_factory: Callable[[], Iterable[Any]]
    config: CaptureConfig = field(default_factory=CaptureConfig)
    policy: VerifyPolicy = field(default_factory=VerifyPolicy)
    _: KW_ONLY
    timeout_s: float = 30.0
    keep_fd: bool = False
    start_timeout_s: float | None = None
    exitcode: int | None = field(default=None, init=False)  # the capture process's, once stopped
    handle: CaptureProcess | None = field(default=None, init=False)
    consumer: SecureConsumer | None = field(default=None, init=False)

    def __enter__(self) -> SecureConsumer:
        self.handle = start_capture(self.source_factory, self.config)
        try:
            self.consumer = SecureConsumer(self.handle.sock, self.policy, timeout_s=self.timeout_s,
                                           keep_fd=self.keep_fd, start_timeout_s=self.start_timeout_s,
                                           process=self.handle.process)
        except BaseException:
            self.handle.stop(timeout=1.0)  # a capture process that failed to start gets 1 s to exit, then SIGKILL
            raise
        return self.consumer

    def __exit__(self, *exc: object) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.handle is not None:
            self.exitcode = self.handle.stop()


__all__ = [
    "ConsumerStats",
    "SecureCapture",
    "SecureConsumer",
    "describe_exit",
]
