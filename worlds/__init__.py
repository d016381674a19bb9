"""Simulated worlds the attacks run in: the rendered traffic-sign world (``worlds.signs``) and face alignment
(``worlds.faces``). Imports ``testbed`` (the shared leaf); imported by ``physical``, ``pipelines`` and the CLI."""
