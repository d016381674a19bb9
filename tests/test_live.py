"""Live mode, headless, against an MJPEG stream that the test serves on 127.0.0.1 (and a small video file)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mjpeg_stream import mjpeg_stream
from test_experiment import TINY, register_tiny

from pipelines.live import LiveConfig, _letterbox, probe_codec, run_live
from testbed.errors import ConfigError, SourceError

N_FRAMES = 8
ROOT = Path(__file__).resolve().parents[1]


def _frames(n: int = N_FRAMES):
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((240, 320, 3), 40 * (i % 6), np.uint8)
        img[40:200, 60:260] = rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)
        yield img


@pytest.fixture
def stream():
    with mjpeg_stream(_frames, path="live.mjpg") as url:
        yield url


def _read_log(path: Path) -> tuple[list[dict], dict]:
    """The per-frame records and the closing summary record of a log.jsonl."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert "summary" in rows[-1] and all("seq" in r for r in rows[:-1])
    return rows[:-1], rows[-1]["summary"]


def _read_video(path: Path) -> tuple[int, tuple | None, float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    count, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count, shape = count + 1, frame.shape
    cap.release()
    return count, shape, fps


def test_live_headless_writes_video_and_log(stream, tmp_path):
    register_tiny()
    s = run_live(LiveConfig(source=stream, model=TINY, out=tmp_path, max_frames=N_FRAMES, width=160, height=120))
    assert s.frames == N_FRAMES and s.fps > 0 and s.classify_fps > 0
    assert s.startup_s >= 0 and s.steady_fps >= s.fps * 0.5  # the steady rate excludes opening the source
    rows, summary = _read_log(tmp_path / "log.jsonl")
    assert [r["seq"] for r in rows] == list(range(N_FRAMES))
    for r in rows:
        assert len(r["top5"]) == 5 and abs(sum(p for _, p in r["top5"]) - 1) < 1.0 and r["secure"] is False
        probs = [p for _, p in r["top5"]]
        assert probs == sorted(probs, reverse=True)
    assert summary["frames"] == summary["video_frames"] == N_FRAMES and summary["stopped_by"] == "max_frames"
    assert summary["codec"] == probe_codec()[0] and summary["video_fps"] > 0 and summary["video_fps_from"]
    assert s.video.suffix == probe_codec()[1] and s.video.exists()
    count, shape, _ = _read_video(s.video)
    assert count == N_FRAMES and shape == (120, 160, 3)
    assert not list(tmp_path.glob(".annotated.partial*"))


def test_codec_probe_prefers_a_browser_playable_encoder():
    fourcc, suffix = probe_codec()
    assert (fourcc, suffix) in (("avc1", ".mp4"), ("H264", ".mp4"), ("VP80", ".webm"), ("mp4v", ".mp4"))
    assert probe_codec("mp4v") == ("mp4v", ".mp4")
    with pytest.raises(ConfigError, match="cannot encode"):
        probe_codec("ZZZZ")


def test_video_plays_at_the_source_frame_rate(tmp_path):
    """A 10 frames/s file gives a 10 frames/s video (not a fixed 15)."""
    src = tmp_path / "in.mp4"
    w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    for img in _frames(6):
        w.write(cv2.resize(img, (160, 120)))
    w.release()
    s = run_live(LiveConfig(source=str(src), model=register_tiny(), out=tmp_path / "o", width=160, height=120))
    assert s.frames == 6 and s.stopped_by == "end of source"
    assert s.video_fps == 10.0 and s.video_fps_from.startswith("source")
    count, _, fps = _read_video(s.video)
    assert count == 6 and abs(fps - 10.0) < 0.01


def test_letterbox_keeps_the_aspect_ratio():
    square = torch.ones(1, 3, 100, 100)
    x = _letterbox(square, 160, 120)
    assert x.shape == (1, 3, 120, 160)
    assert float(x[..., :, :20].abs().max()) == 0 and float(x[..., :, 140:].abs().max()) == 0  # black bars
    assert float(x[..., 5:115, 25:135].min()) > 0.99  # the square, 120 x 120, centred


def test_live_through_secure_path(stream, tmp_path):
    register_tiny()
    s = run_live(LiveConfig(source=stream, model=TINY, out=tmp_path, max_frames=4, secure=True, width=160, height=120))
    rows, summary = _read_log(tmp_path / "log.jsonl")
    assert s.frames == 4 and all(r["secure"] for r in rows)
    assert s.secure is not None and s.secure["accepted"] >= 4 and s.rejected == 0 and s.secure["rejected"] == {}
    assert summary["secure"]["accepted"] == s.secure["accepted"]
    assert summary["video_fps_from"].startswith("measured over the first 4 frames")  # a stream via the secure path


def test_live_bad_inputs(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 this is not a video" * 50)
    with pytest.raises(SourceError):
        run_live(LiveConfig(source=str(bad), model=register_tiny(), out=tmp_path / "o" / "deep", max_frames=2))
    assert not (tmp_path / "o").exists()  # a run that fails before its first frame leaves no folder
    with pytest.raises(ConfigError, match="max_frames"):
        run_live(LiveConfig(source="0", model=TINY, out=tmp_path, max_frames=0))
    with pytest.raises(SourceError, match="refused|connect"):
        run_live(LiveConfig(source="http://127.0.0.1:9/none.mjpg", model=TINY, out=tmp_path / "p", max_frames=1,
                            timeout_s=2))
    assert not (tmp_path / "p").exists()


def test_stream_dying_mid_run_is_an_error_and_keeps_video_and_log(stream, tmp_path):
    """The capture thread's failure reaches the caller after the video is finalised and the log closed with its
    summary (the error in it); torch's thread setting is restored."""
    register_tiny()
    before = torch.get_num_threads()
    with pytest.raises(SourceError, match=f"stopped delivering frames after {N_FRAMES}") as info:
        run_live(LiveConfig(source=stream, model=TINY, out=tmp_path, max_frames=N_FRAMES + 5, width=160, height=120,
                            timeout_s=3))
    assert info.value.live_summary.frames == N_FRAMES
    rows, summary = _read_log(tmp_path / "log.jsonl")
    assert [r["seq"] for r in rows] == list(range(N_FRAMES))
    assert summary["stopped_by"] == "error" and "stopped delivering" in summary["error"]
    video = tmp_path / f"annotated{probe_codec()[1]}"
    assert _read_video(video)[0] == N_FRAMES and not list(tmp_path.glob(".annotated.partial*"))
    assert torch.get_num_threads() == before


def test_a_video_writer_that_cannot_open_is_an_error_not_a_hang(stream, tmp_path, monkeypatch):
    probe_codec()  # (cached) probed with the real encoder

    class Broken:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def isOpened(self) -> bool:
            return False

        def release(self) -> None:
            pass

    monkeypatch.setattr(cv2, "VideoWriter", Broken)
    with pytest.raises(SourceError, match="video writer"):
        run_live(LiveConfig(source=stream, model=register_tiny(), out=tmp_path / "o", max_frames=N_FRAMES,
                            width=160, height=120, timeout_s=3))
    rows, summary = _read_log(tmp_path / "o" / "log.jsonl")  # the frames classified are still logged
    assert len(rows) == N_FRAMES and summary["error"] and "video writer" in summary["error"] and summary["video_frames"] == 0


# ------------------------------------------------------------------------------------------ the CLI, signals
_CLI = ("import sys; sys.path.insert(0, {tests!r}); from test_experiment import register_tiny; register_tiny(); "
        "from pipelines.main import main; sys.exit(main(sys.argv[1:]))")


def _live_cli(url: str, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", _CLI.format(tests=str(ROOT / "tests")), "live", url, "--model", TINY,
                             "--out", str(out), "--width", "160", "--height", "120", "--timeout-s", "3", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _endless():
    for img in _frames(10_000):
        time.sleep(0.04)  # ~20 frames/s
        yield img


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_in_order_and_keeps_video_and_log(tmp_path, sig, status):
    with mjpeg_stream(_endless, path="endless.mjpg") as url:
        proc = _live_cli(url, tmp_path / "out")
        log = tmp_path / "out" / "log.jsonl"
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (not log.exists() or log.read_text().count("\n") < 3):
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == status, (out, err)
    rows, summary = _read_log(log)
    assert len(rows) >= 3 and summary["stopped_by"] == sig.name and summary["video_frames"] == len(rows)
    count, shape, _ = _read_video(tmp_path / "out" / f"annotated{probe_codec()[1]}")
    assert count == len(rows) and shape == (120, 160, 3)
    assert f"{len(rows)} frames" in out and "steady" in out and "start-up" in out
    assert sig.name in err


def test_cli_dying_stream_keeps_video_and_log_and_exits_2(stream, tmp_path):
    proc = _live_cli(stream, tmp_path / "out")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    ours = [line for line in err.splitlines() if line.startswith("testbed live")]  # (FFmpeg may add its own note)
    assert len(ours) == 1 and "error:" in ours[0] and "stopped delivering frames" in ours[0]  # one line
    rows, summary = _read_log(tmp_path / "out" / "log.jsonl")
    assert len(rows) == N_FRAMES and summary["error"]
    assert _read_video(tmp_path / "out" / f"annotated{probe_codec()[1]}")[0] == N_FRAMES
    assert f"{N_FRAMES} frames" in out
