"""A printer profile: a differentiable colour model of printer + paper + camera, fitted to the user's own chart.

The model maps the colour the attack *intends* (sRGB in [0, 1], what is sent to the printer) to the colour the
printed sheet has when photographed and normalised to paper white (sRGB relative to paper white = 1, what
``camera.palette.measure_chart`` reads off a chart photo). Three kinds of model are fitted to the chart patches
and compared by the CIEDE2000 error on patches held out of the fit (k-fold cross-validation):

* ``lut`` — a 3-D look-up table on a G x G x G grid with trilinear interpolation, fitted by least squares with a
  second-difference smoothness penalty (so grid nodes between chart colours are filled smoothly);
* ``poly`` — a polynomial in (r, g, b) of total degree 2 or 3 (ridge least squares);
* ``mlp`` — a small network 3 -> H -> H -> 3 (tanh) on top of the identity, trained with Adam.

The chosen kind is refitted on every patch and stored as plain JSON (format ``testbed-printer-profile/1``: numbers
only, nothing is executed on load), validated key by key by :func:`load_profile`. The file's ``colors`` (the
profile applied to a regular grid of intended colours) are the printer's gamut, so the file is also a palette
file for the NPS loss (``--palette profile.json``, ``testbed.palette.read_palette``).

Colour science here is float64 torch: :func:`srgb_to_lab` (sRGB, D65, 2-degree observer, as scikit-image's
``rgb2lab``) and :func:`delta_e2000` (Sharma, Wu & Dalal 2005; checked against
``skimage.color.deltaE_ciede2000`` in tests/test_printer_profile.py).
"""
from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from testbed.errors import ConfigError

PROFILE_FORMAT = "testbed-printer-profile/1"
MODEL_KINDS = ("lut", "poly", "mlp")
MAX_LUT_GRID = 33
MAX_POLY_DEGREE = 4
MAX_MLP_WIDTH = 256
MAX_MLP_LAYERS = 6


# ------------------------------------------------------------------------------------------------ colour science
_SRGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                             [0.212671, 0.715160, 0.072169],
                             [0.019334, 0.119193, 0.950227]], dtype=torch.float64)  # scikit-image's matrix
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def srgb_to_lab(rgb: Tensor) -> Tensor:
    """CIELAB (D65, 2 degrees) of sRGB colours in [0, 1], channels last (..., 3); differentiable."""
    x = rgb.clamp(0.0, 1.0)
    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(1e-12) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.to(lin).T / _WHITE_D65.to(lin)
    eps = 216.0 / 24389.0
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1.0 / 3.0), (24389.0 / 27.0 * xyz + 16.0) / 116.0)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)


def delta_e2000(lab1: Tensor, lab2: Tensor) -> Tensor:
    """CIEDE2000 colour difference (kL = kC = kH = 1) between Lab colours, channels last (..., 3).

    Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes": hue angles in
    [0, 360), the mean hue and the hue difference taken across the 0/360 boundary, both 0 when a chroma is 0.
    """
    L1, a1, b1 = lab1.unbind(-1)
    L2, a2, b2 = lab2.unbind(-1)
    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    c7 = c_bar ** 7
    g = 0.5 * (1 - torch.sqrt(c7 / (c7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.rad2deg(torch.atan2(b1, a1p)) % 360.0
    h2p = torch.rad2deg(torch.atan2(b2, a2p)) % 360.0
    h1p = torch.where((a1p == 0) & (b1 == 0), torch.zeros_like(h1p), h1p)
    h2p = torch.where((a2p == 0) & (b2 == 0), torch.zeros_like(h2p), h2p)
    zero_chroma = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(zero_chroma, torch.zeros_like(dh), dh)
    d_l, d_c = L2 - L1, c2p - c1p
    d_h = 2 * torch.sqrt(c1p * c2p) * torch.sin(torch.deg2rad(dh) / 2)
    l_bar, cp_bar = (L1 + L2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    h_bar = torch.where((h1p - h2p).abs() <= 180, hsum / 2, torch.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2))
    h_bar = torch.where(zero_chroma, hsum, h_bar)
    rad = torch.deg2rad
    t = (1 - 0.17 * torch.cos(rad(h_bar - 30)) + 0.24 * torch.cos(rad(2 * h_bar))
         + 0.32 * torch.cos(rad(3 * h_bar + 6)) - 0.20 * torch.cos(rad(4 * h_bar - 63)))
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    cp7 = cp_bar ** 7
    r_c = 2 * torch.sqrt(cp7 / (cp7 + 25.0 ** 7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -torch.sin(rad(2 * d_theta)) * r_c
    tl, tc, th = d_l / s_l, d_c / s_c, d_h / s_h
    return torch.sqrt((tl * tl + tc * tc + th * th + r_t * tc * th).clamp_min(0.0))


def delta_e2000_rgb(rgb1: Any, rgb2: Any) -> np.ndarray:
    """CIEDE2000 between two Nx3 sRGB arrays in [0, 1] (float64 numpy out)."""
    a = torch.as_tensor(np.asarray(rgb1, np.float64)).reshape(-1, 3)
    b = torch.as_tensor(np.asarray(rgb2, np.float64)).reshape(-1, 3)
    return delta_e2000(srgb_to_lab(a), srgb_to_lab(b)).numpy()


# ------------------------------------------------------------------------------------------------ models
class ColourModel(torch.nn.Module):
    """Intended sRGB (N, 3) -> printed-and-photographed sRGB relative to paper white (N, 3), in [0, 1]."""

    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


def _trilinear(x: Tensor, grid: int) -> tuple[Tensor, Tensor]:
    """Corner indices (N, 8) into a flattened G^3 table and their weights (N, 8) for points x (N, 3) in [0, 1]."""
    pos = x.clamp(0.0, 1.0) * (grid - 1)
    i0 = pos.detach().floor().clamp(0, grid - 2).long()
    f = pos - i0.to(pos.dtype)
    idx, wts = [], []
    for dr in (0, 1):
        for dg in (0, 1):
            for db in (0, 1):
                i = ((i0[:, 0] + dr) * grid + (i0[:, 1] + dg)) * grid + (i0[:, 2] + db)
                w = ((f[:, 0] if dr else 1 - f[:, 0]) * (f[:, 1] if dg else 1 - f[:, 1])
                     * (f[:, 2] if db else 1 - f[:, 2]))
                idx.append(i)
                wts.append(w)
    return torch.stack(idx, 1), torch.stack(wts, 1)


class LutModel(ColourModel):
    """A G x G x G x 3 table indexed [r, g, b], trilinear interpolation (differentiable w.r.t. the input)."""

    kind = "lut"

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.grid = int(table.shape[0])
        self.register_buffer("table", table.reshape(-1, 3).float())

    def forward(self, x: Tensor) -> Tensor:
        idx, w = _trilinear(x, self.grid)
        t = self.table.to(x.dtype)
        return (t[idx] * w[..., None]).sum(1).clamp(0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        g = self.grid
        return {"kind": "lut", "grid": g, "table": np.round(self.table.double().numpy().reshape(g, g, g, 3), 6).tolist()}

    @staticmethod
    def fit(x: np.ndarray, y: np.ndarray, grid: int = 9, smooth: float = 1e-2) -> LutModel:
        """Least squares over the table entries + ``smooth`` x the squared second differences along each axis."""
        n_nodes = grid ** 3
        idx, w = _trilinear(torch.as_tensor(x, dtype=torch.float64), grid)
        a = np.zeros((len(x), n_nodes))
        np.add.at(a, (np.repeat(np.arange(len(x)), 8), idx.numpy().ravel()), w.numpy().ravel())
        rows = []
        ids = np.arange(n_nodes).reshape(grid, grid, grid)
        for axis in range(3):
            lo = np.take(ids, range(grid - 2), axis=axis).ravel()
            mid = np.take(ids, range(1, grid - 1), axis=axis).ravel()
            hi = np.take(ids, range(2, grid), axis=axis).ravel()
            d = np.zeros((len(lo), n_nodes))
            d[np.arange(len(lo)), lo] = 1.0
            d[np.arange(len(lo)), mid] = -2.0
            d[np.arange(len(lo)), hi] = 1.0
            rows.append(d)
        dmat = np.concatenate(rows)
        lhs = a.T @ a + smooth * len(x) / n_nodes * (dmat.T @ dmat) + 1e-9 * np.eye(n_nodes)
        table = np.linalg.solve(lhs, a.T @ y)
        return LutModel(torch.as_tensor(table.reshape(grid, grid, grid, 3)))


def _monomials(degree: int) -> list[tuple[int, int, int]]:
    return [(i, j, k) for d in range(degree + 1) for i in range(d, -1, -1) for j in range(d - i, -1, -1)
            for k in [d - i - j]]


class PolyModel(ColourModel):
    """A polynomial of total degree ``degree`` in (r, g, b): features (monomials, fixed order) @ coef (F, 3)."""

    kind = "poly"

    def __init__(self, degree: int, coef: Tensor) -> None:
        super().__init__()
        self.degree = int(degree)
        self.exps = _monomials(self.degree)
        self.register_buffer("coef", coef.float())

    @staticmethod
    def features(x: Tensor, degree: int) -> Tensor:
        r, g, b = x.unbind(-1)
        return torch.stack([r ** i * g ** j * b ** k for i, j, k in _monomials(degree)], -1)

    def forward(self, x: Tensor) -> Tensor:
        return (self.features(x, self.degree) @ self.coef.to(x.dtype)).clamp(0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "poly", "degree": self.degree, "coef": np.round(self.coef.double().numpy(), 8).tolist()}

    @staticmethod
    def fit(x: np.ndarray, y: np.ndarray, degree: int = 2, ridge: float = 1e-6) -> PolyModel:
        f = PolyModel.features(torch.as_tensor(x, dtype=torch.float64), degree).numpy()
        coef = np.linalg.solve(f.T @ f + ridge * len(x) * np.eye(f.shape[1]), f.T @ y)
        return PolyModel(degree, torch.as_tensor(coef))


class MlpModel(ColourModel):
    """``x + net(x)`` with ``net`` = Linear -> tanh -> ... -> Linear (the last layer starts at zero)."""

    kind = "mlp"

    def __init__(self, layers: Sequence[tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.linears = torch.nn.ModuleList()
        for w, b in layers:
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            self.linears.append(lin)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i, lin in enumerate(self.linears):
            h = torch.nn.functional.linear(h, lin.weight.to(x.dtype), lin.bias.to(x.dtype))
            if i < len(self.linears) - 1:
                h = torch.tanh(h)
        return (x + h).clamp(0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "mlp", "activation": "tanh", "residual": True,
                "layers": [{"weight": np.round(lin.weight.detach().double().numpy(), 8).tolist(),
                            "bias": np.round(lin.bias.detach().double().numpy(), 8).tolist()} for lin in self.linears]}

    @staticmethod
    def fit(x: np.ndarray, y: np.ndarray, hidden: int = 16, **options: Any) -> MlpModel:
        return MlpModel.fit_many(x, y, np.ones((1, len(x)), bool), hidden, **options)[0]

    @staticmethod
    def fit_many(x: np.ndarray, y: np.ndarray, masks: np.ndarray, hidden: int = 16, steps: int = 500,
                 lr: float = 0.02, weight_decay: float = 1e-4, seed: int = 0) -> list[MlpModel]:
        """One model per row of ``masks`` (K, N) (the patches it is fitted to), all trained at once: batched
        Adam on the mean squared error (the folds of a cross-validation cost one training)."""
        g = torch.Generator().manual_seed(seed)
        k = len(masks)
        sizes = [3, hidden, hidden, 3]
        params = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            scale = 0.0 if i == len(sizes) - 2 else 1.0 / math.sqrt(a)
            w = (torch.randn(b, a, generator=g) * scale).expand(k, b, a).clone().requires_grad_(True)
            params += [w, torch.zeros(k, 1, b, requires_grad=True)]
        xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        m = torch.as_tensor(np.asarray(masks, np.float32))[:, :, None]  # (K, N, 1)
        count = m.sum(dim=(1, 2)).clamp_min(1.0) * 3
        xb = xt.expand(k, -1, -1)
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        for _ in range(steps):
            opt.zero_grad()
            h = xb
            for i in range(0, len(params), 2):  # unclamped output for the fit (clamping kills gradients)
                h = torch.baddbmm(params[i + 1], h, params[i].transpose(1, 2))
                if i < len(params) - 2:
                    h = torch.tanh(h)
            loss = (((xb + h - yt) ** 2 * m).sum(dim=(1, 2)) / count).sum()
            loss.backward()
            opt.step()
        return [MlpModel([(params[i][j].detach(), params[i + 1][j, 0].detach()) for i in range(0, len(params), 2)])
                for j in range(k)]


#: the candidates compared by held-out error: (label, kind, fit keyword arguments)
DEFAULT_CANDIDATES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("lut-5", "lut", {"grid": 5, "smooth": 1e-3}),
    ("lut-9", "lut", {"grid": 9, "smooth": 1e-2}),
    ("lut-9-smooth", "lut", {"grid": 9, "smooth": 1e-1}),
    ("poly-2", "poly", {"degree": 2}),
    ("poly-3", "poly", {"degree": 3}),
    ("mlp-16", "mlp", {"hidden": 16}),
)
_FITTERS = {"lut": LutModel.fit, "poly": PolyModel.fit, "mlp": MlpModel.fit}


# ------------------------------------------------------------------------------------------------ the profile
@dataclass
class PrinterProfile:
    """A fitted colour model and how well it predicts held-out chart patches (``fit``)."""

    model: ColourModel
    fit: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    gamut_levels: int = 9

    @property
    def kind(self) -> str:
        return self.model.kind

    def colours(self, rgb: Tensor) -> Tensor:
        """Printed colours of intended colours, channels last (..., 3); differentiable."""
        shape = rgb.shape
        return self._on(rgb.device)(rgb.reshape(-1, 3)).reshape(shape)

    def apply(self, x: Tensor) -> Tensor:
        """BCHW intended image -> BCHW printed image as photographed (relative to paper white); differentiable."""
        return self.colours(x.movedim(1, -1)).movedim(-1, 1)

    def _on(self, device: torch.device) -> ColourModel:
        cache = self.__dict__.setdefault("_devices", {})
        key = str(device)
        if key not in cache:
            cache[key] = self.model if key == "cpu" else _copy_model(self.model).to(device)
        return cache[key]

    def gamut(self, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(intended, printed) for a regular grid of ``levels``^3 intended colours: the printable colours."""
        n = levels or self.gamut_levels
        v = np.linspace(0.0, 1.0, n)
        grid = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)
        with torch.no_grad():
            out = self.model(torch.as_tensor(grid, dtype=torch.float32)).double().numpy()
        return grid, out

    def to_dict(self) -> dict[str, Any]:
        intended, printed = self.gamut()
        return {"format": PROFILE_FORMAT,
                "space": {"input": "intended sRGB in [0, 1]", "output": "printed sRGB relative to paper white"},
                "model": self.model.to_json(), "fit": self.fit, "meta": self.meta,
                "colors": np.round(printed, 6).tolist(), "intended": np.round(intended, 6).tolist()}

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON, atomically."""
        import json

        from testbed.runs import write_atomic

        return write_atomic(Path(path), json.dumps(self.to_dict(), indent=1, allow_nan=False))


def _copy_model(model: ColourModel) -> ColourModel:
    return model_from_json(model.to_json(), "profile model")


# ------------------------------------------------------------------------------------------------ validation
def _array(value: Any, shape: tuple[int | None, ...], where: str, lo: float = -1e6, hi: float = 1e6) -> np.ndarray:
    """A finite float array of the given shape (None = any length) within [lo, hi], from JSON lists."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be an array of numbers") from None
    if arr.dtype == object or arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "x".join("N" if s is None else str(s) for s in shape)
        raise ConfigError(f"{where} must be a {want} array of numbers, got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min(initial=lo) < lo or arr.max(initial=hi) > hi:
        raise ConfigError(f"{where} must hold finite numbers within [{lo:g}, {hi:g}]")
    return arr


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def model_from_json(doc: Any, where: str) -> ColourModel:
    """Build a colour model from its JSON description, every key checked (ConfigError naming the problem)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: 'model' must be an object")
    kind = doc.get("kind")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"{where}: model kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    allowed = {"lut": {"kind", "grid", "table"}, "poly": {"kind", "degree", "coef"},
               "mlp": {"kind", "activation", "residual", "layers"}}[kind]
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in the {kind} model")
    if kind == "lut":
        g = _int(doc.get("grid"), f"{where}: lut grid", 2, MAX_LUT_GRID)
        table = _array(doc.get("table"), (g, g, g, 3), f"{where}: lut table", -0.5, 1.5)
        return LutModel(torch.as_tensor(table))
    if kind == "poly":
        d = _int(doc.get("degree"), f"{where}: poly degree", 1, MAX_POLY_DEGREE)
        coef = _array(doc.get("coef"), (len(_monomials(d)), 3), f"{where}: poly coef", -1e4, 1e4)
        return PolyModel(d, torch.as_tensor(coef))
    if doc.get("activation", "tanh") != "tanh" or doc.get("residual", True) is not True:
        raise ConfigError(f"{where}: the mlp model must be residual with tanh activations")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_MLP_LAYERS:
        raise ConfigError(f"{where}: mlp layers must be a list of 1 to {MAX_MLP_LAYERS} layers")
    out, width = [], 3
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or set(layer) != {"weight", "bias"}:
            raise ConfigError(f"{where}: mlp layer {i} must be an object with 'weight' and 'bias' only")
        last = i == len(layers) - 1
        w = _array(layer["weight"], (3 if last else None, width), f"{where}: mlp layer {i} weight", -1e4, 1e4)
        if w.shape[0] > MAX_MLP_WIDTH:
            raise ConfigError(f"{where}: mlp layer {i} is wider than {MAX_MLP_WIDTH}")
        b = _array(layer["bias"], (w.shape[0],), f"{where}: mlp layer {i} bias", -1e4, 1e4)
        out.append((torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)))
        width = w.shape[0]
    return MlpModel(out)


def profile_from_dict(doc: Any, where: str) -> PrinterProfile:
    """A profile from its JSON document (format, model, fit report, gamut), validated."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must hold a JSON object, got {type(doc).__name__}")
    fmt = doc.get("format")
    if fmt != PROFILE_FORMAT:
        raise ConfigError(f"{where} is not a printer profile of format {PROFILE_FORMAT} (its format is {fmt!r}); "
                          "make one with `testbed printer-profile`")
    unknown = sorted(set(doc) - {"format", "space", "model", "fit", "meta", "colors", "intended"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}")
    model = model_from_json(doc.get("model"), where)
    fit, meta = doc.get("fit", {}), doc.get("meta", {})
    if not isinstance(fit, dict) or not isinstance(meta, dict):
        raise ConfigError(f"{where}: 'fit' and 'meta' must be objects")
    if "colors" in doc:
        from testbed.inputs import color_triples

        colors = color_triples(doc["colors"], where=where)
        levels = round(len(colors) ** (1 / 3))
        if levels ** 3 != len(colors):
            raise ConfigError(f"{where}: 'colors' must be a cube of gamut colours, got {len(colors)}")
    else:
        levels = 9
    return PrinterProfile(model, fit, meta, gamut_levels=int(levels))


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, mtime_ns: int, size: int) -> PrinterProfile:
    from testbed.inputs import load_json

    return profile_from_dict(load_json(path, what="printer profile"), f"printer profile {path}")


def load_profile(path: str | os.PathLike[str]) -> PrinterProfile:
    """Read and validate a printer-profile JSON (cached while the file is unchanged); ConfigError on a bad one."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        st = None
    if st is None:
        from testbed.inputs import load_json

        load_json(p, what="printer profile")  # raises, naming the file and why
    return _load_cached(str(p), st.st_mtime_ns, st.st_size)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ fitting
def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [perm[i::k] for i in range(k)]


def _predict(model: ColourModel, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def held_out_errors(intended: np.ndarray, measured: np.ndarray, kind: str, options: dict[str, Any], *,
                    folds: int = 5, seed: int = 0) -> np.ndarray:
    """CIEDE2000 of every patch predicted by a model fitted without it (``folds``-fold cross-validation)."""
    pred = np.zeros_like(measured)
    parts = _folds(len(intended), folds, seed)
    if kind == "mlp":  # all folds trained at once
        masks = np.ones((len(parts), len(intended)), bool)
        for i, held in enumerate(parts):
            masks[i, held] = False
        for model, held in zip(MlpModel.fit_many(intended, measured, masks, **options), parts):
            pred[held] = _predict(model, intended[held])
        return delta_e2000_rgb(pred, measured)
    for held in parts:
        train = np.setdiff1d(np.arange(len(intended)), held)
        model = _FITTERS[kind](intended[train], measured[train], **options)
        pred[held] = _predict(model, intended[held])
    return delta_e2000_rgb(pred, measured)


def _summary(de: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(de.mean()), 4), "p95": round(float(np.percentile(de, 95)), 4),
            "max": round(float(de.max()), 4)}


def fit_profile(intended: Any, measured: Any, *, folds: int = 5, seed: int = 0,
                candidates: Sequence[tuple[str, str, dict[str, Any]]] = DEFAULT_CANDIDATES,
                meta: dict[str, Any] | None = None) -> PrinterProfile:
    """Compare the candidate models by held-out CIEDE2000 (mean over patches) and refit the best on every patch.

    ``intended``: Nx3 chart colours as sent to the printer; ``measured``: Nx3 as read from the photos (sRGB
    relative to paper white). The report (``profile.fit``) holds each candidate's held-out mean / p95 / max."""
    x = np.asarray(intended, np.float64).reshape(-1, 3)
    y = np.asarray(measured, np.float64).reshape(-1, 3)
    if len(x) != len(y):
        raise ConfigError(f"got {len(x)} intended and {len(y)} measured colours")
    if len(x) < 2 * folds or not 2 <= folds:
        raise ConfigError(f"fitting a profile needs at least {2 * folds} patches for {folds}-fold held-out errors "
                          f"(and folds >= 2), got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigError("chart colours must be finite")
    report: dict[str, Any] = {}
    errors: dict[str, np.ndarray] = {}
    for label, kind, options in candidates:
        errors[label] = held_out_errors(x, y, kind, options, folds=folds, seed=seed)
        report[label] = {"kind": kind, **options, **_summary(errors[label])}
    best = min(errors, key=lambda k: float(errors[k].mean()))
    label, kind, options = next(c for c in candidates if c[0] == best)
    model = _FITTERS[kind](x, y, **options)
    fit = {"chosen": best, "held_out_de2000": _summary(errors[best]), "folds": folds, "seed": seed,
           "n_patches": len(x), "train_de2000": _summary(delta_e2000_rgb(_predict(model, x), y)),
           "unprofiled_de2000": _summary(delta_e2000_rgb(np.clip(x, 0, 1), y)), "candidates": report}
    return PrinterProfile(model, fit, dict(meta or {}))
