"""Live evaluation: capture -> (secure path) -> (rectify) -> classify -> overlay of top-5 and frames/s.

Headless (the default, and always on this machine's headless OpenCV), it writes ``annotated.webm`` (VP8, plays in
browsers) or, where the OpenCV build has no browser-playable encoder, ``annotated.mp4`` (mp4v) -- the frames at
``width`` x ``height`` (letterboxed, never stretched) with the overlay, at the source's frame rate -- and
``log.jsonl``: one JSON object per frame (sequence number, top-5 with probabilities, latency, running frames/s,
whether the frame was verified by the secure path and rectified), then one closing ``{"summary": {...}}`` record
(frames, why the run stopped, the error if any, codec, video frame rate and where it came from, start-up and steady
frames/s, secure-path accepted/rejected counts). Whatever ends the run -- ``max_frames``/``seconds``, the end of
the source, a stop request (the CLI turns SIGINT and SIGTERM into one), Ctrl-C (KeyboardInterrupt) or a source that
dies -- the video is closed and renamed into place and the summary written before the error (if any) is raised.
A run that fails before its first frame leaves neither files nor the output folder it created.
With ``display=True`` it shows a window (needs a display and an OpenCV GUI build).

OpenCV drawing and video encoding happen at this edge only (BGR uint8 via ``camera.sources.tensor_to_bgr``).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from testbed.errors import ConfigError, SourceError


@dataclass
class LiveConfig:
    source: str | int
    model: str = "mobilenet_v2"
    out: Path = Path("runs/live")
    max_frames: int | None = None
    seconds: float | None = None
    secure: bool = False
    rectify: str | None = None  # a printout sidecar JSON: rectify each frame to the printed object
    display: bool = False
    width: int = 640
    height: int = 480
    # frame rate of the annotated video; None: the source's (CAP_PROP_FPS of a file or stream; measured over the
    # first frames for a source that declares none, e.g. a webcam or the secure path on a stream)
    video_fps: float | None = None
    # "auto": the first browser-playable encoder this OpenCV build has (avc1, H264, VP80), else mp4v; or a fourcc
    codec: str = "auto"
    timeout_s: float = 10.0
    # torch threads for the model while the loop runs (restored afterwards). The capture and writer threads use
    # the other cores; on a 2-core CPU, 2 torch threads oversubscribe it (measured: 0.9 vs 21.9 frames/s).
    # None: leave torch's setting alone.
    torch_threads: int | None = 1

    def validate(self) -> LiveConfig:
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or self.max_frames < 1):
            raise ConfigError(f"max_frames must be an integer >= 1, got {self.max_frames!r}")
        if self.seconds is not None and not self.seconds > 0:
            raise ConfigError(f"seconds must be > 0, got {self.seconds!r}")
        if not (32 <= self.width <= 7680 and 32 <= self.height <= 4320):
            raise ConfigError(f"width x height must be within 32..7680 x 32..4320, got {self.width}x{self.height}")
        if self.torch_threads is not None and (isinstance(self.torch_threads, bool)
                                               or not isinstance(self.torch_threads, int) or self.torch_threads < 1):
            raise ConfigError(f"torch_threads must be an integer >= 1 or None, got {self.torch_threads!r}")
        if self.video_fps is not None and not 0 < self.video_fps <= 1000:
            raise ConfigError(f"video_fps must be within (0, 1000], got {self.video_fps!r}")
        if self.codec != "auto" and (not isinstance(self.codec, str) or len(self.codec) != 4):
            raise ConfigError(f"codec must be 'auto' or a four-character code such as 'mp4v', got {self.codec!r}")
        if self.display and not os.environ.get("DISPLAY") and os.name != "nt":
            raise ConfigError("display=True but no display is available (DISPLAY is unset); run headless: the "
                              "annotated video and log are written to the output folder")
        return self


@dataclass
class LiveSummary:
    frames: int
    seconds: float
    fps: float  # frames / wall time of the whole run, start-up included
    classify_fps: float  # frames / time in the model only
    video: Path
    log: Path
    rejected: int = 0  # secure path: frames refused by the verifier (all reasons)
    rectify_failures: int = 0
    stages_ms: dict[str, float] = field(default_factory=dict)  # mean per frame
    startup_s: float = 0.0  # from the start to the first classified frame (source opening; the secure capture
    #                         process start-up and key exchange, ~1.4 s here)
    steady_fps: float = 0.0  # frames/s after the first frame: (frames - 1) / (last - first classified frame)
    stopped_by: str = ""  # max_frames, seconds, end of source, SIGINT, SIGTERM, KeyboardInterrupt, error, display
    error: str | None = None  # the source's or writer's error (raised after the summary is written)
    codec: str = ""  # fourcc of the annotated video
    video_fps: float = 0.0
    video_fps_from: str = ""  # "source (CAP_PROP_FPS)", "measured over N frames", "LiveConfig.video_fps", ...
    video_frames: int = 0  # frames written to the video (equals ``frames``)
    secure: dict[str, Any] | None = None  # {"accepted": n, "rejected": {reason: n}, "overwritten": n}
    model: str = ""  # LiveConfig.model (``testbed report`` names it)


class StopRequest:
    """Asks a running :func:`run_live` to stop in order (checked between frames, within ~0.5 s); ``reason`` says
    why (e.g. ``"SIGTERM"``). Safe to call from a signal handler."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


#: encoders tried by ``codec="auto"``, in order: (fourcc, container suffix); browsers play H.264 in MP4 and VP8 in
#: WebM. The pip ``opencv-python`` wheels here have no H.264 encoder, so VP8 is what they use.
BROWSER_CODECS = (("avc1", ".mp4"), ("H264", ".mp4"), ("VP80", ".webm"))
FALLBACK_CODEC = ("mp4v", ".mp4")
#: frames over which the rate of a source that declares none is measured (or MEASURE_MAX_S, whichever comes first)
MEASURE_FRAMES = 10
MEASURE_MAX_S = 2.0
DEFAULT_VIDEO_FPS = 15.0  # when a rate can be neither read nor measured (a run of a single frame)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences file descriptor 2 while OpenCV opens a VideoWriter: FFmpeg prints codec-tag notes (e.g. "tag VP80 is
    not supported ... fallback") and failed tries straight to stderr, which would break the CLI's one-line errors."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _suffix_for(fourcc: str) -> str:
    return ".webm" if fourcc.upper() in ("VP80", "VP90") else ".mp4"


@functools.cache
def probe_codec(preferred: str = "auto") -> tuple[str, str]:
    """``(fourcc, suffix)`` of the video encoder to use: for ``"auto"``, the first of :data:`BROWSER_CODECS` with
    which a tiny ``cv2.VideoWriter`` opens and writes a non-empty file, else :data:`FALLBACK_CODEC`."""
    import cv2

    candidates = BROWSER_CODECS if preferred == "auto" else ((preferred, _suffix_for(preferred)),)
    with _quiet_stderr(), tempfile.TemporaryDirectory(prefix="testbed-codec-") as tmp:
        for fourcc, suffix in candidates:
            path = Path(tmp) / f"probe{suffix}"
            w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48))
            ok = w.isOpened()
            if ok:
                import numpy as np

                w.write(np.zeros((48, 64, 3), np.uint8))
            w.release()
            if ok and path.exists() and path.stat().st_size > 0:
                return fourcc, suffix
    if preferred != "auto":
        raise ConfigError(f"codec {preferred!r}: this OpenCV build cannot encode it")
    return FALLBACK_CODEC


def _is_mjpeg_stream(src: Any) -> bool:
    """Whether ``src`` is a network stream of MJPEG (whose CAP_PROP_FPS is FFmpeg's default, not the stream's)."""
    import cv2

    cap = getattr(src, "_cap", None)
    if getattr(src, "kind", None) != "stream" or cap is None:
        return False
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).upper() in ("MJPG", "MJPEG")


def _declared_fps(source: Any) -> float | None:
    """The frame rate a file declares (read with a short-lived ``cv2.VideoCapture``), else None."""
    import cv2

    from camera.sources import _classify_target

    if isinstance(source, int) or not isinstance(source, (str, os.PathLike)):
        return None
    if "://" in str(source) or str(source).isdigit() or _classify_target(str(source)) != "file":
        return None
    cap = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return float(fps) if fps and 0 < fps <= 1000 else None


def _plain_frames(src: Any) -> Iterator[tuple[torch.Tensor, int, bool]]:
    with src:
        for f in src:
            yield f.image, f.seq, False


def _source_factory(source: Any, timeout_s: float):
    from camera.sources import open_source

    return open_source(source, timeout_s=timeout_s)


def _secure_frames(source: Any, timeout_s: float, max_frames: int | None,
                   stats: dict[str, Any]) -> Iterator[tuple[torch.Tensor, int, bool]]:
    """Verified frames from the secure capture process; ``stats`` is kept up to date with the consumer's
    accepted / rejected-by-reason / overwritten counts."""
    from camera.secure.capture import CaptureConfig, FrameSourceAdapter
    from camera.secure.consumer import SecureCapture

    factory = FrameSourceAdapter(functools.partial(_source_factory, source, timeout_s))
    with SecureCapture(factory, CaptureConfig(max_frames=max_frames), timeout_s=max(timeout_s, 30.0)) as cam:
        try:
            for f in cam.frames():
                stats.update(cam.stats.as_dict())
                yield f.to_tensor(), f.seq, True
        finally:
            stats.update(cam.stats.as_dict())


def _letterbox_geometry(h: int, w: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Where an ``h`` x ``w`` frame lands in the ``width`` x ``height`` letterbox: (top, left, new h, new w)."""
    if (h, w) == (height, width):
        return 0, 0, h, w
    scale = min(width / w, height / h)
    nh, nw = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
    return (height - nh) // 2, (width - nw) // 2, nh, nw


def _letterbox(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``image`` (BCHW) scaled to fit ``width`` x ``height`` with its aspect ratio kept, centred on black."""
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    top, left, nh, nw = _letterbox_geometry(h, w, width, height)
    x = torch.nn.functional.interpolate(image, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    if (nh, nw) == (height, width):
        return x
    canvas = image.new_zeros((*image.shape[:-2], height, width))
    canvas[..., top:top + nh, left:left + nw] = x
    return canvas


def _draw_boxes(image: torch.Tensor, boxes: torch.Tensor, width: int = 2) -> torch.Tensor:
    """A copy of ``image`` (1 x 3 x H x W) with each box (x1, y1, x2, y2 pixels) outlined in green."""
    out = image.clone()
    h, w = out.shape[-2:]
    colour = torch.tensor([0.0, 1.0, 0.0], dtype=out.dtype).view(3, 1, 1)
    for x1, y1, x2, y2 in boxes.round().long().tolist():
        x1, x2, y1, y2 = max(0, x1), min(w, x2), max(0, y1), min(h, y2)
        if x2 <= x1 or y2 <= y1:
            continue
        edges = ((slice(y1, min(y1 + width, y2)), slice(x1, x2)), (slice(max(y2 - width, y1), y2), slice(x1, x2)),
                 (slice(y1, y2), slice(x1, min(x1 + width, x2))), (slice(y1, y2), slice(max(x2 - width, x1), x2)))
        for rows, cols in edges:
            out[0, :, rows, cols] = colour
    return out


def _overlay(image: torch.Tensor, lines: list[str], width: int, height: int,
             tags: list[tuple[float, float, str]] = ()):
    """The letterboxed frame in BGR with ``lines`` at the top left and each tag's text (a detection's label and
    score) just above its point (x, y in the frame's pixels: a box's top-left corner), or just below it where the
    text would fall off the frame or under the lines' panel."""
    import cv2

    from camera.sources import tensor_to_bgr

    bgr = tensor_to_bgr(_letterbox(image, width, height))
    box_h = 18 * len(lines) + 10
    panel_w = min(width, 420)
    cv2.rectangle(bgr, (0, 0), (panel_w, box_h), (0, 0, 0), thickness=-1)
    for i, t in enumerate(lines):
        cv2.putText(bgr, t, (6, 18 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    h, w = image.shape[-2:]
    top, left, nh, nw = _letterbox_geometry(h, w, width, height)
    for x, y, text in tags:
        px = int(min(max(left + x * nw / w, 0), width - 1))
        py = int(top + y * nh / h)
        above = py - 4
        hidden = above < 12 or (above - 12 < box_h and px < panel_w)
        py = min(py + 16 if hidden else above, height - 1)
        cv2.putText(bgr, text, (px, py), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 0), 1, cv2.LINE_AA)
    return bgr


_END = object()  # end-of-stream marker on the stage queues


class _Stage(threading.Thread):
    """A daemon thread that runs ``body`` and keeps the exception it raised (re-raised by the main loop)."""

    def __init__(self, name: str, body) -> None:
        super().__init__(name=name, daemon=True)
        self.body, self.error = body, None

    def run(self) -> None:
        try:
            self.body()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless the loop is stopping; False when it stopped first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _stats_total(stats: dict[str, Any]) -> int:
    return sum(stats.get("rejected", {}).values())


def run_live(cfg: LiveConfig, stop_request: StopRequest | None = None) -> LiveSummary:
    """Run the live loop until the source ends, ``max_frames``, ``seconds`` or ``stop_request``; returns its summary.

    Three stages overlap (OpenCV decoding, AES-GCM and video encoding release the GIL): a capture thread (frames
    from the source, or verified frames from the secure capture process), the main thread (rectify + classify +
    log), and a writer thread (overlay + video). The queues are bounded and FIFO: every frame is processed, in
    order (a file or a stream is never skipped); the capture side blocks while the model is busy.

    However the run ends, the video is finalised and the log closed with its summary record first; then a source
    or writer error is raised (with ``.live_summary`` set when frames were written) and a KeyboardInterrupt is
    re-raised. A failure before the first frame removes the files and the folders the run created.
    """
    import cv2

    from testbed.models.registry import get_entry, get_model
    from testbed.photos import imagenet_preprocess

    cfg.validate()
    stop_request = stop_request or StopRequest()
    started = time.perf_counter()
    entry = get_entry(cfg.model)
    model = get_model(cfg.model)
    # a detector logs boxes [x1, y1, x2, y2, score] and their labels instead of a top-5
    detector = entry.task == "detector"
    label_names = tuple(getattr(model, "labels", None) or entry.labels)
    dev = next(model.parameters()).device
    spec = None
    if cfg.rectify:
        from camera.rectify import load_object_spec

        spec = load_object_spec(cfg.rectify)
    fourcc, suffix = probe_codec(cfg.codec)
    secure_stats: dict[str, Any] = {"accepted": 0, "rejected": {}, "overwritten": 0}
    # the video's rate: given, else what the source declares, else measured over the first frames (writer thread)
    if cfg.video_fps is not None:
        rate: dict[str, Any] = {"fps": float(cfg.video_fps), "from": "LiveConfig.video_fps (--video-fps)"}
    else:
        rate = {"fps": None, "from": ""}
    if cfg.secure:
        declared = _declared_fps(cfg.source)
        frames_iter = _secure_frames(cfg.source, cfg.timeout_s, cfg.max_frames, secure_stats)
    else:
        from camera.sources import open_source

        src = (open_source(cfg.source, timeout_s=cfg.timeout_s) if not hasattr(cfg.source, "read")
               else cfg.source).open()  # a source that cannot be opened fails here, before any file is written
        fps_attr = getattr(src, "fps", None)
        declared = float(fps_attr) if fps_attr and 0 < fps_attr <= 1000 else None
        if declared is not None and _is_mjpeg_stream(src):
            declared = None  # MJPEG over HTTP carries no timing: FFmpeg's 25 frames/s is a default, so measure
        frames_iter = _plain_frames(src)
    if rate["fps"] is None and declared is not None:
        rate = {"fps": declared, "from": "source (CAP_PROP_FPS)"}

    out = Path(cfg.out)
    created = [d for d in (out, *out.parents) if not d.exists()]  # removed again if no frame arrives
    out.mkdir(parents=True, exist_ok=True)
    video_tmp, video = out / f".annotated.partial{suffix}", out / f"annotated{suffix}"
    log_path = out / "log.jsonl"
    stop = threading.Event()
    captured: queue.Queue = queue.Queue(maxsize=2)
    to_write: queue.Queue = queue.Queue(maxsize=4)
    stages = {"capture": 0.0, "rectify": 0.0, "classify": 0.0, "overlay_write": 0.0}
    written = [0]
    writer_box: list[Any] = [None]

    def capture() -> None:
        read = 0
        try:
            while not stop.is_set() and (cfg.max_frames is None or read < cfg.max_frames):
                t0 = time.perf_counter()
                try:
                    image, seq, verified = next(frames_iter)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                stages["capture"] += t1 - t0
                read += 1
                if not _put(captured, (image, seq, verified, t1), stop):
                    break
        finally:
            close = getattr(frames_iter, "close", None)
            if close:
                try:
                    close()
                except Exception:  # noqa: BLE001, S110 - the error that ended the capture is the one reported
                    pass
            _put(captured, _END, stop)

    def open_writer(fps: float) -> None:
        with _quiet_stderr():
            w = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*fourcc), fps, (cfg.width, cfg.height))
        if not w.isOpened():
            raise SourceError(f"could not open a video writer for {video_tmp} ({fourcc})")
        writer_box[0] = w

    def emit(image: torch.Tensor, lines: list[str], tags: list) -> None:
        t0 = time.perf_counter()
        bgr = _overlay(image, lines, cfg.width, cfg.height, tags)
        writer_box[0].write(bgr)
        written[0] += 1
        if cfg.display:
            cv2.imshow("testbed live", bgr)
            if cv2.waitKey(1) & 0xFF == ord("q"):
                stop_request.request("display (q)")
        stages["overlay_write"] += time.perf_counter() - t0

    def settle_rate(pending: list) -> None:
        if rate["fps"] is None:
            ts = [item[2] for item in pending]
            if len(ts) >= 2 and ts[-1] > ts[0]:
                rate["fps"] = round(min(max((len(ts) - 1) / (ts[-1] - ts[0]), 1.0), 120.0), 2)
                rate["from"] = f"measured over the first {len(ts)} frames"
            else:
                rate["fps"], rate["from"] = DEFAULT_VIDEO_FPS, "default (too few frames to measure a rate)"
        open_writer(rate["fps"])
        for image, lines, _, tags in pending:
            emit(image, lines, tags)
        pending.clear()

    def write() -> None:
        pending: list = []  # frames held back while the rate of a source that declares none is measured
        while True:
            item = to_write.get()
            if item is _END:
                if pending:
                    settle_rate(pending)
                return
            if writer_box[0] is not None:
                emit(item[0], item[1], item[3])
                continue
            pending.append(item)
            if rate["fps"] is not None or len(pending) >= MEASURE_FRAMES or pending[-1][2] - pending[0][2] >= \
                    MEASURE_MAX_S:
                settle_rate(pending)

    capture_thread, writer_thread = _Stage("live-capture", capture), _Stage("live-writer", write)
    threads_before = torch.get_num_threads()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    n = rect_fail = 0
    t_model = 0.0
    recent: list[float] = []
    last = time.perf_counter()
    t_first = t_last = last
    stopped_by, error = "", None
    interrupted = False
    capture_thread.start()
    writer_thread.start()
    log = open(log_path, "w", buffering=1)  # noqa: SIM115 - closed in the finally below; line-buffered: each frame is on disk as it is classified
    try:
        try:
            while True:
                if stop_request.is_set():
                    stopped_by = stop_request.reason or "stop request"
                    break
                if cfg.max_frames is not None and n >= cfg.max_frames:
                    stopped_by = "max_frames"
                    break
                if cfg.seconds is not None and time.perf_counter() - started >= cfg.seconds:
                    stopped_by = "seconds"
                    break
                if writer_thread.error is not None:
                    stopped_by = "error"
                    break
                t0 = time.perf_counter()
                try:
                    item = captured.get(timeout=0.5)
                except queue.Empty:
                    if capture_thread.is_alive():
                        continue
                    item = _END
                if item is _END:
                    stopped_by = "end of source"
                    break
                image, seq, verified, t_captured = item
                t1 = time.perf_counter()
                rectified, note = False, ""
                if spec is not None:
                    from camera.rectify import RectifyError, rectify

                    try:
                        image = rectify(image, spec, source=f"frame {seq}").image
                        rectified = True
                    except RectifyError as exc:
                        rect_fail += 1
                        note = f"not rectified: {type(exc).__name__}"
                t2 = time.perf_counter()
                boxes: list[list[float]] | None = None
                names: list[str] = []
                tags: list[tuple[float, float, str]] = []
                if detector:  # boxes, scores and labels on the whole frame, drawn on it
                    with torch.no_grad():
                        found = model(image.to(dev))[0].to("cpu")
                    boxes = [[round(float(v), 1) for v in b] + [round(float(s), 4)]
                             for b, s in zip(found.boxes, found.scores)]
                    names = [label_names[int(c)] for c in found.labels]
                    tags = [(b[0], b[1], f"{name} {b[4]:.2f}") for b, name in zip(boxes, names)]
                    image = _draw_boxes(image, found.boxes)
                else:
                    x = imagenet_preprocess(image, entry.input_size[0]) \
                        if entry.input_size[0] == entry.input_size[1] \
                        else torch.nn.functional.interpolate(image, size=tuple(entry.input_size), mode="bilinear")
                    with torch.no_grad():
                        p = model(x.to(dev)).softmax(1)[0].cpu()
                    top = p.topk(min(5, p.numel()))
                t3 = time.perf_counter()
                t_model += t3 - t2
                if n == 0:
                    t_first = t3
                t_last = t3
                now = time.perf_counter()
                recent.append(now - last)
                last = now
                recent = recent[-30:]
                fps = len(recent) / sum(recent) if sum(recent) > 0 else 0.0
                top5 = [] if detector else [[entry.labels[i], round(float(v), 4)]
                                            for v, i in zip(top.values, top.indices)]
                lines = [f"{cfg.model}  {fps:5.1f} fps  frame {seq}" + ("  [secure]" if verified else "")
                         + ("  [rectified]" if rectified else "") + (f"  [{note}]" if note else "")]
                lines += [f"{100 * s:5.1f}%  {name[:40]}" for name, s in top5]
                lines += [f"{name[:20]} {100 * b[4]:5.1f}%  ({b[0]:.0f}, {b[1]:.0f}) - ({b[2]:.0f}, {b[3]:.0f})"
                          for b, name in zip((boxes or [])[:5], names)]
                handed = False
                while writer_thread.is_alive() and not handed:  # a dead writer must not block the loop
                    try:
                        to_write.put((image, lines, t_captured, tags), timeout=0.2)
                        handed = True
                    except queue.Full:
                        continue
                if not handed:
                    stopped_by = "error"
                    break
                stages["rectify"] += t2 - t1
                stages["classify"] += t3 - t2
                log.write(json.dumps({"seq": seq, "t": round(now - started, 4), "top5": top5, "fps": round(fps, 2),
                                      "latency_ms": round(1000 * (t3 - t0), 2), "secure": verified,
                                      "rectified": rectified, "note": note,
                                      **({"boxes": boxes, "labels": names} if detector else {})}) + "\n")
                n += 1
        except KeyboardInterrupt:  # Ctrl-C without the CLI's handler: finalise, then re-raise
            stopped_by, interrupted = "KeyboardInterrupt", True
        # ---- finalise: the writer drains what was logged, the capture thread stops reading ahead
        stop.set()
        while writer_thread.is_alive():
            try:
                to_write.put(_END, timeout=0.2)
                break
            except queue.Full:
                continue
        writer_thread.join()
        capture_thread.join(timeout=1.0 if stopped_by != "end of source" else cfg.timeout_s + 5)
        if stop_request.is_set() and stopped_by == "end of source":
            # a signal ends the source too (Ctrl-C reaches the secure capture process): the request is the cause
            stopped_by = stop_request.reason or "stop request"
        if writer_thread.error is not None:
            error, stopped_by = writer_thread.error, "error"
        elif capture_thread.error is not None and stopped_by == "end of source":  # the source failed
            error, stopped_by = capture_thread.error, "error"
    finally:
        stop.set()
        if writer_thread.is_alive():  # an unexpected error in the main loop: let the writer end first
            try:
                to_write.put_nowait(_END)
            except queue.Full:
                pass
            writer_thread.join(timeout=5)
        if writer_box[0] is not None:
            writer_box[0].release()
        torch.set_num_threads(threads_before)
        seconds = time.perf_counter() - started
        steady = (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else 0.0
        summary = LiveSummary(
            n, seconds, n / seconds if seconds > 0 else 0.0, n / t_model if t_model else 0.0, video, log_path,
            rejected=_stats_total(secure_stats), rectify_failures=rect_fail,
            stages_ms={k: round(1000 * v / n, 2) for k, v in stages.items()} if n else {},
            startup_s=round(t_first - started, 3) if n else 0.0, steady_fps=steady, stopped_by=stopped_by,
            error=" ".join(str(error).split()) if error is not None else None, codec=fourcc,
            video_fps=float(rate["fps"] or 0.0), video_fps_from=rate["from"], video_frames=written[0],
            secure=dict(secure_stats) if cfg.secure else None, model=str(cfg.model))
        if n > 0:
            record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(summary).items()}
            log.write(json.dumps({"summary": record}) + "\n")
        log.close()
        if n > 0:  # the log is kept even where the video writer failed
            if video_tmp.exists():
                os.replace(video_tmp, video)
        else:
            for f in (video_tmp, log_path):
                f.unlink(missing_ok=True)
            for d in created:  # deepest first; only folders this run made and left empty
                try:
                    d.rmdir()
                except OSError:
                    break
    if error is not None:
        if n > 0:
            error.live_summary = summary  # type: ignore[attr-defined]  # the CLI prints it before the error line
        raise error
    if interrupted:
        raise KeyboardInterrupt
    if n == 0:
        if stop_request.is_set():
            return summary
        raise SourceError(f"live source {cfg.source!r} delivered no frame")
    return summary
