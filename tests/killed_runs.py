"""Kill a run in the middle (the resume tests of the physical attacks): a callback that raises at a given step."""
from __future__ import annotations

from typing import Any, Callable

import pytest


class Killed(Exception):
    """Stands for the process being killed in the middle of a run."""


def run_until_killed(run: Callable[..., Any], step: int, exc: type[BaseException] = Killed) -> None:
    """Call ``run(callback=...)`` with a step callback that raises ``exc`` when step ``step`` has run; the run must
    end with that exception (nothing after it: no metrics, only the checkpoints written up to then)."""

    def kill(at: int, loss: float) -> None:
        if at == step:
            raise exc

    with pytest.raises(exc):
        run(callback=kill)
