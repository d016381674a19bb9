"""The in-path tamperer: an attacker between the camera and the model.

It rewrites the frame stream according to a :class:`TamperPlan` — add a digital adversarial perturbation from a
pluggable ``perturb(frame_bchw_float) -> frame_bchw_float`` (e.g. PGD from ``physical.attacks``), drop, replay,
reorder, inject — on either of two channels:

* an unprotected channel of raw uint8 HxWx3 frames (:meth:`Tamperer.tamper_frames`): the attacker changes pixels;
* the sealed channel of records (:meth:`Tamperer.tamper_records`): the attacker cannot read the encrypted payload,
  so we grant it the strongest position — it *knows* the clean frame (e.g. it films the same scene) and uses the
  malleability of GCM's counter mode to XOR ``clean ^ adversarial`` into the ciphertext, so that decryption without
  the tag check would yield exactly the adversarial frame (:func:`ctr_substitute`). Injected records are forged
  with full knowledge of the format (stream id, key id, commitment copied from observed headers) but a key of the
  attacker's own.

Record-level tamper helpers (:func:`flip_bit`, :func:`rewrite_field`, :func:`truncate`, :func:`pad`,
:func:`set_shape`, :func:`forge_record`) are used by the threat-matrix tests, the fuzzer and the CLI.
:func:`run_tamper_experiment` runs the whole experiment and counts acceptances, rejections by reason and top-1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar

import numpy as np

from camera.secure.frames import (
    HEADER_FIELDS,
    HEADER_SIZE,
    HEADER_STRUCT,
    HEADER_TAG_SIZE,
    FrameHeader,
    FrameRejected,
    FrameSealer,
    FrameVerifier,
    SessionKey,
    VerifyPolicy,
    quantize_frame,
)
from testbed.errors import ConfigError

T = TypeVar("T")
Perturb = Callable[[Any], Any]  # float BCHW RGB tensor in [0, 1] -> same shape


# ---------------------------------------------------------------------------------------- record-level tampering
def flip_bit(record: bytes, bit: int) -> bytes:
    """The record with bit ``bit`` (counted from the start of the record) inverted."""
    if not 0 <= bit < 8 * len(record):
        raise ConfigError(f"bit {bit} outside a record of {len(record)} bytes")
    b = bytearray(record)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def payload_offset() -> int:
    """Offset of the ciphertext (pixel bytes) inside a record."""
    return HEADER_SIZE + HEADER_TAG_SIZE


def rewrite_field(record: bytes, name: str, value: int | bytes) -> bytes:
    """The record with one header field replaced (the header tag is left as it was)."""
    if name not in HEADER_FIELDS:
        raise ConfigError(f"unknown header field {name!r}; fields: {', '.join(HEADER_FIELDS)}")
    off, size = HEADER_FIELDS[name]
    raw = value if isinstance(value, bytes) else int(value).to_bytes(size, "little")
    if len(raw) != size:
        raise ConfigError(f"header field {name} is {size} bytes, got {len(raw)}")
    return record[:off] + raw + record[off + size:]


def set_shape(record: bytes, height: int, width: int, *, fix_length_field: bool = True) -> bytes:
    """The record claiming another shape (and, by default, a consistent payload-length field)."""
    r = rewrite_field(record, "height", height)
    r = rewrite_field(r, "width", width)
    if fix_length_field:
        r = rewrite_field(r, "payload_len", (height * width * 3) & 0xFFFFFFFF)
    return r


def truncate(record: bytes, n_bytes: int) -> bytes:
    """The record without its last ``n_bytes`` bytes."""
    return record[: max(0, len(record) - n_bytes)]


def pad(record: bytes, n_bytes: int, fill: bytes = b"\x00") -> bytes:
    """The record with ``n_bytes`` extra bytes appended."""
    return record + fill * n_bytes


def read_header(record: bytes) -> FrameHeader:
    """The header fields of a record, without any check (attacker's view; the format is public)."""
    f = HEADER_STRUCT.unpack_from(record, 0)
    return FrameHeader(*f[5:15], f[1], f[2], f[3], f[4])


def ctr_substitute(record: bytes, known_plain: np.ndarray, new_plain: np.ndarray) -> bytes:
    """Known-plaintext substitution on the ciphertext: XOR ``known ^ new`` into the payload.

    AES-GCM encrypts with a counter-mode keystream, so without the tag check the result would decrypt to exactly
    ``new_plain``; the tag is left unchanged (the attacker cannot recompute it without the key).
    """
    a = np.ascontiguousarray(known_plain, dtype=np.uint8).reshape(-1)
    b = np.ascontiguousarray(new_plain, dtype=np.uint8).reshape(-1)
    start = payload_offset()
    n = len(record) - start - 16
    if a.size != n or b.size != n:
        raise ConfigError(f"plaintexts of {a.size}/{b.size} bytes do not match the record's {n}-byte payload")
    ct = np.frombuffer(record, dtype=np.uint8, count=n, offset=start) ^ a ^ b
    return record[:start] + ct.tobytes() + record[start + n:]


def forge_record(template: bytes, frame: np.ndarray, *, seq: int | None = None, capture_ns: int | None = None,
                 key: SessionKey | None = None) -> bytes:
    """A record forged by someone who knows the format but not the key: stream id, key id and key commitment are
    copied from an observed ``template`` record, everything is sealed correctly — under the attacker's own key."""
    h = read_header(template)
    attacker = key or SessionKey.generate(key_id=h.key_id)
    if attacker.key_id != h.key_id:
        attacker = SessionKey(h.key_id, attacker.secret)
    # A sealer under the attacker's key, then patch the public commitment so only the tags can tell.
    sealer = FrameSealer(attacker, h.stream_id, first_seq=h.seq + 1 if seq is None else seq)
    rec = sealer.seal(np.ascontiguousarray(frame, dtype=np.uint8),
                      capture_ns=h.capture_ns if capture_ns is None else capture_ns)
    rec = rewrite_field(rec, "key_commit", h.key_commit)
    # Re-tag the patched header with the attacker's header key (a correct-looking but wrong tag).
    header = rec[:HEADER_SIZE]
    return header + attacker.header_tag(header) + rec[HEADER_SIZE + HEADER_TAG_SIZE:]


# ------------------------------------------------------------------------------- nonce reuse: the forbidden attack
_GCM_R = 0xE1 << 120


def _gf_mul(x: int, y: int) -> int:
    """Product in GCM's GF(2^128) (NIST SP 800-38D, algorithm 1; blocks as big-endian 128-bit integers)."""
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _GCM_R if v & 1 else v >> 1
    return z


def _gf_pow(x: int, e: int) -> int:
    r = 1 << 127  # the field's one
    while e:
        if e & 1:
            r = _gf_mul(r, x)
        x = _gf_mul(x, x)
        e >>= 1
    return r


def _blocks(data: bytes) -> list[int]:
    data = data + b"\x00" * (-len(data) % 16)
    return [int.from_bytes(data[i:i + 16], "big") for i in range(0, len(data), 16)]


def ghash(h: int, aad: bytes, ciphertext: bytes) -> int:
    """GHASH_H(A, C) as GCM computes it (the tag is GHASH xor E_K(J0))."""
    y = 0
    lengths = ((8 * len(aad)) << 64) | (8 * len(ciphertext))
    for b in _blocks(aad) + _blocks(ciphertext) + [lengths]:
        y = _gf_mul(y ^ b, h)
    return y


def nonce_reuse_forgery(record_a: bytes, plain_a: np.ndarray, record_b: bytes, new_plain: np.ndarray) -> bytes:
    """Forge a record from two records sealed under the same GCM key, nonce and header (Joux's "forbidden attack",
    in its simplest instance).

    When the frames of the two records differ only inside the last 16-byte block of the payload, the tag difference
    is ``(C_a ^ C_b)[last block] * H^2`` in GF(2^128): the attacker solves for the hash key H (a square root is
    x^(2^127)), recovers the tag mask ``E_K(J0) = T_a ^ GHASH_H(A, C_a)``, XORs ``plain_a ^ new_plain`` into the
    ciphertext (counter mode) and computes a valid tag for it. The result keeps ``record_a``'s header and header
    tag. Against the version-1 key API (a nonce counter per ``SessionKey`` object: two objects from one stored
    secret restart at 0) this forgery verified. With per-sealer keys the two records never share a GCM key, and
    the forged tag is wrong: ``bad_payload_tag``.
    """
    start = payload_offset()
    ha, hb = read_header(record_a), read_header(record_b)
    if len(record_a) != len(record_b) or ha.nonce != hb.nonce:
        raise ConfigError("the nonce-reuse forgery needs two records of equal length under the same nonce")
    body_a, tag_a = record_a[start:-16], int.from_bytes(record_a[-16:], "big")
    body_b, tag_b = record_b[start:-16], int.from_bytes(record_b[-16:], "big")
    blocks_a, blocks_b = _blocks(body_a), _blocks(body_b)
    if blocks_a[-1] == blocks_b[-1]:
        raise ConfigError("this instance of the attack needs payloads whose last 16-byte blocks differ")
    # (If the two ciphertexts also differ before their last block, the records were not sealed under one key with
    # plaintexts differing only at the end: the attacker's H is then wrong and so is the forged tag.)
    h_squared = _gf_mul(tag_a ^ tag_b, _gf_pow(blocks_a[-1] ^ blocks_b[-1], (1 << 128) - 2))
    h = _gf_pow(h_squared, 1 << 127)
    aad = record_a[:HEADER_SIZE]
    mask = tag_a ^ ghash(h, aad, body_a)
    a = np.ascontiguousarray(plain_a, dtype=np.uint8).reshape(-1)
    b = np.ascontiguousarray(new_plain, dtype=np.uint8).reshape(-1)
    if a.size != len(body_a) or b.size != len(body_a):
        raise ConfigError(f"plaintexts of {a.size}/{b.size} bytes do not match the {len(body_a)}-byte payload")
    forged_body = (np.frombuffer(body_a, np.uint8) ^ a ^ b).tobytes()
    tag = (ghash(h, aad, forged_body) ^ mask).to_bytes(16, "big")
    return record_a[:start] + forged_body + tag


# ---------------------------------------------------------------------------------------------- stream-level plan
@dataclass(frozen=True)
class TamperPlan:
    """What the in-path attacker does, by index in the original stream.

    ``perturb``: "all", "none", or a tuple of indices to perturb. ``drop``: indices never delivered.
    ``replay``: indices delivered twice (the copy right after the original). ``reorder``: indices held back and
    delivered after the next item. ``inject_after``: indices after which a forged item is inserted.
    """

    perturb: str | tuple[int, ...] = "all"
    drop: tuple[int, ...] = ()
    replay: tuple[int, ...] = ()
    reorder: tuple[int, ...] = ()
    inject_after: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.perturb, str) and self.perturb not in ("all", "none"):
            raise ConfigError(f"TamperPlan.perturb must be 'all', 'none' or a tuple of indices, got {self.perturb!r}")
        for name in ("drop", "replay", "reorder", "inject_after") + (() if isinstance(self.perturb, str)
                                                                      else ("perturb",)):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not all(isinstance(i, int) and i >= 0 for i in v):
                raise ConfigError(f"TamperPlan.{name} must be a tuple of indices >= 0, got {v!r}")

    def perturbs(self, i: int) -> bool:
        if self.perturb == "all":
            return True
        if self.perturb == "none":
            return False
        return i in self.perturb  # type: ignore[operator]

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class Delivered(Generic[T]):
    """One item the consumer receives: its origin index in the clean stream (None if injected) and what was done."""

    item: T
    origin: int | None
    actions: tuple[str, ...] = ()

    @property
    def tampered(self) -> bool:
        return bool(self.actions)


class Tamperer:
    """An in-path attacker with a plan and an optional perturbation (foolbox-style: the plan is the object)."""

    def __init__(self, plan: TamperPlan = TamperPlan(), perturb: Perturb | None = None, *,
                 inject_frame: np.ndarray | None = None) -> None:
        if plan.perturb != "none" and perturb is None:
            plan = TamperPlan("none", plan.drop, plan.replay, plan.reorder, plan.inject_after)
        self.plan = plan
        self.perturb = perturb
        self.inject_frame = inject_frame

    def schedule(self, items: Iterable[T], modify: Callable[[int, T], tuple[T, bool]],
                 inject: Callable[[int, T], T]) -> list[Delivered[T]]:
        """Apply the plan to a stream. ``modify(i, item) -> (item', changed)``, ``inject(i, item_i) -> forged``."""
        out: list[Delivered[T]] = []
        held: Delivered[T] | None = None
        for i, item in enumerate(items):
            if i in self.plan.drop:
                continue
            acts: list[str] = []
            if self.plan.perturbs(i):
                item, changed = modify(i, item)
                if changed:
                    acts.append("perturb")
            group = [Delivered(item, i, tuple(acts))]
            if i in self.plan.replay:
                group.append(Delivered(item, i, tuple(acts) + ("replay",)))
            if i in self.plan.inject_after:
                group.append(Delivered(inject(i, item), None, ("inject",)))
            if held is not None:
                out.extend(group)
                out.append(held)
                held = None
            elif i in self.plan.reorder:
                first = group[0]
                held = Delivered(first.item, first.origin, first.actions + ("reorder",))
                out.extend(group[1:])
            else:
                out.extend(group)
        if held is not None:
            out.append(held)
        return out

    def _perturb_frame(self, frame: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.array(frame, copy=True)).permute(2, 0, 1)[None].float().div_(255.0)
        y = self.perturb(x)  # type: ignore[misc]
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            raise ConfigError(f"perturb must return a tensor of shape {tuple(x.shape)}, got "
                              f"{type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
        return quantize_frame(y.detach().to("cpu").float().clamp(0.0, 1.0))

    def _injected_frame(self, like: np.ndarray) -> np.ndarray:
        if self.inject_frame is not None:
            return quantize_frame(self.inject_frame)
        return np.full_like(like, 128)

    def tamper_frames(self, frames: Iterable[np.ndarray]) -> list[Delivered[np.ndarray]]:
        """The unprotected channel: raw uint8 HxWx3 frames."""
        def modify(i: int, f: np.ndarray) -> tuple[np.ndarray, bool]:
            g = self._perturb_frame(f)
            return g, not np.array_equal(f, g)

        return self.schedule(frames, modify, lambda i, f: self._injected_frame(f))

    def tamper_records(self, records: Iterable[bytes], plaintexts: Sequence[np.ndarray]) -> list[Delivered[bytes]]:
        """The sealed channel: records, with the clean plaintexts known to the attacker (strongest case)."""
        def modify(i: int, r: bytes) -> tuple[bytes, bool]:
            clean = plaintexts[i]
            adv = self._perturb_frame(clean)
            if np.array_equal(clean, adv):
                return r, False
            return ctr_substitute(r, clean, adv), True

        def inject(i: int, r: bytes) -> bytes:
            return forge_record(r, self._injected_frame(plaintexts[i]))

        return self.schedule(records, modify, inject)


# ---------------------------------------------------------------------------------------------- the experiment
@dataclass
class TamperExperimentResult:
    """Counts of one run. ``top1_accepted`` is over accepted frames with an origin label (injected ones excluded);
    ``clean_top1`` is the model on the clean frames with no attacker and no secure path (the reference)."""

    protected: bool
    n_frames: int
    delivered: int
    tampered_delivered: int
    accepted: int
    tampered_accepted: int
    rejected: dict[str, int]
    top1_correct: int
    top1_n: int
    clean_correct: int
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def top1_accepted(self) -> float:
        return self.top1_correct / self.top1_n if self.top1_n else float("nan")

    @property
    def clean_top1(self) -> float:
        return self.clean_correct / self.n_frames if self.n_frames else float("nan")

    @property
    def tampered_rejection_rate(self) -> float:
        t = self.tampered_delivered
        return (t - self.tampered_accepted) / t if t else float("nan")

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.update(top1_accepted=self.top1_accepted, clean_top1=self.clean_top1,
                 tampered_rejection_rate=self.tampered_rejection_rate)
        return d


def _classify(model: Callable[[Any], Any], frames: Sequence[np.ndarray], preprocess: Callable[[Any], Any] | None,
              device: Any) -> list[int]:
    import torch

    out: list[int] = []
    with torch.no_grad():
        for f in frames:
            x = torch.from_numpy(np.array(f, copy=True)).permute(2, 0, 1)[None].float().div_(255.0).to(device)
            if preprocess is not None:
                x = preprocess(x)
            out.append(int(model(x).argmax(-1)[0]))
    return out


def run_tamper_experiment(frames: Sequence[Any], labels: Sequence[int], model: Callable[[Any], Any],
                          perturb: Perturb | None, protected: bool, *, plan: TamperPlan = TamperPlan(),
                          policy: VerifyPolicy | None = None, preprocess: Callable[[Any], Any] | None = None,
                          device: Any = None) -> TamperExperimentResult:
    """Camera -> in-path tamperer -> (secure path if ``protected``) -> model; counts what the model got.

    ``frames``: uint8 HxWx3 RGB arrays or float (1x)3xHxW tensors in [0, 1] (quantized to uint8, the camera
    edge). ``model``: BCHW float -> logits. ``perturb``: float BCHW -> float BCHW (None: no perturbation).
    ``policy`` defaults to integrity checks only: no age bound (the perturbation is computed offline, which a
    real-time staleness bound would also catch) and no drop policy (under a strict drop policy every refused
    frame also costs the authentic frame after it). Pass ``VerifyPolicy(max_age_s=None)`` for strict drops.
    """
    if len(frames) != len(labels):
        raise ConfigError(f"{len(frames)} frames but {len(labels)} labels")
    if device is None:
        try:
            device = next(model.parameters()).device  # type: ignore[attr-defined]
        except (AttributeError, StopIteration, TypeError):
            device = "cpu"
    clean = [quantize_frame(f) for f in frames]
    labels = [int(v) for v in labels]
    clean_pred = _classify(model, clean, preprocess, device)
    clean_correct = sum(int(p == y) for p, y in zip(clean_pred, labels))
    tamperer = Tamperer(plan, perturb)
    rejected: dict[str, int] = {}
    accepted_frames: list[np.ndarray] = []
    accepted_items: list[Delivered[Any]] = []
    if not protected:
        delivered: list[Delivered[Any]] = tamperer.tamper_frames(clean)
        for d in delivered:
            accepted_frames.append(d.item)
            accepted_items.append(d)
    else:
        key = SessionKey.generate()
        sealer = FrameSealer(key)
        records = [sealer.seal(f) for f in clean]
        delivered = tamperer.tamper_records(records, clean)
        if policy is None:  # integrity only: no age bound, and a refused frame does not also cost the next one
            policy = VerifyPolicy(max_age_s=None, max_gap=2**31)
        verifier = FrameVerifier(key.verify_key(), sealer.stream_id, policy)
        for d in delivered:
            try:
                vf = verifier.verify(d.item)
            except FrameRejected as exc:
                rejected[exc.reason.value] = rejected.get(exc.reason.value, 0) + 1
                continue
            accepted_frames.append(vf.image)
            accepted_items.append(d)
    preds = _classify(model, accepted_frames, preprocess, device)
    labelled = [(p, labels[d.origin]) for p, d in zip(preds, accepted_items) if d.origin is not None]
    return TamperExperimentResult(
        protected=protected, n_frames=len(clean), delivered=len(delivered),
        tampered_delivered=sum(d.tampered for d in delivered), accepted=len(accepted_items),
        tampered_accepted=sum(d.tampered for d in accepted_items), rejected=rejected,
        top1_correct=sum(int(p == y) for p, y in labelled), top1_n=len(labelled), clean_correct=clean_correct,
        plan=tamperer.plan.to_dict())


__all__ = [
    "Delivered",
    "TamperExperimentResult",
    "TamperPlan",
    "Tamperer",
    "ctr_substitute",
    "flip_bit",
    "forge_record",
    "ghash",
    "nonce_reuse_forgery",
    "pad",
    "payload_offset",
    "read_header",
    "rewrite_field",
    "run_tamper_experiment",
    "set_shape",
    "truncate",
]
