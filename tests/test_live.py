"""Live mode, headless, against an MJPEG stream that the test serves on 127.0.0.1."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mjpeg_stream import mjpeg_stream
from pipelines.live import LiveConfig, run_live
from test_experiment import TINY, register_tiny
from testbed.errors import ConfigError, SourceError

N_FRAMES = 8


def _frames():
    rng = np.random.default_rng(0)
    for i in range(N_FRAMES):
        img = np.full((240, 320, 3), 40 * (i % 6), np.uint8)
        img[40:200, 60:260] = rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)
        yield img


@pytest.fixture
def stream():
    with mjpeg_stream(_frames, path="live.mjpg") as url:
        yield url


def test_live_headless_writes_video_and_log(stream, tmp_path):
    register_tiny()
    s = run_live(LiveConfig(source=stream, model=TINY, out=tmp_path, max_frames=N_FRAMES, width=160, height=120))
    assert s.frames == N_FRAMES and s.fps > 0 and s.classify_fps > 0
    assert s.startup_s >= 0 and s.steady_fps >= s.fps * 0.5  # the steady rate excludes opening the source
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in lines] == list(range(N_FRAMES))
    for r in lines:
        assert len(r["top5"]) == 5 and abs(sum(p for _, p in r["top5"]) - 1) < 1.0 and r["secure"] is False
        probs = [p for _, p in r["top5"]]
        assert probs == sorted(probs, reverse=True)
    cap = cv2.VideoCapture(str(s.video))
    count, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count, shape = count + 1, frame.shape
    assert count == N_FRAMES and shape == (120, 160, 3)
    assert not list(tmp_path.glob(".annotated.partial*"))


def test_live_through_secure_path(stream, tmp_path):
    register_tiny()
    s = run_live(LiveConfig(source=stream, model=TINY, out=tmp_path, max_frames=4, secure=True, width=160, height=120))
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert s.frames == 4 and all(r["secure"] for r in lines)


def test_live_bad_inputs(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 this is not a video" * 50)
    with pytest.raises(SourceError):
        run_live(LiveConfig(source=str(bad), model=register_tiny(), out=tmp_path / "o", max_frames=2))
    assert not (tmp_path / "o" / "annotated.mp4").exists()
    with pytest.raises(ConfigError, match="max_frames"):
        run_live(LiveConfig(source="0", model=TINY, out=tmp_path, max_frames=0))
    with pytest.raises(SourceError, match="refused|connect"):
        run_live(LiveConfig(source="http://127.0.0.1:9/none.mjpg", model=TINY, out=tmp_path / "p", max_frames=1,
                            timeout_s=2))


def test_stream_dying_mid_run_is_an_error_and_leaves_no_video(stream, tmp_path):
    """The capture thread's failure reaches the caller; the frames classified before it are logged, the video is
    not renamed into place, and torch's thread setting is restored."""
    import torch

    register_tiny()
    before = torch.get_num_threads()
    with pytest.raises(SourceError, match=f"stopped delivering frames after {N_FRAMES}"):
        run_live(LiveConfig(source=stream, model=TINY, out=tmp_path, max_frames=N_FRAMES + 5, width=160, height=120,
                            timeout_s=3))
    assert not (tmp_path / "annotated.mp4").exists() and not list(tmp_path.glob(".annotated.partial*"))
    seqs = [json.loads(line)["seq"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert seqs == list(range(N_FRAMES))
    assert torch.get_num_threads() == before
