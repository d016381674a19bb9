"""The same sealing over a TCP byte stream: each sealed record is sent as a 4-byte little-endian length followed by
the record.

The receiver never trusts the length prefix with memory: it checks it against its declared maximum record size
(the verifier policy's bound, lowered by ``max_record_bytes`` where the sender's frame size is known) and refuses a
larger one before reading on (:class:`~camera.secure.errors.RecordTooLarge`); then it reads the record in chunks of
at most 256 KiB and keeps only what arrived, so until the record is complete it holds at most the bytes that really
arrived plus one chunk -- a prefix claiming 95 MB followed by silence costs 256 KiB, not 95 MB. Each record is
verified with a
:class:`~camera.secure.frames.FrameVerifier`.

A clean end of stream is the sender closing the connection on a record boundary. Anything else is an error with a
named reason (:mod:`camera.secure.errors`): a stall (no byte within the timeout) is
:class:`~camera.secure.errors.StreamStalled`, a reset :class:`~camera.secure.errors.StreamReset`, an end inside a
prefix or a record :class:`~camera.secure.errors.StreamTruncated`. A broken stream ends the stream (fail closed:
there is no way to resynchronise a byte stream safely).

Keys are not exchanged here: the receiver gets its :class:`VerifyKey` out of band (locally: over the capture
process's Unix socket).
"""
from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from camera.secure.errors import RecordTooLarge, SecureStreamError, StreamReset, StreamStalled, StreamTruncated
from camera.secure.frames import FrameRejected, FrameSealer, FrameVerifier, Rejection, VerifiedFrame
from testbed.errors import ConfigError

LENGTH = struct.Struct("<I")
CHUNK = 256 * 1024  # the largest single read: what is allocated ahead of data that has not arrived yet
_RESET_ERRORS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


def _timeout_of(sock: socket.socket) -> str:
    t = sock.gettimeout()
    return "the timeout" if t is None else f"{t:g} s"


def _recv_exact(sock: socket.socket, n: int, what: str) -> tuple[bytes | None, int]:
    """``(data, n)`` with exactly n bytes, or ``(None, received)`` if the peer closed the connection first.

    Allocation follows arrival: each ``recv`` asks for at most :data:`CHUNK` bytes and only what arrived is kept,
    so what is held never exceeds the bytes received plus one chunk, whatever ``n`` claims (joining a complete
    record then copies it once).
    Raises :class:`StreamStalled` on a timeout and :class:`StreamReset` on a reset.
    """
    chunks: list[bytes] = []
    got = 0
    while got < n:
        try:
            chunk = sock.recv(min(n - got, CHUNK))
        except TimeoutError:
            raise StreamStalled(f"stream stalled: no byte within {_timeout_of(sock)} ({what}, {got} of {n} bytes "
                                "received)") from None
        except _RESET_ERRORS as exc:
            raise StreamReset(f"stream reset by the peer ({what}, {got} of {n} bytes received): "
                              f"{exc.strerror or type(exc).__name__}") from None
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return (b"".join(chunks), got) if got == n else (None, got)


def send_record(sock: socket.socket, record: bytes) -> None:
    """Send one length-prefixed record; a reset or a stall of the receiver raises StreamReset/StreamStalled."""
    if len(record) > 0xFFFFFFFF:
        raise ConfigError(f"record of {len(record)} bytes does not fit a 32-bit length prefix")
    try:
        sock.sendall(LENGTH.pack(len(record)))
        sock.sendall(record)
    except TimeoutError:
        raise StreamStalled(f"stream stalled: the receiver took no data within {_timeout_of(sock)}") from None
    except _RESET_ERRORS as exc:
        raise StreamReset(f"stream reset by the receiver: {exc.strerror or type(exc).__name__}") from None


def recv_record(sock: socket.socket, max_record_bytes: int) -> bytes | None:
    """The next record; None at a clean end of stream (the peer closed on a record boundary).

    Raises :class:`RecordTooLarge` for a length prefix above ``max_record_bytes`` (before reading or allocating
    anything for it), :class:`StreamTruncated` when the stream ends inside a prefix or a record,
    :class:`StreamStalled` / :class:`StreamReset` on a timeout / reset. After any of them the caller must close
    the connection.
    """
    prefix, got = _recv_exact(sock, LENGTH.size, "length prefix")
    if prefix is None:
        if got == 0:
            return None
        raise StreamTruncated(f"stream ended inside a length prefix ({got} of 4 bytes)")
    (n,) = LENGTH.unpack(prefix)
    if n > max_record_bytes:
        raise RecordTooLarge(f"length prefix {n} exceeds the maximum record size of {max_record_bytes} bytes")
    record, got = _recv_exact(sock, n, "record")
    if record is None:
        raise StreamTruncated(f"stream ended after {got} of {n} record bytes")
    return record


class SealedStreamSender:
    """Seals frames and sends them over a TCP connection."""

    def __init__(self, sealer: FrameSealer, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 10.0
                 ) -> None:
        self.sealer = sealer
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except TimeoutError:
            raise StreamStalled(f"cannot connect to {host}:{port}: no answer within {timeout_s:g} s") from None
        except OSError as exc:
            raise SecureStreamError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
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
    """What a receiver saw: accepted frames and rejections in arrival order, and why the stream ended
    (``ended_by`` is None only for a clean end)."""

    accepted: list[VerifiedFrame] = field(default_factory=list)
    rejected: list[FrameRejected] = field(default_factory=list)
    ended_by: SecureStreamError | None = None

    @property
    def reasons(self) -> list[Rejection]:
        return [r.reason for r in self.rejected]


class SealedStreamReceiver:
    """Listens on a loopback TCP port, accepts one connection and verifies its records.

    ``max_record_bytes`` declares the largest record this receiver takes (e.g. ``record_size(480, 640)`` when the
    sender's frame size is agreed); the verifier policy's bound applies in any case.
    """

    def __init__(self, verifier: FrameVerifier, host: str = "127.0.0.1", port: int = 0, *,
                 timeout_s: float = 10.0, max_record_bytes: int | None = None) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ConfigError(f"the receiver only binds loopback addresses in this testbed, got {host!r}")
        if max_record_bytes is not None and (isinstance(max_record_bytes, bool)
                                             or not isinstance(max_record_bytes, int) or max_record_bytes < 1):
            raise ConfigError(f"max_record_bytes must be a positive int or None, got {max_record_bytes!r}")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.verifier = verifier
        self.timeout_s = timeout_s
        bound = verifier.policy.max_record_bytes
        self.max_record_bytes = bound if max_record_bytes is None else min(bound, max_record_bytes)
        self.server = socket.create_server((host, port))
        self.server.settimeout(timeout_s)
        self.address = self.server.getsockname()[:2]

    def frames(self, log: ReceiveLog | None = None) -> Iterator[VerifiedFrame]:
        """Accept one connection; yield verified frames, record rejections in ``log``. Returns at a clean end;
        raises a :class:`~camera.secure.errors.SecureStreamError` (also kept in ``log.ended_by``) otherwise."""
        log = log if log is not None else ReceiveLog()
        try:
            conn, _ = self.server.accept()
        except TimeoutError:
            exc = StreamStalled(f"no sender connected to {self.address[0]}:{self.address[1]} within "
                                f"{self.timeout_s:g} s")
            log.ended_by = exc
            raise exc from None
        conn.settimeout(self.timeout_s)
        with conn:
            while True:
                try:
                    record = recv_record(conn, self.max_record_bytes)
                except SecureStreamError as exc:
                    log.ended_by = exc
                    raise
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
        """Receive the whole stream; a broken stream is reported in ``ended_by`` instead of raised."""
        log = ReceiveLog()
        try:
            for _ in self.frames(log):
                pass
        except SecureStreamError:
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
            raise SecureStreamError(f"tamper proxy failed: {self.error}") from self.error


__all__ = [
    "CHUNK",
    "LENGTH",
    "ReceiveLog",
    "SealedStreamReceiver",
    "SealedStreamSender",
    "TamperProxy",
    "recv_record",
    "send_record",
]
