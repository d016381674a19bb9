"""An MJPEG-over-HTTP stream on 127.0.0.1 for the tests of frame sources, live mode and capture (no network)."""
from __future__ import annotations

import contextlib
import http.server
import threading
import time
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np


@contextlib.contextmanager
def mjpeg_stream(frames: Callable[[], Iterable[np.ndarray]], *, path: str = "stream.mjpg",
                 quality: int = 95) -> Iterator[str]:
    """Serve ``frames()`` (BGR uint8 images, a fresh iterable per request) as one multipart JPEG response, about
    10 ms apart, then end the response (the stream "dies"); yields the stream's URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frameboundary")
            self.end_headers()
            try:
                for img in frames():
                    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
                    assert ok
                    self.wfile.write(b"--frameboundary\r\nContent-Type: image/jpeg\r\n"
                                     + f"Content-Length: {len(jpg)}\r\n\r\n".encode() + jpg.tobytes() + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{path}"
    finally:
        server.shutdown()
        server.server_close()
