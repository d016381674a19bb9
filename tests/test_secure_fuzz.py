"""Hypothesis fuzzing of the frame parser/verifier: 10,400 derandomized examples in total. Every input either
verifies to the exact sealed frame (authentic records) or raises FrameRejected — never another exception, and no
forged or mutated record is ever accepted."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camera.secure.frames import (
    HEADER_SIZE,
    HEADER_STRUCT,
    MAGIC,
    OVERHEAD,
    VERSION,
    FrameRejected,
    FrameSealer,
    FrameVerifier,
    SessionKey,
    VerifyPolicy,
)

KEY = SessionKey(42, bytes(range(32)))
STREAM = bytes(range(100, 116))
POLICY = VerifyPolicy(max_height=64, max_width=64, max_age_s=None, first_seq=None)
_rng = np.random.default_rng(0)
FRAME = _rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
RECORD = FrameSealer(KEY, STREAM, clock=lambda: 123456789).seal(FRAME)
def fuzz(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _verifier() -> FrameVerifier:
    return FrameVerifier(KEY.verify_key(), STREAM, POLICY, clock=lambda: 123456789)


def _must_reject(data: bytes) -> None:
    try:
        _verifier().verify(data)
    except FrameRejected:
        return
    raise AssertionError(f"accepted a forged record of {len(data)} bytes")


def test_the_reference_record_verifies():
    assert np.array_equal(_verifier().verify(RECORD).image, FRAME)


@fuzz(2500)
@given(st.binary(min_size=0, max_size=400))
def test_random_bytes_are_rejected(data: bytes):
    _must_reject(data)


@fuzz(2500)
@given(st.binary(min_size=0, max_size=len(RECORD)))
def test_random_bytes_behind_a_valid_magic_are_rejected(tail: bytes):
    _must_reject(MAGIC + bytes([VERSION, 0, 3, 1]) + tail)


@fuzz(3000)
@given(st.lists(st.tuples(st.integers(0, len(RECORD) - 1), st.integers(1, 255)), min_size=1, max_size=6),
       st.integers(-8, 8))
def test_mutated_records_are_rejected(edits, resize):
    b = bytearray(RECORD)
    for pos, xor in edits:
        b[pos] ^= xor
    if resize < 0:
        del b[resize:]
    elif resize > 0:
        b += bytes(resize)
    if bytes(b) == RECORD:  # edits that cancel out are not a forgery
        return
    _must_reject(bytes(b))


@fuzz(1800)
@given(height=st.one_of(st.integers(0, 70), st.integers(0, 2**32 - 1)),
       width=st.one_of(st.integers(0, 70), st.integers(0, 2**32 - 1)),
       payload_len=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
       key_id=st.sampled_from([42, 0, 2**32 - 1]), body=st.integers(0, 300), seq=st.integers(0, 2**64 - 1),
       version=st.sampled_from([VERSION, VERSION, VERSION, 0, 1, 255]), channels=st.sampled_from([3, 3, 0, 1, 4]),
       salt=st.sampled_from([bytes(16), bytes(range(16))]))
def test_structured_headers_are_rejected(height, width, payload_len, key_id, body, seq, version, channels, salt):
    """Well-formed-looking headers with arbitrary shapes (including absurd ones) and bodies: never accepted, never
    anything but FrameRejected, and no allocation from the declared shape (a 2**32 x 2**32 shape must not OOM)."""
    if payload_len is None:
        payload_len = (height * width * 3) & 0xFFFFFFFF
    header = HEADER_STRUCT.pack(MAGIC, version, 0, channels, 1, STREAM, key_id, KEY.commitment, salt, seq,
                                123456789, height, width, payload_len, b"\x00" * 12)
    _must_reject(header + bytes(16) + bytes(body))


@fuzz(600)
@given(h=st.integers(1, 64), w=st.integers(1, 64), seed=st.integers(0, 2**32 - 1), flip=st.integers(0, 10**6))
def test_authentic_records_round_trip_and_any_bit_flip_is_rejected(h, w, seed, flip):
    frame = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    rec = FrameSealer(KEY, STREAM, clock=lambda: 123456789).seal(frame)
    assert len(rec) == OVERHEAD + h * w * 3
    assert np.array_equal(_verifier().verify(rec).image, frame)
    b = bytearray(rec)
    b[flip % len(b)] ^= 1 << (flip % 8)
    _must_reject(bytes(b))
    _must_reject(rec[: HEADER_SIZE + (flip % (len(rec) - HEADER_SIZE))])
