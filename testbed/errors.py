"""Exceptions shared by every part of the testbed.

Every error names the problem and, where there is one, the command that fixes it.
"""
from __future__ import annotations


class TestbedError(Exception):
    """Base class for all errors raised by the testbed."""

    __test__ = False  # not a pytest test class


class AssetError(TestbedError):
    """A pinned asset (weights, fixtures) is missing or corrupt."""


class ModelNotFoundError(TestbedError, KeyError):
    """An unknown model name was requested."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ImageError(TestbedError, ValueError):
    """An image could not be read or has an unsupported format."""


class ConfigError(TestbedError, ValueError):
    """A configuration key or value is invalid."""


class SourceError(TestbedError, RuntimeError):
    """A frame source could not be opened or read."""


class IntegrityError(TestbedError, ValueError):
    """A checkpoint or cache file failed its integrity check and was not loaded.

    ``damaged`` is true when the file carries the testbed's checksum header but its content no longer matches it
    (truncated, bit-flipped, damaged header): a resume may fall back to an older checkpoint. It is false for a file
    that never carried the header (an older testbed's file, or a planted one) or whose checksummed content is not
    tensors and plain data: those are refused outright. ``path`` names the file.
    """

    def __init__(self, message: str, *, path: object = None, damaged: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.damaged = damaged
