"""Throughput of the secure path (frames/s) against the plain path, at a given resolution.

Measured per frame, in one process (the ring mechanics without IPC latency):

* ``plain``: the frame written into a shared buffer and copied out (what a plain ring costs);
* ``seal``: producer side only (AES-256-GCM + HMAC header tag + record assembly);
* ``verify``: consumer side only (checks, tag verification, decryption into a private copy);
* ``secure``: seal + write into the sealed memfd ring + copy out + verify (into a private copy);
* ``to_tensor``: the uint8 HWC -> 1x3xHxW float conversion both paths need before the model (reported apart).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from camera.secure.capture import SyntheticFrames
from camera.secure.frames import FrameSealer, FrameVerifier, SessionKey, VerifyPolicy, frame_to_tensor
from camera.secure.ringbuffer import RingReader, SealedRing, SlotRef


@dataclass(frozen=True)
class Throughput:
    height: int
    width: int
    frames: int
    plain_fps: float
    seal_fps: float
    verify_fps: float
    secure_fps: float
    to_tensor_fps: float

    @property
    def overhead_ms(self) -> float:
        """Extra milliseconds per frame the secure path costs over the plain one."""
        return 1000.0 / self.secure_fps - 1000.0 / self.plain_fps

    def as_dict(self) -> dict:
        return {**asdict(self), "overhead_ms": self.overhead_ms}


def _rate(fn, n: int) -> float:
    fn(0)  # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def measure_throughput(height: int, width: int, frames: int = 50) -> Throughput:
    """Frames/s of the plain and secure paths at ``height`` x ``width`` (best of the measured loop)."""
    src = SyntheticFrames(height, width, 4, seed=0)
    pool = [src.frame(i) for i in range(4)]
    key = SessionKey.generate()
    sealer = FrameSealer(key)
    policy = VerifyPolicy(max_height=max(height, 1), max_width=max(width, 1), max_age_s=None, max_gap=2**31,
                          first_seq=None)
    verifier = FrameVerifier(key.verify_key(), sealer.stream_id, policy)
    buf = bytearray(height * width * 3)

    def plain(i: int) -> None:
        buf[:] = pool[i % 4].tobytes()  # into the shared buffer
        np.frombuffer(bytes(buf), np.uint8).reshape(height, width, 3)  # copied out

    records = [sealer.seal(f) for f in pool]

    def seal(i: int) -> None:
        sealer.seal(pool[i % 4])

    vkey = key.verify_key()

    def verify(i: int) -> None:  # a fresh stream state each time, so the same four records stay acceptable
        FrameVerifier(vkey, sealer.stream_id, policy).verify(records[i % 4])

    ring = SealedRing(2, len(records[0]))
    reader = RingReader(ring.readonly_fd, 2, len(records[0]))

    def secure(i: int) -> None:
        ref = ring.write(i % 2, sealer.seal(pool[i % 4]))
        verifier.verify(reader.read(SlotRef(ref.slot, ref.generation, ref.length)))

    def to_tensor(i: int) -> None:
        frame_to_tensor(pool[i % 4])

    try:
        return Throughput(height, width, frames, _rate(plain, frames), _rate(seal, frames), _rate(verify, frames),
                          _rate(secure, frames), _rate(to_tensor, frames))
    finally:
        reader.close()
        ring.close()


def format_table(rows: list[Throughput]) -> str:
    lines = [f"{'resolution':>11s} {'plain fps':>10s} {'secure fps':>11s} {'seal fps':>9s} {'verify fps':>11s} "
             f"{'overhead ms/frame':>18s} {'to_tensor fps':>14s}"]
    for r in rows:
        lines.append(f"{r.width:>5d}x{r.height:<5d} {r.plain_fps:10.1f} {r.secure_fps:11.1f} {r.seal_fps:9.1f} "
                     f"{r.verify_fps:11.1f} {r.overhead_ms:18.2f} {r.to_tensor_fps:14.1f}")
    return "\n".join(lines)


__all__ = ["Throughput", "measure_throughput", "format_table"]
