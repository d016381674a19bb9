"""Shared core of the physical-world adversarial testbed: assets, model registry, image I/O, CLI."""
__version__ = "0.1.0"
