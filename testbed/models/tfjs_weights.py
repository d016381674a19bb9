"""The one reader of TensorFlow.js weight files (``weights_manifest.json`` / ``model.json`` + binary shards).

Used by every port of a tfjs model (face-api's face descriptor and Tiny Face Detector, ...). Decoding follows
``tf.io.decodeWeights``: tensors are read in manifest order from the concatenated shards of their group;
uint8/uint16-quantised tensors are ``q * scale + min`` (computed in float64, stored as float32), float16-quantised
ones are widened, float32/int32 tensors are read as they are. Shard sizes are checked against the manifest.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from testbed.errors import AssetError, ConfigError

#: Largest tfjs weights shard read (face-api's shards are at most about 6 MB).
MAX_SHARD_BYTES = 512 * 2**20


@dataclass(frozen=True)
class WeightSpec:
    """One entry of a tfjs weights manifest."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quantization: dict | None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


_QUANT_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}
_PLAIN_DTYPES = {"float32": np.float32, "int32": np.int32}


def _weight_groups(manifest_path: Path) -> list[dict[str, Any]]:
    """The weight groups of a ``weights_manifest.json`` (a list) or a graph ``model.json`` (its ``weightsManifest``)."""
    from testbed.inputs import load_json

    try:
        manifest = load_json(manifest_path, what="tfjs weights manifest")
    except ConfigError as exc:
        raise AssetError(f"cannot read tfjs weights manifest: {exc}") from None
    if isinstance(manifest, dict) and "weightsManifest" in manifest:
        manifest = manifest["weightsManifest"]
    if not isinstance(manifest, list) or not all(
        isinstance(g, dict) and isinstance(g.get("paths"), list) and isinstance(g.get("weights"), list)
        for g in manifest
    ):
        raise AssetError(f"tfjs weights manifest {manifest_path} is not a list of weight groups (paths, weights)")
    return manifest


def manifest_shards(manifest_path: Path) -> list[str]:
    """The shard file names a tfjs manifest lists, in order."""
    return [str(p) for group in _weight_groups(manifest_path) for p in group["paths"]]


def read_tfjs_weights(manifest_path: Path, bin_paths: Mapping[str, Path] | None = None) -> dict[str, np.ndarray]:
    """Decode a tfjs ``weights_manifest.json`` (or graph ``model.json``) + its shard files into named float32 arrays.

    ``bin_paths`` maps each shard name listed in the manifest to a file (default: next to the manifest).
    Dequantisation follows ``tf.io.decodeWeights``: ``q * scale + min`` (float64), stored as float32.
    """
    from testbed.inputs import read_bytes

    out: dict[str, np.ndarray] = {}
    for group in _weight_groups(manifest_path):
        chunks = []
        for shard in group["paths"]:
            path = (bin_paths or {}).get(shard, Path(manifest_path).parent / shard)
            chunks.append(read_bytes(path, what=f"tfjs weights shard {shard!r} at", max_bytes=MAX_SHARD_BYTES,
                                     error=AssetError))
        buffer = b"".join(chunks)
        offset = 0
        for raw in group["weights"]:
            spec = _weight_spec(raw, manifest_path)
            values, nbytes = _decode(spec, buffer, offset, manifest_path)
            out[spec.name] = values
            offset += nbytes
        if offset != len(buffer):
            raise AssetError(
                f"tfjs weights for {manifest_path} hold {len(buffer)} bytes, the manifest describes {offset}"
            )
    return out


def read_single_shard_weights(manifest_path: Path, weights_path: Path, what: str) -> dict[str, np.ndarray]:
    """``read_tfjs_weights`` for a manifest with exactly one shard, read from ``weights_path`` (a cached asset whose
    file name may differ from the manifest's); ``what`` names the model in errors."""
    try:
        shards = manifest_shards(manifest_path)
    except (TypeError, KeyError) as exc:
        raise AssetError(f"tfjs weights manifest {manifest_path} is not a {what} manifest ({exc})") from None
    if len(shards) != 1:
        raise AssetError(f"{manifest_path}: expected one weights shard for the {what}, the manifest lists {shards}")
    return read_tfjs_weights(manifest_path, {shards[0]: weights_path})


def _weight_spec(raw: Any, source: Path) -> WeightSpec:
    """One manifest entry as a ``WeightSpec`` (AssetError naming the entry when it is malformed)."""
    try:
        shape = tuple(int(d) for d in raw["shape"])
        quantization = raw.get("quantization")
        spec = WeightSpec(str(raw["name"]), shape, str(raw["dtype"]), quantization)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AssetError(f"{source}: malformed weights manifest entry {str(raw)[:120]} ({type(exc).__name__}: "
                         f"{exc})") from None
    if any(d < 0 for d in shape):
        raise AssetError(f"{source}: weight {spec.name!r} has a negative dimension in shape {list(shape)}")
    if quantization is not None and not isinstance(quantization, dict):
        raise AssetError(f"{source}: weight {spec.name!r} has a malformed quantization entry {quantization!r}")
    return spec


def _decode(spec: WeightSpec, buffer: bytes, offset: int, source: Path) -> tuple[np.ndarray, int]:
    if spec.quantization is not None:
        qdtype = spec.quantization.get("dtype")
        if qdtype not in _QUANT_DTYPES:
            raise AssetError(f"{source}: weight {spec.name!r} uses unsupported quantization {qdtype!r}")
        np_dtype = np.dtype(_QUANT_DTYPES[qdtype]).newbyteorder("<")
    elif spec.dtype in _PLAIN_DTYPES:
        np_dtype = np.dtype(_PLAIN_DTYPES[spec.dtype]).newbyteorder("<")
    else:
        raise AssetError(f"{source}: weight {spec.name!r} has unsupported dtype {spec.dtype!r}")
    nbytes = spec.size * np_dtype.itemsize
    if offset + nbytes > len(buffer):
        raise AssetError(f"{source}: weight {spec.name!r} runs past the end of the weights data (truncated file?)")
    raw = np.frombuffer(buffer, dtype=np_dtype, count=spec.size, offset=offset)
    if spec.quantization is not None and spec.quantization["dtype"] in ("uint8", "uint16"):
        try:
            scale, minimum = float(spec.quantization["scale"]), float(spec.quantization["min"])
        except (KeyError, TypeError, ValueError):
            raise AssetError(f"{source}: weight {spec.name!r} is {spec.quantization['dtype']}-quantised without a "
                             "numeric scale and min") from None
        values = (raw.astype(np.float64) * scale + minimum).astype(np.float32)
    else:
        values = raw.astype(np.float32)
    return values.reshape(spec.shape), nbytes
