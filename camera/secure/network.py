"""The same sealing over a TCP byte stream: each sealed record is sent as a 4-byte little-endian length followed by
the record. The receiver checks the length prefix against its bound *before* reading or allocating anything, reads
exactly that many bytes, and verifies the record with a :class:`~camera.secure.frames.FrameVerifier`.

Keys are not exchanged here: the receiver gets its :class:`VerifyKey` out of band (locally: over the capture
process's Unix socket). A length prefix above the bound, or a connection that ends inside a record, ends the stream
(fail closed: there is no way to resynchronise a byte stream safely).
"""
from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from camera.secure.frames import (
    FrameRejected,
    FrameSealer,
    FrameVerifier,
    Rejection,
    VerifiedFrame,
)
from testbed.errors import ConfigError, SourceError

LENGTH = struct.Struct("<I")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes, or fewer if the peer closed the connection."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            break
        got += k
    return bytes(view[:got])


def send_record(sock: socket.socket, record: bytes) -> None:
    """Send one length-prefixed record."""
    if len(record) > 0xFFFFFFFF:
        raise ConfigError(f"record of {len(record)} bytes does not fit a 32-bit length prefix")
    sock.sendall(LENGTH.pack(len(record)))
    sock.sendall(record)


def recv_record(sock: socket.socket, max_record_bytes: int) -> bytes | None:
    """The next record; None at a clean end of stream. Raises FrameRejected (OVERSIZED/TRUNCATED) when the stream
    cannot be trusted any more — the caller must then close the connection."""
    prefix = _recv_exact(sock, LENGTH.size)
    if not prefix:
        return None
    if len(prefix) < LENGTH.size:
        raise FrameRejected(Rejection.TRUNCATED, f"stream ended inside a length prefix ({len(prefix)} of 4 bytes)")
    (n,) = LENGTH.unpack(prefix)
    if n > max_record_bytes:
        raise FrameRejected(Rejection.OVERSIZED, f"length prefix {n} exceeds the bound of {max_record_bytes} bytes")
    record = _recv_exact(sock, n)
    if len(record) < n:
        raise FrameRejected(Rejection.TRUNCATED, f"stream ended after {len(record)} of {n} record bytes")
    return record


class SealedStreamSender:
    """Seals frames and sends them over a TCP connection."""

    def __init__(self, sealer: FrameSealer, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 10.0
                 ) -> None:
        self.sealer = sealer
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, frame: np.ndarray) -> None:
        send_record(self.sock, self.sealer.seal(frame))

    def send_raw(self, record: bytes) -> None:
        send_record(self.sock, record)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "SealedStreamSender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ReceiveLog:
    """What a receiver saw: accepted frames and rejections in arrival order, and why the stream ended."""

    accepted: list[VerifiedFrame] = field(default_factory=list)
    rejected: list[FrameRejected] = field(default_factory=list)
    ended_by: FrameRejected | None = None

    @property
    def reasons(self) -> list[Rejection]:
        return [r.reason for r in self.rejected]


class SealedStreamReceiver:
    """Listens on a loopback TCP port, accepts one connection and verifies its records."""

    def __init__(self, verifier: FrameVerifier, host: str = "127.0.0.1", port: int = 0, *,
                 timeout_s: float = 10.0) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigError(f"the receiver only binds loopback addresses in this testbed, got {host!r}")
        self.verifier = verifier
        self.timeout_s = timeout_s
        self.server = socket.create_server((host, port))
        self.server.settimeout(timeout_s)
        self.address = self.server.getsockname()[:2]

    def frames(self, log: ReceiveLog | None = None) -> Iterator[VerifiedFrame]:
        """Accept one connection; yield verified frames, record rejections in ``log``."""
        log = log if log is not None else ReceiveLog()
        try:
            conn, _ = self.server.accept()
        except socket.timeout:
            raise SourceError(f"no sender connected to {self.address} within {self.timeout_s} s") from None
        conn.settimeout(self.timeout_s)
        max_bytes = self.verifier.policy.max_record_bytes
        with conn:
            while True:
                try:
                    record = recv_record(conn, max_bytes)
                except FrameRejected as exc:
                    self.verifier.stats.rejected[exc.reason] += 1
                    log.rejected.append(exc)
                    log.ended_by = exc
                    return
                if record is None:
                    return
                try:
                    frame = self.verifier.verify(record)
                except FrameRejected as exc:
                    log.rejected.append(exc)
                    continue
                log.accepted.append(frame)
                yield frame

    def receive_all(self) -> ReceiveLog:
        log = ReceiveLog()
        for _ in self.frames(log):
            pass
        return log

    def close(self) -> None:
        self.server.close()


class TamperProxy:
    """An in-path attacker on the TCP stream: forwards records from its listening port to ``upstream`` after passing
    each one through ``tamper(record) -> list of records`` (drop: [], replay: [r, r], flip: [flip_bit(r, k)], ...).
    Runs in a background thread for one connection."""

    def __init__(self, upstream: tuple[str, int], tamper: Callable[[bytes], list[bytes]], *,
                 max_record_bytes: int = 1 << 28, timeout_s: float = 10.0) -> None:
        self.upstream = upstream
        self.tamper = tamper
        self.max_record_bytes = max_record_bytes
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(timeout_s)
        self.address = self.server.getsockname()[:2]
        self.forwarded = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tamper-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.server.accept()
            with conn, socket.create_connection(self.upstream) as up:
                while True:
                    rec = recv_record(conn, self.max_record_bytes)
                    if rec is None:
                        break
                    for out in self.tamper(rec):
                        up.sendall(LENGTH.pack(len(out)) + out)
                        self.forwarded += 1
                up.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # surfaced by join()
            self.error = exc
        finally:
            self.server.close()

    def join(self, timeout: float | None = 10.0) -> None:
        self._thread.join(timeout)
        if self.error is not None:
            raise SourceError(f"tamper proxy failed: {self.error}") from self.error


__all__ = ["send_record", "recv_record", "SealedStreamSender", "SealedStreamReceiver", "ReceiveLog", "TamperProxy",
           "LENGTH"]
