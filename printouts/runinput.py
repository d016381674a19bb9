"""A run directory as the input of ``testbed print``: its perturbation image, its mask and its provenance.

``testbed print patch --image RUN_DIR`` (and ``stickers``, ``glasses``, ``poster``) takes a patch, sticker or
eyeglass run directory (``testbed-run.json`` marker, or an older ``config.json`` naming the attack) instead of a
PNG. The image and mask are the run's own lossless PNGs, read through the input boundary
(``testbed.imageio.load_image``); the configuration through ``testbed.runs.read_json_file``. A folder that is not a
run directory is refused with one line naming it.

Provenance recorded on the sheet and in its sidecar: ``run_id`` (first 8 hex digits of ``config_sha256``),
``config_sha256`` (sha256 of the run's ``config.json`` bytes as stored: ``sha256sum RUN/config.json`` gives it),
seed, palette, model, target and the run's date (UTC, from ``metrics.json``, else ``config.json``).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from testbed.errors import ConfigError, ImageError

# image file (without .png) and mask file for each kind of run directory; the first that exists is used
_IMAGE_NAMES: dict[str, tuple[str, ...]] = {
    "eyeglass": ("texture", "perturbation"),
    # a sticker run's perturbation.png is mask * (sticker - sign), clamped: the stickered sign holds the colours
    "sticker": ("adversarial", "perturbation"),
}
_DEFAULT_IMAGE_NAMES = ("perturbation",)


@dataclass
class RunProvenance:
    """Where a printed perturbation comes from (JSON-serialisable: goes into the sheet's sidecar)."""

    run_id: str  # first 8 hex digits of config_sha256
    config_sha256: str
    kind: str  # patch, sticker, eyeglass, ...
    path: str
    seed: int | None
    palette: str  # the run's palette file, "built-in default", or "unused (lambda_nps 0)"
    model: str | None
    target: str | None  # target class name (or index), "untargeted", or the eyeglass mode
    date: str | None  # YYYY-MM-DD (UTC) of the run's metrics.json / config.json
    shape: str | None = None  # patch shape (circle, square, mask path) when the run records one

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def footnote(self) -> str:
        """The small-print line on the sheet: short run id, kind, model, target, date, seed."""
        from printouts.sheets import run_footnote

        return run_footnote(self.as_dict())


@dataclass
class RunInput:
    """What ``testbed print`` reads from a run directory."""

    image: torch.Tensor  # 1x3xHxW in [0, 1]
    mask: torch.Tensor | None  # 1x1xHxW in [0, 1] (soft edge kept), same size as image; None: no mask file
    provenance: RunProvenance
    config: dict[str, Any] = field(default_factory=dict)  # the run's config.json (e.g. a sticker run's sign size)


def load_run_input(path: str | Path, *, option: str = "--image") -> RunInput:
    """The perturbation, mask and provenance of run directory ``path``; ConfigError (one line, naming the folder)
    when it is not a run directory or holds no perturbation image."""
    from testbed.imageio import load_image
    from testbed.runs import CONFIG_FILE, METRICS_FILE, read_json_file, run_dir_kind

    p = Path(path)
    kind = run_dir_kind(p)
    if kind is None or not (p / CONFIG_FILE).is_file():
        raise ConfigError(f"{option} {p} is a folder but not a patch, sticker or eyeglass run directory (no "
                          f"testbed-run.json and {CONFIG_FILE}); give a run directory or a perturbation PNG / .pt")
    names = _IMAGE_NAMES.get(kind, _DEFAULT_IMAGE_NAMES)
    image_file = next((p / f"{n}.png" for n in names if (p / f"{n}.png").is_file()), None)
    if image_file is None:
        raise ConfigError(f"{option} {p} is {kind} run directory without {names[0]}.png (unfinished run?); "
                          "let the run finish, or give a perturbation PNG / .pt")
    image = load_image(image_file, convert=True, what="run perturbation")
    mask = None
    if (p / "mask.png").is_file():
        mask = load_image(p / "mask.png", convert=True, what="run mask")[:, :1]
        if mask.shape[-2:] != image.shape[-2:]:
            raise ImageError(f"run mask {p / 'mask.png'} is {mask.shape[-2]}x{mask.shape[-1]} but "
                             f"{image_file.name} is {image.shape[-2]}x{image.shape[-1]}")
    cfg_bytes = (p / CONFIG_FILE).read_bytes()
    config = read_json_file(p / CONFIG_FILE, "run configuration")
    if not isinstance(config, dict):
        raise ConfigError(f"run configuration {p / CONFIG_FILE} is not a JSON object")
    metrics: dict[str, Any] = {}
    if (p / METRICS_FILE).is_file():
        try:
            m = read_json_file(p / METRICS_FILE, "run metrics")
            metrics = m if isinstance(m, dict) else {}
        except ConfigError:
            metrics = {}
    digest = hashlib.sha256(cfg_bytes).hexdigest()
    prov = RunProvenance(run_id=digest[:8], config_sha256=digest, kind=kind, path=str(p.resolve()),
                         seed=_int_or_none(config.get("seed", metrics.get("seed"))), palette=_palette(config),
                         model=_str_or_none(config.get("model", metrics.get("model"))),
                         target=_target(config, metrics), date=_date(p / METRICS_FILE, p / CONFIG_FILE),
                         shape=_str_or_none(config.get("shape")))
    return RunInput(image=image, mask=mask, provenance=prov, config=config)


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _palette(config: dict[str, Any]) -> str:
    pal = config.get("palette")
    if pal:
        return str(pal)
    lam = config.get("lambda_nps")
    if isinstance(lam, (int, float)) and lam == 0:
        return "unused (lambda_nps 0)"
    return "built-in default"


def _target(config: dict[str, Any], metrics: dict[str, Any]) -> str:
    for key in ("target_name", "target_identity"):
        if metrics.get(key) is not None:
            return str(metrics[key])
    if config.get("target") is not None:
        return str(config["target"])
    mode = config.get("mode", metrics.get("mode"))
    return str(mode) if mode else "untargeted"


def _date(*files: Path) -> str | None:
    for f in files:
        if f.is_file():
            t = f.stat().st_mtime
            return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).strftime("%Y-%m-%d")
    return None
