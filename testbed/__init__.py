"""Shared leaf of the physical-world adversarial testbed: assets, model registry and models, image I/O and input
checks, errors, statistics, device, machine description, run directories, shipped photos, argparse types.

Every part (``worlds``, ``physical``, ``printouts``, ``camera``, ``pipelines``) imports it; it imports none of them
(``tests/test_layers.py``). The ``testbed`` command itself is ``pipelines.main``.
"""
__version__ = "0.1.0"
