"""The tfjs-graph interpreter and the tfjs weight reader refuse bad files with an ``AssetError`` naming the problem
(malformed JSON, a graph that is not a graph model, a malformed node, an unknown op, weights of the wrong size,
malformed manifest entries), and a small graph read from disk computes what it says. Quick: no assets needed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from testbed.errors import AssetError
from testbed.models.tfjs_graph import build_tfjs_graph, load_tfjs_graph
from testbed.models.tfjs_weights import read_tfjs_weights


def _node(name: str, op: str, inputs=(), **attr) -> dict:
    return {"name": name, "op": op, "input": list(inputs), "attr": attr}


def _write_model(tmp_path: Path, nodes: list[dict], weights: list[dict], data: bytes) -> tuple[Path, Path]:
    model = {"format": "graph-model", "modelTopology": {"node": nodes},
             "weightsManifest": [{"paths": ["w.bin"], "weights": weights}]}
    (tmp_path / "model.json").write_text(json.dumps(model))
    (tmp_path / "w.bin").write_bytes(data)
    return tmp_path / "model.json", tmp_path / "w.bin"


# x * c + x: one float32 constant c of shape [1]
_NODES = [_node("x", "Placeholder"), _node("c", "Const"), _node("m", "Mul", ["x", "c"]), _node("out", "AddV2", ["m", "x"])]
_WEIGHTS = [{"name": "c", "shape": [1], "dtype": "float32"}]


def test_a_graph_read_from_disk_computes_what_it_says(tmp_path):
    model, weights = _write_model(tmp_path, _NODES, _WEIGHTS, np.array([3.0], "<f4").tobytes())
    graph = load_tfjs_graph(model, weights, ["out"])
    x = torch.rand(1, 2, 3, 3)
    (y,) = graph(x)
    assert torch.allclose(y, 4 * x)
    assert not any(p.requires_grad for p in graph.parameters())


@pytest.mark.parametrize("data,match", [
    (b"\x00\x00", "runs past the end"),  # truncated
    (b"", "is empty"),
    (np.array([3.0, 4.0], "<f4").tobytes(), "hold 8 bytes, the manifest describes 4"),  # too long
])
def test_weights_of_the_wrong_size_are_refused(tmp_path, data, match):
    model, weights = _write_model(tmp_path, _NODES, _WEIGHTS, data)
    with pytest.raises(AssetError, match=match):
        load_tfjs_graph(model, weights, ["out"])


@pytest.mark.parametrize("text,match", [
    ("{not json", "cannot read"),
    ("[1, 2]", "not a tfjs graph model"),
    (json.dumps({"format": "layers-model", "modelTopology": {}, "weightsManifest": []}), "not a graph-model"),
    (json.dumps({"format": "graph-model", "modelTopology": {"node": [{"op": "Const"}]},
                 "weightsManifest": [{"paths": ["w.bin"], "weights": _WEIGHTS}]}), "not a tfjs graph model"),
])
def test_malformed_model_json_is_refused(tmp_path, text, match):
    (tmp_path / "model.json").write_text(text)
    (tmp_path / "w.bin").write_bytes(b"\x00" * 4)
    with pytest.raises(AssetError, match=match):
        load_tfjs_graph(tmp_path / "model.json", tmp_path / "w.bin", ["out"])


def test_unknown_ops_and_malformed_nodes_are_named():
    graph = {"modelTopology": {"node": [_node("x", "Placeholder"), _node("p", "PyFunc", ["x"])]}}
    with pytest.raises(AssetError, match=r"PyFunc \(first at node 'p'\)"):
        build_tfjs_graph(graph, {}, ["p"])
    # a Mean without its axes input: the node is named, not an IndexError
    graph = {"modelTopology": {"node": [_node("x", "Placeholder"), _node("mean", "Mean", ["x"], keep_dims={"b": True})]}}
    with pytest.raises(AssetError, match=r"node 'mean' \(Mean\): malformed node"):
        build_tfjs_graph(graph, {}, ["mean"])
    with pytest.raises(AssetError, match="has no node 'nowhere'"):
        build_tfjs_graph(graph, {}, ["nowhere"])


@pytest.mark.parametrize("entry,match", [
    ({"shape": [1], "dtype": "float32"}, "malformed weights manifest entry"),  # no name
    ({"name": "c", "shape": ["a"], "dtype": "float32"}, "malformed weights manifest entry"),
    ({"name": "c", "shape": [-1], "dtype": "float32"}, "negative dimension"),
    ({"name": "c", "shape": [1], "dtype": "float32", "quantization": "uint8"}, "malformed quantization"),
    ({"name": "c", "shape": [1], "dtype": "float32", "quantization": {"dtype": "uint8"}}, "without a numeric scale"),
    ({"name": "c", "shape": [1], "dtype": "string"}, "unsupported dtype 'string'"),
])
def test_malformed_manifest_entries_are_named(tmp_path, entry, match):
    (tmp_path / "m.json").write_text(json.dumps([{"paths": ["w.bin"], "weights": [entry]}]))
    (tmp_path / "w.bin").write_bytes(np.array([3.0], "<f4").tobytes())
    with pytest.raises(AssetError, match=match):
        read_tfjs_weights(tmp_path / "m.json")
