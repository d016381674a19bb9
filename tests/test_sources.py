"""FrameSource: MJPEG over HTTP on 127.0.0.1, a VideoWriter file and an image sequence, all in order."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from camera.sources import Frame, FrameSource, ImageSequenceSource, VideoCaptureSource, open_source
from mjpeg_stream import mjpeg_stream
from testbed.errors import SourceError

W, H, BITS, CELL = 320, 240, 6, 32


def indexed_frame(i: int) -> np.ndarray:
    """A BGR frame whose index is written as BITS big black/white cells (robust to JPEG/video codecs)."""
    img = np.full((H, W, 3), 128, np.uint8)
    img[:, :, 0] = np.linspace(40, 200, W, dtype=np.uint8)[None, :]  # some texture
    for b in range(BITS):
        v = 255 if (i >> b) & 1 else 0
        img[16:16 + CELL, 8 + b * (CELL + 8): 8 + b * (CELL + 8) + CELL] = v
    return img


def read_index(frame: Frame) -> int:
    x = frame.image
    assert x.shape == (1, 3, H, W) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    g = x[0].mean(0)
    i = 0
    for b in range(BITS):
        c0 = 8 + b * (CELL + 8)
        if float(g[16 + 8:16 + CELL - 8, c0 + 8:c0 + CELL - 8].mean()) > 0.5:
            i |= 1 << b
    return i


N_STREAM_FRAMES = 12


@pytest.fixture
def mjpeg_server():
    with mjpeg_stream(lambda: (indexed_frame(i) for i in range(N_STREAM_FRAMES)), quality=90) as url:
        yield url


def _collect(src: FrameSource) -> list[Frame]:
    with src:
        return list(src)


def _check_in_order(frames: list[Frame], n: int, source_prefix: str) -> None:
    assert [read_index(f) for f in frames] == list(range(n))
    assert [f.seq for f in frames] == list(range(n))
    ts = [f.timestamp for f in frames]
    assert all(b >= a for a, b in zip(ts, ts[1:]))
    assert all(f.source.startswith(source_prefix) for f in frames)


def test_mjpeg_stream_video_file_and_image_sequence_in_order(mjpeg_server, tmp_path):
    n = N_STREAM_FRAMES
    # 1. a real MJPEG stream over HTTP (multipart/x-mixed-replace) on loopback
    stream = open_source(mjpeg_server, max_frames=n)
    assert isinstance(stream, VideoCaptureSource) and stream.kind == "stream"
    _check_in_order(_collect(stream), n, "stream:")
    # 2. a video file written by cv2.VideoWriter
    video = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    assert vw.isOpened()
    for i in range(n):
        vw.write(indexed_frame(i))
    vw.release()
    src = open_source(video)
    assert isinstance(src, VideoCaptureSource) and src.kind == "file"
    frames = _collect(src)
    assert src.frame_count == n
    _check_in_order(frames, n, "file:")
    # 3. an image sequence with natural ordering (frame_2 before frame_10)
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"frame_{i}.png"), indexed_frame(i))
    frames = _collect(open_source(folder))
    _check_in_order(frames, n, "images:")
    frames = _collect(open_source(str(folder / "frame_*.png")))
    _check_in_order(frames, n, "images:")
    # PNG is lossless: the pixels come back exactly (BGR -> RGB)
    expect = cv2.cvtColor(indexed_frame(3), cv2.COLOR_BGR2RGB)
    got = (frames[3].image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(got, expect)


def test_stream_that_stops_is_an_error_not_a_silent_end(mjpeg_server):
    src = VideoCaptureSource(mjpeg_server, timeout_s=3)  # no max_frames: the server stops after 12
    with pytest.raises(SourceError, match=r"stopped delivering frames after 12"):
        with src:
            for _ in src:
                pass
    src = VideoCaptureSource(mjpeg_server, timeout_s=3, on_end="stop")
    assert len(_collect(src)) == 12


def test_sources_that_cannot_open_say_which_and_why(tmp_path):
    with socket_free_port() as port:
        url = f"http://127.0.0.1:{port}/video.mjpg"
    with pytest.raises(SourceError, match=rf"stream {url}: cannot open: connection .* refused"):
        open_source(url).open()
    with pytest.raises(SourceError, match=r"video file .*missing.mp4: cannot open: the file does not exist"):
        open_source(tmp_path / "missing.mp4").open()
    with pytest.raises(SourceError, match=r"webcam 63: cannot open: /dev/video63 does not exist"):
        open_source(63).open()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"image folder .*empty: cannot open: no images"):
        open_source(empty).open()
    with pytest.raises(SourceError, match=r"matches no files"):
        open_source(str(tmp_path / "nothing_*.png")).open()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match=r"garbage.mp4: cannot open: FFmpeg could not"):
        open_source(garbage).open()
    with pytest.raises(SourceError, match=r"unsupported URL scheme 'ftp'"):
        VideoCaptureSource("ftp://127.0.0.1/x", kind="stream").open()


class socket_free_port:
    """A loopback port that was free a moment ago (bound then released)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *a: object) -> None:
        pass


def test_truncated_video_and_corrupt_images_raise(tmp_path):
    video = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for i in range(20):
        vw.write(indexed_frame(i))
    vw.release()
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"cut.avi: truncated or corrupt: read \d+ of 20 frames"):
        _collect(open_source(cut))
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), indexed_frame(i))
    jpg = (folder / "1.jpg").read_bytes()
    (folder / "1.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    src = open_source(folder)
    with src:
        assert read_index(src.read()) == 0
        with pytest.raises(SourceError, match=r"frame 1 .*1.jpg\): truncated JPEG"):
            src.read()
    (folder / "1.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50 + b"IEND\xaeB`\x82")
    with pytest.raises(SourceError, match=r"frame 1 .*not a decodable image"):
        _collect(open_source(folder))


def test_grayscale_rgba_16bit_refused_or_converted_explicitly(tmp_path):
    g = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 10
    cv2.imwrite(str(tmp_path / "g16.png"), g)
    cv2.imwrite(str(tmp_path / "gray.png"), (g // 256).astype(np.uint8))
    rgba = np.zeros((64, 80, 4), np.uint8)
    rgba[..., 2] = 255  # red (BGRA)
    rgba[:, :40, 3] = 255  # left half opaque, right half transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    for name, what in (("g16.png", "16-bit grayscale"), ("gray.png", "8-bit grayscale"),
                       ("rgba.png", r"8-bit colour\+alpha \(RGBA\)")):
        with pytest.raises(SourceError, match=rf"{name}\): {what} image; expected 8-bit 3-channel"):
            _collect(ImageSequenceSource(tmp_path / name))
    x16 = _collect(ImageSequenceSource(tmp_path / "g16.png", convert=True))[0].image
    assert x16.shape == (1, 3, 64, 80)
    assert torch.allclose(x16[0, 0], torch.from_numpy(g.astype(np.float32) / 65535.0), atol=1e-6)
    assert torch.equal(x16[0, 0], x16[0, 2])
    xa = _collect(ImageSequenceSource(tmp_path / "rgba.png", convert=True))[0].image
    assert torch.allclose(xa[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # opaque red
    assert torch.allclose(xa[0, :, 0, 79], torch.tensor([1.0, 1.0, 1.0]))  # transparent -> white paper


def test_video_frames_carry_their_8bit_pixels_for_the_secure_capture(tmp_path):
    """A decoded 8-bit frame keeps its uint8 RGB pixels (Frame.rgb8): exactly rint(image * 255), so the secure
    capture seals the same bytes without a float round trip."""
    import cv2
    import numpy as np

    from camera.secure.capture import to_uint8_frame
    from camera.secure.frames import quantize_frame
    from camera.sources import open_source

    path = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(3):
        w.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    w.release()
    with open_source(str(path)) as src:
        frames = list(src)
    assert len(frames) == 3
    for f in frames:
        assert f.rgb8 is not None and f.rgb8.dtype == np.uint8 and f.rgb8.shape == (48, 64, 3)
        assert np.array_equal(to_uint8_frame(f), quantize_frame(f.image))
        assert "_rgb8" not in f.meta
