"""Hypothesis fuzzing of every parser of user files: only TestbedError subclasses may escape.

Parsers: the EOT config (JSON and YAML), palettes (testbed.palette: JSON and CSV), the sheet sidecar
(rectify and ``capture --simulate``), the experiment YAML (``parse_config`` and ``load_config``), and a run
directory's ``config.json`` / marker (``testbed.runs``). Inputs: random bytes, random JSON/YAML documents
(plain values, and mappings over each parser's own keys so validation is reached), and byte-level mutations of
a valid file. Never UnicodeDecodeError, RecursionError, KeyError, TypeError, AttributeError, OverflowError...
Derandomized; 1,670 examples in all.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.errors import TestbedError


def fuzz(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


WORK = Path(tempfile.mkdtemp(prefix="testbed-inputs-fuzz-"))


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(WORK, ignore_errors=True)


def only_testbed_errors(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except TestbedError:
        pass


def write(name: str, data: bytes | str) -> Path:
    p = WORK / name
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    p.write_bytes(data)
    return p


# ------------------------------------------------------------------------------------------------ strategies
scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from([0, 1, -0.0, 1e308, 10**400, "", "nan", [], {}]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                      max_leaves=16)


def mappings_over(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts over a parser's own keys (and a stray one), so its value checks are reached."""
    return st.dictionaries(st.sampled_from(keys + ["stray"]), values, max_size=len(keys) + 1)


def dumps_json(v: Any) -> str:
    return json.dumps(v)


def dumps_yaml(v: Any) -> str:
    return yaml.safe_dump(v, allow_unicode=True)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """A valid file with a few bytes flipped, inserted or deleted, or truncated."""

    @st.composite
    def mutate(draw):
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
            if not data:
                break
            i = draw(st.integers(0, len(data) - 1))
            if op == "flip":
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "insert":
                data[i:i] = draw(st.binary(min_size=1, max_size=8))
            elif op == "delete":
                del data[i:i + draw(st.integers(1, 8))]
            else:
                del data[i:]
        return bytes(data)

    return mutate()


# ------------------------------------------------------------------------------------------------ EOT config
EOT_KEYS = ["preset", "rotation", "scale", "translate", "perspective", "padding", "printer_gain", "printer_offset",
            "illuminant", "brightness", "contrast", "contrast_pivot", "saturation", "blur_kind", "blur", "motion",
            "noise_kind", "noise", "jpeg_quality", "clamp"]
VALID_EOT = json.dumps({"preset": "rp2", "rotation": 10, "scale": [0.5, 1.0], "jpeg_quality": [60, 90]}).encode()


def _eot(name: str, data: bytes | str) -> None:
    from physical.eot import EOTConfig

    only_testbed_errors(lambda: EOTConfig.load(write(name, data)))


@fuzz(150)
@given(st.one_of(mappings_over(EOT_KEYS), values))
def test_eot_config_documents(doc):
    _eot("eot.json", dumps_json(doc))
    _eot("eot.yaml", dumps_yaml(doc))


@fuzz(150)
@given(st.one_of(st.binary(min_size=1, max_size=200), mutations(VALID_EOT)))
def test_eot_config_bytes(data):
    _eot("eot.json", data)
    _eot("eot.yaml", data)


# ------------------------------------------------------------------------------------------------ palettes
colour_lists = st.lists(st.lists(scalars, max_size=4) | scalars, max_size=4)
VALID_PALETTE = json.dumps({"format": "testbed-palette/1", "colors": [[0.1, 0.2, 0.3], [1, 1, 1]],
                            "intended": [[0.1, 0.2, 0.3], [1, 1, 1]], "meta": {}}).encode()
VALID_CSV = b"r,g,b\n0.1,0.2,0.3\n1,1,1\n"


def _palettes(json_bytes: bytes | str | None = None, csv_bytes: bytes | str | None = None) -> None:
    from testbed.palette import load_palette, read_palette

    if json_bytes is not None:
        p = write("pal.json", json_bytes)
        only_testbed_errors(lambda: read_palette(p))
        only_testbed_errors(lambda: load_palette(p))
    if csv_bytes is not None:
        only_testbed_errors(lambda: read_palette(write("pal.csv", csv_bytes)))


@fuzz(250)
@given(st.one_of(st.fixed_dictionaries({"colors": colour_lists}, optional={"intended": colour_lists, "meta": values}),
                 mappings_over(["colors", "intended", "meta"]), colour_lists, values))
def test_palette_documents(doc):
    _palettes(json_bytes=dumps_json(doc))


@fuzz(200)
@given(st.one_of(st.binary(min_size=1, max_size=200), mutations(VALID_PALETTE)), st.one_of(
    st.binary(min_size=1, max_size=120), mutations(VALID_CSV),
    st.lists(st.lists(st.text(max_size=6), max_size=5), max_size=5).map(lambda rows: "\n".join(",".join(r) for r in rows))))
def test_palette_bytes_and_csv(json_data, csv_data):
    _palettes(json_bytes=json_data, csv_bytes=csv_data)


# ------------------------------------------------------------------------------------------------ sheet sidecar
def _valid_sheet() -> dict[str, Any]:
    from printouts.sheets import SheetConfig, patch_sheet

    sheet = patch_sheet(torch.full((1, 3, 8, 8), 0.5), 40.0, None, SheetConfig(dpi=50))
    return json.loads(json.dumps(sheet.sidecar({"pdf": "patch.pdf", "pdf_sha256": "0" * 64, "png": []})))


VALID_SHEET = _valid_sheet()
OBJECT_KEYS = sorted(VALID_SHEET["objects"][0])


@st.composite
def damaged_sheets(draw) -> dict[str, Any]:
    """The valid sidecar with one field of its object, page or files replaced or removed."""
    d = json.loads(json.dumps(VALID_SHEET))
    where = draw(st.sampled_from(["object", "marker", "page", "files", "top"]))
    if where == "object":
        target = d["objects"][0]
    elif where == "marker":
        target = d["objects"][0]["markers"][draw(st.integers(0, 3))]
    elif where == "page":
        target = d["page"] if draw(st.booleans()) else d["page"]["pages"][0]
    elif where == "files":
        target = d["files"]
    else:
        target = d
    key = draw(st.sampled_from(sorted(target)))
    if draw(st.booleans()):
        del target[key]
    else:
        target[key] = draw(values)
    return d


def _sheet(data: bytes | str) -> None:
    from camera.rectify import load_object_spec, load_sheet

    p = write("sheet.json", data)
    only_testbed_errors(lambda: load_sheet(p, need=("objects", "page", "files")))
    only_testbed_errors(lambda: load_object_spec(p))
    only_testbed_errors(lambda: load_object_spec(p, "patch"))


@fuzz(300)
@given(st.one_of(damaged_sheets(), mappings_over(["objects", "page", "files", "format"]), values))
def test_sheet_sidecar_documents(doc):
    _sheet(dumps_json(doc))


@fuzz(150)
@given(st.one_of(st.binary(min_size=1, max_size=200), mutations(json.dumps(VALID_SHEET).encode())))
def test_sheet_sidecar_bytes(data):
    _sheet(data)


def test_the_valid_sheet_is_accepted():
    from camera.rectify import load_object_spec, load_sheet

    p = write("sheet_ok.json", json.dumps(VALID_SHEET))
    assert load_sheet(p, need=("objects", "page", "files"))["objects"][0]["name"] == "patch"
    assert load_object_spec(p).name == "patch"


# ------------------------------------------------------------------------------------------------ experiment YAML
TOP_KEYS = ["name", "kind", "seed", "models", "targets", "attacks", "eps", "images", "channel", "batch_size",
            "prefilter_confidence", "examples", "torch_threads", "surrogate"]
VALID_EXPERIMENT = {"name": "fuzz", "kind": "kurakin", "seed": 0, "models": ["mobilenet_v2"],
                    "attacks": ["fgsm", {"name": "bim", "steps": 3}], "eps": [4, 16],
                    "images": {"names": ["chelsea"], "crops_per_photo": 2},
                    "channel": {"kind": "simulated", "repetitions": 2, "simulator": {"dpi": 100}},
                    "batch_size": 4, "examples": 1}


@st.composite
def damaged_experiments(draw) -> dict[str, Any]:
    d = json.loads(json.dumps(VALID_EXPERIMENT))
    target = d if draw(st.booleans()) else d[draw(st.sampled_from(["images", "channel"]))]
    key = draw(st.sampled_from(sorted(target) + ["stray"]))
    target[key] = draw(values)
    return d


def _parse_experiment(doc: Any) -> None:
    import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
    from pipelines.experiment import parse_config

    if isinstance(doc, dict):
        only_testbed_errors(lambda: parse_config(doc, check_names=False))


@fuzz(250)
@given(st.one_of(damaged_experiments(), mappings_over(TOP_KEYS)))
def test_experiment_parse_config(doc):
    _parse_experiment(doc)


@fuzz(100)
@given(st.one_of(st.binary(min_size=1, max_size=200), mutations(dumps_yaml(VALID_EXPERIMENT).encode()),
                 damaged_experiments().map(dumps_yaml)))
def test_experiment_yaml_files(data):
    import pipelines.kinds  # noqa: F401  (registers the built-in experiment kinds)
    from pipelines.experiment import load_config

    p = write("exp.yaml", data)
    only_testbed_errors(lambda: load_config(p))


# ------------------------------------------------------------------------------------------------ run directory
RUN_CONFIG = {"attack": "patch", "seed": 0, "steps": 10, "eot": {"rotation": 5.0}, "model": "tiny"}


@fuzz(120)
@given(st.one_of(st.binary(min_size=1, max_size=200), mutations(json.dumps(RUN_CONFIG).encode()),
                 st.one_of(values, mappings_over(sorted(RUN_CONFIG))).map(dumps_json)),
       st.sampled_from(["config", "marker"]))
def test_run_directory_files(data, which):
    from testbed.runs import CONFIG_FILE, RUN_MARKER, RunDir, run_dir_kind

    run = WORK / "run"
    shutil.rmtree(run, ignore_errors=True)
    RunDir(run, RUN_CONFIG)  # a genuine run directory, then one of its files replaced
    (run / (CONFIG_FILE if which == "config" else RUN_MARKER)).write_bytes(
        data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    only_testbed_errors(lambda: run_dir_kind(run))
    only_testbed_errors(lambda: RunDir(run, RUN_CONFIG))


def test_nan_and_huge_numbers_reach_validation():
    """Spot checks the generators above cover: JSON NaN and 400-digit integers are refused by name."""
    from physical.eot import EOTConfig

    for text in ('{"rotation": NaN}', '{"rotation": ' + "9" * 400 + "}", '{"scale": [1, Infinity]}'):
        with pytest.raises(TestbedError):
            EOTConfig.load(write("eot.json", text))
    assert math.isnan(json.loads('{"a": NaN}')["a"])
