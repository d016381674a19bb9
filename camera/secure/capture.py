"""The capture process: the only process that opens the frame source and the only one that holds the session key.

The consumer (the model side) creates an anonymous ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair and starts the
capture process with one end. The capture process opens the source, creates and seals the memfd ring
(:mod:`camera.secure.ringbuffer`), generates the session key, and sends one HELLO message carrying the key, the
stream id and the ring geometry, with the ring's read-only descriptor attached as ``SCM_RIGHTS``. The key never
travels through the environment, the command line or a file. Then, per frame: seal, write into a free slot, send
FRAME(slot, generation, length). The consumer returns slots with RELEASE once it has copied the record out
(credit-based flow control, so a slow model never loses frames to overwriting).

A clean end is explicit: the capture process sends END when its source is exhausted (or ``max_frames`` is reached)
and a failure is explicit too: ERROR with a one-line message (e.g. the source stream died). After either it keeps
the socket open until the consumer hangs up, so the consumer reads the message before any reset. A capture process
that vanishes without END or ERROR (a signal, a crash) is therefore told apart by the consumer:
:class:`~camera.secure.errors.CaptureProcessDied`, naming the signal.

Sources: any picklable callable returning an iterable of frames, each a uint8 HxWx3 RGB array, a float (1x)3xHxW
tensor/array in [0, 1], or an object with such an ``.image`` (``camera.sources.FrameSource`` frames). Built-ins:
:class:`SyntheticFrames`, :class:`FolderFrames`, :class:`ArrayFrames`, :class:`FrameSourceAdapter`.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from camera.secure.frames import FrameSealer, SessionKey, quantize_frame, record_size
from camera.secure.ringbuffer import SealedRing
from testbed.errors import ConfigError, SourceError

# Control messages (one SEQPACKET each).
MSG_HELLO = b"H"
MSG_FRAME = b"F"
MSG_END = b"E"
MSG_ERROR = b"X"
MSG_RELEASE = b"R"
MSG_STOP = b"S"
HELLO = struct.Struct("<1sI32s16sIIIII")  # type, key_id, secret, stream_id, n_slots, capacity, height, width, pid
FRAME = struct.Struct("<1sIQQ")  # type, slot, generation, length
RELEASE = struct.Struct("<1sI")
MAX_CONTROL_MESSAGE = 4096


@dataclass(frozen=True)
class CaptureConfig:
    """Capture-process settings. ``max_frames``: stop after this many (None: until the source ends).
    ``fps``: pace the source (None: as fast as the consumer takes frames)."""

    n_slots: int = 4
    max_frames: int | None = None
    fps: float | None = None
    max_height: int = 4320
    max_width: int = 7680

    def __post_init__(self) -> None:
        if not isinstance(self.n_slots, int) or not 1 <= self.n_slots <= 64:
            raise ConfigError(f"CaptureConfig.n_slots must be an int in [1, 64], got {self.n_slots!r}")
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or self.max_frames < 0):
            raise ConfigError(f"CaptureConfig.max_frames must be an int >= 0 or None, got {self.max_frames!r}")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"CaptureConfig.fps must be > 0 or None, got {self.fps!r}")


# ----------------------------------------------------------------------------------------------- frame sources
@dataclass(frozen=True)
class SyntheticFrames:
    """Deterministic synthetic RGB frames (smooth gradients + seeded noise + a moving square); picklable."""

    height: int = 480
    width: int = 640
    count: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1 or self.count < 0:
            raise ConfigError(f"SyntheticFrames needs height, width >= 1 and count >= 0, got {self}")

    def frame(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, i])
        yy, xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        base = np.stack([xx / max(self.width - 1, 1), yy / max(self.height - 1, 1),
                         np.full_like(xx, (i % 16) / 15.0)], axis=-1)
        img = (base * 200 + rng.integers(0, 56, size=base.shape)).astype(np.uint8)
        s = max(1, min(self.height, self.width) // 8)
        y0 = (i * 7) % max(1, self.height - s)
        x0 = (i * 11) % max(1, self.width - s)
        img[y0:y0 + s, x0:x0 + s] = (255, 32, 32)
        return img

    def __call__(self) -> Iterator[np.ndarray]:
        for i in range(self.count):
            yield self.frame(i)


@dataclass(frozen=True)
class ArrayFrames:
    """A fixed list of frames (uint8 HxWx3 arrays) as a source; picklable."""

    frames: tuple

    def __call__(self) -> Iterator[Any]:
        return iter(self.frames)


@dataclass(frozen=True)
class FolderFrames:
    """The image files of a folder (``testbed.inputs.list_images``: natural name order), read with OpenCV
    (BGR -> RGB at this edge)."""

    folder: str

    def __call__(self) -> Iterator[np.ndarray]:
        import cv2

        from testbed.inputs import check_image_file, list_images

        for p in list_images(self.folder, error=SourceError):
            data = check_image_file(p)  # regular file, size and decompression-bomb limits before decoding
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SourceError(f"{p} could not be decoded by OpenCV")
            yield np.ascontiguousarray(bgr[:, :, ::-1])


@dataclass(frozen=True)
class FrameSourceAdapter:
    """Wraps a factory of a ``camera.sources.FrameSource`` (iterable of frames with ``.image`` RGB float tensors)."""

    factory: Callable[[], Iterable[Any]]

    def __call__(self) -> Iterator[np.ndarray]:
        source = self.factory()
        try:
            for f in source:
                yield to_uint8_frame(f)
        finally:
            close = getattr(source, "close", None)
            if callable(close):
                close()


def to_uint8_frame(f: Any) -> np.ndarray:
    """Any supported frame object as a uint8 HxWx3 RGB array (a ``Frame``'s decoded 8-bit pixels when it has them:
    no float round trip; they equal ``rint(image * 255)`` exactly)."""
    raw = getattr(f, "rgb8", None)
    if raw is not None:
        return quantize_frame(raw)
    image = getattr(f, "image", f)
    return quantize_frame(image)


# ----------------------------------------------------------------------------------------------- the process
def _harden() -> None:
    """Make the capture process non-dumpable: no core dumps with the key, no ptrace/proc-mem by same-uid peers."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
        pass


class _ConsumerGone(Exception):
    """The consumer closed or reset the control socket: stop quietly (it is no longer listening)."""


_SOCKET_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def _send(sock: socket.socket, msg: bytes) -> None:
    try:
        sock.send(msg)
    except _SOCKET_GONE as exc:
        raise _ConsumerGone() from exc


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(MAX_CONTROL_MESSAGE)
    except _SOCKET_GONE as exc:
        raise _ConsumerGone() from exc


def _linger(sock: socket.socket, timeout_s: float | None) -> None:
    """After END or ERROR: keep the socket (and the ring) open until the consumer hangs up or says STOP, reading
    what it sends, so that closing here never resets the consumer's socket before it read our last message."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            return
        ready, _, _ = select.select([sock], [], [], wait)
        if ready and not _handle_control(_recv(sock), deque(), 0):
            return


def _limit_threads() -> None:
    """One torch/OpenCV thread in the capture process, where the source imported them (the other cores stay the
    model's). Not imported here otherwise: importing torch costs seconds and the sealing does not need it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(1)


def _handle_control(msg: bytes, free: deque[int], n_slots: int) -> bool:
    """Process one consumer message; returns False when the consumer asked to stop or hung up."""
    if not msg or msg[:1] == MSG_STOP:
        return False
    if msg[:1] == MSG_RELEASE and len(msg) == RELEASE.size:
        _, slot = RELEASE.unpack(msg)
        if 0 <= slot < n_slots and slot not in free:
            free.append(slot)
    return True


ERROR_LINGER_S = 30.0  # how long a failed capture process waits for the consumer to read its ERROR


def capture_main(sock: socket.socket, source_factory: Callable[[], Iterable[Any]], config: CaptureConfig, *,
                 limit_threads: bool = False) -> None:
    """Body of the capture process (runs in the child)."""
    _harden()
    ring = None
    try:
        frames = iter(source_factory())
        first = next(frames, None)
        if limit_threads:
            _limit_threads()
        if first is None:
            raise SourceError("the frame source produced no frames")
        first = to_uint8_frame(first)
        h, w = first.shape[:2]
        if not (h <= config.max_height and w <= config.max_width):
            raise SourceError(f"source frames are {h}x{w}, above the bound {config.max_height}x{config.max_width}")
        key = SessionKey.generate()
        sealer = FrameSealer(key, max_height=config.max_height, max_width=config.max_width)
        ring = SealedRing(config.n_slots, record_size(h, w))
        hello = HELLO.pack(MSG_HELLO, key.key_id, key.secret, sealer.stream_id, config.n_slots, ring.capacity,
                           h, w, os.getpid())
        try:
            socket.send_fds(sock, [hello], [ring.readonly_fd])
        except _SOCKET_GONE as exc:
            raise _ConsumerGone() from exc
        ring.close_readonly_fd()
        free: deque[int] = deque(range(config.n_slots))
        period = None if config.fps is None else 1.0 / config.fps
        next_t = time.monotonic()
        sent = 0
        frame: Any = first
        while True:
            if config.max_frames is not None and sent >= config.max_frames:
                break
            # Drain control messages without blocking; block only when no slot is free.
            while True:
                ready, _, _ = select.select([sock], [], [], 0 if free else None)
                if not ready:
                    break
                if not _handle_control(_recv(sock), free, config.n_slots):
                    return
            if period is not None:
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_t += period
            record = sealer.seal(to_uint8_frame(frame))
            ref = ring.write(free.popleft(), record)
            _send(sock, FRAME.pack(MSG_FRAME, ref.slot, ref.generation, ref.length))
            sent += 1
            frame = next(frames, None)
            if frame is None:
                break
        _send(sock, MSG_END)
        # Keep the process (and its mapping) alive until the consumer hangs up, so late reads still succeed.
        _linger(sock, None)
    except _ConsumerGone:
        return  # the consumer hung up: nobody to report to
    except BaseException as exc:  # report every failure to the consumer (one line), then exit non-zero
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        try:
            _send(sock, MSG_ERROR + text.encode()[:MAX_CONTROL_MESSAGE - 1])
            _linger(sock, ERROR_LINGER_S)
        except (_ConsumerGone, OSError):
            pass
        if not isinstance(exc, (SourceError, ConfigError)):
            traceback.print_exc()
        raise SystemExit(1)
    finally:
        if ring is not None:
            ring.close()
        sock.close()


def _child_main() -> None:
    """Entry point of the capture child: ``python -c 'from camera.secure.capture import _child_main; ...' FD``.

    The control socket arrives as an inherited descriptor (its number on the command line is not a secret); the
    pickled (source factory, config) arrive on stdin from the parent that started us. The key is generated here.
    """
    import signal

    # A terminal's Ctrl-C goes to the whole foreground process group: the consumer stops us in order (and reports
    # it); the child ignoring SIGINT keeps its own KeyboardInterrupt traceback off the user's terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    source_factory, config = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    capture_main(sock, source_factory, config, limit_threads=True)


@dataclass
class CaptureProcess:
    """A running capture process and the consumer's end of its control socket."""

    process: subprocess.Popen
    sock: socket.socket

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Ask the capture process to stop, close the socket, and reap it; returns its exit code."""
        try:
            self.sock.send(MSG_STOP)
        except OSError:
            pass
        self.sock.close()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)


def start_capture(source_factory: Callable[[], Iterable[Any]], config: CaptureConfig = CaptureConfig()
                  ) -> CaptureProcess:
    """Start the capture process. It alone calls ``source_factory()``: the factory must be picklable and defined
    at module level of an importable module (e.g. :class:`SyntheticFrames`, :class:`FolderFrames`)."""
    if not callable(source_factory):
        raise ConfigError(f"source_factory must be a callable returning frames, got {type(source_factory).__name__}")
    try:
        payload = pickle.dumps((source_factory, config), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ConfigError(f"the frame source {source_factory!r} cannot be handed to the capture process: {exc}. "
                          "Use a module-level, picklable source factory") from exc
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from camera.secure.capture import _child_main; _child_main()",
             str(theirs.fileno())],
            stdin=subprocess.PIPE, pass_fds=(theirs.fileno(),), close_fds=True)
    except OSError as exc:
        ours.close()
        raise SourceError(f"cannot start the capture process: {exc}") from exc
    finally:
        theirs.close()
    try:
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died; the consumer sees the closed socket and reports it
    return CaptureProcess(proc, ours)


__all__ = ["CaptureConfig", "CaptureProcess", "start_capture", "capture_main", "SyntheticFrames", "ArrayFrames",
           "FolderFrames", "FrameSourceAdapter", "to_uint8_frame", "HELLO", "FRAME", "RELEASE", "MSG_HELLO",
           "MSG_FRAME", "MSG_END", "MSG_ERROR", "MSG_RELEASE", "MSG_STOP"]
