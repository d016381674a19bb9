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
