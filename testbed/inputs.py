"""The one input boundary: a loader per kind of user file, each bounded and with one-line errors.

Every file the testbed reads from a user, a run directory or a config goes through one of these:

* :func:`check_input_file` - exists, is a regular file (never opens a FIFO, device or socket), is not a
  symlink loop, is readable, is not empty, is not larger than the limit for its kind;
* :func:`read_text` - strict UTF-8 (a leading BOM is tolerated); a bad byte is named with its offset;
* :func:`load_json` / :func:`load_yaml` (and :func:`parse_json_text` / :func:`parse_yaml_text`) - parse errors
  with line and column, nesting bounded without recursion, YAML alias bombs and self-referencing aliases refused;
* :func:`open_image_checked` - reads only the image header and refuses more than :func:`max_image_pixels`
  pixels before anything is decoded; :func:`check_image_bytes` does the same for OpenCV decodes and
  :func:`check_frame_size` for video frames;
* :func:`finite_float` / :func:`positive_int` / :func:`bounded_int` - value checks for validators.

All errors are :class:`~testbed.errors.ConfigError` (text, JSON, YAML, numbers) or
:class:`~testbed.errors.ImageError` (images) with a one-line message naming the file. The limits are listed in
``docs/bad-input.md``. This module is a leaf: it imports only the standard library, numpy, PIL, yaml and
``testbed.errors``.
"""
from __future__ import annotations

import errno
import io
import json
import math
import numbers
import os
import re
import stat
import struct
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from testbed.errors import ConfigError, ImageError, TestbedError

#: Largest text file (config, sidecar, palette, run metadata) read, in bytes.
MAX_TEXT_BYTES = 16 * 2**20
#: Deepest nesting of lists/objects accepted in JSON and YAML.
MAX_NESTING = 64
#: Most YAML nodes a document may expand to once aliases are followed (alias bombs are refused).
MAX_YAML_NODES = 100_000
#: Default decompression-bomb limit: most pixels (width x height) an image may declare. Override with the
#: environment variable ``TESTBED_MAX_IMAGE_PIXELS`` (a whole number between 1 and ``MAX_IMAGE_PIXELS_CEILING``).
MAX_IMAGE_PIXELS = 40_000_000
#: The largest value ``TESTBED_MAX_IMAGE_PIXELS`` may take (2^31 pixels, about 26 GB as a float tensor).
MAX_IMAGE_PIXELS_CEILING = 2**31
#: Largest encoded image file read, in bytes.
MAX_IMAGE_BYTES = 256 * 2**20
#: Image formats PIL may open (never EPS/PS, which would run Ghostscript, nor exotic plug-ins).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
#: Environment variable overriding :data:`MAX_IMAGE_PIXELS`.
PIXELS_ENV = "TESTBED_MAX_IMAGE_PIXELS"

_UTF8_BOM = b"\xef\xbb\xbf"


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MB" if n >= 2**20 else f"{n} bytes"


# ------------------------------------------------------------------------------------------------ files
def check_input_file(path: str | os.PathLike[str], *, what: str, max_bytes: int,
                     error: type[TestbedError] = ConfigError) -> Path:
    """``path`` as a Path once it is known to be a readable, non-empty regular file of at most ``max_bytes``.

    Uses ``os.stat`` before anything is opened, so a FIFO, device or socket is refused without blocking.
    Raises ``error`` (ConfigError by default) with a one-line message naming ``what`` and the path.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.lexists(p):
            raise error(f"{what} {p} is a symlink to {os.readlink(p)!s}, which does not exist") from None
        raise error(f"{what} {p} does not exist") from None
    except PermissionError:
        raise error(f"{what} {p} cannot be read: permission denied (on the file or a folder above it)") from None
    except OSError as exc:
        raise error(f"{what} {p} {_os_reason(exc)}") from None
    except ValueError as exc:  # embedded NUL byte in the path
        raise error(f"{what} {p!r} is not a valid path ({exc})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise error(f"{what} {p} is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise error(f"{what} {p} is {_kind_of(mode)}, not a regular file")
    if not os.access(p, os.R_OK):
        raise error(f"{what} {p} cannot be read: permission denied")
    if st.st_size == 0:
        raise error(f"{what} {p} is empty")
    if st.st_size > max_bytes:
        raise error(f"{what} {p} is {_mb(st.st_size)}, more than the limit of {_mb(max_bytes)} for a {what}")
    return p


def _kind_of(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symlink loop (it resolves to itself)"
    if exc.errno == errno.ENOTDIR:
        return "cannot be reached: a part of its path is a file, not a folder"
    if exc.errno == errno.ENAMETOOLONG:
        return "has a name too long for the file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    return f"cannot be read: {exc.strerror or exc}"


def read_bytes(path: str | os.PathLike[str], *, what: str, max_bytes: int,
               error: type[TestbedError] = ConfigError) -> bytes:
    """The bytes of a checked file (see :func:`check_input_file`), never more than ``max_bytes``.

    The file is opened non-blocking and checked again on the open descriptor, so a file swapped for a FIFO
    after the check cannot block, and one that grows after the check cannot exceed the limit.
    """
    p = check_input_file(path, what=what, max_bytes=max_bytes, error=error)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{what} {p} {_os_reason(exc)}") from None
    with os.fdopen(fd, "rb") as fh:
        try:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise error(f"{what} {p} is not a regular file")
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{what} {p} {_os_reason(exc)}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {p} is more than the limit of {_mb(max_bytes)} for a {what}")
    if not data:
        raise error(f"{what} {p} is empty")
    return data


def decode_utf8(data: bytes, *, what: str, source: str) -> str:
    """Strict UTF-8 (a leading BOM is dropped); the error names the byte offset and line of the first bad byte."""
    skip = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skip
        line = data.count(b"\n", 0, offset) + 1
        raise ConfigError(f"{what} {source} is not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} "
                          f"(line {line}) is not valid UTF-8; save the file as UTF-8") from None


def read_text(path: str | os.PathLike[str], *, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A checked text file as a str: strict UTF-8, BOM tolerated, at most ``max_bytes``."""
    data = read_bytes(path, what=what, max_bytes=max_bytes)
    return decode_utf8(data, what=what, source=str(path))


# ------------------------------------------------------------------------------------------------ JSON
#: Largest integer magnitude accepted in JSON/YAML: nothing the testbed reads needs more than 64 bits, and a
#: bigger one would overflow the float conversions of the value checks.
MAX_INT_MAGNITUDE = 2**63


def _scan(obj: Any, limit: int) -> str | None:
    """What is wrong with parsed data: lists/dicts nested deeper than ``limit`` or an integer beyond
    MAX_INT_MAGNITUDE; None if nothing. Iterative, so no RecursionError."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.keys()) + list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            if isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_INT_MAGNITUDE:
                return f"holds an integer of {node.bit_length()} bits, beyond the limit of +-2^63"
            continue
        if depth > limit:
            return f"nests lists/objects deeper than the limit of {limit} levels"
        stack.extend((c, depth + 1) for c in children)
    return None


def _bracket_depth(text: str, limit: int) -> int | None:
    """Offset of the first '[' or '{' deeper than ``limit`` outside strings, or None (a linear pre-scan)."""
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return i
        elif ch in "]}":
            depth -= 1
    return None


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def parse_json_text(text: str, *, what: str, source: str = "", max_nesting: int = MAX_NESTING) -> Any:
    """Parse JSON text; errors give line/column, nesting beyond ``max_nesting`` is refused with a clear error."""
    where = f"{what} {source}".strip()
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ConfigError(f"{where} has the key {exc.args[0]!r} twice in one object") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        off = _bracket_depth(text, max_nesting)
        at = " at line {} column {}".format(*_line_col(text, off)) if off is not None else ""
        raise ConfigError(f"{where} nests lists/objects deeper than the limit of {max_nesting} levels{at}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{where} could not be read as JSON: {_one_line(exc)}") from None
    problem = _scan(data, max_nesting)
    if problem and "nests" in problem:
        off = _bracket_depth(text, max_nesting)
        at = " at line {} column {}".format(*_line_col(text, off)) if off is not None else ""
        raise ConfigError(f"{where} {problem}{at}")
    if problem:
        raise ConfigError(f"{where} {problem}")
    return data


def load_json(path: str | os.PathLike[str], *, what: str, max_nesting: int = MAX_NESTING,
              max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """A checked, UTF-8, bounded JSON file (see :func:`read_text` and :func:`parse_json_text`)."""
    return parse_json_text(read_text(path, what=what, max_bytes=max_bytes), what=what, source=str(path),
                           max_nesting=max_nesting)


# ------------------------------------------------------------------------------------------------ YAML
class _LimitError(Exception):
    """Internal: a YAML document broke a limit while being composed (carries the message)."""


class _DepthLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts nesting and stops at ``max_depth`` (no deep recursion)."""

    max_depth = MAX_NESTING

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # yaml.composer.Composer API
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise _LimitError(f"nests lists/mappings deeper than the limit of {self.max_depth} levels "
                                  f"at line {mark.line + 1} column {mark.column + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_yaml_graph(root: yaml.Node, max_nesting: int, max_nodes: int) -> None:
    """Refuse a composed YAML graph whose alias-expanded size or depth is too large, or that contains a cycle.

    Post-order walk with memoised sizes, so shared (aliased) nodes are visited once: linear in the document.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0) if children else 0
            if size[key] > max_nodes:
                mark = node.start_mark
                raise _LimitError(f"expands to more than {max_nodes} nodes once its aliases are followed "
                                  f"(an alias bomb?) at line {mark.line + 1}")
            if depth[key] > max_nesting:
                mark = node.start_mark
                raise _LimitError(f"nests lists/mappings deeper than the limit of {max_nesting} levels once its "
                                  f"aliases are followed, at line {mark.line + 1}")
            continue
        if key in size:
            continue
        if key in on_path:
            mark = node.start_mark
            raise _LimitError(f"has an alias that refers to itself (a cycle) at line {mark.line + 1}")
        on_path.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
        for c in children:
            if id(c) in on_path:
                mark = c.start_mark
                raise _LimitError(f"has an alias that refers to itself (a cycle) at line {mark.line + 1}")
            if id(c) not in size:
                stack.append((c, False))


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: dict[str, int] = {}
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
            if k.value in seen:
                raise _LimitError(f"has the key {k.value!r} twice (lines {seen[k.value]} and "
                                  f"{k.start_mark.line + 1})")
            seen[k.value] = k.start_mark.line + 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for kv in node.value for n in kv]
    return []


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def parse_yaml_text(text: str, *, what: str, source: str = "", max_nesting: int = MAX_NESTING,
                    max_nodes: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load`` semantics with bounded nesting and alias expansion; errors give line/column."""
    where = f"{what} {source}".strip()
    loader_cls = type("_Loader", (_DepthLoader,), {"max_depth": max_nesting})
    loader = None
    try:
        loader = loader_cls(text)  # the reader refuses control characters here already
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_graph(node, max_nesting, max_nodes)
        data = loader.construct_document(node)
        problem = _scan(data, max_nesting)
        if problem:
            raise _LimitError(problem)
        return data
    except _LimitError as exc:
        raise ConfigError(f"{where} {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        if exc.problem and exc.context:
            problem = f"{exc.problem} ({exc.context})"
        raise ConfigError(f"{where} is not valid YAML: {_one_line(problem)}{at}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{where} is not valid YAML: it contains the control character #x{exc.character:04x} at "
                          f"character {exc.position}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests lists/mappings deeper than the limit of {max_nesting} levels") from None
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
        # e.g. a timestamp like 2020-13-45, an integer of more than 4300 digits
        raise ConfigError(f"{where} could not be read as YAML: {_one_line(exc)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | os.PathLike[str], *, what: str, max_nesting: int = MAX_NESTING,
              max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """A checked, UTF-8, bounded YAML file (see :func:`read_text` and :func:`parse_yaml_text`)."""
    return parse_yaml_text(read_text(path, what=what, max_bytes=max_bytes), what=what, source=str(path),
                           max_nesting=max_nesting)


def load_config_file(path: str | os.PathLike[str], *, what: str, max_nesting: int = MAX_NESTING) -> Any:
    """JSON or YAML by suffix (``.yaml``/``.yml`` is YAML, anything else JSON)."""
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        return load_yaml(path, what=what, max_nesting=max_nesting)
    return load_json(path, what=what, max_nesting=max_nesting)


def require_mapping(data: Any, *, what: str, source: str = "", keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` as a dict holding every key in ``keys``; otherwise a ConfigError naming the missing key."""
    where = f"{what} {source}".strip()
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a JSON/YAML object (mapping), got {_type_name(data)}")
    for k in keys:
        if k not in data:
            raise ConfigError(f"{where} has no '{k}' key")
    return data


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


# ------------------------------------------------------------------------------------------------ images
def max_image_pixels() -> int:
    """The decompression-bomb limit: ``TESTBED_MAX_IMAGE_PIXELS`` if set (validated), else MAX_IMAGE_PIXELS."""
    raw = os.environ.get(PIXELS_ENV)
    if raw is None or raw.strip() == "":
        return MAX_IMAGE_PIXELS
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise ConfigError(f"{PIXELS_ENV}={raw!r} is not a whole number of pixels") from None
    if not 1 <= value <= MAX_IMAGE_PIXELS_CEILING:
        raise ConfigError(f"{PIXELS_ENV}={raw!r} must be between 1 and {MAX_IMAGE_PIXELS_CEILING} pixels")
    return value


class ImageTooLargeError(ImageError):
    """An image declares more pixels than :func:`max_image_pixels` allows (refused before decoding)."""


def check_pixels(width: int, height: int, *, what: str, source: str,
                 error: type[TestbedError] = ImageTooLargeError) -> None:
    """Refuse a ``width`` x ``height`` image above the pixel limit (or with a non-positive side)."""
    limit = max_image_pixels()
    if width <= 0 or height <= 0:
        raise error(f"{what} {source} declares an empty size {width}x{height}")
    if width * height > limit:
        raise error(f"{what} {source} declares {width}x{height} = {width * height} pixels, more than the limit of "
                    f"{limit} pixels (a decompression bomb?); raise {PIXELS_ENV} to read it anyway")


def _bomb_message(exc: BaseException, *, what: str, source: str, limit: int) -> str:
    """Our message for PIL's DecompressionBombError (its text carries the declared pixel count)."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    declared = f"declares {int(m.group(1))} pixels" if m else "declares too many pixels"
    return (f"{what} {source} {declared}, more than the limit of {limit} pixels (a decompression bomb?); "
            f"raise {PIXELS_ENV} to read it anyway")


def _open_pil(fp: str | Path | BinaryIO, *, what: str, source: str) -> Image.Image:
    """Open (header only) and check the declared size against :func:`max_image_pixels` before any decoding."""
    limit = max_image_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit  # our limit governs; PIL's would otherwise refuse a raised override
    try:
        with warnings.catch_warnings(record=True):  # PIL's bomb warning: our own check below decides
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(_bomb_message(exc, what=what, source=source, limit=limit)) from None
    except UnidentifiedImageError:
        raise ImageError(f"{source} is not a readable image (corrupt or unknown format; "
                         f"accepted: {', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"{source} could not be decoded: {_one_line(exc)}") from None
    try:
        w, h = img.size
        check_pixels(int(w), int(h), what=what, source=source)
    except BaseException:
        img.close()
        raise
    return img


def open_image_checked(path: str | os.PathLike[str], *, what: str = "image file") -> Image.Image:
    """A PIL image with only its header read, after the file and pixel-count checks.

    The caller decodes it with :func:`decode_checked` (or ``img.load()`` inside ``with``) and closes it.
    Refused before decoding: missing/folder/special/empty files, files over MAX_IMAGE_BYTES, formats outside
    IMAGE_FORMATS, and images declaring more than :func:`max_image_pixels` pixels.
    """
    p = check_input_file(path, what=what, max_bytes=MAX_IMAGE_BYTES, error=ImageError)
    return _open_pil(p, what=what, source=str(p))


def decode_checked(img: Image.Image, *, what: str, source: str) -> Image.Image:
    """``img.load()`` with decoder failures (truncated, corrupt, bomb warnings) as ImageError."""
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(_bomb_message(exc, what=what, source=source, limit=max_image_pixels())) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"{source} could not be decoded: {_one_line(exc)}") from None
    except MemoryError:
        raise ImageError(f"{what} {source} does not fit in memory once decoded") from None
    return img


def check_image_bytes(data: bytes, *, what: str, source: str) -> tuple[int, int] | None:
    """Before an OpenCV decode: the (width, height) PIL reads from the header, refused above the pixel limit.

    Returns None where PIL does not know the format (OpenCV then applies its own limit); a header PIL knows but
    cannot parse is left to the decoder, which reports it.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{what} {source} is {_mb(len(data))}, more than the limit of {_mb(MAX_IMAGE_BYTES)}")
    try:
        img = _open_pil(io.BytesIO(data), what=what, source=source)
    except ImageTooLargeError:
        raise
    except ImageError:
        return None  # unknown/corrupt header: the decoder's own error names it
    w, h = (int(v) for v in img.size)
    img.close()
    return w, h


def check_image_file(path: str | os.PathLike[str], *, what: str = "image file") -> bytes:
    """The bytes of an image file for an OpenCV decode (``cv2.imdecode``), after the file and pixel checks."""
    data = read_bytes(path, what=what, max_bytes=MAX_IMAGE_BYTES, error=ImageError)
    check_image_bytes(data, what=what, source=str(path))
    return data


def imread_checked(path: str | os.PathLike[str], flags: int | None = None, *, what: str = "image file") -> np.ndarray:
    """``cv2.imread`` behind the input boundary: header checked first, decoded from the checked bytes."""
    import cv2

    data = check_image_file(path, what=what)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR if flags is None else flags)
    if img is None or img.size == 0:
        raise ImageError(f"{what} {path} could not be decoded by OpenCV (corrupt or unknown format)")
    return img


#: The image files a folder of images is read for, by every reader of one (camera image folders, the secure
#: capture's folder, experiment image folders, channel photo folders): what OpenCV and Pillow both decode.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def natural_key(path: str | os.PathLike[str]) -> list[Any]:
    """Sort key putting ``img2`` before ``img10`` (digit runs compare as numbers, the rest case-insensitively)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def list_images(folder: str | os.PathLike[str], *, what: str | None = None,
                error: type[TestbedError] = ImageError) -> list[Path]:
    """The image files directly in ``folder`` (``IMAGE_EXTENSIONS``, any case), in natural name order: the one
    image-folder reader. ``error`` (default ImageError) names ``what`` (default ``image folder <folder>``) when the
    path is not a folder or holds no images."""
    p = Path(folder)
    what = what or f"image folder {p}"
    if not p.is_dir():
        raise error(f"{what}: does not exist or is not a folder")
    files = sorted((q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()), key=natural_key)
    if not files:
        raise error(f"{what}: no images in it (looked for {' '.join(IMAGE_EXTENSIONS)})")
    return files


def find_image(stem: str | os.PathLike[str]) -> Path | None:
    """The file ``stem`` + the first of ``IMAGE_EXTENSIONS`` that exists (``photos/img7`` -> ``photos/img7.jpg``)."""
    for ext in IMAGE_EXTENSIONS:
        q = Path(f"{stem}{ext}")
        if q.is_file():
            return q
    return None


def check_frame_size(width: float, height: float, *, what: str, source: str,
                     error: type[TestbedError] = ImageTooLargeError) -> None:
    """Refuse a video/stream whose declared frame size exceeds the pixel limit (0 x 0 = unknown is allowed)."""
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError, OverflowError):
        return
    if w <= 0 or h <= 0:
        return
    check_pixels(w, h, what=what, source=source, error=error)


# ------------------------------------------------------------------------------------------------ numbers
def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def finite_float(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float within [lo, hi] (``lo_open``: strictly above lo, so -0.0 and 0.0 fail lo=0).

    Refuses bools, strings, None, nan and +-inf with a ConfigError naming ``name`` and the value.
    """
    if not _is_number(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (OverflowError, ValueError):
        raise ConfigError(f"{name} is too large: {value!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{name} must be a finite number, got {x}")
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {x!r}")
    if hi is not None and (x >= hi if hi_open else x > hi):
        raise ConfigError(f"{name} must be {'<' if hi_open else '<='} {hi:g}, got {x!r}")
    return x + 0.0  # -0.0 -> 0.0


def bounded_int(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]; refuses bools, floats, strings and None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    v = int(value)
    if not lo <= v <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {v}")
    return v


#: Upper bound of :func:`positive_int` unless given (counts beyond it are surely a mistake).
MAX_COUNT = 2**31 - 1


def positive_int(name: str, value: Any, hi: int | None = None) -> int:
    """``value`` as an int >= 1 (and <= ``hi``, default MAX_COUNT); refuses 0, negatives, bools, floats."""
    top = MAX_COUNT if hi is None else hi
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    v = int(value)
    if v < 1:
        raise ConfigError(f"{name} must be >= 1, got {v}")
    if v > top:
        raise ConfigError(f"{name} must be <= {top}, got {v}")
    return v


# ------------------------------------------------------------------------------------------------ colours
#: Most colours a palette file may list.
MAX_PALETTE_COLORS = 65_536


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def color_triples(value: Any, *, where: str, key: str = "colors", max_colors: int = MAX_PALETTE_COLORS) -> np.ndarray:
    """A palette's colour list as an Nx3 float64 array in [0, 1]; every malformed entry is named.

    Refuses a non-list, an empty list, more than ``max_colors`` entries, an entry that is not a list of exactly
    3 numbers (bools and strings are not numbers), nan/inf, and values outside [0, 1] (with a hint when the
    values look like 0-255).
    """
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ConfigError(f"{where}: '{key}' must be a non-empty list of [r, g, b] triples, got {_short(value)}")
    if len(value) > max_colors:
        raise ConfigError(f"{where}: '{key}' lists {len(value)} colours, more than the limit of {max_colors}")
    for i, c in enumerate(value):
        if not isinstance(c, (list, tuple)) or len(c) != 3:
            n = f"{len(c)} values" if isinstance(c, (list, tuple)) else _type_name(c)
            raise ConfigError(f"{where}: {key}[{i}] = {_short(c)} has {n}; colours must be [r, g, b] triples "
                              "of 3 numbers")
        for v in c:
            if not _is_number(v):
                raise ConfigError(f"{where}: {key}[{i}] = {_short(c)}: {_short(v, 30)} is not a number; colours "
                                  "must be [r, g, b] triples of numbers")
            try:
                finite = math.isfinite(float(v))
            except OverflowError:
                finite = False
            if not finite:
                raise ConfigError(f"{where}: {key}[{i}] = {_short(c)} holds {_short(v, 30)}, not a finite number")
    arr = np.asarray(value, np.float64)
    bad = np.flatnonzero(((arr < 0) | (arr > 1)).any(axis=1))
    if bad.size:
        i = int(bad[0])
        hint = ("; they look like 0-255 values: divide by 255" if arr.min() >= 0 and arr.max() <= 255 else "")
        raise ConfigError(f"{where}: palette values must be in [0, 1] (sRGB), got {key}[{i}] = "
                          f"{_short(list(value[i]))}{hint}")
    return arr
