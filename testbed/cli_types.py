"""Validation of command-line options, shared by every part's CLI: argparse ``type=`` callables and path checks.

Every option is checked while the command line is parsed, before a model is loaded or a file is written, with the
value checks of :mod:`testbed.inputs` (``finite_float``, ``positive_int``, ``bounded_int``). A refused value makes
argparse print one line, ``testbed CMD: error: argument --OPT: <why>``, and exit with status 2 (see
:class:`OneLineArgumentParser`).

    p.add_argument("--area", type=cli_types.fraction, default=0.1)
    p.add_argument("--steps", type=cli_types.count(1_000_000), default=500)
    p.add_argument("--device", type=cli_types.device)
    p.add_argument("--out", type=cli_types.output_dir, required=True)
"""
from __future__ import annotations

import argparse
import errno
import os
import stat
from pathlib import Path
from typing import Any, Callable, NoReturn

from testbed.errors import ConfigError
from testbed.inputs import bounded_int, finite_float, positive_int

#: the name the value checks are given; stripped from their message, since argparse names the option itself
_NAME = "value"
#: most seconds any ``--*-s`` option accepts (a day)
MAX_SECONDS = 86_400.0
#: largest count (steps, draws, frames, images) an option accepts unless it says otherwise
MAX_STEPS = 1_000_000
#: largest batch any option accepts
MAX_BATCH = 65_536
#: largest image side in pixels an option accepts
MAX_SIDE = 16_384
#: seeds are non-negative 63-bit integers (``torch.Generator.manual_seed`` and numpy both take them)
MAX_SEED = 2**63 - 1
#: largest length in millimetres (sizes of printed objects, pages, margins): 10 m
MAX_MM = 10_000.0


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, the one help formatter of every ``testbed`` parser (set by
    :class:`OneLineArgumentParser`): an option's help ends with ``(default: X)`` unless its text already states its
    default; on/off flags (``store_true``) and options without a default (None) show none."""

    _SUFFIX = " (default: %(default)s)"

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        text = text.removesuffix(self._SUFFIX)  # BooleanOptionalAction adds it itself (Python < 3.14)
        if "default" in text.lower() or action.default is None or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + self._SUFFIX
        return text


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``PROG: error: MESSAGE``) and exit status 2, and
    whose ``--help`` shows every option's default (:class:`DefaultsHelpFormatter`).

    argparse's default prints the whole usage block first; the full usage stays one ``--help`` away. Sub-parsers
    made with ``add_subparsers`` inherit this class (and so its formatter).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see `{self.prog} --help`)\n")


def _why(exc: ConfigError) -> str:
    msg = str(exc)
    return msg[len(_NAME) + 1:] if msg.startswith(_NAME + " ") else msg


def _parse_number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None


def _parse_int(text: str) -> int:
    s = text.strip()
    body = s.lstrip("+-").replace("_", "")
    if body.isdigit() and len(body.lstrip("0")) > 19:  # beyond any bound an option has (2^63 has 19 digits)
        raise argparse.ArgumentTypeError(f"a number of {len(body.lstrip('0'))} digits is far too large")
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[str], float]:
    """A ``type=`` for a finite float in [lo, hi] (``lo_open``/``hi_open`` exclude the bound); nan/inf refused."""

    def parse(text: str) -> float:
        try:
            return finite_float(_NAME, _parse_number(text), lo, hi, lo_open, hi_open)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(_why(exc)) from None

    parse.__name__ = "number"
    return parse


def integer(lo: int, hi: int) -> Callable[[str], int]:
    """A ``type=`` for a whole number in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            return bounded_int(_NAME, _parse_int(text), lo, hi)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(_why(exc)) from None

    parse.__name__ = "integer"
    return parse


def count(hi: int = MAX_STEPS) -> Callable[[str], int]:
    """A ``type=`` for a whole number in [1, hi] (steps, batch sizes, draws, sizes)."""

    def parse(text: str) -> int:
        try:
            return positive_int(_NAME, _parse_int(text), hi)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(_why(exc)) from None

    parse.__name__ = "count"
    return parse


#: a fraction in (0, 1]: areas, budgets
fraction = number(0.0, 1.0, lo_open=True)
#: a probability or level in [0, 1]
unit_interval = number(0.0, 1.0)
#: a finite number >= 0: loss weights, margins, kappa
non_negative = number(0.0, 1e12)
#: a finite number > 0: learning rates, radii
positive = number(0.0, 1e12, lo_open=True)
#: seconds in (0, MAX_SECONDS]
seconds = number(0.0, MAX_SECONDS, lo_open=True)
#: a length in millimetres in (0, MAX_MM]
millimetres = number(0.0, MAX_MM, lo_open=True)
#: a length in millimetres in [0, MAX_MM] (margins, overlaps)
millimetres_or_zero = number(0.0, MAX_MM)
#: a seed in [0, 2^63 - 1]
seed = integer(0, MAX_SEED)
#: a whole number in [0, MAX_STEPS] (0 meaning "none" or "until the end")
count_or_zero = integer(0, MAX_STEPS)
#: a batch size in [1, MAX_BATCH]
batch = count(MAX_BATCH)
#: an image side in pixels
pixels = count(MAX_SIDE)
#: a CPU thread count
threads = count(4096)


def device(text: str) -> str:
    """A ``type=`` for ``--device``: cpu, cuda, cuda:N or mps, refused unless this machine has it."""
    from testbed.device import parse_device

    try:
        return str(parse_device(text, what="device"))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def name_list(text: str) -> list[str]:
    """A comma-separated list of names, empty items dropped."""
    return [s.strip() for s in text.split(",") if s.strip()]


# ------------------------------------------------------------------------------------------------ paths
def _nearest_existing(p: Path) -> Path:
    """``p`` or its nearest ancestor that exists (as a link or a file or folder)."""
    q = p
    while not os.path.lexists(q):
        if q.parent == q:
            break
        q = q.parent
    return q


def _check_writable_parent(p: Path, what: str) -> None:
    anc = _nearest_existing(p.parent if p.name else p)
    try:
        st = os.stat(anc)
    except OSError as exc:  # a symlink loop or a dangling link on the way
        raise ConfigError(f"{what} {p}: {anc} cannot be used as a folder ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {p}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {p}: the folder {anc} is not writable")


def check_output_dir(path: str | os.PathLike[str], *, what: str = "--out") -> Path:
    """``path`` as a folder this process can create or write in; nothing is created.

    Refused: an empty path, an existing file, a symlink loop or dangling link, a path whose nearest existing
    ancestor is a file, and a folder without write permission. (A non-empty folder that is not a run directory
    is refused by :class:`testbed.runs.RunDir` for commands that write run directories.)
    """
    if not str(path).strip():
        raise ConfigError(f"{what} is empty")
    p = Path(path)
    if "\0" in str(path):
        raise ConfigError(f"{what} {str(path)!r} contains a NUL byte")
    if os.path.lexists(p):
        try:
            st = os.stat(p)
        except OSError as exc:
            reason = "is a symlink loop" if exc.errno == errno.ELOOP else f"cannot be used ({exc.strerror})"
            raise ConfigError(f"{what} {p} {reason}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{what} {p} exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {p} is not writable")
        return p
    _check_writable_parent(p, what)
    return p


def check_output_file(path: str | os.PathLike[str], *, what: str = "--out") -> Path:
    """``path`` as a file this process can create or replace; nothing is created."""
    if not str(path).strip():
        raise ConfigError(f"{what} is empty")
    if "\0" in str(path):
        raise ConfigError(f"{what} {str(path)!r} contains a NUL byte")
    p = Path(path)
    if os.path.lexists(p):
        try:
            st = os.stat(p)
        except OSError as exc:
            raise ConfigError(f"{what} {p} cannot be written ({exc.strerror})") from None
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{what} {p} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {p} exists and is not a regular file")
    _check_writable_parent(p, what)
    return p


def _as_type(check: Callable[..., Path]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            check(text, what="")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None
        return text

    parse.__name__ = check.__name__
    return parse


#: ``type=`` for an output folder (``check_output_dir`` at parse time; the value stays a str)
output_dir = _as_type(check_output_dir)
#: ``type=`` for an output file (``check_output_file`` at parse time; the value stays a str)
output_file = _as_type(check_output_file)


def input_file(what: str, *, max_bytes: int = 2**30) -> Callable[[str], str]:
    """A ``type=`` for an existing, readable, non-empty regular file (never opened here: a FIFO cannot block)."""
    from testbed.inputs import check_input_file

    def parse(text: str) -> str:
        try:
            check_input_file(text, what=what, max_bytes=max_bytes)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    parse.__name__ = "input_file"
    return parse


def file_name(text: str) -> str:
    """A ``type=`` for a bare file name (no folder part): what is written stays inside ``--out``."""
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be a plain file name without a folder part, got {text!r}")
    return text


def one_line(text: Any) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def check_run_out(path: str | os.PathLike[str], kind: str) -> None:
    """Before any work: refuse an ``--out`` the run directory of ``kind`` could not claim (read-only; the claim
    itself, which writes, is :func:`testbed.runs.claim_run_dir` once the run starts).

    Refused: a non-empty folder that is not a run directory, and a run directory of another kind.
    """
    from testbed.runs import run_dir_kind

    p = Path(path)
    if not p.is_dir():
        return  # a missing folder is created by the run; a file or bad parent was refused by output_dir
    found = run_dir_kind(p)
    if found is None:
        try:
            with os.scandir(p) as entries:
                empty = next(entries, None) is None
        except OSError as exc:
            raise ConfigError(f"--out {p} cannot be read ({exc.strerror})") from None
        if not empty:
            raise ConfigError(f"--out {p} is not empty and is not a {kind} run directory; give a new or empty "
                              "folder (nothing was written there)")
    elif found != kind:
        raise ConfigError(f"--out {p} is a {found} run directory, not a {kind} one; use a new --out folder")


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, action: argparse.Action) -> None:
    """``old``, an earlier spelling of ``action``'s option, kept working but hidden from ``--help`` (the one option
    vocabulary, docs/harness.md: ``--eval-samples`` for evaluation draws, ``--frames`` for frames)."""
    parser.add_argument(old, dest=action.dest, type=action.type, choices=action.choices, metavar=action.metavar,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """The one progress option of every command that can draw a progress bar: ``--progress`` / ``--no-progress``
    (``args.progress``). Default: on when stderr is a terminal, off when it is redirected (no bars in logs)."""
    import sys

    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                        help="progress bar on stderr (default: only when stderr is a terminal)")


#: the attribute ``add_model_options`` sets, so the ``testbed`` command knows to apply them (``apply_model_options``)
MODEL_OPTIONS_FLAG = "_model_options"
#: the attribute holding (the model tasks a command accepts or None, its default model) for ``apply_model_options``
MODEL_TASKS_FLAG = "_model_tasks"


def add_model_options(parser: argparse.ArgumentParser, *, default: str, what: str = "classification model",
                      tasks: tuple[str, ...] | None = None) -> None:
    """The one ``--model`` option of every command that takes a model, with the options of a model from outside
    the registry (``--weights``, ``--input-size``, ``--mean``, ``--std``, ``--labels``; docs/models.md, "Bring your
    own model"). ``testbed`` applies them once after parsing (:func:`apply_model_options`), so the command's
    ``get_entry(args.model)`` / ``get_model(args.model)`` find the model whatever its kind. ``tasks``: the model
    tasks the command accepts (default: the task of its ``default`` model); a known model of another task is a
    ConfigError naming the models it does accept (a detector given to ``classify``, e.g.)."""
    parser.add_argument("--model", default=default, metavar="MODEL",
                        help=f"{what}: a registry or user model name (testbed models list), torchvision:ARCH, a "
                             "TorchScript .pt/.pth file, an .onnx file, a model card .yaml, or module.path:callable "
                             f"(your own code, imported) (default: {default})")
    g = parser.add_argument_group("a model from outside the registry (docs/models.md, 'Bring your own model')")
    g.add_argument("--weights", metavar="FILE|NAME",
                   help="torchvision:ARCH only: a state-dict file (read with weights_only=True), or torchvision's "
                        "weights name (IMAGENET1K_V1, DEFAULT) when its file is in torch hub's cache "
                        "(default: DEFAULT, from the cache)")
    g.add_argument("--input-size", type=pixels, nargs=2, metavar=("H", "W"),
                   help="the model's input size in pixels (default: none; 224 224 for torchvision:ARCH)")
    g.add_argument("--mean", type=number(-1e3, 1e3), nargs=3, metavar=("R", "G", "B"),
                   help="normalisation mean on the [0, 1] pixel scale (default: none; ImageNet's for "
                        "torchvision:ARCH)")
    g.add_argument("--std", type=number(0.0, 1e3, lo_open=True), nargs=3, metavar=("R", "G", "B"),
                   help="normalisation std on the [0, 1] pixel scale (default: none; ImageNet's for "
                        "torchvision:ARCH)")
    g.add_argument("--labels", metavar="FILE",
                   help="class names: a text file (one a line, UTF-8) or JSON (list, or index -> name) "
                        "(default: none; ImageNet's 1,000 for torchvision:ARCH)")
    parser.set_defaults(**{MODEL_OPTIONS_FLAG: True, MODEL_TASKS_FLAG: (tasks, default)})


def apply_model_options(args: argparse.Namespace) -> None:
    """Make ``args.model`` with its options a model name for the rest of this command (a no-op for a command
    without model options, or a registry / user model name given alone). Bad options or files: ConfigError."""
    if not getattr(args, MODEL_OPTIONS_FLAG, False):
        return
    from testbed.models.external import source_kind, use_model

    options = {"weights": args.weights, "input_size": args.input_size, "mean": args.mean, "std": args.std,
               "labels": args.labels}
    if source_kind(args.model) is None:
        given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None]
        if given:
            raise ConfigError(f"{' '.join(given)}: only for a model outside the registry; {args.model} is a "
                              "registry or user model name")
    else:
        use_model(args.model, **options)
    _check_model_task(args)


def _check_model_task(args: argparse.Namespace) -> None:
    """A known ``--model`` whose task the command does not take is a ConfigError naming the ones it takes (an
    unknown name is left to the command, which names the known models)."""
    tasks, default = getattr(args, MODEL_TASKS_FLAG, (None, None))
    if default is None:
        return
    from testbed.errors import TestbedError
    from testbed.models.registry import get_entry, list_models

    try:
        entry = get_entry(args.model)
        accepted = tasks or (get_entry(default).task,)
    except TestbedError:
        return
    if entry.task not in accepted:
        names = ", ".join(n for t in accepted for n in list_models(t))
        raise ConfigError(f"--model {args.model} is a {entry.task} model; this command takes a "
                          f"{' or '.join(accepted)} model ({names}; testbed models list)")
