"""What the EOT attacks' hyper-parameter dataclasses share: validation helpers, the optimisation / evaluation seed
pair, and the JSON config of a run."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from testbed.errors import ConfigError

EVAL_SEED_OFFSET = 1_000_003  # default evaluation seed = seed + this: never the optimisation's draws


def check_int(name: str, v: Any, lo: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")


def check_nonneg(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")


def check_known_keys(cls: type, data: dict[str, Any], what: str) -> None:
    """Refuse keys of ``data`` that are not fields of the dataclass ``cls`` (a ConfigError naming them)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {unknown}; known keys: {sorted(known)}")


class RunHyperParams:
    """Mixin for a frozen dataclass with ``seed``, ``eval_seed`` (None = seed + EVAL_SEED_OFFSET) and
    ``checkpoint_every`` fields: their validation, the resolved evaluation seed, ``config()`` and ``replace()``."""

    name: ClassVar[str] = "attack"

    def validate_run(self) -> None:
        seed, eval_seed = getattr(self, "seed"), getattr(self, "eval_seed")
        check_int("seed", seed, 0)
        if eval_seed is not None:
            check_int("eval_seed", eval_seed, 0)
            if eval_seed == seed:
                raise ConfigError("eval_seed must differ from seed: evaluation draws must not be the optimisation's")
        check_int("checkpoint_every", getattr(self, "checkpoint_every"))

    @property
    def resolved_eval_seed(self) -> int:
        eval_seed = getattr(self, "eval_seed")
        return eval_seed if eval_seed is not None else getattr(self, "seed") + EVAL_SEED_OFFSET

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attack": self.name}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
        out["eval_seed"] = self.resolved_eval_seed
        return out

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
