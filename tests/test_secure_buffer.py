"""The sealed memfd ring and the capture process: who can write the buffer, how the key travels, private copies."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from camera.secure.capture import (
    HELLO,
    MAX_CONTROL_MESSAGE,
    CaptureConfig,
    FolderFrames,
    FrameSourceAdapter,
    SyntheticFrames,
    start_capture,
)
from camera.secure.consumer import SecureCapture
from camera.secure.errors import CaptureProtocolError
from camera.secure.frames import (HEADER_SIZE, FrameRejected, FrameSealer, FrameVerifier, Rejection, SessionKey,
                                   VerifyPolicy)
from camera.secure.ringbuffer import (
    REQUIRED_SEALS,
    RingBufferError,
    RingReader,
    SealedRing,
    SlotOverwritten,
    SlotRef,
    seals_of,
)

SRC = SyntheticFrames(48, 64, 12, seed=5)

# Every way a foreign process might try to write the ring through a path to it. Each attempt must raise OSError.
FOREIGN_WRITER = r"""
import ctypes, json, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
results = {}
def attempt(name, fn):
    try:
        fn()
        results[name] = "SUCCEEDED"
    except OSError as e:
        results[name] = f"refused: {e.strerror or e}"
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        results[path + " open(O_RDWR)"] = f"refused: {e.strerror}"
        fd = os.open(path, os.O_RDONLY)
    p = path + " "
    attempt(p + "write", lambda: os.write(fd, b"EVIL"))
    attempt(p + "pwrite", lambda: os.pwrite(fd, b"EVIL", 200))
    attempt(p + "mmap(MAP_SHARED, PROT_WRITE)", lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED,
                                                                   mmap.PROT_READ | mmap.PROT_WRITE))
    attempt(p + "ftruncate(0)", lambda: os.ftruncate(fd, 0))
    attempt(p + "ftruncate(grow)", lambda: os.ftruncate(fd, 1 << 24))
    def punch():
        if libc.fallocate(fd, 3, ctypes.c_long(0), ctypes.c_long(4096)) != 0:
            e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
    attempt(p + "fallocate(PUNCH_HOLE)", punch)
    def mprotect():
        addr = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
        if libc.mprotect(ctypes.c_void_p(addr), ctypes.c_size_t(4096), mmap.PROT_READ | mmap.PROT_WRITE) != 0:
            e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
    attempt(p + "mprotect(read-only shared map -> PROT_WRITE)", mprotect)
    def private_map():  # a private copy-on-write map is allowed, but must not reach the shared pages
        m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        m[64:68] = b"EVIL"
        raise OSError(0, "private copy only")
    attempt(p + "MAP_PRIVATE write", private_map)
    os.close(fd)
print(json.dumps(results))
"""


def _foreign_attempts(paths: list[str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", FOREIGN_WRITER, *paths], capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


def _sealed_ring_with_record():
    key = SessionKey.generate()
    sealer = FrameSealer(key)
    record = sealer.seal(SRC.frame(0))
    ring = SealedRing(2, len(record))
    ref = ring.write(0, record)
    return key, sealer, ring, ref, record


def test_ring_is_sealed_and_consumer_fd_is_readonly():
    key, sealer, ring, ref, record = _sealed_ring_with_record()
    with ring:
        fd = ring.readonly_fd
        assert seals_of(fd) & REQUIRED_SEALS == REQUIRED_SEALS
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        with pytest.raises(OSError):
            os.write(fd, b"x")
        with pytest.raises(OSError):  # the seal set itself is frozen
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        # the producer process holds no descriptor of the ring other than the read-only one it will send
        links = [os.readlink(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd")
                 if os.path.exists(f"/proc/self/fd/{n}")]
        assert sum("testbed-secure-ring" in link for link in links) == 1
        with RingReader(fd, 2, len(record)) as reader:
            assert reader.read(ref) == record


def test_foreign_process_cannot_write_the_buffer():
    key, sealer, ring, ref, record = _sealed_ring_with_record()
    with ring:
        paths = [f"/proc/{os.getpid()}/fd/{ring.readonly_fd}"]
        # as root, the producer's mapping itself is reachable through map_files: try that path too
        map_files = f"/proc/{os.getpid()}/map_files"
        if os.geteuid() == 0 and os.path.isdir(map_files):
            with open(f"/proc/{os.getpid()}/maps") as f:
                rng = next(line.split()[0] for line in f if "testbed-secure-ring" in line)
            paths.append(f"{map_files}/{rng}")
        results = _foreign_attempts(paths)
        assert len(results) >= 8 * len(paths)
        assert all(v.startswith("refused") for v in results.values()), results
        reader = RingReader(ring.readonly_fd, 2, len(record))
        data = reader.read(ref)
        assert data == record  # not one byte changed
        v = FrameVerifier(key.verify_key(), sealer.stream_id)
        assert np.array_equal(v.verify(data).image, SRC.frame(0))
        reader.close()


def test_buffer_rewritten_after_verification_leaves_the_verified_copy_intact():
    key, sealer, ring, ref, record = _sealed_ring_with_record()
    with ring, RingReader(ring.readonly_fd, 2, len(record)) as reader:
        v = FrameVerifier(key.verify_key(), sealer.stream_id)
        frame = v.verify(reader.read(ref))
        before = frame.image.copy()
        start = HEADER_SIZE + 16  # the first pixel byte (after the header and its tag)
        ring.scribble(0, b"\xff" * (len(record) - start - 100), at=start)  # the producer rewrites the slot in place
        assert np.array_equal(frame.image, before) and np.array_equal(frame.image, SRC.frame(0))
        with pytest.raises(ValueError):
            frame.image[0, 0, 0] = 1  # the verified copy is read-only as well as private
        rewritten = reader.read(ref)
        assert rewritten != record
        with pytest.raises(FrameRejected) as e:  # the pixels were rewritten
            FrameVerifier(key.verify_key(), sealer.stream_id).verify(rewritten)
        assert e.value.reason is Rejection.BAD_PAYLOAD_TAG
        # a slot reused since the announcement is detected by the generation counter
        ring.write(0, record)
        with pytest.raises(SlotOverwritten):
            reader.read(ref)


def test_reader_refuses_unsealed_or_mismatched_buffers():
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 1 << 16)
        with pytest.raises(RingBufferError, match="not sealed"):
            RingReader(fd, 1, 1000)
    finally:
        os.close(fd)
    key, sealer, ring, ref, record = _sealed_ring_with_record()
    with ring:
        with pytest.raises(RingBufferError, match="expected"):
            RingReader(ring.readonly_fd, 3, len(record))
        with RingReader(ring.readonly_fd, 2, len(record)) as reader:
            with pytest.raises(SlotOverwritten):
                reader.read(SlotRef(5, 2, 10))
            with pytest.raises(SlotOverwritten):
                reader.read(SlotRef(0, 2, len(record) + 1))


def test_capture_process_end_to_end_with_slot_reuse():
    with SecureCapture(SRC, CaptureConfig(n_slots=2), VerifyPolicy(max_age_s=30)) as cam:
        assert cam.shape == (48, 64, 3) and cam.capture_pid != os.getpid() and cam.ring_fd is None
        links = [os.readlink(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd")
                 if os.path.exists(f"/proc/self/fd/{n}")]
        assert not any("testbed-secure-ring" in link for link in links)  # mapped, but no descriptor kept
        frames = list(cam.frames(on_reject="raise"))
    # 12 frames through 2 slots: each slot was rewritten 5 times after the earlier frames were verified
    assert [f.seq for f in frames] == list(range(12))
    assert all(np.array_equal(f.image, SRC.frame(f.seq)) for f in frames)
    assert cam.stats.as_dict() == {"accepted": 12, "rejected": {}, "overwritten": 0}


def test_foreign_process_cannot_write_the_capture_ring():
    with SecureCapture(SRC, CaptureConfig(n_slots=2), VerifyPolicy(max_age_s=30), keep_fd=True) as cam:
        first = cam.receive()
        results = _foreign_attempts([f"/proc/{os.getpid()}/fd/{cam.ring_fd}"])
        assert all(v.startswith("refused") for v in results.values()), results
        rest = list(cam.frames(on_reject="raise"))
    assert first is not None and [f.seq for f in [first, *rest]] == list(range(12))


def test_key_travels_only_over_the_socket():
    handle = start_capture(SRC, CaptureConfig(n_slots=2))
    try:
        msg, fds, _, _ = socket.recv_fds(handle.sock, MAX_CONTROL_MESSAGE, 4)
        assert len(fds) == 1 and len(msg) == HELLO.size
        secret = HELLO.unpack(msg)[2]
        pid = handle.pid
        assert handle.sock.recv(MAX_CONTROL_MESSAGE)[:1] == b"F"  # it has sent the fd and dropped its copies
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        for blob in (cmdline, environ):
            assert secret not in blob and secret.hex().encode() not in blob
        assert secret.hex().encode() not in b"".join(v.encode() for v in os.environ.values())
        # the child holds no descriptor of the ring any more (only its mapping) and no regular file it wrote
        child_fds = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
        assert not any("testbed-secure-ring" in link for link in child_fds), child_fds
        with open(f"/proc/{pid}/status") as f:
            assert any(line.startswith("State:") for line in f)
        os.close(fds[0])
    finally:
        assert handle.stop() == 0


def test_capture_source_errors_are_reported(tmp_path):
    with pytest.raises(CaptureProtocolError, match="does not exist"):
        with SecureCapture(FolderFrames(str(tmp_path / "missing"))):
            pass


def test_folder_source_and_frame_source_adapter(tmp_path):
    import cv2
    import torch

    rgb = [SRC.frame(i) for i in range(3)]
    for i, f in enumerate(rgb):
        cv2.imwrite(str(tmp_path / f"f{i:02d}.png"), f[:, :, ::-1])
    with SecureCapture(FolderFrames(str(tmp_path)), CaptureConfig(n_slots=2), VerifyPolicy(max_age_s=30)) as cam:
        got = [f.image for f in cam.frames(on_reject="raise")]
    assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, rgb))

    class Frame:
        def __init__(self, t):
            self.image, self.timestamp, self.seq = t, 0.0, 0

    adapter = FrameSourceAdapter(lambda: [Frame(torch.from_numpy(rgb[0]).permute(2, 0, 1)[None].float() / 255)])
    out = list(adapter())
    assert len(out) == 1 and np.array_equal(out[0], rgb[0])
