"""Sealed frame records: the threat matrix (in-process and TCP parts), nonce policy, verification order."""
from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from camera.secure.capture import SyntheticFrames
from camera.secure.frames import (
    HEADER_SIZE,
    MAX_NONCE_COUNTER,
    OVERHEAD,
    FrameRejected,
    FrameSealer,
    FrameVerifier,
    Keyring,
    NonceExhausted,
    Rejection,
    SealError,
    SessionKey,
    VerifyKey,
    VerifyPolicy,
    parse_header,
    verify_stream,
)
from camera.secure.network import SealedStreamReceiver, SealedStreamSender, TamperProxy
from camera.secure.tamper import (
    TamperPlan,
    Tamperer,
    ctr_substitute,
    flip_bit,
    forge_record,
    pad,
    payload_offset,
    read_header,
    rewrite_field,
    set_shape,
    truncate,
)

H, W = 24, 32
SRC = SyntheticFrames(H, W, 8, seed=3)


class FakeClock:
    def __init__(self, t: int = 10**12) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


@pytest.fixture
def setup():
    clock = FakeClock()
    key = SessionKey.generate(key_id=7)
    sealer = FrameSealer(key, clock=clock)
    records = [sealer.seal(SRC.frame(i)) for i in range(6)]

    def verifier(policy: VerifyPolicy = VerifyPolicy(max_age_s=0.5), keys=None, stream=None) -> FrameVerifier:
        return FrameVerifier(keys or key.verify_key(), stream or sealer.stream_id, policy, clock=clock)

    return key, sealer, records, verifier, clock


def reasons_and_accepted(v: FrameVerifier, records) -> tuple[list[Rejection], list[int]]:
    out = verify_stream(v, records)
    return out.reasons, [f.seq for f in out.accepted]


def test_round_trip_is_exact_and_private(setup):
    key, sealer, records, verifier, _ = setup
    v = verifier()
    out = verify_stream(v, records)
    assert out.rejected == [] and [f.seq for f in out.accepted] == list(range(6))
    for i, f in enumerate(out.accepted):
        assert np.array_equal(f.image, SRC.frame(i)) and f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
        assert not f.image.flags.writeable and f.key_id == 7 and f.stream_id == sealer.stream_id
    t = out.accepted[0].to_tensor()
    assert tuple(t.shape) == (1, 3, H, W) and float(t.max()) <= 1.0
    assert abs(float(t[0, 0, 0, 0]) * 255 - SRC.frame(0)[0, 0, 0]) < 1e-3
    assert len(records[0]) == OVERHEAD + H * W * 3
    # the pixels are encrypted: the clean frame does not appear in the record
    assert SRC.frame(0).tobytes()[:64] not in records[0]
    assert v.stats.accepted == 6


# ------------------------------------------------------------------------------------------- the threat matrix
def test_flipped_pixel_bit(setup):
    *_, records, verifier, _ = setup
    for bit in (8 * payload_offset(), 8 * payload_offset() + 12345, 8 * (len(records[1]) - 17)):
        with pytest.raises(FrameRejected) as e:
            verifier().verify(flip_bit(records[0], bit))
        assert e.value.reason is Rejection.BAD_PAYLOAD_TAG


@pytest.mark.parametrize("field,value", [("seq", 5), ("capture_ns", 1), ("nonce", b"\x01" * 12)])
def test_rewritten_header_field(setup, field, value):
    *_, records, verifier, _ = setup
    with pytest.raises(FrameRejected) as e:
        verifier().verify(rewrite_field(records[0], field, value))
    assert e.value.reason is Rejection.BAD_HEADER_TAG


def test_tag_bits_themselves(setup):
    *_, records, verifier, _ = setup
    with pytest.raises(FrameRejected) as e:  # a flipped bit in the header tag
        verifier().verify(flip_bit(records[0], 8 * HEADER_SIZE + 3))
    assert e.value.reason is Rejection.BAD_HEADER_TAG
    with pytest.raises(FrameRejected) as e:  # a flipped bit in the GCM tag
        verifier().verify(flip_bit(records[0], 8 * len(records[0]) - 1))
    assert e.value.reason is Rejection.BAD_PAYLOAD_TAG


def test_replay(setup):
    *_, records, verifier, _ = setup
    assert reasons_and_accepted(verifier(), [records[0], records[1], records[1], records[0]]) == (
        [Rejection.REPLAY, Rejection.REPLAY], [0, 1])


def test_reorder(setup):
    *_, records, verifier, _ = setup
    # strict drop policy: the early frame shows a gap, the late one is a reorder; neither is accepted
    assert reasons_and_accepted(verifier(), [records[0], records[2], records[1], records[3]]) == (
        [Rejection.GAP, Rejection.REORDER], [0, 3])
    # with one missing frame tolerated the early frame passes, the late one is still refused
    assert reasons_and_accepted(verifier(VerifyPolicy(max_age_s=0.5, max_gap=1)),
                                [records[0], records[2], records[1]]) == ([Rejection.REORDER], [0, 2])


def test_drop_gap_policy(setup):
    *_, records, verifier, _ = setup
    assert reasons_and_accepted(verifier(), [records[0], records[3], records[4]]) == ([Rejection.GAP], [0, 4])
    assert reasons_and_accepted(verifier(), [records[2]]) == ([Rejection.GAP], [])  # stream must start at 0
    assert reasons_and_accepted(verifier(VerifyPolicy(max_age_s=0.5, max_gap=2)),
                                [records[0], records[3]]) == ([], [0, 3])
    assert reasons_and_accepted(verifier(VerifyPolicy(max_age_s=0.5, first_seq=None)), [records[2]]) == ([], [2])


INJECT_CODE = r"""
import sys
import numpy as np
from camera.secure.tamper import forge_record, read_header
template = sys.stdin.buffer.read()
h = read_header(template)
frame = np.full((h.height, h.width, 3), 200, np.uint8)
sys.stdout.buffer.write(forge_record(template, frame))
"""


def test_injected_by_another_process(setup):
    *_, records, verifier, _ = setup
    out = subprocess.run([sys.executable, "-c", INJECT_CODE], input=records[0], capture_output=True, timeout=60,
                         check=True).stdout
    forged_h, real_h = read_header(out), read_header(records[1])
    # the forger got every public field right: same stream, key id, commitment, the next seq, same size
    assert (forged_h.stream_id, forged_h.key_id, forged_h.key_commit, forged_h.seq) == (
        real_h.stream_id, real_h.key_id, real_h.key_commit, 1) and len(out) == len(records[1])
    v = verifier()
    assert reasons_and_accepted(v, [records[0], out, records[1]]) == ([Rejection.BAD_HEADER_TAG], [0, 1])
    # a forged payload under an authentic header (header and header tag copied) fails the payload tag
    spliced = records[1][:HEADER_SIZE + 16] + out[HEADER_SIZE + 16:]
    with pytest.raises(FrameRejected) as e:
        verifier().verify(spliced)
    assert e.value.reason is Rejection.BAD_PAYLOAD_TAG


def test_wrong_key_unknown_key_and_keyring(setup):
    key, sealer, records, verifier, _ = setup
    wrong = VerifyKey(7, b"\x11" * 32)  # the right id, another secret
    with pytest.raises(FrameRejected) as e:
        verifier(keys=wrong).verify(records[0])
    assert e.value.reason is Rejection.WRONG_KEY
    with pytest.raises(FrameRejected) as e:
        verifier(keys=VerifyKey(8, key.secret)).verify(records[0])
    assert e.value.reason is Rejection.UNKNOWN_KEY
    with pytest.raises(FrameRejected) as e:  # a record naming a key id the consumer never got
        verifier().verify(rewrite_field(records[0], "key_id", 9))
    assert e.value.reason is Rejection.UNKNOWN_KEY
    ring = Keyring([VerifyKey(1, b"\x22" * 32), key])
    assert verifier(keys=ring).verify(records[0]).seq == 0
    with pytest.raises(Exception, match="already in the keyring"):
        ring.add(VerifyKey(1, b"\x33" * 32))


def test_spliced_from_another_stream(setup):
    key, sealer, records, verifier, clock = setup
    other = FrameSealer(key, clock=clock)  # same session key, another stream (and its own derived GCM key)
    foreign = other.seal(SRC.frame(1))
    assert reasons_and_accepted(verifier(), [records[0], foreign, records[1]]) == ([Rejection.WRONG_STREAM], [0, 1])
    # claiming our stream id in the foreign header breaks its tag
    with pytest.raises(FrameRejected) as e:
        verifier().verify(rewrite_field(foreign, "stream_id", sealer.stream_id))
    assert e.value.reason is Rejection.BAD_HEADER_TAG
    # each sealer derives its own GCM key from a random salt: the two streams never reuse a (key, nonce) pair
    pairs = [(read_header(r).key_salt, read_header(r).nonce) for r in records + [foreign]]
    assert len(set(pairs)) == len(pairs) and read_header(foreign).key_salt != sealer.key_salt


def test_truncated_and_oversized(setup):
    *_, records, verifier, _ = setup
    r = records[0]
    cases = {Rejection.TRUNCATED: [truncate(r, 1), truncate(r, len(r) - OVERHEAD + 1), b"", r[:HEADER_SIZE]],
             Rejection.OVERSIZED: [pad(r, 1), pad(r, 4096)]}
    for reason, recs in cases.items():
        for rec in recs:
            with pytest.raises(FrameRejected) as e:
                verifier().verify(rec)
            assert e.value.reason is reason, (len(rec), e.value)
    small = VerifyPolicy(max_height=H, max_width=W)
    with pytest.raises(FrameRejected) as e:  # above the absolute bound: refused before parsing
        verifier(small).verify(r + b"\x00" * (10**6))
    assert e.value.reason is Rejection.OVERSIZED and "bound" in e.value.detail


def test_absurd_shape_is_refused_before_allocation(setup):
    *_, records, verifier, _ = setup
    absurd = set_shape(records[0], 0xFFFFFFFF, 0xFFFFFFFF)
    tracemalloc.start()
    try:
        for rec in (absurd, set_shape(records[0], 70000, 3), set_shape(records[0], 0, W),
                    set_shape(truncate(records[0], 1000), 1 << 30, 1 << 30)):
            with pytest.raises(FrameRejected) as e:
                verifier().verify(rec)
            assert e.value.reason is Rejection.SHAPE_BOUND
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024  # a few small objects and the record copies, nothing shape-sized
    with pytest.raises(FrameRejected) as e:  # a length field that disagrees with the shape
        verifier().verify(rewrite_field(records[0], "payload_len", 12))
    assert e.value.reason is Rejection.BAD_HEADER


def test_stale_and_future(setup):
    key, sealer, records, verifier, clock = setup
    v = verifier(VerifyPolicy(max_age_s=0.5))
    assert v.verify(records[0]).seq == 0
    clock.t += int(0.6e9)
    with pytest.raises(FrameRejected) as e:
        v.verify(records[1])
    assert e.value.reason is Rejection.STALE
    with pytest.raises(FrameRejected) as e:  # the stale frame was consumed: sending it again is a replay
        v.verify(records[1])
    assert e.value.reason is Rejection.REPLAY
    fresh = sealer.seal(SRC.frame(6))  # the sealer's clock has moved on too; seq 6 follows 5 missing
    assert reasons_and_accepted(v, [fresh]) == ([Rejection.GAP], [])
    future = FrameSealer(key, sealer.stream_id, clock=lambda: clock.t + 10**9, first_seq=7).seal(SRC.frame(7))
    with pytest.raises(FrameRejected) as e:
        v.verify(future)
    assert e.value.reason is Rejection.FUTURE


def test_bad_header_fields(setup):
    *_, records, verifier, _ = setup
    for field, value in (("magic", b"XXXX"), ("version", 1), ("version", 3), ("flags", 1), ("channels", 4),
                         ("dtype", 2)):
        with pytest.raises(FrameRejected) as e:
            verifier().verify(rewrite_field(records[0], field, value))
        assert e.value.reason is Rejection.BAD_HEADER, field


def test_forgeries_do_not_move_the_stream_state(setup):
    key, sealer, records, verifier, _ = setup
    v = verifier()
    assert v.verify(records[0]).seq == 0
    huge = forge_record(records[0], SRC.frame(0), seq=10**15)
    with pytest.raises(FrameRejected):
        v.verify(huge)
    assert v.highest == 0 and v.verify(records[1]).seq == 1
    assert v.stats.as_dict() == {"accepted": 2, "rejected": {"bad_header_tag": 1}}


def test_verification_order_fails_closed(setup):
    """Several defects at once: the earliest check in the documented order names the reason."""
    key, sealer, records, verifier, _ = setup
    r = records[1]
    assert _reason(verifier(), set_shape(truncate(r, 5), 10**5, 1)) is Rejection.SHAPE_BOUND  # shape before length
    assert _reason(verifier(), rewrite_field(truncate(r, 5), "magic", b"ABCD")) is Rejection.BAD_HEADER
    unknown_and_flipped = flip_bit(rewrite_field(r, "key_id", 99), 8 * payload_offset())
    assert _reason(verifier(), unknown_and_flipped) is Rejection.UNKNOWN_KEY
    other_stream_flipped = flip_bit(rewrite_field(r, "stream_id", b"\x00" * 16), 8 * payload_offset())
    assert _reason(verifier(), other_stream_flipped) is Rejection.WRONG_STREAM
    # a replayed, tampered frame is a tag failure: sequence checks only see authentic frames
    v = verifier()
    v.verify(records[0])
    assert _reason(v, flip_bit(records[0], 8 * payload_offset())) is Rejection.BAD_PAYLOAD_TAG


def _reason(v: FrameVerifier, record: bytes) -> Rejection:
    with pytest.raises(FrameRejected) as e:
        v.verify(record)
    return e.value.reason


def test_ctr_malleability_is_caught_by_the_tag(setup):
    """The attacker who knows the clean frame can make the ciphertext decrypt to any frame it wants
    (counter mode is malleable) — only the tag stops it."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, sealer, records, verifier, _ = setup
    clean, adv = SRC.frame(0), SRC.frame(0).copy()
    adv[5:10, 5:10] = 0
    forged = ctr_substitute(records[0], clean, adv)
    # decrypt WITHOUT tag check: GCM's keystream for a 96-bit nonce starts at counter 2
    from camera.secure.frames import _hkdf, derive_payload_key

    k = derive_payload_key(_hkdf(key.secret, b"payload-master", 32), read_header(forged).key_salt)
    nonce = read_header(forged).nonce
    dec = Cipher(algorithms.AES(k), modes.CTR(nonce + b"\x00\x00\x00\x02")).decryptor()
    body = forged[payload_offset(): len(forged) - 16]
    assert np.array_equal(np.frombuffer(dec.update(body) + dec.finalize(), np.uint8).reshape(H, W, 3), adv)
    assert _reason(verifier(), forged) is Rejection.BAD_PAYLOAD_TAG


def test_nonce_counter_refuses_to_wrap():
    key = SessionKey(1, b"\x01" * 32)
    sealer = FrameSealer(key, first_counter=MAX_NONCE_COUNTER - 2)
    a, b = sealer.seal(SRC.frame(0)), sealer.seal(SRC.frame(1))
    assert read_header(a).nonce[4:] == (MAX_NONCE_COUNTER - 2).to_bytes(8, "little")
    assert read_header(b).nonce[4:] == (MAX_NONCE_COUNTER - 1).to_bytes(8, "little")
    with pytest.raises(NonceExhausted, match="exhausted"):
        sealer.seal(SRC.frame(2))
    with pytest.raises(NonceExhausted):  # and it stays refused
        sealer.next_nonce()
    assert sealer.next_seq == 2 and sealer.frames_left == 0
    assert FrameSealer(key).frames_left == MAX_NONCE_COUNTER  # a new sealer: a fresh key, a fresh counter


def test_sealer_input_validation_and_key_hygiene():
    key = SessionKey.generate()
    sealer = FrameSealer(key, max_height=100, max_width=100)
    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((101, 4, 3), np.uint8)):
        with pytest.raises(SealError):
            sealer.seal(bad)
    with pytest.raises(Exception, match="cannot seal"):
        FrameSealer(key.verify_key())  # type: ignore[arg-type]
    assert key.secret.hex() not in repr(key) and key.secret.hex()[:8] not in repr(key.verify_key())
    assert len(parse_header(sealer.seal(np.zeros((3, 5, 3), np.uint8))).nonce) == 12


# ------------------------------------------------------------------------------------------------ over TCP
def test_tcp_stream_round_trip_and_in_path_tamper():
    key = SessionKey.generate()
    sealer = FrameSealer(key)
    frames = [SRC.frame(i) for i in range(6)]

    def tamper(rec: bytes) -> list[bytes]:
        seq = read_header(rec).seq
        if seq == 1:
            return [flip_bit(rec, 8 * payload_offset() + 77)]
        if seq == 2:
            return [rec, rec]  # replay
        if seq == 4:
            return []  # drop
        return [rec]

    receiver = SealedStreamReceiver(FrameVerifier(key.verify_key(), sealer.stream_id, VerifyPolicy(max_age_s=5)))
    proxy = TamperProxy(receiver.address, tamper)
    with SealedStreamSender(sealer, *proxy.address) as tx:
        for f in frames:
            tx.send(f)
    log = receiver.receive_all()
    proxy.join()
    receiver.close()
    # a refused frame is not consumed, so the authentic frame after it shows the gap (strict drop policy)
    assert [f.seq for f in log.accepted] == [0, 3]
    assert log.reasons == [Rejection.BAD_PAYLOAD_TAG, Rejection.GAP, Rejection.REPLAY, Rejection.GAP]
    assert all(np.array_equal(f.image, frames[f.seq]) for f in log.accepted)


def test_tcp_length_prefix_bound_and_truncation():
    import socket
    import struct

    from camera.secure.errors import StreamFailure

    key = SessionKey.generate()
    sealer = FrameSealer(key)
    policy = VerifyPolicy(max_height=H, max_width=W, max_age_s=5)
    for payload, reason in ((struct.pack("<I", 0xFFFFFFF0), StreamFailure.OVERSIZED),
                            (struct.pack("<I", 2000) + b"\x00" * 100, StreamFailure.TRUNCATED)):
        rx = SealedStreamReceiver(FrameVerifier(key.verify_key(), sealer.stream_id, policy))
        with socket.create_connection(rx.address) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            log = rx.receive_all()
        rx.close()
        assert log.accepted == [] and log.ended_by is not None and log.ended_by.reason is reason


# ---------------------------------------------------------------------------------------- the tamper experiment
def test_tamper_plan_schedule():
    t = Tamperer(TamperPlan(perturb="none", drop=(1,), replay=(2,), reorder=(3,), inject_after=(5,)))
    out = t.schedule(range(7), lambda i, x: (x, False), lambda i, x: -1)
    assert [d.item for d in out] == [0, 2, 2, 4, 3, 5, -1, 6]
    assert [d.actions for d in out][2:5] == [("replay",), (), ("reorder",)]
    assert out[6].origin is None and out[6].tampered


def test_run_tamper_experiment_on_a_tiny_model():
    import torch

    from camera.secure.tamper import run_tamper_experiment

    # A model that reads the mean of the red channel minus the mean of the blue one.
    class Tiny(torch.nn.Module):
        def forward(self, x):
            d = x[:, 0].mean((1, 2)) - x[:, 2].mean((1, 2))
            return torch.stack([d, -d], 1)

    gen = torch.Generator().manual_seed(0)
    frames, labels = [], []
    for i in range(8):
        x = torch.rand(1, 3, 16, 16, generator=gen) * 0.2
        x[:, 0 if i % 2 == 0 else 2] += 0.3
        frames.append(x)
        labels.append(i % 2)

    def perturb(x):  # push every frame towards the other class
        d = x[:, 0].mean() - x[:, 2].mean()
        y = x.clone()
        y[:, 2 if d > 0 else 0] += 0.5
        return y.clamp(0, 1)

    model = Tiny()
    plain = run_tamper_experiment(frames, labels, model, perturb, protected=False)
    assert (plain.clean_correct, plain.accepted, plain.tampered_accepted, plain.top1_correct) == (8, 8, 8, 0)
    sec = run_tamper_experiment(frames, labels, model, perturb, protected=True)
    assert (sec.accepted, sec.tampered_accepted, sec.rejected) == (0, 0, {"bad_payload_tag": 8})
    half = run_tamper_experiment(frames, labels, model, perturb, protected=True, plan=TamperPlan(perturb=(0, 2, 4, 6)))
    assert (half.accepted, half.tampered_accepted, half.top1_correct, half.top1_n) == (4, 0, 4, 4)
    assert half.rejected == {"bad_payload_tag": 4} and half.tampered_rejection_rate == 1.0
    clean = run_tamper_experiment(frames, labels, model, None, protected=True)
    assert clean.top1_accepted == clean.clean_top1 == 1.0 and clean.rejected == {}
    mixed = run_tamper_experiment(frames, labels, model, None, protected=True, policy=VerifyPolicy(max_age_s=None),
                                  plan=TamperPlan(perturb="none", drop=(2,), replay=(4,), reorder=(6,),
                                                  inject_after=(0,)))
    assert mixed.rejected == {"bad_header_tag": 1, "gap": 2, "replay": 1, "reorder": 1}
    assert mixed.tampered_accepted == 0


def test_threat_matrix_table_and_cli(capsys):
    from camera.secure.threats import run_threat_matrix
    from pipelines.main import main

    rows = run_threat_matrix(16, 16)
    assert len(rows) == 15 and all(r.passed for r in rows), [(r.name, r.got) for r in rows if not r.passed]
    assert len({r.name for r in rows}) == 15
    assert main(["secure", "matrix"]) == 0
    assert "15/15 cases rejected" in capsys.readouterr().out


def test_secure_benchmark_reports_rates():
    from camera.secure.benchmark import format_table, measure_throughput

    r = measure_throughput(24, 32, 5)
    assert min(r.plain_fps, r.seal_fps, r.verify_fps, r.secure_fps, r.to_tensor_fps) > 0
    assert "32x24" in format_table([r])
