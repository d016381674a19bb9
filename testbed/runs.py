"""Run I/O, the one module through which the testbed writes files: atomic writes, checked checkpoints, run
directories (the ``--out`` rule, resolved config, config comparison, exact resume).

:func:`write_atomic` is the one atomic writer: every file the testbed writes (run directories, experiment cells,
reports, printouts, palettes, images, caches, bench tables, fetched assets) goes to a unique temporary name in the
target folder, is fsynced and moved into place with ``os.replace`` -- never half-written; a failed write leaves the
old file, if any, as it was and raises :class:`WriteError` naming the file and the reason.

Layout of a run directory::

    testbed-run.json   marker: {"kind": "patch" | "sticker" | "eyeglass" | "experiment" | ..., "format": 1}
    config.json        the resolved configuration (also config.yaml, for reading)
    checkpoints/       step_00000100.pt ... (optimiser state, parameters, generator state, history), checksummed
    <name>.png         the perturbation, 16-bit PNG (lossless for float data at 1/65535) and <name>_8bit.png
    <name>.pt/.npy     the perturbation as float32 tensor / array (exact; plain ``torch.save``, tensors only)
    metrics.json       final metrics

:class:`RunDir` is the one definition of the mechanics: claiming the folder, storing the resolved config, refusing
a run directory written with a different configuration (``ConfigError`` naming the differing keys), refusing a
non-empty folder that is not a run directory and a run directory of another kind (``--out`` rule).
``pipelines.experiment.RunDir`` extends it with its own config file (``config.resolved.yaml``) and a cell store.

Checkpoints and caches go through :func:`save_checked` / :func:`load_checked`: tensors and plain data only, behind
a one-line header carrying the sha256 and length of the payload. The header is checked before anything is
unpickled, and the payload is then read with ``torch.load(..., weights_only=True)``, so nothing in a run
directory or cache can execute code (see docs/safety.md).

This module is part of the ``testbed`` leaf: it imports nothing from ``physical``, ``camera``, ``printouts``,
``pipelines``; torch is imported only by the functions that need it (a camera or capture process that only writes
files does not load it).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from testbed.errors import ConfigError, IntegrityError, TestbedError
from testbed.inputs import load_json

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
RUN_MARKER = "testbed-run.json"
EXPERIMENT_CONFIG_FILE = "config.resolved.yaml"  # pipelines.experiment's run directories (kind "experiment")
MAX_JSON_BYTES = 16 * 1024 * 1024  # config/marker/metrics files are small; a bigger one is refused, not parsed

CHECKED_MAGIC = b"TESTBED-CHECKED"
_CHECKED_HEADER = re.compile(rb"TESTBED-CHECKED v1 sha256=([0-9a-f]{64}) bytes=([0-9]{1,15})\n")
_HEADER_MAX = 128


def warn(message: str) -> None:
    """One warning line on stderr (the CLI's convention for things the user must know but that do not stop it)."""
    print(f"testbed: warning: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ atomic writes
class WriteError(TestbedError, OSError):
    """A file could not be written (disk full, permission, read-only file system...); nothing half-written is
    left and the old file, if any, is unchanged. ``WriteError(errno, message)``: ``errno`` is the underlying
    error's; ``str()`` is the message alone (one line, no ``[Errno N]`` prefix)."""

    def __str__(self) -> str:
        return self.strerror if isinstance(self.strerror, str) else super().__str__()


_WRITE_REASONS = {errno.ENOSPC: "disk full", errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
                  errno.EDQUOT: "disk quota exceeded", errno.EPERM: "operation not permitted",
                  errno.ENAMETOOLONG: "name too long", errno.EISDIR: "it is a folder"}


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], Any], *, mode: int = 0o644,
                 verify: Callable[[Path], None] | None = None, sync_folder: bool = False,
                 what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically: a unique temporary file in the same folder, fsync, ``os.replace``.

    ``data``: bytes, a str (written as UTF-8), or a function that writes into the open binary file (for streams
    and writers that want a file object: ``torch.save``, ``np.save``, ``PIL.Image.save``, ``shutil.copyfileobj``).
    ``mode``: the file's permission bits. ``verify``: called with the complete temporary file before it replaces
    ``path`` (e.g. a checksum check); whatever it raises is raised and ``path`` is untouched. ``sync_folder``:
    also fsync the folder after the rename, so the new name survives a power loss (checkpoints).

    On an OSError (disk full, permission, read-only, parent is a file) the temporary file is removed, ``path`` is
    left as it was, and :class:`WriteError` names ``what`` (e.g. "results file"), the file and the reason. Any other
    exception (from ``data`` or ``verify``) also removes the temporary file and propagates unchanged."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        if verify is not None:
            verify(Path(tmp))
        os.replace(tmp, path)
        tmp = None
        if sync_folder:
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(exc.errno or 0, f"could not write {what} {path}: {_os_reason(exc, path.parent)}; nothing "
                                         "was written there (the old file, if any, is unchanged)") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``data`` (tensors and arrays become lists) as indented, key-sorted JSON, through :func:`write_atomic`."""
    return write_atomic(path, json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` of tensors and plain data (checked), written atomically; loadable with ``weights_only=True``."""
    import torch

    check_plain_data(obj)
    return write_atomic(path, lambda fh: torch.save(obj, fh))


def save_image(x: Any, path: str | Path, *, bits: int = 8) -> Path:
    """Write a 1x3xHxW tensor in [0, 1] as a lossless PNG (8- or 16-bit, ``testbed.imageio.encode_png``),
    atomically."""
    from testbed.errors import ImageError
    from testbed.imageio import encode_png

    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ImageError(f"{p}: only lossless PNG output is supported")
    return write_atomic(p, encode_png(x, bits=bits, name=str(p)))


# ------------------------------------------------------------------------------------------------ checked files
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def check_plain_data(obj: Any, where: str = "") -> None:
    """Raise TypeError unless ``obj`` is tensors and plain data only (dict/list/tuple of str, int, float, bool,
    None and plain tensors): what ``torch.load(weights_only=True)`` reads back unchanged."""
    if type(obj) in _PLAIN_SCALARS:  # exact types: a str subclass (e.g. torch.__version__) is not plain data
        return
    torch = sys.modules.get("torch")  # not imported yet: then ``obj`` cannot be a tensor
    if torch is not None and type(obj) in (torch.Tensor, torch.nn.Parameter):
        return
    if isinstance(obj, (dict, OrderedDict)) and type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint data at {where or '<root>'}: key {k!r} is not a str or int")
            check_plain_data(v, f"{where}.{k}" if where else str(k))
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain_data(v, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint data at {where or '<root>'} is a {type(obj).__name__}: only tensors and plain "
                    "data (dict, list, tuple, str, int, float, bool, None) may be stored")


def checked_bytes(obj: Any) -> bytes:
    """The bytes :func:`save_checked` writes: a one-line header (sha256 and length of the payload), then the
    payload (``torch.save`` of ``obj``, which must be tensors and plain data)."""
    import torch

    check_plain_data(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    header = b"%s v1 sha256=%s bytes=%d\n" % (CHECKED_MAGIC, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    return header + payload


def save_checked(obj: Any, path: str | Path, *, sync_folder: bool = False) -> Path:
    """Write ``obj`` (tensors and plain data only) to ``path`` atomically, with a checksum header."""
    return write_atomic(path, checked_bytes(obj), sync_folder=sync_folder)


def _unsafe_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported global" in ln or "Unsupported operand" in ln:
            return ln[:200]
    return (lines[0] if lines else type(exc).__name__)[:200]


def load_checked(path: str | Path, *, what: str = "file", expect: type | None = None) -> Any:
    """Read a file written by :func:`save_checked`: the header's length and sha256 are checked before any byte is
    unpickled, then the payload is loaded with ``weights_only=True`` (tensors and plain data, no code).

    Raises IntegrityError naming the file: ``damaged=True`` for a truncated / altered / badly-headed file of ours,
    ``damaged=False`` for a file without our header (older testbed, or planted) or whose content is not plain data.
    ``expect``: the type the top-level object must have (e.g. ``dict``)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"{what} {p} could not be read ({exc.strerror or exc})", path=p) from None
    if len(data) < len(CHECKED_MAGIC) and CHECKED_MAGIC.startswith(data):
        raise IntegrityError(f"{what} {p} is damaged (truncated: {len(data)} bytes, not even its header); it was not "
                             "loaded", path=p, damaged=True)
    if not data.startswith(CHECKED_MAGIC):
        raise IntegrityError(
            f"{what} {p} has no testbed checksum header: it was written by an older testbed or by someone else, "
            "and was not loaded (nothing in it ran)", path=p)
    newline = data.find(b"\n", 0, _HEADER_MAX)
    m = _CHECKED_HEADER.fullmatch(data[: newline + 1]) if newline >= 0 else None
    if m is None:
        raise IntegrityError(f"{what} {p} is damaged (its checksum header is unreadable); it was not loaded",
                             path=p, damaged=True)
    payload = memoryview(data)[newline + 1:]
    expected = int(m.group(2))
    if len(payload) != expected:
        how = (f"truncated: {len(payload)} of {expected} bytes" if len(payload) < expected
               else f"{len(payload) - expected} bytes longer than written")
        raise IntegrityError(f"{what} {p} is damaged ({how}); it was not loaded", path=p, damaged=True)
    if hashlib.sha256(payload).hexdigest().encode() != m.group(1):
        raise IntegrityError(f"{what} {p} is damaged (sha256 mismatch: its content changed after it was written); "
                             "it was not loaded", path=p, damaged=True)
    import torch

    try:
        obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the safe unpickler refused it (or torch could not parse it)
        raise IntegrityError(f"{what} {p} holds something other than tensors and plain data and was not loaded "
                             f"({_unsafe_reason(exc)})", path=p) from None
    if expect is not None and not isinstance(obj, expect):
        raise IntegrityError(f"{what} {p} holds a {type(obj).__name__}, expected a {expect.__name__}; it was not "
                             "loaded", path=p)
    return obj


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def read_json_file(path: str | Path, what: str) -> Any:
    """A small JSON file of ours (config, marker, metrics): size-bounded, UTF-8, nesting-bounded; ConfigError
    naming the file otherwise."""
    return load_json(Path(path), what=what, max_bytes=MAX_JSON_BYTES)


# ------------------------------------------------------------------------------------------------ finished runs
def _run_file(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path} is missing: is {path.parent} a finished attack run directory?")
    return path


def load_run(run_dir: str | Path, expected: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, metrics) of a finished attack run of kind ``expected`` (``config.json`` 'attack'); ConfigError
    naming what is wrong (missing folder or file, not a JSON object, another kind of run)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"attack run directory {run} does not exist")
    files = []
    for name in ("config.json", "metrics.json"):
        data = read_json_file(_run_file(run / name), "run file")
        if not isinstance(data, dict):
            raise ConfigError(f"run file {run / name} must hold a JSON object")
        files.append(data)
    config, metrics = files
    kind = config.get("attack")
    if kind != expected:
        raise ConfigError(f"{run} is a {kind!r} run, not a {expected!r} run (config.json 'attack')")
    return config, metrics


def load_run_tensor(path: str | Path) -> Any:
    """A tensor a finished run saved (``perturbation.pt``, ``mask.pt``, ...), as float32: size-checked, loaded with
    ``weights_only=True`` (tensors and plain data only, nothing in it runs); ConfigError naming the file otherwise."""
    import torch

    from testbed.inputs import MAX_IMAGE_BYTES, check_input_file

    path = _run_file(Path(path))
    check_input_file(path, what="run tensor file", max_bytes=MAX_IMAGE_BYTES)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: pickle/zip errors of any kind
        raise ConfigError(f"run tensor file {path} is not readable ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(obj, torch.Tensor):
        raise ConfigError(f"run tensor file {path} does not hold a tensor")
    return obj.float()


# ------------------------------------------------------------------------------------------------ --out rule
def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _os_reason(exc: OSError, path: Path) -> str:
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a folder"
    return _WRITE_REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def run_dir_kind(path: str | Path) -> str | None:
    """The kind of run directory ``path`` is (``"patch"``, ``"sticker"``, ``"eyeglass"``, ``"experiment"`` ...),
    from its marker, or for one written before markers existed from its config file; None if it is not one."""
    p = Path(path)
    marker = p / RUN_MARKER
    if marker.is_file():
        data = read_json_file(marker, "run-directory marker")
        kind = data.get("kind") if isinstance(data, dict) else None
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"run-directory marker {marker} names no kind; use a new --out folder")
        return kind
    if (p / CONFIG_FILE).is_file():
        try:
            cfg = read_json_file(p / CONFIG_FILE, "run configuration")
        except ConfigError:
            return None  # someone else's config.json
        if isinstance(cfg, dict) and isinstance(cfg.get("attack"), str):
            return cfg["attack"]  # a run directory written before the marker existed
        return None
    if (p / EXPERIMENT_CONFIG_FILE).is_file():
        return "experiment"
    return None


def claim_run_dir(path: str | Path, kind: str, *, error: type[ConfigError] = ConfigError) -> bool:
    """Apply the ``--out`` rule and make ``path`` a run directory of ``kind``.

    Returns True when ``path`` already is a run directory of this kind (resume), False when it was missing or
    empty (created, marker written). Raises ``error`` naming the folder, with nothing written, when ``path`` is a
    file, a non-empty folder that is not a run directory, a run directory of another kind, or cannot be created
    or written (parent is a file, no permission)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise error(f"--out {p} exists and is a file, not a folder; give a new or empty folder")
    if p.is_dir():
        found = run_dir_kind(p)
        if found is not None:
            if found != kind:
                raise error(f"--out {p} is {_article(found)} {found} run directory, not {_article(kind)} {kind} "
                            f"one; use a new --out folder (or the {found} command to resume it)")
            if not (p / RUN_MARKER).is_file():  # an older run directory of this kind: adopt it
                _write_marker(p, kind, error)
            return True
        try:
            entries = next(os.scandir(p), None)
        except OSError as exc:
            raise error(f"--out {p} cannot be read ({_os_reason(exc, p)}); give a folder you can write") from None
        if entries is not None:
            raise error(f"--out {p} is not empty and is not {_article(kind)} {kind} run directory (no {RUN_MARKER}); "
                        "give a new or empty folder — nothing was written there")
    created = next((a for a in reversed([p, *p.parents]) if not a.exists()), None)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create run directory {p}: {_os_reason(exc, p)}; nothing was written") from None
    try:
        _write_marker(p, kind, error)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return False


def _write_marker(path: Path, kind: str, error: type[ConfigError]) -> None:
    try:
        atomic_write_json(path / RUN_MARKER, {"kind": kind, "format": 1, "written_by": "testbed"})
    except OSError as exc:
        raise error(f"cannot write to run directory {path}: {_os_reason(exc, path)}; nothing was written") from None


# ------------------------------------------------------------------------------------------------ config diff
def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": value}`` (lists compared as values)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Keys (dotted) whose values differ between two configs (after a JSON round trip). A key absent from one and
    null in the other is the same setting: an option added to the testbed later, off (so a run directory written
    before the option existed still resumes)."""
    fa, fb = flatten(json.loads(json.dumps(_jsonable(a)))), flatten(json.loads(json.dumps(_jsonable(b))))
    skip = set(ignore)
    return sorted(k for k in set(fa) | set(fb) if k not in skip and fa.get(k) != fb.get(k))


# ------------------------------------------------------------------------------------------------ run dir
_STEP_NAME = re.compile(r"step_([0-9]{8,})\.pt")


class RunDir:
    """A run directory bound to one resolved configuration and one kind of run: the one definition of claiming
    the folder (``--out`` rule), storing the config and refusing a different one.

    ``RunDir(path, config)`` creates it (marker, ``config.json``/``config.yaml``) or reopens it; ``kind`` defaults to
    ``config["attack"]`` (``patch``, ``sticker``, ``eyeglass``). Refused with ``error`` (ConfigError), nothing
    written: a non-empty folder that is not a run directory, a run directory of another kind, an uncreatable path,
    and reopening with a configuration that differs in any key other than ``ignore`` (the message names the keys).

    A subclass with its own config file overrides :meth:`read_config` / :meth:`write_config` (and may add
    differences to :meth:`differences`): ``pipelines.experiment.RunDir`` does, for ``config.resolved.yaml``.
    """

    def __init__(self, path: str | Path, config: Any, *, ignore: Iterable[str] = (),
                 kind: str | None = None, error: type[ConfigError] = ConfigError) -> None:
        self.path = Path(path)
        self.kind = kind or str((config.get("attack") if isinstance(config, dict) else None) or "run")
        self.error = error
        claim_run_dir(self.path, self.kind, error=error)  # first: a foreign folder is refused before anything else
        self.config: dict[str, Any] = self.resolve(config)
        stored = self.read_config()
        if stored is None:
            self.write_config()
            return
        diff = self.differences(stored, ignore)
        if diff:
            old, new = flatten(stored), flatten(self.config)
            shown = ", ".join(f"{k} ({old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r})" if k in old or k in new
                              else k for k in diff[:10])
            raise error(f"run directory {self.path} was written by a different config; differing keys: {shown}. "
                        "Use a fresh --out directory, or the same configuration to resume")

    # -- the stored configuration (overridden by run directories with another config file)
    def resolve(self, config: Any) -> dict[str, Any]:
        """``config`` as plain JSON data (what is stored and compared)."""
        return json.loads(json.dumps(_jsonable(config)))

    def read_config(self) -> dict[str, Any] | None:
        """The configuration stored in the run directory, or None when none is stored yet."""
        cfg_file = self.path / CONFIG_FILE
        if not cfg_file.is_file():
            return None
        old = read_json_file(cfg_file, "run configuration")
        if not isinstance(old, dict):
            raise self.error(f"run configuration {cfg_file} is not a JSON object; use a fresh --out directory")
        return old

    def write_config(self) -> None:
        """Store ``self.config`` (``config.json``, and ``config.yaml`` for reading)."""
        import yaml

        atomic_write_json(self.path / CONFIG_FILE, self.config)
        write_atomic(self.path / "config.yaml", yaml.safe_dump(self.config, sort_keys=True))

    def differences(self, stored: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
        """Dotted keys in which the stored configuration differs from ``self.config``."""
        return config_diff(stored, self.config, ignore)

    # -- checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def checkpoints(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(self.checkpoint_dir.glob("step_*.pt"))

    def save_checkpoint(self, state: dict[str, Any], step: int, *, keep: int = 2) -> Path:
        """Write ``state`` (tensors and plain data) as checkpoint ``step``, checksummed and atomically; keep the
        newest ``keep`` checkpoints."""
        path = save_checked({"step": int(step), **state}, self.checkpoint_dir / f"step_{int(step):08d}.pt",
                            sync_folder=True)  # the new name survives a power loss before the old ones go
        for old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def latest_checkpoint(self, *, announce: Callable[[str], None] = warn) -> dict[str, Any] | None:
        """The newest intact checkpoint, or None when there is none.

        A damaged checkpoint (truncated, altered: checksum or length mismatch) is announced by name through
        ``announce`` (a warning line on stderr) and the previous one is tried; the fallback is announced too. When
        checkpoints exist but none is intact, IntegrityError (no silent restart from step 0). A file that is not a
        checkpoint of ours (no checksum header: an older testbed's, or planted) or whose content is not tensors and
        plain data raises IntegrityError at once: it is never unpickled with code execution allowed."""
        damaged: list[IntegrityError] = []
        for path in reversed(self.checkpoints()):
            try:
                state = load_checked(path, what="checkpoint", expect=dict)
            except IntegrityError as exc:
                if not exc.damaged:
                    raise IntegrityError(f"{exc}. Remove it (or the whole {self.checkpoint_dir} folder to restart "
                                         "from step 0), or use a new --out folder", path=path) from None
                damaged.append(exc)
                announce(f"{exc}; trying the previous checkpoint")
                continue
            m = _STEP_NAME.fullmatch(path.name)
            if m is None or state.get("step") != int(m.group(1)):
                raise IntegrityError(f"checkpoint {path} says step {state.get('step')!r}, which does not match its "
                                     "name; it was not used. Remove it, or use a new --out folder", path=path)
            if damaged:
                announce(f"resuming {self.path} from {path.name} (step {state['step']}) instead of the damaged "
                         f"{', '.join(Path(str(e.path)).name for e in damaged)}")
            return state
        if damaged:
            raise IntegrityError(
                f"no intact checkpoint in {self.checkpoint_dir} ({'; '.join(str(e) for e in damaged)}). Delete that "
                "folder to restart from step 0, or use a new --out folder", path=self.checkpoint_dir, damaged=True)
        return None

    # -- outputs
    def save_image(self, name: str, image: Any) -> dict[str, Path]:
        """Save a 1x3xHxW (or 1x1xHxW) tensor in [0, 1] losslessly: 16-bit and 8-bit PNG, .pt and .npy."""
        x = image.detach().float().cpu()
        if x.ndim == 3:
            x = x[None]
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        out = {
            "png16": save_image(rgb, self.path / f"{name}.png", bits=16),
            "png8": save_image(rgb, self.path / f"{name}_8bit.png", bits=8),
            "pt": atomic_torch_save(x.clone(), self.path / f"{name}.pt"),
        }
        array = x.numpy()
        out["npy"] = write_atomic(self.path / f"{name}.npy", lambda fh: np.save(fh, array))
        return out

    def save_tensors(self, name: str, data: Any) -> Path:
        """An output file ``<name>.pt`` (plain ``torch.save`` of tensors and plain data; never loaded back here)."""
        return atomic_torch_save(data, self.path / f"{name}.pt")

    def save_metrics(self, metrics: dict[str, Any]) -> Path:
        return atomic_write_json(self.path / METRICS_FILE, metrics)

    def load_metrics(self) -> dict[str, Any] | None:
        p = self.path / METRICS_FILE
        return read_json_file(p, "metrics file") if p.is_file() else None
