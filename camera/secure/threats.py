"""The record-level threat matrix as a runnable table (used by ``testbed secure matrix`` and the tests).

Buffer-level cases (a foreign process writing the ring, a ring rewritten after verification) need processes and
live in tests/test_secure_buffer.py; :func:`run_threat_matrix` covers every case that is a record on the wire.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from camera.secure.capture import SyntheticFrames
from camera.secure.frames import (FrameRejected, FrameSealer, FrameVerifier, Keyring, Rejection, SessionKey, VerifyKey,
                                  VerifyPolicy)
from camera.secure.tamper import (flip_bit, forge_record, nonce_reuse_forgery, pad, payload_offset, read_header,
                                  rewrite_field, set_shape, truncate)


@dataclass(frozen=True)
class ThreatCase:
    """One row: the case, the reason we expect, what the verifier said, and whether anything was accepted."""

    name: str
    expected: Rejection
    got: Rejection | None
    detail: str

    @property
    def passed(self) -> bool:
        return self.got is self.expected


def run_threat_matrix(height: int = 48, width: int = 64) -> list[ThreatCase]:
    """Seal a short stream, attack it in every record-level way, and report what the verifier decided."""
    t = [10**12]
    clock: Callable[[], int] = lambda: t[0]  # noqa: E731
    src = SyntheticFrames(height, width, 4, seed=0)
    key = SessionKey.generate(key_id=1)
    sealer = FrameSealer(key, clock=clock)
    recs = [sealer.seal(src.frame(i)) for i in range(4)]
    other_stream = FrameSealer(key, clock=clock).seal(src.frame(1))
    policy = VerifyPolicy(max_age_s=0.5)

    def fresh(keys: VerifyKey | None = None) -> FrameVerifier:
        return FrameVerifier(keys or key.verify_key(), sealer.stream_id, policy, clock=clock)

    def after_first(v: FrameVerifier) -> FrameVerifier:
        v.verify(recs[0])
        return v

    def retired() -> FrameVerifier:
        ring = Keyring([key])
        v = FrameVerifier(ring, sealer.stream_id, policy, clock=clock)
        ring.retire(key.key_id)
        return v

    def rebuilt_sealer_forgery() -> bytes:
        # The capture side rebuilds a sealer from the stored secret, same stream id and clock, and seals a frame
        # that differs from frame 0 only in its last bytes: under a shared (key, nonce) this gives the GCM hash key.
        twin = src.frame(0).copy()
        twin[-1, -1] ^= 0x5A
        rebuilt = FrameSealer(SessionKey(key.key_id, key.secret), sealer.stream_id, clock=clock)
        rec = rebuilt.seal(twin, capture_ns=read_header(recs[0]).capture_ns)
        return nonce_reuse_forgery(recs[0], src.frame(0), rec, np.zeros((height, width, 3), np.uint8))

    def stale() -> bytes:
        t[0] += 10**9
        return recs[1]

    cases: list[tuple[str, Rejection, Callable[[], FrameVerifier], Callable[[], bytes]]] = [
        ("one flipped pixel bit", Rejection.BAD_PAYLOAD_TAG, fresh, lambda: flip_bit(recs[0], 8 * payload_offset())),
        ("rewritten header field (seq)", Rejection.BAD_HEADER_TAG, fresh, lambda: rewrite_field(recs[0], "seq", 9)),
        ("replay", Rejection.REPLAY, lambda: after_first(fresh()), lambda: recs[0]),
        ("reorder (late frame)", Rejection.REORDER,
         lambda: _accepting(fresh(), recs[0], recs[2], policy_gap=True), lambda: recs[1]),
        ("drop (frame after a gap)", Rejection.GAP, lambda: after_first(fresh()), lambda: recs[2]),
        ("injected by a key-less forger", Rejection.BAD_HEADER_TAG, lambda: after_first(fresh()),
         lambda: forge_record(recs[0], np.zeros((height, width, 3), np.uint8))),
        ("consumer with the wrong key", Rejection.WRONG_KEY, lambda: fresh(VerifyKey(1, b"\x07" * 32)),
         lambda: recs[0]),
        ("unknown key id", Rejection.UNKNOWN_KEY, fresh, lambda: rewrite_field(recs[0], "key_id", 2)),
        ("key retired by the consumer", Rejection.RETIRED_KEY, retired, lambda: recs[0]),
        ("nonce-reuse forgery, rebuilt sealer", Rejection.BAD_PAYLOAD_TAG, fresh, rebuilt_sealer_forgery),
        ("spliced from another stream", Rejection.WRONG_STREAM, fresh, lambda: other_stream),
        ("truncated record", Rejection.TRUNCATED, fresh, lambda: truncate(recs[0], 1)),
        ("oversized record", Rejection.OVERSIZED, fresh, lambda: pad(recs[0], 1)),
        ("absurd shape (2^32-1 x 2^32-1)", Rejection.SHAPE_BOUND, fresh,
         lambda: set_shape(recs[0], 2**32 - 1, 2**32 - 1)),
        ("stale frame", Rejection.STALE, lambda: after_first(fresh()), stale),
    ]
    out: list[ThreatCase] = []
    for name, expected, make_verifier, make_record in cases:
        v = make_verifier()
        record = make_record()
        try:
            v.verify(record)
            out.append(ThreatCase(name, expected, None, "ACCEPTED"))
        except FrameRejected as exc:
            out.append(ThreatCase(name, expected, exc.reason, exc.detail))
    return out


def _accepting(v: FrameVerifier, *records: bytes, policy_gap: bool = False) -> FrameVerifier:
    """Feed records, tolerating the GAP that a reordered (early) frame causes under the strict drop policy."""
    for r in records:
        try:
            v.verify(r)
        except FrameRejected as exc:
            if not (policy_gap and exc.reason is Rejection.GAP):
                raise
    return v


def format_matrix(rows: list[ThreatCase]) -> str:
    lines = [f"{'case':36s} {'expected':16s} {'got':16s} ok", "-" * 74]
    for r in rows:
        lines.append(f"{r.name:36s} {r.expected.value:16s} {(r.got.value if r.got else 'ACCEPTED'):16s} "
                     f"{'yes' if r.passed else 'NO'}")
    return "\n".join(lines)


__all__ = ["ThreatCase", "format_matrix", "run_threat_matrix"]
