"""A small interpreter of TensorFlow.js graph models (``model.json`` ``format: graph-model`` + weight shards) in torch.

Parsing reads JSON and raw little-endian tensors only (``testbed.inputs.load_json`` and
``testbed.models.tfjs_weights``): nothing from the files is executed. :func:`load_tfjs_graph` keeps only the nodes
the requested outputs depend on, checks that every one of their ops is one this module maps to torch (an unknown op
is an :class:`~testbed.errors.AssetError` naming the op and the node), and returns a :class:`TfjsGraph` module whose
weights are frozen-able parameters, so the graph runs on CPU or CUDA and passes gradients to its input.

Layout: the graph is NHWC (TensorFlow's default); the module takes and returns NCHW tensors and maps every axis
attribute / constant to NCHW, so convolutions run natively. Every non-constant tensor must be 4-D (the ops below
keep the rank), which holds for convolutional backbones and heads; a graph's post-processing tail (TopK, Gather,
Reshape, ...) is not interpreted: ask for the tensors before it and decode them in torch.

Ops: ``Placeholder``, ``Const``, ``Identity``, ``Conv2D``, ``_FusedConv2D``, ``DepthwiseConv2dNative``,
``FusedDepthwiseConv2dNative`` (fused ``BiasAdd`` then ``Relu``, ``Relu6``, ``Elu``, ``LeakyRelu`` or ``Sigmoid``;
``SAME`` / ``VALID`` padding with TensorFlow's asymmetric ``SAME``; strides; dilations), ``Add``, ``AddV2``,
``Sub``, ``Mul``, ``RealDiv``, ``Maximum``, ``Minimum``, ``Relu``, ``Relu6``, ``Elu``, ``LeakyRelu``,
``Sigmoid``, ``Tanh``, ``Mean`` / ``Max`` over spatial axes with ``keep_dims``, ``ConcatV2``, ``ResizeBilinear``
and ``ResizeNearestNeighbor`` (TensorFlow's three coordinate conventions: legacy, ``align_corners``,
``half_pixel_centers``), ``MaxPool``.
"""
from __future__ import annotations

import base64
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from testbed.errors import AssetError, ConfigError

_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
_ELEMENTWISE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add, "AddV2": torch.add, "Sub": torch.sub, "Mul": torch.mul, "RealDiv": torch.div,
    "Maximum": torch.maximum, "Minimum": torch.minimum,
}
_UNARY = {"Relu", "Relu6", "Elu", "LeakyRelu", "Sigmoid", "Tanh", "Identity"}
_CONV = {"Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}
_FUSED_ACTIVATIONS = {"Relu", "Relu6", "Elu", "LeakyRelu", "Sigmoid"}
SUPPORTED_OPS = frozenset({"Placeholder", "Const", *_ELEMENTWISE, *_UNARY, *_CONV, "Mean", "Max", "ConcatV2",
                           "ResizeBilinear", "ResizeNearestNeighbor", "MaxPool"})


# ----------------------------------------------------------------------------------------- resizing like TensorFlow
def _source_coords(out_size: int, in_size: int, align_corners: bool, half_pixel_centers: bool) -> torch.Tensor:
    """TensorFlow's source coordinate (float64) of each output row/column."""
    dst = torch.arange(out_size, dtype=torch.float64)
    if align_corners and out_size > 1:
        return dst * ((in_size - 1) / (out_size - 1))
    scale = in_size / out_size
    return (dst + 0.5) * scale - 0.5 if half_pixel_centers else dst * scale


def _lerp_axis(x: torch.Tensor, dim: int, out_size: int, align_corners: bool, half_pixel_centers: bool) -> torch.Tensor:
    in_size = x.shape[dim]
    src = _source_coords(out_size, in_size, align_corners, half_pixel_centers).clamp(min=0.0)
    lo = src.floor().clamp(max=in_size - 1)
    hi = src.ceil().clamp(max=in_size - 1)
    frac = (src - lo).to(device=x.device, dtype=x.dtype)
    a = x.index_select(dim, lo.long().to(x.device))
    b = x.index_select(dim, hi.long().to(x.device))
    shape = [1] * x.dim()
    shape[dim] = out_size
    return a + (b - a) * frac.view(shape)


#: resizes whose sizes are all at most this run as two small matrix products (3-4x faster than gathering columns)
RESIZE_MATMUL_MAX = 256


@functools.lru_cache(maxsize=64)
def _lerp_matrix(out_size: int, in_size: int, align_corners: bool, half_pixel_centers: bool) -> torch.Tensor:
    """The ``(out_size, in_size)`` matrix of :func:`_lerp_axis`'s weights (two per row, ``1 - frac`` and ``frac``)."""
    src = _source_coords(out_size, in_size, align_corners, half_pixel_centers).clamp(min=0.0)
    lo = src.floor().clamp(max=in_size - 1).long()
    hi = src.ceil().clamp(max=in_size - 1).long()
    frac = src - src.floor().clamp(max=in_size - 1)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    matrix.index_put_((rows, hi), frac, accumulate=True)
    return matrix


def tf_resize_bilinear(x: torch.Tensor, size: Sequence[int], *, align_corners: bool = False,
                       half_pixel_centers: bool = False) -> torch.Tensor:
    """``tf.image.resizeBilinear`` on an NCHW tensor, differentiable. The defaults (both flags false) are
    TensorFlow's legacy convention, ``src = dst * in / out`` — what ``tf.image.resizeBilinear(x, size)`` does in tfjs
    and what torch's ``interpolate`` has no mode for; ``half_pixel_centers`` is torch's ``align_corners=False``."""
    out_h, out_w = int(size[0]), int(size[1])
    if max(out_h, out_w, x.shape[2], x.shape[3]) <= RESIZE_MATMUL_MAX:  # small maps (a graph's upsampling)
        rows = _lerp_matrix(out_h, x.shape[2], align_corners, half_pixel_centers).to(x.device, x.dtype)
        cols = _lerp_matrix(out_w, x.shape[3], align_corners, half_pixel_centers).to(x.device, x.dtype)
        return torch.matmul(rows, torch.matmul(x, cols.t()))
    y = _lerp_axis(x, 3, out_w, align_corners, half_pixel_centers)  # columns first, then rows, as tfjs does
    return _lerp_axis(y, 2, out_h, align_corners, half_pixel_centers)


def tf_resize_nearest(x: torch.Tensor, size: Sequence[int], *, align_corners: bool = False,
                      half_pixel_centers: bool = False) -> torch.Tensor:
    """``tf.image.resizeNearestNeighbor`` on an NCHW tensor (TensorFlow's rounding for each convention)."""
    out = x
    for dim, out_size in ((2, int(size[0])), (3, int(size[1]))):
        in_size = x.shape[dim]
        dst = torch.arange(out_size, dtype=torch.float64)
        if align_corners and out_size > 1:
            src = torch.round(dst * ((in_size - 1) / (out_size - 1)))
        else:
            scale = in_size / out_size
            src = torch.floor((dst + 0.5) * scale if half_pixel_centers else dst * scale)
        out = out.index_select(dim, src.clamp(0, in_size - 1).long().to(x.device))
    return out


# --------------------------------------------------------------------------------------------------- graph parsing
@dataclass
class GraphNode:
    name: str
    op: str
    inputs: list[str]
    attr: dict[str, Any]


def _attr_value(raw: dict[str, Any]) -> Any:
    """One attr of a graph node (the JSON form of TensorFlow's AttrValue) as a Python value."""
    if "list" in raw:
        lst = raw["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode("utf-8") for v in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    if "s" in raw:
        return base64.b64decode(raw["s"]).decode("utf-8")
    if "i" in raw:
        return int(raw["i"])
    if "f" in raw:
        return float(raw["f"])
    if "b" in raw:
        return bool(raw["b"])
    if "type" in raw:
        return raw["type"]
    return raw


def parse_graph(model_json: dict[str, Any], source: str = "model.json") -> dict[str, GraphNode]:
    """The nodes of a tfjs graph model's ``modelTopology`` by name (control inputs ``^x`` dropped)."""
    try:
        if model_json.get("format") not in (None, "graph-model"):
            raise AssetError(f"{source} is a tfjs {model_json.get('format')!r}, not a graph-model")
        raw_nodes = model_json["modelTopology"]["node"]
        nodes = {}
        for raw in raw_nodes:
            node = GraphNode(str(raw["name"]), str(raw["op"]),
                             [str(i) for i in raw.get("input", []) if not str(i).startswith("^")],
                             {k: _attr_value(v) for k, v in raw.get("attr", {}).items()})
            nodes[node.name] = node
        return nodes
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise AssetError(f"{source} is not a tfjs graph model (modelTopology.node): {exc!r}") from None


def _split_ref(ref: str) -> tuple[str, int]:
    name, _, index = ref.partition(":")
    return name, int(index) if index else 0


def required_nodes(nodes: dict[str, GraphNode], outputs: Sequence[str]) -> list[GraphNode]:
    """The nodes ``outputs`` depend on, in an order where every node follows its inputs."""
    order: list[GraphNode] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for out in outputs:
        stack: list[tuple[str, bool]] = [(_split_ref(out)[0], False)]
        while stack:
            name, expanded = stack.pop()
            if name not in nodes:
                raise AssetError(f"tfjs graph has no node {name!r}")
            if expanded:
                state[name] = 2
                order.append(nodes[name])
                continue
            if state.get(name) == 2:
                continue
            if state.get(name) == 1:
                raise AssetError(f"tfjs graph has a cycle through node {name!r}")
            state[name] = 1
            stack.append((name, True))
            for ref in reversed(nodes[name].inputs):
                child = _split_ref(ref)[0]
                if state.get(child) != 2:
                    stack.append((child, False))
    return order


# ------------------------------------------------------------------------------------------------------ the module
@dataclass
class _Step:
    name: str
    op: str
    inputs: list[str]  # activation references (node names)
    params: dict[str, Any] = field(default_factory=dict)  # python values and parameter keys


def _same_pads(in_size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    out = -(-in_size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - in_size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kh: int, kw: int, strides: tuple[int, int], dilations: tuple[int, int],
              value: float = 0.0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad like TensorFlow's ``SAME``; returns the tensor and the symmetric padding still to pass to the op."""
    top, bottom = _same_pads(x.shape[2], kh, strides[0], dilations[0])
    left, right = _same_pads(x.shape[3], kw, strides[1], dilations[1])
    if top == bottom and left == right:  # symmetric: the op pads (with zeros for conv, -inf for max-pool)
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom), value=value), (0, 0)


def _activation(x: torch.Tensor, op: str, alpha: float, inplace: bool = False) -> torch.Tensor:
    if op == "Relu":
        return F.relu(x, inplace=inplace)
    if op == "Relu6":
        return F.relu6(x, inplace=inplace)
    if op == "Elu":
        return F.elu(x, inplace=inplace)
    if op == "LeakyRelu":
        return F.leaky_relu(x, alpha, inplace=inplace)
    if op == "Sigmoid":
        return x.sigmoid_() if inplace else torch.sigmoid(x)
    if op == "Tanh":
        return torch.tanh(x)
    if op == "Identity":
        return x
    raise AssertionError(op)


class TfjsGraph(nn.Module):
    """A tfjs graph model executed with torch ops (build it with :func:`load_tfjs_graph`).

    ``forward(x)`` takes the graph's one input as NCHW and returns the requested outputs as NCHW tensors, in the
    order they were requested.
    """

    def __init__(self, steps: list[_Step], tensors: dict[str, torch.Tensor], input_name: str,
                 outputs: Sequence[str]) -> None:
        super().__init__()
        self.steps = steps
        self.input_name = input_name
        self.output_names = tuple(_split_ref(o)[0] for o in outputs)
        self.weights = nn.ParameterDict({k: nn.Parameter(v, requires_grad=False) for k, v in tensors.items()})
        last_use: dict[str, int] = {}
        for i, step in enumerate(steps):
            for ref in step.inputs:
                last_use[ref] = i
        self._free_after = [[r for r in step.inputs if last_use[r] == i and r not in self.output_names]
                            for i, step in enumerate(steps)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for step, free in zip(self.steps, self._free_after):
            env[step.name] = self._run(step, [env[r] for r in step.inputs])
            for ref in free:
                del env[ref]
        return tuple(env[name] for name in self.output_names)

    def _w(self, key: str | None) -> torch.Tensor | None:
        return None if key is None else self.weights[key]

    def _run(self, step: _Step, xs: list[torch.Tensor]) -> torch.Tensor:
        p = step.params
        op = step.op
        if op in _CONV:
            x, pad = xs[0], p["padding"]
            if p["same"]:
                x, pad = _pad_same(x, p["kh"], p["kw"], p["strides"], p["dilations"])
            y = F.conv2d(x, self.weights[p["filter"]], self._w(p.get("bias")), stride=p["strides"], padding=pad,
                         dilation=p["dilations"], groups=x.shape[1] if p["depthwise"] else 1)
            # in place: the conv's output is fresh and its backward does not read it
            return _activation(y, p["activation"], p["alpha"], inplace=True) if p["activation"] else y
        if op in _ELEMENTWISE:
            a = xs[0] if p["a"] is None else self.weights[p["a"]]
            b = (xs[-1] if p["a"] is None else xs[0]) if p["b"] is None else self.weights[p["b"]]
            return _ELEMENTWISE[op](a, b)
        if op in _UNARY:
            return _activation(xs[0], op, p.get("alpha", 0.2))
        if op == "Mean":
            return xs[0].mean(dim=p["dims"], keepdim=True)
        if op == "Max":
            return xs[0].amax(dim=p["dims"], keepdim=True)
        if op == "ConcatV2":
            return torch.cat(xs, dim=p["dim"])
        if op == "ResizeBilinear":
            return tf_resize_bilinear(xs[0], p["size"], align_corners=p["align_corners"],
                                      half_pixel_centers=p["half_pixel_centers"])
        if op == "ResizeNearestNeighbor":
            return tf_resize_nearest(xs[0], p["size"], align_corners=p["align_corners"],
                                     half_pixel_centers=p["half_pixel_centers"])
        if op == "MaxPool":
            x, pad = xs[0], (0, 0)
            if p["same"]:
                x, pad = _pad_same(x, p["kh"], p["kw"], p["strides"], (1, 1), value=float("-inf"))
            return F.max_pool2d(x, (p["kh"], p["kw"]), p["strides"], pad)
        raise AssertionError(op)


class _Builder:
    """Turns graph nodes + decoded constants into steps and torch-layout parameters."""

    def __init__(self, nodes: list[GraphNode], consts: dict[str, np.ndarray], source: str) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.consts = consts
        self.source = source
        self.tensors: dict[str, torch.Tensor] = {}
        self.keys: dict[tuple[str, str], str] = {}

    def fail(self, node: GraphNode, why: str) -> AssetError:
        return AssetError(f"{self.source}: node {node.name!r} ({node.op}): {why}")

    def is_const(self, ref: str) -> bool:
        return self.nodes[_split_ref(ref)[0]].op == "Const"

    def const(self, node: GraphNode, ref: str) -> np.ndarray:
        name = _split_ref(ref)[0]
        if name not in self.consts:
            raise self.fail(node, f"constant {name!r} has no value in the weights manifest")
        return self.consts[name]

    def param(self, name: str, role: str, value: torch.Tensor) -> str:
        """Register ``value`` (the constant ``name`` in torch layout for ``role``) once; its parameter key."""
        if (name, role) in self.keys:
            return self.keys[(name, role)]
        key = re.sub(r"[^0-9A-Za-z_]", "_", name) + ("" if role == "value" else f"__{role}")
        while key in self.tensors:
            key += "_"
        self.tensors[key] = value.contiguous().float()
        self.keys[(name, role)] = key
        return key

    def ints(self, node: GraphNode, ref: str) -> list[int]:
        return [int(v) for v in np.asarray(self.const(node, ref)).reshape(-1)]

    def axis(self, node: GraphNode, axis: int) -> int:
        if not -4 <= axis < 4:
            raise self.fail(node, f"axis {axis} of a 4-D tensor")
        return _NHWC_TO_NCHW_AXIS[axis % 4]

    def spatial(self, node: GraphNode, key: str, default: int = 1) -> tuple[int, int]:
        values = node.attr.get(key, [default] * 4)
        if len(values) != 4 or values[0] != 1 or values[3] != 1:
            raise self.fail(node, f"{key} {values} (only spatial {key} are supported)")
        return int(values[1]), int(values[2])

    def step(self, node: GraphNode) -> _Step:
        op = node.op
        fmt = node.attr.get("data_format", "NHWC")
        if fmt != "NHWC":
            raise self.fail(node, f"data_format {fmt!r} (only NHWC graphs are supported)")
        acts = [r for r in node.inputs if not self.is_const(r)]
        if any(_split_ref(r)[1] != 0 for r in acts):
            raise self.fail(node, "uses a second output of a node")
        acts = [_split_ref(r)[0] for r in acts]
        if op in _CONV:
            return self.conv(node, acts)
        if op in _ELEMENTWISE:
            if len(node.inputs) != 2:
                raise self.fail(node, f"{len(node.inputs)} inputs")
            params: dict[str, Any] = {}
            for slot, ref in zip(("a", "b"), node.inputs):
                if self.is_const(ref):
                    value = np.asarray(self.const(node, ref), dtype=np.float32)
                    if value.ndim > 4:
                        raise self.fail(node, f"constant of rank {value.ndim}")
                    value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(0, 3, 1, 2)
                    params[slot] = self.param(_split_ref(ref)[0], "nchw", torch.from_numpy(value.copy()))
                else:
                    params[slot] = None
            if params["a"] is not None and params["b"] is not None:
                raise self.fail(node, "both inputs are constants")
            return _Step(node.name, op, acts, params)
        if op in _UNARY:
            return _Step(node.name, op, acts, {"alpha": float(node.attr.get("alpha", 0.2))})
        if op in ("Mean", "Max"):
            if not node.attr.get("keep_dims", False):
                raise self.fail(node, "keep_dims false would change the rank")
            dims = sorted({self.axis(node, a) for a in self.ints(node, node.inputs[1])})
            return _Step(node.name, op, acts, {"dims": dims})
        if op == "ConcatV2":
            if len(acts) != len(node.inputs) - 1:
                raise self.fail(node, "concatenates a constant")
            return _Step(node.name, op, acts, {"dim": self.axis(node, self.ints(node, node.inputs[-1])[0])})
        if op in ("ResizeBilinear", "ResizeNearestNeighbor"):
            size = self.ints(node, node.inputs[1])
            return _Step(node.name, op, acts, {"size": size,
                                               "align_corners": bool(node.attr.get("align_corners", False)),
                                               "half_pixel_centers": bool(node.attr.get("half_pixel_centers", False))})
        if op == "MaxPool":
            kh, kw = self.spatial(node, "ksize")
            padding = node.attr.get("padding", "VALID")
            if padding not in ("SAME", "VALID"):
                raise self.fail(node, f"padding {padding!r}")
            return _Step(node.name, op, acts, {"kh": kh, "kw": kw, "strides": self.spatial(node, "strides"),
                                               "same": padding == "SAME"})
        raise self.fail(node, "op not supported")

    def conv(self, node: GraphNode, acts: list[str]) -> _Step:
        depthwise = "Depthwise" in node.op
        fused = node.op.startswith(("_Fused", "Fused"))
        padding = node.attr.get("padding", "VALID")
        if padding not in ("SAME", "VALID"):
            raise self.fail(node, f"padding {padding!r} (SAME and VALID are supported)")
        if len(acts) != 1 or not self.is_const(node.inputs[1]):
            raise self.fail(node, "the filter must be a constant and the input a tensor")
        kernel = np.asarray(self.const(node, node.inputs[1]), dtype=np.float32)
        if kernel.ndim != 4:
            raise self.fail(node, f"filter of shape {kernel.shape}")
        kh, kw, cin, cout = kernel.shape
        if depthwise:  # [h, w, in, multiplier] -> [in * multiplier, 1, h, w] (output channel c * m + j, as TF)
            weight = torch.from_numpy(kernel.transpose(2, 3, 0, 1).reshape(cin * cout, 1, kh, kw).copy())
        else:  # HWIO -> OIHW
            weight = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        params: dict[str, Any] = {
            "filter": self.param(_split_ref(node.inputs[1])[0], "filter", weight), "depthwise": depthwise,
            "kh": kh, "kw": kw, "strides": self.spatial(node, "strides"),
            "dilations": self.spatial(node, "dilations"), "same": padding == "SAME", "padding": (0, 0),
            "activation": None, "alpha": float(node.attr.get("leakyrelu_alpha", 0.2)),
        }
        fused_ops = list(node.attr.get("fused_ops", [])) if fused else []
        if fused_ops:
            if fused_ops[0] != "BiasAdd" or len(fused_ops) > 2 or len(node.inputs) != 3:
                raise self.fail(node, f"fused ops {fused_ops} (BiasAdd, optionally then one activation)")
            bias = np.asarray(self.const(node, node.inputs[2]), dtype=np.float32).reshape(-1)
            params["bias"] = self.param(_split_ref(node.inputs[2])[0], "bias", torch.from_numpy(bias.copy()))
            if len(fused_ops) == 2:
                if fused_ops[1] not in _FUSED_ACTIVATIONS:
                    raise self.fail(node, f"fused activation {fused_ops[1]!r} not supported")
                params["activation"] = fused_ops[1]
        elif len(node.inputs) != 2:
            raise self.fail(node, f"{len(node.inputs)} inputs")
        return _Step(node.name, node.op, acts, params)


def build_tfjs_graph(model_json: dict[str, Any], consts: dict[str, np.ndarray], outputs: Sequence[str], *,
                     source: str = "model.json") -> TfjsGraph:
    """A :class:`TfjsGraph` computing ``outputs`` from the parsed ``model.json`` and its decoded constants."""
    nodes = parse_graph(model_json, source)
    needed = required_nodes(nodes, outputs)
    unknown = sorted({n.op for n in needed if n.op not in SUPPORTED_OPS})
    if unknown:
        first = next(n for n in needed if n.op == unknown[0])
        raise AssetError(f"{source}: the tfjs graph uses op(s) {', '.join(unknown)} (first at node {first.name!r}), "
                         f"which the torch interpreter does not support; supported: {', '.join(sorted(SUPPORTED_OPS))}")
    placeholders = [n for n in needed if n.op == "Placeholder"]
    if len(placeholders) != 1:
        raise AssetError(f"{source}: the requested outputs depend on {len(placeholders)} inputs (expected one)")
    builder = _Builder(needed, consts, source)
    steps = []
    for node in needed:
        if node.op in ("Placeholder", "Const"):
            continue
        try:
            steps.append(builder.step(node))
        except (IndexError, KeyError, TypeError, ValueError) as exc:  # a malformed node: name it, no traceback
            raise builder.fail(node, f"malformed node ({type(exc).__name__}: {exc})") from None
    return TfjsGraph(steps, builder.tensors, placeholders[0].name, outputs)


def load_tfjs_graph(model_json_path: Path, weights_path: Path, outputs: Sequence[str], *,
                    what: str = "tfjs graph model") -> TfjsGraph:
    """Read a one-shard tfjs graph model (``model.json`` + its ``.bin``, the shard read from ``weights_path``) and
    build the interpreter for ``outputs`` (on CPU, parameters frozen). JSON and raw tensors only."""
    from testbed.inputs import load_json
    from testbed.models.tfjs_weights import read_single_shard_weights

    try:
        model_json = load_json(model_json_path, what=f"{what} graph")
    except ConfigError as exc:
        raise AssetError(f"cannot read the {what} graph: {exc}") from None
    if not isinstance(model_json, dict):
        raise AssetError(f"{model_json_path} is not a tfjs graph model (not a JSON object)")
    parse_graph(model_json, str(model_json_path))  # the graph itself is checked before its weights are read
    consts = read_single_shard_weights(model_json_path, weights_path, what)
    graph = build_tfjs_graph(model_json, consts, outputs, source=str(model_json_path))
    return graph.eval()
