"""Live evaluation: capture -> (secure path) -> (rectify) -> classify -> overlay of top-5 and frames/s.

Headless (the default, and always on this machine's headless OpenCV), it writes ``annotated.mp4`` (the frames at
``width`` x ``height`` with the overlay) and ``log.jsonl`` (one JSON object per frame: sequence number, top-5 with
probabilities, latency, running frames/s, whether the frame was verified by the secure path and rectified).
The video is written under a temporary name and renamed when the run ends, so an interrupted run never leaves a
complete-looking video. With ``display=True`` it shows a window (needs a display and an OpenCV GUI build).

OpenCV drawing and video encoding happen at this edge only (BGR uint8 via ``camera.sources.tensor_to_bgr``).
"""
from __future__ import annotations

import functools
import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

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
    video_fps: float = 15.0
    timeout_s: float = 10.0
    # torch threads for the model while the loop runs (restored afterwards). The capture and writer threads use
    # the other cores; on a 2-core CPU, 2 torch threads oversubscribe it (measured: 0.9 vs 21.9 frames/s).
    # None: leave torch's setting alone.
    torch_threads: int | None = 1

    def validate(self) -> "LiveConfig":
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or self.max_frames < 1):
            raise ConfigError(f"max_frames must be an integer >= 1, got {self.max_frames!r}")
        if self.seconds is not None and not self.seconds > 0:
            raise ConfigError(f"seconds must be > 0, got {self.seconds!r}")
        if not (32 <= self.width <= 7680 and 32 <= self.height <= 4320):
            raise ConfigError(f"width x height must be within 32..7680 x 32..4320, got {self.width}x{self.height}")
        if self.torch_threads is not None and (isinstance(self.torch_threads, bool)
                                               or not isinstance(self.torch_threads, int) or self.torch_threads < 1):
            raise ConfigError(f"torch_threads must be an integer >= 1 or None, got {self.torch_threads!r}")
        if self.display and not os.environ.get("DISPLAY") and os.name != "nt":
            raise ConfigError("display=True but no display is available (DISPLAY is unset); run headless: the "
                              "annotated video and log are written to the output folder")
        return self


@dataclass
class LiveSummary:
    frames: int
    seconds: float
    fps: float  # frames / wall time of the whole loop (capture + secure + rectify + classify + overlay + write)
    classify_fps: float  # frames / time in the model only
    video: Path
    log: Path
    rejected: int = 0
    rectify_failures: int = 0
    stages_ms: dict[str, float] = field(default_factory=dict)  # mean per frame
    startup_s: float = 0.0  # from the start to the first classified frame (source opening; the secure capture
    #                         process start-up and key exchange, ~1.4 s here)
    steady_fps: float = 0.0  # frames/s after the first frame: (frames - 1) / (last - first classified frame)


def _plain_frames(source: Any, timeout_s: float) -> Iterator[tuple[torch.Tensor, int, bool]]:
    from camera.sources import open_source

    src = open_source(source, timeout_s=timeout_s) if not hasattr(source, "read") else source
    with src:
        for f in src:
            yield f.image, f.seq, False


def _source_factory(source: Any, timeout_s: float):
    from camera.sources import open_source

    return open_source(source, timeout_s=timeout_s)


def _secure_frames(source: Any, timeout_s: float, max_frames: int | None) -> Iterator[tuple[torch.Tensor, int, bool]]:
    from camera.secure.capture import CaptureConfig, FrameSourceAdapter
    from camera.secure.consumer import SecureCapture

    factory = FrameSourceAdapter(functools.partial(_source_factory, source, timeout_s))
    with SecureCapture(factory, CaptureConfig(max_frames=max_frames), timeout_s=max(timeout_s, 30.0)) as cam:
        for f in cam.frames():
            yield f.to_tensor(), f.seq, True


def _overlay(image: torch.Tensor, lines: list[str], width: int, height: int):
    import cv2

    from camera.sources import tensor_to_bgr

    x = image if tuple(image.shape[-2:]) == (height, width) else torch.nn.functional.interpolate(
        image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    bgr = tensor_to_bgr(x)
    box_h = 18 * len(lines) + 10
    cv2.rectangle(bgr, (0, 0), (min(width, 420), box_h), (0, 0, 0), thickness=-1)
    for i, t in enumerate(lines):
        cv2.putText(bgr, t, (6, 18 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
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


def _put(q: "queue.Queue", item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless the loop is stopping; False when it stopped first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_live(cfg: LiveConfig) -> LiveSummary:
    """Run the live loop until the source ends, ``max_frames`` or ``seconds``; returns its summary.

    Three stages overlap (OpenCV decoding, AES-GCM and video encoding release the GIL): a capture thread (frames
    from the source, or verified frames from the secure capture process), the main thread (rectify + classify +
    log), and a writer thread (overlay + video). The queues are bounded and FIFO: every frame is processed, in
    order (a file or a stream is never skipped); the capture side blocks while the model is busy.
    """
    import cv2

    from testbed.models.registry import get_entry, get_model
    from testbed.photos import imagenet_preprocess

    cfg.validate()
    entry = get_entry(cfg.model)
    model = get_model(cfg.model)
    dev = next(model.parameters()).device
    spec = None
    if cfg.rectify:
        from camera.rectify import load_object_spec

        spec = load_object_spec(cfg.rectify)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    video_tmp, video = out / ".annotated.partial.mp4", out / "annotated.mp4"
    log_path = out / "log.jsonl"
    writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"), cfg.video_fps, (cfg.width, cfg.height))
    if not writer.isOpened():
        raise SourceError(f"could not open a video writer for {video_tmp} (mp4v)")
    frames_iter = (_secure_frames(cfg.source, cfg.timeout_s, cfg.max_frames) if cfg.secure
                   else _plain_frames(cfg.source, cfg.timeout_s))
    stop = threading.Event()
    captured: queue.Queue = queue.Queue(maxsize=2)
    to_write: queue.Queue = queue.Queue(maxsize=4)
    stages = {"capture": 0.0, "rectify": 0.0, "classify": 0.0, "overlay_write": 0.0}

    def capture() -> None:
        read = 0
        try:
            while not stop.is_set() and (cfg.max_frames is None or read < cfg.max_frames):
                t0 = time.perf_counter()
                try:
                    item = next(frames_iter)
                except StopIteration:
                    break
                stages["capture"] += time.perf_counter() - t0
                read += 1
                if not _put(captured, item, stop):
                    break
        finally:
            close = getattr(frames_iter, "close", None)
            if close:
                close()
            _put(captured, _END, stop)

    def write() -> None:
        while True:
            item = to_write.get()
            if item is _END:
                return
            t0 = time.perf_counter()
            image, lines = item
            bgr = _overlay(image, lines, cfg.width, cfg.height)
            writer.write(bgr)
            if cfg.display:
                cv2.imshow("testbed live", bgr)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    stop.set()
            stages["overlay_write"] += time.perf_counter() - t0

    capture_thread, writer_thread = _Stage("live-capture", capture), _Stage("live-writer", write)
    threads_before = torch.get_num_threads()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    n = rect_fail = 0
    t_model = 0.0
    recent: list[float] = []
    started = time.perf_counter()
    last = started
    ok = source_ended = False
    t_first = t_last = started
    capture_thread.start()
    writer_thread.start()
    try:
        with open(log_path, "w") as log:
            while not stop.is_set():
                if cfg.max_frames is not None and n >= cfg.max_frames:
                    break
                if cfg.seconds is not None and time.perf_counter() - started >= cfg.seconds:
                    break
                if writer_thread.error is not None:
                    raise writer_thread.error
                t0 = time.perf_counter()
                try:
                    item = captured.get(timeout=0.5)
                except queue.Empty:
                    if capture_thread.is_alive():
                        continue
                    source_ended = True
                    break
                if item is _END:
                    source_ended = True
                    break
                image, seq, verified = item
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
                x = imagenet_preprocess(image, entry.input_size[0]) if entry.input_size[0] == entry.input_size[1] \
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
                top5 = [[entry.labels[i], round(float(v), 4)] for v, i in zip(top.values, top.indices)]
                lines = [f"{cfg.model}  {fps:5.1f} fps  frame {seq}" + ("  [secure]" if verified else "")
                         + ("  [rectified]" if rectified else "") + (f"  [{note}]" if note else "")]
                lines += [f"{100 * s:5.1f}%  {name[:40]}" for name, s in top5]
                if not _put(to_write, (image, lines), stop):
                    break
                stages["rectify"] += t2 - t1
                stages["classify"] += t3 - t2
                log.write(json.dumps({"seq": seq, "t": round(now - started, 4), "top5": top5, "fps": round(fps, 2),
                                      "latency_ms": round(1000 * (t3 - t0), 2), "secure": verified,
                                      "rectified": rectified, "note": note}) + "\n")
                n += 1
            log.flush()
        stop.set()  # the capture thread stops reading ahead
        to_write.put(_END)
        writer_thread.join()
        if writer_thread.error is not None:
            raise writer_thread.error
        capture_thread.join(timeout=0.5 if stop.is_set() else cfg.timeout_s + 5)
        if capture_thread.error is not None and source_ended:  # the source failed: not a normal end
            raise capture_thread.error
        ok = True
    finally:
        stop.set()
        if writer_thread.is_alive():  # an error in the main loop: let the writer end before releasing it
            try:
                to_write.put_nowait(_END)
            except queue.Full:
                pass
            writer_thread.join(timeout=5)
        capture_thread.join(timeout=cfg.timeout_s + 5)
        writer.release()
        torch.set_num_threads(threads_before)
        if ok and n > 0:
            os.replace(video_tmp, video)
        elif video_tmp.exists():
            video_tmp.unlink()
    if n == 0:
        raise SourceError(f"live source {cfg.source!r} delivered no frame")
    seconds = time.perf_counter() - started
    steady = (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else 0.0
    return LiveSummary(n, seconds, n / seconds, n / t_model if t_model else 0.0, video, log_path,
                       rectify_failures=rect_fail, stages_ms={k: round(1000 * v / n, 2) for k, v in stages.items()},
                       startup_s=round(t_first - started, 3), steady_fps=steady)
