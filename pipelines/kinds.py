"""The built-in experiment kinds. Importing this module registers them with ``pipelines.experiment``'s kind
registry: each kind registers itself at the end of its own module (``register_kind``), and ``pipelines.experiment``
never imports a kind. The CLI imports this module; so does any program that runs configs by kind name.

Adding a kind: a module with ``BASELINES``, ``check_config``, ``build_cells``, ``summarise_run`` and
``render_report`` (see ``pipelines.experiment.ExperimentKind`` and docs/harness.md) that ends with
``register_kind("name", sys.modules[__name__])``, imported here.
"""
from __future__ import annotations

from pipelines import kurakin, transfer  # noqa: F401  (importing a kind's module registers it)

BUILTIN_KINDS = ("kurakin", "transfer")
