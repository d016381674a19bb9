"""Frame sources: webcam, video file, image folder/sequence, network stream (MJPEG/RTSP), behind one interface.

Frames leave ``camera/`` as :class:`Frame` with a 1x3xHxW RGB float tensor in [0, 1]; BGR/uint8/HWC stays in
this module. A source that cannot be opened raises :class:`~testbed.errors.SourceError` naming the source and
the reason; a truncated stream or a corrupt image raises too - frames are never dropped silently.
"""
from __future__ import annotations

import glob as _glob
import os
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

import cv2
import numpy as np
import torch

from testbed.errors import SourceError
from testbed.inputs import IMAGE_EXTENSIONS, list_images, natural_key

RGB8_KEY = "_rgb8"  # a _read() may hand FrameSource.read the uint8 RGB pixels under this meta key (-> Frame.rgb8)
STREAM_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "udp", "tcp")


@dataclass
class Frame:
    """One captured frame. ``image`` is 1x3xHxW RGB float32 in [0, 1]."""

    image: torch.Tensor
    timestamp: float  # time.monotonic() at capture
    seq: int  # 0-based sequence number within the source
    source: str
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. file name, simulated-camera parameters
    # The same pixels as uint8 HxWx3 RGB when the source decoded 8-bit colour (image == rgb8 / 255 exactly);
    # the secure capture seals these without a float round trip. None for other sources.
    rgb8: np.ndarray | None = field(default=None, repr=False, compare=False)


def bgr_to_tensor(bgr: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 BGR (OpenCV) -> 1x3xHxW float RGB in [0, 1]."""
    out = np.empty((3,) + bgr.shape[:2], np.float32)
    for c in range(3):
        out[c] = bgr[..., 2 - c]
    return torch.from_numpy(out).div_(255.0)[None]


def tensor_to_bgr(x: torch.Tensor) -> np.ndarray:
    """1x3xHxW float RGB in [0, 1] -> HxWx3 uint8 BGR (rounded)."""
    x = x[0] if x.ndim == 4 else x
    chw = x.detach().float().cpu().numpy()
    u8 = np.empty(chw.shape[1:] + (3,), np.uint8)
    for c in range(3):  # per channel: cheaper than a strided HWC copy of the whole float image
        u8[..., 2 - c] = np.clip(chw[c] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return u8


class FrameSource(ABC):
    """Iterable, context-managed source of :class:`Frame` objects.

    ``open()`` is idempotent; ``read()`` returns the next frame or raises ``StopIteration`` at a normal end
    and :class:`SourceError` on failure; iteration stops after ``max_frames`` frames if given.
    """

    def __init__(self, name: str, max_frames: int | None = None) -> None:
        if max_frames is not None and max_frames < 0:
            raise SourceError(f"{name}: max_frames must be >= 0, got {max_frames}")
        self.name = name
        self.max_frames = max_frames
        self._seq = 0
        self._opened = False

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _read(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """The next image and per-frame metadata; StopIteration at a normal end."""

    def _close(self) -> None:
        pass

    def open(self) -> "FrameSource":
        if not self._opened:
            self._open()
            self._opened = True
        return self

    def close(self) -> None:
        if self._opened:
            self._close()
            self._opened = False

    def read(self) -> Frame:
        self.open()
        if self.max_frames is not None and self._seq >= self.max_frames:
            raise StopIteration
        image, meta = self._read()
        rgb8 = meta.pop(RGB8_KEY, None)
        frame = Frame(image=image, timestamp=time.monotonic(), seq=self._seq, source=self.name, meta=meta, rgb8=rgb8)
        self._seq += 1
        return frame

    def __iter__(self) -> Iterator[Frame]:
        self.open()
        while True:
            try:
                yield self.read()
            except StopIteration:
                return

    def __enter__(self) -> "FrameSource":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ------------------------------------------------------------------------------------ VideoCapture
class VideoCaptureSource(FrameSource):
    """A webcam (device index), a video file or a network stream URL through ``cv2.VideoCapture``.

    ``on_end``: what a failed read means after the stream has started. For files, reading stops normally at the
    last frame and a read failure before the container's frame count raises (truncated file). For devices and
    URLs ``on_end="error"`` (default) raises when frames stop; ``"stop"`` ends the iteration instead.
    """

    def __init__(self, target: int | str, *, kind: str | None = None, max_frames: int | None = None,
                 timeout_s: float = 10.0, on_end: str | None = None) -> None:
        kind = kind or _classify_target(target)
        if kind not in ("device", "file", "stream"):
            raise SourceError(f"{target!r}: kind must be device, file or stream, got {kind!r}")
        super().__init__(f"{kind}:{target}", max_frames)
        self.target, self.kind, self.timeout_s = target, kind, float(timeout_s)
        self.on_end = on_end or ("stop" if kind == "file" else "error")
        if self.on_end not in ("stop", "error"):
            raise SourceError(f"{self.name}: on_end must be 'stop' or 'error', got {on_end!r}")
        self._cap: cv2.VideoCapture | None = None
        self.frame_count: int | None = None
        self.fps: float | None = None

    def _open(self) -> None:
        ms = int(self.timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        if self.kind == "device":
            idx = int(self.target)
            dev = Path(f"/dev/video{idx}")
            if os.name == "posix" and Path("/dev").is_dir() and not dev.exists():
                raise SourceError(f"webcam {idx}: cannot open: {dev} does not exist (no camera attached, or no "
                                  "permission to see it; on Linux check `ls /dev/video*` and the 'video' group)")
            cap = cv2.VideoCapture(idx, cv2.CAP_ANY, params)
            why = f"{dev} exists but OpenCV could not open it (busy in another program, or no permission)"
        elif self.kind == "file":
            p = Path(str(self.target))
            if not p.exists():
                raise SourceError(f"video file {p}: cannot open: the file does not exist")
            if not p.is_file():
                raise SourceError(f"video file {p}: cannot open: not a regular file")
            if p.stat().st_size == 0:
                raise SourceError(f"video file {p}: cannot open: the file is empty")
            cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG, params)
            why = "FFmpeg could not demux/decode it (corrupt, truncated header, or an unsupported codec)"
        else:
            url = str(self.target)
            reason = _probe_url(url, self.timeout_s)
            if reason:
                raise SourceError(f"stream {url}: cannot open: {reason}")
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
            why = "the server answered but FFmpeg could not read a video stream from it (wrong path or format)"
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.name}: cannot open: {why}")
        from testbed.inputs import check_frame_size

        try:  # a stream or file declaring frames above the pixel limit is refused before any frame is decoded
            check_frame_size(cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT),
                             what="video frames of", source=self.name, error=SourceError)
        except SourceError:
            cap.release()
            raise
        self._cap = cap
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(n) if self.kind == "file" and n and n > 0 else None
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None

    def _read(self) -> tuple[torch.Tensor, dict[str, Any]]:
        assert self._cap is not None
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if self.kind == "file":
                if self.frame_count is not None and self._seq < self.frame_count:
                    raise SourceError(f"{self.name}: truncated or corrupt: read {self._seq} of "
                                      f"{self.frame_count} frames the container declares")
                if self._seq == 0:
                    raise SourceError(f"{self.name}: no frame could be decoded")
                raise StopIteration
            if self.on_end == "stop":
                raise StopIteration
            raise SourceError(f"{self.name}: stopped delivering frames after {self._seq} frame(s) "
                              f"(disconnected, truncated stream, or no frame within {self.timeout_s:g} s)")
        meta: dict[str, Any] = {}
        if self.kind == "file":
            meta["pos_msec"] = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        if bgr.dtype == np.uint8 and bgr.ndim == 3 and bgr.shape[2] == 3:
            meta[RGB8_KEY] = bgr[..., ::-1]
        return _bgr_any_to_tensor(bgr, self.name, convert=True), meta

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _probe_url(url: str, timeout_s: float) -> str | None:
    """A reason the URL cannot work (bad scheme, no host, refused, DNS), or None if the host accepts a TCP connect."""
    u = urlparse(url)
    if u.scheme not in STREAM_SCHEMES:
        return f"unsupported URL scheme {u.scheme!r}; expected one of {', '.join(STREAM_SCHEMES)}"
    if not u.hostname:
        return "the URL has no host"
    if u.scheme == "udp":
        return None
    port = u.port or {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935}.get(u.scheme, 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=min(timeout_s, 5.0)):
            return None
    except socket.gaierror as exc:
        return f"host {u.hostname!r} could not be resolved ({exc})"
    except ConnectionRefusedError:
        return f"connection to {u.hostname}:{port} refused (nothing is serving there)"
    except OSError as exc:
        return f"could not connect to {u.hostname}:{port} ({exc})"


def _classify_target(target: int | str) -> str:
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return "device"
    if "://" in str(target):
        return "stream"
    return "file"


# ------------------------------------------------------------------------------------ image sequence
def _bgr_any_to_tensor(img: np.ndarray, where: str, *, convert: bool) -> torch.Tensor:
    """Decoded OpenCV image (any depth/channels) -> 1x3xHxW RGB float; refuse non-RGB unless ``convert``."""
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    elif img.dtype == np.float32:
        scale = 1.0
    else:
        raise SourceError(f"{where}: unsupported sample type {img.dtype}; expected 8/16-bit or float32")
    ch = 1 if img.ndim == 2 else img.shape[2]
    desc = {1: "grayscale", 2: "grayscale+alpha", 3: "colour", 4: "colour+alpha (RGBA)"}.get(ch, f"{ch}-channel")
    if ch not in (1, 3, 4):
        raise SourceError(f"{where}: {desc} image is not supported")
    if not convert and (ch != 3 or img.dtype != np.uint8):
        bits = {np.dtype(np.uint8): "8-bit", np.dtype(np.uint16): "16-bit", np.dtype(np.float32): "float"}[img.dtype]
        raise SourceError(f"{where}: {bits} {desc} image; expected 8-bit 3-channel colour. "
                          "Pass convert=True (CLI: --convert-images) to convert it explicitly")
    x = img.astype(np.float32) / scale
    if ch == 1:
        x = np.repeat(x[..., None] if x.ndim == 2 else x, 3, axis=2)
    elif ch == 4:  # composite on white
        a = x[..., 3:4]
        x = x[..., 2::-1] * a + (1.0 - a)  # BGRA -> RGB on white
    else:
        x = x[..., ::-1]  # BGR -> RGB
    return torch.from_numpy(np.ascontiguousarray(np.clip(x, 0.0, 1.0))).permute(2, 0, 1)[None].contiguous()


def decode_image_bytes(data: bytes, where: str, *, convert: bool = False) -> torch.Tensor:
    """Decode an encoded image strictly: truncated JPEG/PNG and undecodable data raise SourceError."""
    if len(data) == 0:
        raise SourceError(f"{where}: empty file")
    from testbed.inputs import check_image_bytes

    check_image_bytes(data, what="image", source=where)  # refuses a decompression bomb before cv2 decodes it
    if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-64:]:
        raise SourceError(f"{where}: truncated JPEG (no end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-32:]:
        raise SourceError(f"{where}: truncated PNG (no IEND chunk)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise SourceError(f"{where}: not a decodable image (corrupt or unknown format)")
    return _bgr_any_to_tensor(img, where, convert=convert)


class ImageSequenceSource(FrameSource):
    """Images from a folder, a glob pattern, a single file or an explicit list, in natural sort order."""

    def __init__(self, spec: str | Path | Sequence[str | Path], *, convert: bool = False,
                 max_frames: int | None = None) -> None:
        if isinstance(spec, (str, Path)):
            name = f"images:{spec}"
        else:
            name = f"images:[{len(spec)} files]"
        super().__init__(name, max_frames)
        self.spec, self.convert = spec, convert
        self.paths: list[Path] = []

    def _open(self) -> None:
        spec = self.spec
        if isinstance(spec, (str, Path)):
            s = str(spec)
            p = Path(s)
            if p.is_dir():
                paths = list_images(p, what=f"image folder {p}: cannot open", error=SourceError)
            elif any(c in s for c in "*?["):
                paths = [Path(q) for q in _glob.glob(s)]
                if not paths:
                    raise SourceError(f"image pattern {s}: cannot open: it matches no files")
            elif p.is_file():
                paths = [p]
            else:
                raise SourceError(f"image source {s}: cannot open: no such file or folder")
        else:
            paths = [Path(q) for q in spec]
            if not paths:
                raise SourceError(f"{self.name}: cannot open: the list of images is empty")
            missing = [str(q) for q in paths if not q.is_file()]
            if missing:
                raise SourceError(f"{self.name}: cannot open: missing file(s) {', '.join(missing[:5])}")
        if isinstance(spec, (str, Path)):
            paths.sort(key=natural_key)
        self.paths = paths

    def _read(self) -> tuple[torch.Tensor, dict[str, Any]]:
        if self._seq >= len(self.paths):
            raise StopIteration
        p = self.paths[self._seq]
        from testbed.inputs import MAX_IMAGE_BYTES, read_bytes

        data = read_bytes(p, what=f"{self.name}: frame {self._seq}:", max_bytes=MAX_IMAGE_BYTES,
                          error=SourceError)  # no FIFO blocks, no unbounded read
        img = decode_image_bytes(data, f"{self.name}: frame {self._seq} ({p})", convert=self.convert)
        return img, {"path": str(p)}

    def __len__(self) -> int:
        self.open()
        return len(self.paths)


def open_source(spec: int | str | Path | Sequence[str | Path], *, convert: bool = False,
                max_frames: int | None = None, **kw: Any) -> FrameSource:
    """A FrameSource for a device index, URL, video file, image file, folder, glob pattern or list of files.

    Extra keyword arguments (``timeout_s``, ``on_end``) go to :class:`VideoCaptureSource`; image sequences
    ignore them.
    """
    if isinstance(spec, (list, tuple)):
        return ImageSequenceSource(spec, convert=convert, max_frames=max_frames)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return VideoCaptureSource(int(spec), kind="device", max_frames=max_frames, **kw)
    s = str(spec)
    if "://" in s:
        return VideoCaptureSource(s, kind="stream", max_frames=max_frames, **kw)
    p = Path(s)
    if p.is_dir() or any(c in s for c in "*?[") or p.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSequenceSource(s, convert=convert, max_frames=max_frames)
    return VideoCaptureSource(s, kind="file", max_frames=max_frames, **kw)
