"""Sealed frame records: format, AEAD sealing and fail-closed verification.

A record carries one uint8 HWC RGB frame (the camera edge) and is laid out as::

    header (100 bytes) | header tag (16) | ciphertext (H*W*3) | GCM tag (16)

Header fields (little-endian, ``HEADER_STRUCT``): magic ``SFR1``, version (2), flags (0), channels (3), dtype (1 =
uint8), stream id (16 bytes), key id (u32), key commitment (16 bytes), sealer salt (16 bytes), sequence number
(u64), monotonic capture time (ns, u64), height (u32), width (u32), payload length (u32), nonce (12 bytes).

Keys. A 256-bit session secret is expanded with HKDF-SHA256 into an HMAC-SHA256 header key, a 16-byte key
commitment written into every header, and a payload master key. The session secret is never used to encrypt:
every :class:`FrameSealer` draws a fresh random 128-bit *sealer salt* and derives its own AES-256-GCM key from the
payload master key and that salt (HKDF-SHA256, salt = sealer salt). The salt travels in every header (covered by
the header tag and by GCM as associated data), so the verifier derives the same key. The GCM nonce is a counter
(4 zero bytes || 64-bit counter) owned by that one sealer, over that sealer's own key; sealing is refused before
it would wrap. Two sealers built from the same stored secret therefore never share a GCM key (barring a 128-bit
salt collision), and a (key, nonce) pair can never repeat -- by construction, not by bookkeeping.

The payload is encrypted with the whole header as associated data. The header tag (HMAC, truncated to 16 bytes)
lets a forged header be refused after hashing 100 bytes instead of decrypting megabytes (no key derivation happens
for a header that fails it), and tells a rewritten header apart from a flipped pixel.

Verification order (fail closed, one named :class:`Rejection` per failure, nothing allocated from untrusted sizes
before the bound checks): length, header, shape bound, exact length, key id (retired / unknown) / key commitment /
stream id, header tag, payload tag; only then sequence (replay, reorder), capture time (stale, future) and gaps
(drop policy). The verifier's state is updated only by authentic frames.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.exceptions import InvalidTag

from testbed.errors import ConfigError, TestbedError

MAGIC = b"SFR1"
VERSION = 2  # version 1 (84-byte header, nonce counter per SessionKey object) is refused: BAD_HEADER
CHANNELS = 3
DTYPE_UINT8 = 1
HEADER_STRUCT = struct.Struct("<4sBBBB16sI16s16sQQIII12s")
HEADER_SIZE = HEADER_STRUCT.size  # 100
HEADER_TAG_SIZE = 16
GCM_TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + HEADER_TAG_SIZE + GCM_TAG_SIZE
SECRET_SIZE = 32
STREAM_ID_SIZE = 16
SALT_SIZE = 16  # the per-sealer random salt from which the sealer's own GCM key is derived
NONCE_PREFIX = b"\x00\x00\x00\x00"
MAX_NONCE_COUNTER = (1 << 64) - 1  # the counter value that must never be used (it would wrap next)

# Byte offsets of header fields (for tests and the tamperer).
HEADER_FIELDS: dict[str, tuple[int, int]] = {}
_off = 0
for _name, _size in (("magic", 4), ("version", 1), ("flags", 1), ("channels", 1), ("dtype", 1), ("stream_id", 16),
                     ("key_id", 4), ("key_commit", 16), ("key_salt", 16), ("seq", 8), ("capture_ns", 8), ("height", 4), ("width", 4),
                     ("payload_len", 4), ("nonce", 12)):
    HEADER_FIELDS[_name] = (_off, _size)
    _off += _size
assert _off == HEADER_SIZE


class Rejection(str, enum.Enum):
    """Why a record was refused, in verification order."""

    TRUNCATED = "truncated"  # shorter than the fixed header or than the declared payload
    OVERSIZED = "oversized"  # longer than the bound or than the declared payload
    BAD_HEADER = "bad_header"  # magic, version, flags, channels, dtype or length field invalid
    SHAPE_BOUND = "shape_bound"  # declared height/width outside the configured bound
    RETIRED_KEY = "retired_key"  # key id retired from the consumer's keyring (Keyring.retire)
    UNKNOWN_KEY = "unknown_key"  # key id not in the consumer's keyring
    WRONG_KEY = "wrong_key"  # key id known but the commitment differs: the consumer holds another key
    WRONG_STREAM = "wrong_stream"  # authentic-looking frame of another stream (splice)
    BAD_HEADER_TAG = "bad_header_tag"  # header rewritten or forged without the key
    BAD_PAYLOAD_TAG = "bad_payload_tag"  # pixels (ciphertext) modified, or forged
    REPLAY = "replay"  # sequence number already accepted
    REORDER = "reorder"  # older than the newest accepted frame but never accepted
    STALE = "stale"  # capture time older than the allowed age
    FUTURE = "future"  # capture time ahead of the consumer's clock
    GAP = "gap"  # frames missing before this one (drop policy)


class FrameRejected(TestbedError):
    """A record failed verification; ``reason`` names the check, ``detail`` the values."""

    def __init__(self, reason: Rejection, detail: str = "") -> None:
        self.reason = Rejection(reason)
        self.detail = detail
        super().__init__(f"frame rejected ({self.reason.value}): {detail}" if detail else
                         f"frame rejected ({self.reason.value})")

    def __reduce__(self):  # picklable across processes
        return (FrameRejected, (self.reason, self.detail))


class NonceExhausted(TestbedError):
    """The sealer's nonce counter would wrap: start a new sealer (it derives a fresh key) before sealing more."""


class SealError(TestbedError, ValueError):
    """A frame cannot be sealed (wrong dtype/shape, larger than the bound)."""


def _hkdf(secret: bytes, info: bytes, length: int, salt: bytes = b"testbed-secure-frames-v1") -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def derive_payload_key(payload_master: bytes, key_salt: bytes) -> bytes:
    """The AES-256-GCM key of one sealer: HKDF-SHA256 of the key's payload master key, salted with the sealer's
    random 128-bit salt. Distinct salts give independent keys, so sealers never share a (key, nonce) pair."""
    if len(key_salt) != SALT_SIZE:
        raise ConfigError(f"sealer salt must be {SALT_SIZE} bytes, got {len(key_salt)}")
    return _hkdf(payload_master, b"sealer-payload-aes-256-gcm", 32, salt=bytes(key_salt))


class VerifyKey:
    """The consumer's view of a session key: it verifies and decrypts, never seals (it has no nonce counter).

    It keeps the header key, the commitment and the payload master key (not the raw secret); the GCM key of each
    sealer is derived on demand from the sealer salt of an *authentic* header and cached (a few sealers per key).
    """

    _CACHE = 16  # derived sealer keys kept per key

    def __init__(self, key_id: int, secret: bytes) -> None:
        if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 <= key_id < 2**32:
            raise ConfigError(f"key_id must be an int in [0, 2**32), got {key_id!r}")
        if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_SIZE:
            raise ConfigError(f"session secret must be {SECRET_SIZE} bytes, got "
                              f"{len(secret) if isinstance(secret, (bytes, bytearray)) else type(secret).__name__}")
        self.key_id = key_id
        secret = bytes(secret)
        self._payload_master = _hkdf(secret, b"payload-master", 32)
        self._hkey = _hkdf(secret, b"header-hmac-sha256", 32)
        self.commitment = _hkdf(secret, b"key-commitment", 16)
        self._sealer_keys: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._cache_lock = threading.Lock()

    def header_tag(self, header: bytes) -> bytes:
        return hmac.digest(self._hkey, header, hashlib.sha256)[:HEADER_TAG_SIZE]

    def payload_aead(self, key_salt: bytes) -> AESGCM:
        """The AES-GCM object of the sealer with this salt (call only after the header tag verified)."""
        key_salt = bytes(key_salt)
        with self._cache_lock:
            aead = self._sealer_keys.get(key_salt)
            if aead is not None:
                self._sealer_keys.move_to_end(key_salt)
                return aead
        aead = AESGCM(derive_payload_key(self._payload_master, key_salt))
        with self._cache_lock:
            self._sealer_keys[key_salt] = aead
            while len(self._sealer_keys) > self._CACHE:
                self._sealer_keys.popitem(last=False)
        return aead

    def __repr__(self) -> str:  # never print key material
        return f"{type(self).__name__}(key_id={self.key_id}, commitment={self.commitment.hex()[:8]}...)"


class SessionKey(VerifyKey):
    """A session key that may seal: the secret and its key id. It holds no nonce state and never encrypts itself.

    Every :class:`FrameSealer` built from it derives its own GCM key from a fresh random salt, so building
    ``SessionKey(kid, secret)`` again from a stored secret -- or building many sealers from one key -- can never
    repeat a (key, nonce) pair.
    """

    def __init__(self, key_id: int, secret: bytes) -> None:
        super().__init__(key_id, secret)
        self._secret = bytes(secret)

    @classmethod
    def generate(cls, key_id: int | None = None) -> "SessionKey":
        """A fresh random 256-bit session key (key id random unless given)."""
        if key_id is None:
            key_id = int.from_bytes(os.urandom(4), "little")
        return cls(key_id, os.urandom(SECRET_SIZE))

    @property
    def secret(self) -> bytes:
        """The raw secret, for handing to the consumer over the capture socket only."""
        return self._secret

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.key_id, self._secret)


@dataclass(frozen=True)
class FrameHeader:
    """A parsed header. Fields are untrusted until the record has been verified."""

    stream_id: bytes
    key_id: int
    key_commit: bytes
    key_salt: bytes
    seq: int
    capture_ns: int
    height: int
    width: int
    payload_len: int
    nonce: bytes
    version: int = VERSION
    flags: int = 0
    channels: int = CHANNELS
    dtype: int = DTYPE_UINT8

    def pack(self) -> bytes:
        return HEADER_STRUCT.pack(MAGIC, self.version, self.flags, self.channels, self.dtype, self.stream_id,
                                  self.key_id, self.key_commit, self.key_salt, self.seq, self.capture_ns, self.height, self.width,
                                  self.payload_len, self.nonce)

    @property
    def record_size(self) -> int:
        return OVERHEAD + self.payload_len


def record_size(height: int, width: int) -> int:
    """Bytes of a sealed record for an HxWx3 frame."""
    return OVERHEAD + height * width * CHANNELS


@dataclass(frozen=True)
class VerifyPolicy:
    """Bounds and stream policy of a verifier.

    ``max_age_s``: frames captured longer ago are STALE (None: no age check). ``max_future_s``: allowed clock skew.
    ``max_gap``: how many missing frames may precede an accepted frame (0: any drop rejects the next frame).
    ``first_seq``: the sequence number the stream must start at (None: accept any start).
    ``replay_window``: how many recent sequence numbers are remembered to tell replay from reorder.
    """

    max_height: int = 4320
    max_width: int = 7680
    max_age_s: float | None = 1.0
    max_future_s: float = 0.05
    max_gap: int = 0
    first_seq: int | None = 0
    replay_window: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_height", "max_width", "replay_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"VerifyPolicy.{name} must be a positive int, got {v!r}")
        if self.max_height > 65535 or self.max_width > 65535:
            raise ConfigError(f"VerifyPolicy shape bound {self.max_height}x{self.max_width} exceeds 65535x65535")
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise ConfigError(f"VerifyPolicy.max_age_s must be > 0 or None, got {self.max_age_s!r}")
        if not self.max_future_s >= 0:
            raise ConfigError(f"VerifyPolicy.max_future_s must be >= 0, got {self.max_future_s!r}")
        if not isinstance(self.max_gap, int) or self.max_gap < 0:
            raise ConfigError(f"VerifyPolicy.max_gap must be an int >= 0, got {self.max_gap!r}")
        if self.first_seq is not None and (not isinstance(self.first_seq, int) or self.first_seq < 0):
            raise ConfigError(f"VerifyPolicy.first_seq must be an int >= 0 or None, got {self.first_seq!r}")

    @property
    def max_record_bytes(self) -> int:
        return record_size(self.max_height, self.max_width)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class FrameSealer:
    """Seals frames of one stream: assigns sequence numbers and capture times, encrypts and authenticates.

    Only the capture process holds one. On construction it draws a random 128-bit salt and derives its own GCM key
    from the session key; the nonce counter belongs to this sealer alone, over that key, so no other sealer -- even
    one built from the same stored secret with the same stream id -- can reuse a nonce under it.
    ``max_height``/``max_width`` refuse frames a consumer would refuse anyway. ``first_counter`` starts the nonce
    counter elsewhere than 0 (to test exhaustion; it cannot cause reuse: the key is this sealer's own).
    """

    def __init__(self, key: SessionKey, stream_id: bytes | None = None, *,
                 clock: Callable[[], int] = time.monotonic_ns, first_seq: int = 0,
                 max_height: int = 4320, max_width: int = 7680, first_counter: int = 0) -> None:
        if not isinstance(key, SessionKey):
            raise ConfigError(f"FrameSealer needs a SessionKey (a VerifyKey cannot seal), got {type(key).__name__}")
        if stream_id is None:
            stream_id = os.urandom(STREAM_ID_SIZE)
        if not isinstance(stream_id, bytes) or len(stream_id) != STREAM_ID_SIZE:
            raise ConfigError(f"stream_id must be {STREAM_ID_SIZE} bytes, got {stream_id!r}")
        if isinstance(first_counter, bool) or not isinstance(first_counter, int) \
                or not 0 <= first_counter <= MAX_NONCE_COUNTER:
            raise ConfigError(f"first_counter must be an int in [0, 2**64 - 1], got {first_counter!r}")
        self.key = key
        self.stream_id = stream_id
        self.clock = clock
        self.next_seq = first_seq
        self.max_height = max_height
        self.max_width = max_width
        self.key_salt = os.urandom(SALT_SIZE)
        self._aead = AESGCM(derive_payload_key(key._payload_master, self.key_salt))
        self._counter = first_counter
        self._lock = threading.Lock()

    @property
    def frames_left(self) -> int:
        """How many more frames this sealer may seal before its nonce counter is exhausted."""
        return MAX_NONCE_COUNTER - self._counter

    def next_nonce(self) -> bytes:
        """The next 96-bit nonce of this sealer; raises :class:`NonceExhausted` instead of ever wrapping."""
        with self._lock:
            if self._counter >= MAX_NONCE_COUNTER:
                raise NonceExhausted(
                    f"nonce counter of this sealer (key {self.key.key_id}) is exhausted (2**64 - 1 frames sealed); "
                    "start a new sealer or capture session: it derives a fresh key")
            n = self._counter
            self._counter += 1
        return NONCE_PREFIX + n.to_bytes(8, "little")

    def seal(self, frame: np.ndarray, *, capture_ns: int | None = None) -> bytes:
        """Seal one uint8 HxWx3 RGB frame into a record (bytes)."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise SealError(f"frames must be uint8 HxWx3 RGB numpy arrays, got "
                            f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}")
        h, w = int(frame.shape[0]), int(frame.shape[1])
        if not (1 <= h <= self.max_height and 1 <= w <= self.max_width):
            raise SealError(f"frame {h}x{w} outside the sealer's bound {self.max_height}x{self.max_width}")
        if self.next_seq >= 2**64:
            raise SealError("sequence number space of this stream is exhausted")
        frame = np.ascontiguousarray(frame)
        nonce = self.next_nonce()
        header = FrameHeader(self.stream_id, self.key.key_id, self.key.commitment, self.key_salt, self.next_seq,
                             self.clock() if capture_ns is None else int(capture_ns), h, w, h * w * CHANNELS,
                             nonce).pack()
        body = self._aead.encrypt(nonce, memoryview(frame).cast("B"), header)
        self.next_seq += 1
        return b"".join((header, self.key.header_tag(header), body))


def parse_header(record: bytes | bytearray | memoryview, policy: VerifyPolicy = VerifyPolicy()) -> FrameHeader:
    """The stateless checks 1-4 (length, header, shape bound, exact length); raises :class:`FrameRejected`.

    No allocation depends on the declared shape: the bound is checked on the integers first.
    """
    n = len(record)
    if n < OVERHEAD:
        raise FrameRejected(Rejection.TRUNCATED, f"record of {n} bytes is shorter than the {OVERHEAD}-byte minimum")
    if n > policy.max_record_bytes:
        raise FrameRejected(Rejection.OVERSIZED, f"record of {n} bytes exceeds the bound of "
                                                 f"{policy.max_record_bytes} bytes")
    (magic, version, flags, channels, dtype, stream_id, key_id, key_commit, key_salt, seq, capture_ns, height, width,
     payload_len, nonce) = HEADER_STRUCT.unpack_from(record, 0)
    if magic != MAGIC:
        raise FrameRejected(Rejection.BAD_HEADER, f"magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameRejected(Rejection.BAD_HEADER, f"version {version}, expected {VERSION}")
    if flags != 0:
        raise FrameRejected(Rejection.BAD_HEADER, f"flags {flags:#x}, expected 0")
    if channels != CHANNELS or dtype != DTYPE_UINT8:
        raise FrameRejected(Rejection.BAD_HEADER, f"channels={channels} dtype={dtype}, expected 3 and 1 (uint8)")
    if not (1 <= height <= policy.max_height and 1 <= width <= policy.max_width):
        raise FrameRejected(Rejection.SHAPE_BOUND, f"declared shape {height}x{width} outside the bound "
                                                   f"1..{policy.max_height} x 1..{policy.max_width}")
    if payload_len != height * width * CHANNELS:
        raise FrameRejected(Rejection.BAD_HEADER, f"payload length field {payload_len} != {height}*{width}*3")
    expected = OVERHEAD + payload_len
    if n < expected:
        raise FrameRejected(Rejection.TRUNCATED, f"record of {n} bytes, header declares {expected}")
    if n > expected:
        raise FrameRejected(Rejection.OVERSIZED, f"record of {n} bytes, header declares {expected}")
    return FrameHeader(stream_id, key_id, key_commit, key_salt, seq, capture_ns, height, width, payload_len, nonce,
                       version, flags, channels, dtype)


@dataclass(frozen=True)
class VerifiedFrame:
    """A verified frame: a private uint8 HxWx3 RGB copy (read-only) plus its authenticated metadata."""

    image: np.ndarray
    seq: int
    capture_ns: int
    stream_id: bytes
    key_id: int

    @property
    def timestamp(self) -> float:
        """Capture time in seconds on the monotonic clock."""
        return self.capture_ns / 1e9

    def to_tensor(self, device: Any = None):
        """The frame as a 1x3xHxW float32 RGB tensor in [0, 1] (the project's image convention)."""
        import torch

        return frame_to_tensor(self.image, device)


class Keyring:
    """Verify keys by key id (the consumer side). A key can be retired: its frames are then refused with
    ``RETIRED_KEY``, its key material is dropped, and its key id can never be added again."""

    def __init__(self, keys: Iterable[VerifyKey] = ()) -> None:
        self._keys: dict[int, VerifyKey] = {}
        self._retired: set[int] = set()
        for k in keys:
            self.add(k)

    def add(self, key: VerifyKey) -> None:
        if not isinstance(key, VerifyKey):
            raise ConfigError(f"a keyring holds VerifyKey objects, got {type(key).__name__}")
        if isinstance(key, SessionKey):  # keep only verification capability on the consumer side
            key = key.verify_key()
        if key.key_id in self._retired:
            raise ConfigError(f"key id {key.key_id} was retired from this keyring; a new key needs a new key id")
        if key.key_id in self._keys:
            raise ConfigError(f"key id {key.key_id} is already in the keyring")
        self._keys[key.key_id] = key

    def retire(self, key_id: int) -> None:
        """Retire a key: every later frame under it is refused (``RETIRED_KEY``), also by verifiers already running
        with this keyring."""
        if key_id in self._retired:
            return
        if key_id not in self._keys:
            raise ConfigError(f"key id {key_id} is not in the keyring; nothing to retire")
        del self._keys[key_id]
        self._retired.add(key_id)

    def is_retired(self, key_id: int) -> bool:
        return key_id in self._retired

    def get(self, key_id: int) -> VerifyKey | None:
        return self._keys.get(key_id)

    def __contains__(self, key_id: int) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class VerifierStats:
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": {r.value: c for r, c in sorted(self.rejected.items())}}


class FrameVerifier:
    """Verifies the records of one stream, in the fail-closed order; keeps sequence state for that stream."""

    def __init__(self, keys: Keyring | VerifyKey | Iterable[VerifyKey], stream_id: bytes,
                 policy: VerifyPolicy = VerifyPolicy(), *, clock: Callable[[], int] = time.monotonic_ns) -> None:
        if isinstance(keys, VerifyKey):
            keys = Keyring([keys])
        elif not isinstance(keys, Keyring):
            keys = Keyring(keys)
        if not isinstance(stream_id, bytes) or len(stream_id) != STREAM_ID_SIZE:
            raise ConfigError(f"stream_id must be {STREAM_ID_SIZE} bytes, got {stream_id!r}")
        self.keys = keys
        self.stream_id = stream_id
        self.policy = policy
        self.clock = clock
        self.highest: int | None = None
        self._accepted_recent: set[int] = set()
        self._recent_order: deque[int] = deque()
        self.stats = VerifierStats()

    def _remember(self, seq: int) -> None:
        self._accepted_recent.add(seq)
        self._recent_order.append(seq)
        while len(self._recent_order) > self.policy.replay_window:
            self._accepted_recent.discard(self._recent_order.popleft())

    def _reject(self, reason: Rejection, detail: str) -> FrameRejected:
        self.stats.rejected[reason] += 1
        return FrameRejected(reason, detail)

    def verify(self, record: bytes | bytearray | memoryview) -> VerifiedFrame:
        """Verify one record; returns a :class:`VerifiedFrame` or raises :class:`FrameRejected`."""
        if not isinstance(record, bytes):  # take a private, immutable snapshot: nothing can change it under us
            record = bytes(record)
        try:
            hdr = parse_header(record, self.policy)
        except FrameRejected as exc:
            self.stats.rejected[exc.reason] += 1
            raise
        key = self.keys.get(hdr.key_id)
        if key is None:
            if self.keys.is_retired(hdr.key_id):
                raise self._reject(Rejection.RETIRED_KEY, f"key id {hdr.key_id} was retired")
            raise self._reject(Rejection.UNKNOWN_KEY, f"key id {hdr.key_id} is not in the keyring")
        if not hmac.compare_digest(key.commitment, hdr.key_commit):
            raise self._reject(Rejection.WRONG_KEY, f"key id {hdr.key_id}: the frame's key commitment does not "
                                                    "match the consumer's key")
        if not hmac.compare_digest(hdr.stream_id, self.stream_id):
            raise self._reject(Rejection.WRONG_STREAM, f"stream {hdr.stream_id.hex()[:12]}..., expected "
                                                       f"{self.stream_id.hex()[:12]}...")
        if not hmac.compare_digest(key.header_tag(record[:HEADER_SIZE]),
                                   record[HEADER_SIZE:HEADER_SIZE + HEADER_TAG_SIZE]):
            raise self._reject(Rejection.BAD_HEADER_TAG, f"header tag mismatch (seq field {hdr.seq})")
        try:
            aead = key.payload_aead(hdr.key_salt)  # only now: the salt is authentic (header tag checked)
            plain = aead.decrypt(hdr.nonce, memoryview(record)[HEADER_SIZE + HEADER_TAG_SIZE:],
                                 memoryview(record)[:HEADER_SIZE])
        except InvalidTag:
            raise self._reject(Rejection.BAD_PAYLOAD_TAG, f"payload tag mismatch (seq {hdr.seq})") from None
        # Authentic from here on: stream policy.
        seq = hdr.seq
        if self.highest is not None and seq <= self.highest:
            if seq in self._accepted_recent:
                raise self._reject(Rejection.REPLAY, f"seq {seq} was already received")
            raise self._reject(Rejection.REORDER, f"seq {seq} arrived after seq {self.highest}")
        # Authentic and newer than anything seen: it is consumed (the stream resumes after it) even if the
        # time or drop policy refuses it below; a second copy of it is a replay.
        expected = self.policy.first_seq if self.highest is None else self.highest + 1
        self.highest = seq
        self._remember(seq)
        now = self.clock()
        if self.policy.max_age_s is not None and now - hdr.capture_ns > self.policy.max_age_s * 1e9:
            raise self._reject(Rejection.STALE, f"seq {seq} captured {(now - hdr.capture_ns) / 1e9:.3f} s ago, "
                                                f"limit {self.policy.max_age_s} s")
        if hdr.capture_ns - now > self.policy.max_future_s * 1e9:
            raise self._reject(Rejection.FUTURE, f"seq {seq} captured {(hdr.capture_ns - now) / 1e9:.3f} s in "
                                                 "the future")
        if expected is not None and seq - expected > self.policy.max_gap:
            raise self._reject(Rejection.GAP, f"seq {seq}: {seq - expected} frame(s) missing before it "
                                              f"(allowed {self.policy.max_gap})")
        self.stats.accepted += 1
        image = np.frombuffer(plain, dtype=np.uint8).reshape(hdr.height, hdr.width, CHANNELS)
        return VerifiedFrame(image, seq, hdr.capture_ns, hdr.stream_id, hdr.key_id)


def quantize_frame(x: Any) -> np.ndarray:
    """A frame as uint8 HxWx3 RGB: accepts such an array, or a float (1x)3xHxW tensor/array in [0, 1]."""
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        if x.ndim != 3 or x.shape[2] != 3:
            raise SealError(f"uint8 frames must be HxWx3 RGB, got shape {x.shape}")
        return np.ascontiguousarray(x)
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; never import it here (seconds)
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise SealError(f"expected one frame (1x3xHxW), got batch shape {x.shape}")
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3 or not np.issubdtype(x.dtype, np.floating):
        raise SealError(f"expected a float 3xHxW frame in [0, 1] or uint8 HxWx3, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise SealError("float frame values must be finite and lie in [0, 1]")
    return np.ascontiguousarray(np.rint(x.transpose(1, 2, 0) * 255.0).astype(np.uint8))


def frame_to_tensor(frame: np.ndarray, device: Any = None):
    """uint8 HxWx3 RGB -> 1x3xHxW float32 tensor in [0, 1]."""
    import torch

    chw = np.ascontiguousarray(np.asarray(frame, dtype=np.uint8).transpose(2, 0, 1))  # a private uint8 copy
    t = torch.from_numpy(chw)[None]
    if device is not None:
        t = t.to(device)  # move uint8 (4x fewer bytes), convert on the device
    return t.float().div_(255.0)


@dataclass
class StreamOutcome:
    """Result of verifying a sequence of records: accepted frames and rejections, in arrival order."""

    accepted: list[VerifiedFrame]
    rejected: list[FrameRejected]

    @property
    def reasons(self) -> list[Rejection]:
        return [r.reason for r in self.rejected]


def verify_stream(verifier: FrameVerifier, records: Iterable[bytes]) -> StreamOutcome:
    """Verify records in order with one verifier."""
    out = StreamOutcome([], [])
    for r in records:
        try:
            out.accepted.append(verifier.verify(r))
        except FrameRejected as exc:
            out.rejected.append(exc)
    return out


__all__ = [
    "MAGIC", "VERSION", "HEADER_SIZE", "HEADER_FIELDS", "OVERHEAD", "SALT_SIZE", "derive_payload_key", "Rejection", "FrameRejected", "NonceExhausted",
    "SealError", "VerifyKey", "SessionKey", "FrameHeader", "VerifyPolicy", "FrameSealer", "FrameVerifier",
    "Keyring", "VerifiedFrame", "VerifierStats", "parse_header", "record_size", "quantize_frame",
    "frame_to_tensor", "verify_stream", "StreamOutcome",
]
