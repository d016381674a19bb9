"""A shared frame ring that only the producer can write: a Linux ``memfd`` sealed after the producer maps it.

The producer creates the memfd, sizes it, maps it ``MAP_SHARED`` read/write, then adds the seals
``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL``. ``F_SEAL_WRITE`` cannot be used: the kernel
refuses it (EBUSY) while a shared writable mapping exists. ``F_SEAL_FUTURE_WRITE`` (Linux >= 5.1) is the seal made
for this case: the producer's existing mapping stays writable, while every later ``write()``, ``pwrite()``,
``fallocate(PUNCH_HOLE)``, ``ftruncate()``, shared writable ``mmap()`` and ``mprotect(PROT_WRITE)`` of a read-only
mapping fails, for every process (root included), whatever file descriptor it reopens. ``F_SEAL_SEAL`` freezes the
seal set. The consumer receives a separate ``O_RDONLY`` descriptor (reopened through ``/proc/self/fd``), checks the
seals and the size before it maps anything, and maps it read-only. After sealing, the producer closes its own
descriptor and keeps only its mapping, so no writable descriptor of the ring exists anywhere.

Layout: a 64-byte ring header (magic ``SRING001``, slot count, slot capacity), then ``n_slots`` slots of
``16 + capacity`` bytes: a generation counter (u64, odd while the producer writes), the record length (u64) and the
record bytes. The reader copies a slot out and re-reads the generation (a seqlock); a changed generation means the
producer reused the slot during the copy. Torn or rewritten data cannot be accepted anyway: every record is
authenticated after it has been copied.
"""
from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
from dataclasses import dataclass

from testbed.errors import ConfigError, TestbedError

F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)
REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL
RING_MAGIC = b"SRING001"
RING_HEADER = struct.Struct("<8sIIQ")  # magic, n_slots, capacity, total size
RING_HEADER_SIZE = 64
SLOT_HEADER = struct.Struct("<QQ")  # generation, length
SLOT_HEADER_SIZE = SLOT_HEADER.size
_ALIGN = 64


class RingBufferError(TestbedError):
    """The shared ring is unusable: not sealed, wrong size, or a slot cannot be read."""


class SlotOverwritten(RingBufferError):
    """The slot no longer holds the announced record (the producer reused it, or is writing it)."""


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Mapping:
    """A shared mapping made with libc ``mmap`` directly: unlike :class:`mmap.mmap` (before Python 3.13's
    ``trackfd=False``) it keeps no duplicate of the descriptor, so closing the fd leaves no fd to the ring."""

    def __init__(self, fd: int, size: int, writable: bool) -> None:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        addr = _libc.mmap(None, size, prot, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of the ring failed: {os.strerror(err)}")
        self._addr, self._size = addr, size
        view = memoryview((ctypes.c_ubyte * size).from_address(addr)).cast("B")
        self.view = view if writable else view.toreadonly()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.view.release()
            _libc.munmap(ctypes.c_void_p(self._addr), ctypes.c_size_t(self._size))


def _slot_stride(capacity: int) -> int:
    return (SLOT_HEADER_SIZE + capacity + _ALIGN - 1) // _ALIGN * _ALIGN


def ring_size(n_slots: int, capacity: int) -> int:
    return RING_HEADER_SIZE + n_slots * _slot_stride(capacity)


@dataclass(frozen=True)
class SlotRef:
    """Where a record was written: slot index, generation after the write, record length."""

    slot: int
    generation: int
    length: int


class SealedRing:
    """The producer side: creates, maps and seals the memfd ring; the only writer."""

    def __init__(self, n_slots: int, capacity: int, *, name: str = "testbed-secure-ring") -> None:
        if not isinstance(n_slots, int) or not 1 <= n_slots <= 1024:
            raise ConfigError(f"n_slots must be an int in [1, 1024], got {n_slots!r}")
        if not isinstance(capacity, int) or not 1 <= capacity <= 1 << 30:
            raise ConfigError(f"slot capacity must be an int in [1, 2**30] bytes, got {capacity!r}")
        self.n_slots = n_slots
        self.capacity = capacity
        self.size = ring_size(n_slots, capacity)
        self._stride = _slot_stride(capacity)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, self.size)
            self._map = _Mapping(fd, self.size, writable=True)
            self._mm = self._map.view
            RING_HEADER.pack_into(self._mm, 0, RING_MAGIC, n_slots, capacity, self.size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS)
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if seals & REQUIRED_SEALS != REQUIRED_SEALS:
                raise RingBufferError(f"kernel did not apply the seals: got {seals:#x}, need {REQUIRED_SEALS:#x}")
            self._ro_fd: int | None = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(fd)
            raise RingBufferError(f"cannot create a sealed memfd ring ({exc}); needs Linux >= 5.1 "
                               "(F_SEAL_FUTURE_WRITE)") from exc
        os.close(fd)  # from here on only the mapping is writable; no writable fd exists
        self._generations = [0] * n_slots

    @property
    def readonly_fd(self) -> int:
        """The O_RDONLY descriptor to hand to the consumer (SCM_RIGHTS)."""
        if self._ro_fd is None:
            raise RingBufferError("the read-only descriptor was already closed")
        return self._ro_fd

    def close_readonly_fd(self) -> None:
        """Close the producer's copy of the read-only descriptor (after it was sent)."""
        if self._ro_fd is not None:
            os.close(self._ro_fd)
            self._ro_fd = None

    def _slot_offset(self, slot: int) -> int:
        if not 0 <= slot < self.n_slots:
            raise ConfigError(f"slot {slot} outside [0, {self.n_slots})")
        return RING_HEADER_SIZE + slot * self._stride

    def write(self, slot: int, record: bytes) -> SlotRef:
        """Write one record into a slot (seqlock: odd generation while writing)."""
        n = len(record)
        if n > self.capacity:
            raise RingBufferError(f"record of {n} bytes does not fit a {self.capacity}-byte slot")
        off = self._slot_offset(slot)
        gen = self._generations[slot]
        SLOT_HEADER.pack_into(self._mm, off, gen + 1, 0)
        self._mm[off + SLOT_HEADER_SIZE: off + SLOT_HEADER_SIZE + n] = record
        gen += 2
        SLOT_HEADER.pack_into(self._mm, off, gen, n)
        self._generations[slot] = gen
        return SlotRef(slot, gen, n)

    def scribble(self, slot: int, data: bytes, at: int = 0) -> None:
        """Overwrite bytes of a slot's record in place (the producer only; used to test post-verification rewrites)."""
        off = self._slot_offset(slot) + SLOT_HEADER_SIZE + at
        self._mm[off: off + len(data)] = data

    def close(self) -> None:
        self.close_readonly_fd()
        self._map.close()

    def __enter__(self) -> "SealedRing":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RingReader:
    """The consumer side: validates the seals and size of a received fd, maps it read-only, copies records out."""

    def __init__(self, fd: int, n_slots: int, capacity: int) -> None:
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as exc:
            raise RingBufferError(f"fd {fd} is not a sealable memfd ({exc})") from exc
        if seals & REQUIRED_SEALS != REQUIRED_SEALS:
            raise RingBufferError(f"ring fd {fd} is not sealed against writes: seals {seals:#x}, required "
                               f"{REQUIRED_SEALS:#x} (SHRINK|GROW|FUTURE_WRITE|SEAL); refusing to map it")
        expected = ring_size(n_slots, capacity)
        actual = os.fstat(fd).st_size
        if actual != expected:
            raise RingBufferError(f"ring fd {fd} has {actual} bytes, expected {expected} for {n_slots} x {capacity}")
        self.fd = fd
        self.n_slots = n_slots
        self.capacity = capacity
        self._stride = _slot_stride(capacity)
        self._map = _Mapping(fd, expected, writable=False)
        self._mm = self._map.view
        magic, ns, cap, size = RING_HEADER.unpack_from(self._mm, 0)
        if (magic, ns, cap, size) != (RING_MAGIC, n_slots, capacity, expected):
            raise RingBufferError(f"ring header {magic!r} {ns}x{cap} ({size} B) does not match the announced "
                               f"{n_slots}x{capacity} ({expected} B)")

    def read(self, ref: SlotRef) -> bytes:
        """Copy the announced record out of the ring into private memory (no verification here)."""
        if not 0 <= ref.slot < self.n_slots:
            raise SlotOverwritten(f"announced slot {ref.slot} outside [0, {self.n_slots})")
        if not 0 <= ref.length <= self.capacity:
            raise SlotOverwritten(f"announced length {ref.length} outside [0, {self.capacity}]")
        off = RING_HEADER_SIZE + ref.slot * self._stride
        gen1, length = SLOT_HEADER.unpack_from(self._mm, off)
        if gen1 != ref.generation or length != ref.length:
            raise SlotOverwritten(f"slot {ref.slot}: generation {gen1}/length {length}, announced "
                                  f"{ref.generation}/{ref.length}")
        data = bytes(self._mm[off + SLOT_HEADER_SIZE: off + SLOT_HEADER_SIZE + length])  # a private copy
        gen2, _ = SLOT_HEADER.unpack_from(self._mm, off)
        if gen2 != gen1:
            raise SlotOverwritten(f"slot {ref.slot} was rewritten during the copy (generation {gen1} -> {gen2})")
        return data

    def close(self) -> None:
        self._map.close()

    def __enter__(self) -> "RingReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def seals_of(fd: int) -> int:
    """The seal bits of a memfd."""
    return fcntl.fcntl(fd, fcntl.F_GET_SEALS)


__all__ = ["SealedRing", "RingReader", "SlotRef", "SlotOverwritten", "RingBufferError", "REQUIRED_SEALS",
           "F_SEAL_FUTURE_WRITE", "ring_size", "seals_of"]
