"""Hardening of the secure capture path (issue 14, security 2-4): no nonce reuse from a rebuilt sealer, key
retirement, a TCP reader whose memory follows what arrived, named errors for stalls, resets and a dead capture
process, and ``testbed live --secure`` on a stream that dies."""
from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import socket
import struct
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import camera.secure.frames as frames_module
from camera.secure.capture import (
    ArrayFrames,
    CaptureConfig,
    FrameSourceAdapter,
    SyntheticFrames,
    start_capture,
)
from camera.secure.consumer import SecureCapture, SecureConsumer
from camera.secure.errors import (CaptureFailed, CaptureProcessDied, CaptureStartTimeout, RecordTooLarge,
                                  SecureStreamError, StreamFailure, StreamReset, StreamStalled, StreamTruncated)
from camera.secure.frames import (FrameRejected, FrameSealer, FrameVerifier, Keyring, Rejection, SessionKey, VerifyKey,
                                  VerifyPolicy, _hkdf, derive_payload_key, record_size)
from camera.secure.network import SealedStreamReceiver, SealedStreamSender
from camera.secure.tamper import ghash, nonce_reuse_forgery, read_header
from testbed.errors import ConfigError, SourceError

H, W = 6, 8
SRC = SyntheticFrames(H, W, 64, seed=5)
SECRET = bytes(range(32))  # "the stored secret"
STREAM = bytes(range(50, 66))
POLICY = VerifyPolicy(max_age_s=None, first_seq=None, max_gap=2**31)


def _pair(frame: np.ndarray) -> np.ndarray:
    """A frame that differs from ``frame`` only in its last bytes (inside the last 16-byte block)."""
    twin = frame.copy()
    twin[-1, -1] ^= 0x5A
    return twin


# --------------------------------------------------------------------------------------------- nonce reuse
def test_sealers_rebuilt_from_one_secret_never_repeat_a_key_nonce_pair():
    """Four sealers built from the same stored secret -- two SessionKey objects, the same stream id, the same
    clock, the same first sequence number and nonce counter -- seal 40 frames each: no (GCM key, nonce) pair
    repeats, although every sealer's nonce counter runs 0..39."""
    sealers = [FrameSealer(SessionKey(9, SECRET), STREAM, clock=lambda: 1000, first_counter=0) for _ in range(2)]
    sealers += [FrameSealer(SessionKey(9, SECRET), STREAM, clock=lambda: 1000) for _ in range(2)]
    master = _hkdf(SECRET, b"payload-master", 32)
    pairs, nonces = [], []
    for s in sealers:
        records = [s.seal(SRC.frame(i)) for i in range(40)]
        v = FrameVerifier(VerifyKey(9, SECRET), STREAM, POLICY)
        assert [v.verify(r).seq for r in records] == list(range(40))  # each stream still verifies
        for r in records:
            h = read_header(r)
            pairs.append((derive_payload_key(master, h.key_salt), h.nonce))
            nonces.append(h.nonce)
    assert len(set(nonces)) == 40  # the counters did restart ...
    assert len(set(pairs)) == len(pairs) == 160  # ... but never under the same key
    assert len({s.key_salt for s in sealers}) == 4
    salts = {FrameSealer(SessionKey(9, SECRET), STREAM).key_salt for _ in range(2000)}
    assert len(salts) == 2000 and all(len(x) == 16 for x in salts)


def test_two_record_forgery_of_the_old_key_api_is_rejected(monkeypatch):
    """The forgery from two records under one (key, nonce): it works when two sealers share their GCM key (here
    forced by making their salts equal -- what rebuilding ``SessionKey(kid, secret)`` did in version 1), and is
    rejected with the real per-sealer keys."""
    target = np.zeros((H, W, 3), np.uint8)
    target[:, : W // 2] = 255

    def two_records() -> tuple[bytes, bytes]:
        a = FrameSealer(SessionKey(9, SECRET), STREAM, clock=lambda: 1000)
        b = FrameSealer(SessionKey(9, SECRET), STREAM, clock=lambda: 1000)  # rebuilt from the stored secret
        return a.seal(SRC.frame(0)), b.seal(_pair(SRC.frame(0)))

    real_urandom = os.urandom
    with monkeypatch.context() as m:  # the old behaviour: both sealers encrypt under one key, counters restart
        m.setattr(frames_module.os, "urandom", lambda n: b"\x07" * n if n == 16 else real_urandom(n))
        rec_a, rec_b = two_records()
    assert read_header(rec_a).nonce == read_header(rec_b).nonce and rec_a[:100] == rec_b[:100]
    forged = nonce_reuse_forgery(rec_a, SRC.frame(0), rec_b, target)
    accepted = FrameVerifier(VerifyKey(9, SECRET), STREAM, POLICY).verify(forged)
    assert np.array_equal(accepted.image, target)  # the attack is real: an arbitrary frame, accepted

    rec_a, rec_b = two_records()  # the key API as it is
    assert read_header(rec_a).nonce == read_header(rec_b).nonce  # same counter value, different keys
    forged = nonce_reuse_forgery(rec_a, SRC.frame(0), rec_b, target)
    with pytest.raises(FrameRejected) as e:
        FrameVerifier(VerifyKey(9, SECRET), STREAM, POLICY).verify(forged)
    assert e.value.reason is Rejection.BAD_PAYLOAD_TAG


def test_ghash_helper_matches_aes_gcm():
    """The attack's GF(2^128) arithmetic is GCM's: tag == GHASH_H(A, C) xor E_K(J0) for a real encryption."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, nonce, aad, plain = bytes(range(32)), bytes(12), b"header" * 7, bytes(range(200))
    out = AESGCM(key).encrypt(nonce, plain, aad)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    h = int.from_bytes(enc.update(bytes(16)), "big")
    mask = int.from_bytes(enc.update(nonce + b"\x00\x00\x00\x01"), "big")
    assert (ghash(h, aad, out[:-16]) ^ mask).to_bytes(16, "big") == out[-16:]


# ------------------------------------------------------------------------------------------- key retirement
def test_retired_key_frames_are_rejected_with_a_named_reason():
    old, new = SessionKey(1, SECRET), SessionKey(2, bytes(32))
    s_old = FrameSealer(old, STREAM, clock=lambda: 1000)
    s_new = FrameSealer(new, STREAM, clock=lambda: 1000, first_seq=100)  # the key rotated to, same stream
    ring = Keyring([old, new])
    v = FrameVerifier(ring, STREAM, POLICY)
    assert v.verify(s_old.seal(SRC.frame(0))).key_id == 1
    ring.retire(1)
    ring.retire(1)  # idempotent
    for i in (1, 2):  # later frames under the retired key, also from a sealer rebuilt from the secret
        for rec in (s_old.seal(SRC.frame(i)), FrameSealer(SessionKey(1, SECRET), STREAM, first_seq=10 + i,
                                                          clock=lambda: 1000).seal(SRC.frame(i))):
            with pytest.raises(FrameRejected) as e:
                v.verify(rec)
            assert e.value.reason is Rejection.RETIRED_KEY and "retired" in str(e.value)
    assert v.verify(s_new.seal(SRC.frame(3))).key_id == 2  # the other key still verifies
    assert v.stats.as_dict()["rejected"] == {"retired_key": 4}
    assert 1 not in ring and ring.is_retired(1) and len(ring) == 1
    with pytest.raises(ConfigError, match="retired"):  # a retired key id cannot come back
        ring.add(VerifyKey(1, SECRET))
    with pytest.raises(ConfigError, match="not in the keyring"):
        ring.retire(77)


# ----------------------------------------------------------------------------------------------- TCP reader
def _raw_sender(address, chunks: list[bytes], *, then: str = "close", hold_s: float = 0.0) -> threading.Thread:
    """Connect, send ``chunks``, then "close" (clean FIN), "reset" (RST) or "hold" the connection open."""
    def run() -> None:
        s = socket.create_connection(address)
        try:
            for c in chunks:
                s.sendall(c)
            if then == "hold":
                time.sleep(hold_s)
            elif then == "reset":
                time.sleep(0.1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            s.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _receiver(timeout_s: float = 5.0, **kw) -> SealedStreamReceiver:
    key = SessionKey(3, SECRET)
    return SealedStreamReceiver(FrameVerifier(key.verify_key(), STREAM, POLICY), timeout_s=timeout_s, **kw)


def test_length_prefix_allocates_nothing_before_data_arrives():
    """A prefix claiming the largest allowed record (~99.5 MB at the default 4320x7680 bound), then 1,000 bytes and
    silence: the receiver holds one read buffer (256 KiB), not the claimed length. With 3 MB sent before the
    connection ends, it holds what arrived plus one read buffer."""
    claimed = record_size(4320, 7680)
    assert claimed > 95_000_000
    for sent, then, error in ((1000, "hold", StreamStalled), (3_000_000, "close", StreamTruncated)):
        rx = _receiver(timeout_s=0.5)
        tx = _raw_sender(rx.address, [struct.pack("<I", claimed), b"\x00" * sent], then=then, hold_s=1.5)
        tracemalloc.start()
        try:
            with pytest.raises(error) as e:
                for _ in rx.frames():
                    pass
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        tx.join(5)
        rx.close()
        assert e.value.reason in (StreamFailure.STALLED, StreamFailure.TRUNCATED)
        assert peak < sent + 512 * 1024, (sent, peak)  # what arrived, not what was claimed
        print(f"claimed {claimed} B, sent {sent} B: peak {peak} B")


def test_stall_reset_truncation_and_clean_end_are_told_apart():
    key = SessionKey(3, SECRET)
    sealer = FrameSealer(key, STREAM)
    rec = sealer.seal(SRC.frame(0))
    prefix = struct.pack("<I", len(rec))
    cases = [  # (chunks, then, expected error or None for a clean end, words in the message)
        ([prefix + rec, prefix + rec[:50]], "hold", StreamStalled, ("stalled", "record")),
        ([prefix + rec], "hold", StreamStalled, ("stalled", "length prefix")),  # silent between records
        ([prefix + rec, prefix + rec[:50]], "reset", StreamReset, ("reset",)),
        ([prefix + rec, prefix + rec[:50]], "close", StreamTruncated, ("ended after 50",)),
        ([prefix + rec, prefix[:2]], "close", StreamTruncated, ("inside a length prefix",)),
        ([prefix + rec, struct.pack("<I", 10**6)], "close", RecordTooLarge, ("exceeds",)),
        ([prefix + rec], "close", None, ()),
    ]
    for chunks, then, error, words in cases:
        rx = _receiver(timeout_s=0.4, max_record_bytes=record_size(H, W) + 1000)
        tx = _raw_sender(rx.address, chunks, then=then, hold_s=1.0)
        got = []
        if error is None:
            log = rx.receive_all()
            assert log.ended_by is None and len(log.accepted) == 1  # a clean end: no error
        else:
            with pytest.raises(error) as e:
                for f in rx.frames():
                    got.append(f.seq)
            assert got == [0], then  # the complete record before the failure was delivered
            assert isinstance(e.value, SourceError) and "\n" not in str(e.value)
            assert all(w in str(e.value) for w in words), (str(e.value), words)
            assert e.value.reason is error.reason
        tx.join(5)
        rx.close()
    rx = _receiver(timeout_s=0.2)
    with pytest.raises(StreamStalled, match="no sender connected"):
        list(rx.frames())
    rx.close()
    with pytest.raises(SecureStreamError, match="cannot connect"):
        SealedStreamSender(sealer, *rx.address, timeout_s=1)


# ---------------------------------------------------------------------------------------- capture process
SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1)


def _kill_once(i: int) -> tuple[str, str, int]:
    """Start a capture process with an endless source, kill it at point ``i % 4`` (before HELLO, right after it,
    after 1 or 4 frames) with SIGTERM/SIGKILL/SIGUSR1; return (expected signal, outcome, frames received)."""
    sig = SIGNALS[i % 3]
    where = i % 4
    handle = start_capture(SyntheticFrames(24, 32, 10**9, seed=i), CaptureConfig(n_slots=2))
    received = 0
    try:
        if where == 0:
            os.kill(handle.pid, sig)
        try:
            consumer = SecureConsumer(handle.sock, POLICY, timeout_s=20, process=handle.process)
            if where >= 1:
                for _ in range({1: 0, 2: 1, 3: 4}[where]):
                    assert consumer.receive() is not None
                    received += 1
                os.kill(handle.pid, sig)
            while True:
                if consumer.receive() is None:
                    return sig.name, "clean end", received
                received += 1
        except CaptureProcessDied as exc:
            assert exc.reason is StreamFailure.CAPTURE_DIED and isinstance(exc, SourceError)
            if where >= 1:
                with pytest.raises(CaptureProcessDied):  # and it stays an error
                    consumer.receive()
            return sig.name, f"{exc.signal_name}|{exc}", received
        except Exception as exc:  # noqa: BLE001 - anything else is a failure of the test
            return sig.name, f"{type(exc).__name__}: {exc}", received
    finally:
        handle.stop(timeout=5)


def test_killing_the_capture_process_is_a_named_error_never_a_clean_end():
    """24 kills (SIGTERM, SIGKILL, SIGUSR1; before HELLO, right after it, mid-stream): every one is a
    CaptureProcessDied naming the signal, none a clean end and none a raw ConnectionResetError."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(_kill_once, range(24)))
    for expected, outcome, _ in results:
        name, _, message = outcome.partition("|")
        assert name == expected, outcome
        assert f"exited with signal {expected}" in message and "without END" in message, outcome
    assert time.perf_counter() - t0 < 120


def test_clean_end_is_explicit_and_a_silent_hang_up_is_not_one():
    with SecureCapture(SyntheticFrames(24, 32, 3), CaptureConfig(n_slots=2), POLICY) as cam:
        assert [f.seq for f in cam.frames()] == [0, 1, 2]
        assert cam.receive() is None and cam.ended  # END was received; stays ended
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()  # a capture side that hangs up without a word
    with pytest.raises(CaptureProcessDied, match="closed its control socket before its HELLO without END"):
        SecureConsumer(ours, POLICY, timeout_s=2)
    ours.close()


def test_capture_source_failing_mid_stream_is_reported_not_reset():
    """The source fails after 3 frames (the 4th is not a frame): every time the consumer gets CaptureFailed with
    the capture side's message -- not a raw ConnectionResetError, not a clean end."""
    good = tuple(SRC.frame(i) for i in range(3))
    for _ in range(6):
        with SecureCapture(ArrayFrames(good + ("not a frame",)), CaptureConfig(n_slots=2), POLICY) as cam:
            seqs = []
            with pytest.raises(CaptureFailed, match="after 3 frame.*SealError") as e:
                for f in cam.frames():
                    seqs.append(f.seq)
            assert seqs == [0, 1, 2] and e.value.reason is StreamFailure.CAPTURE_FAILED
            assert "\n" not in str(e.value)


def test_capture_process_slower_than_the_timeout_before_hello():
    slow = FrameSourceAdapter(functools.partial(time.sleep, 60))  # the source takes 60 s to open
    t0 = time.perf_counter()
    with pytest.raises(CaptureStartTimeout, match="no HELLO within 0.5 s") as e, \
            SecureCapture(slow, CaptureConfig(), POLICY, timeout_s=30, start_timeout_s=0.5):
        pass
    assert e.value.reason is StreamFailure.HELLO_TIMEOUT and isinstance(e.value, SourceError)
    assert time.perf_counter() - t0 < 10  # the stuck capture process was stopped, not waited for


# --------------------------------------------------------------------------------------- testbed live --secure
def test_live_secure_on_a_stream_that_dies_exits_2_with_one_line(tmp_path):
    from mjpeg_stream import mjpeg_stream
    from test_experiment import TINY, register_tiny
    from test_live import N_FRAMES, _frames

    from pipelines.main import main

    register_tiny()
    err = io.StringIO()
    with mjpeg_stream(_frames, path="live.mjpg") as url, contextlib.redirect_stderr(err):
        rc = main(["live", url, "--secure", "--model", TINY, "--out", str(tmp_path / "o"), "--max-frames",
                   str(N_FRAMES + 5), "--width", "160", "--height", "120"])
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1, err.getvalue()
    assert lines[0].startswith("testbed live: error: capture process failed after")
    assert f"stopped delivering frames after {N_FRAMES}" in lines[0] and "Traceback" not in err.getvalue()
    assert not (tmp_path / "o" / "annotated.mp4").exists()
