"""De-randomized smoothing against patches (Levine & Feizi, NeurIPS 2020): column and block ablation.

The base classifier sees only one *band* of the image — ``band`` whole columns (column ablation) or a
``band × band`` block (block ablation), wrapping around the edges — and every other pixel is ablated (set to
``fill``; Levine & Feizi add "ablated" channels instead, which needs a 6-channel model: our sign-cnn keeps 3 and
its ablation-trained variant learns the grey). Every band position votes once (W votes for columns, H·W for
blocks); the prediction is the most-voted class, ties to the smallest class index.

Certificate: an ``p × p`` patch intersects at most ``Δ = p + band − 1`` column bands (``Δ = (p + band − 1)²``
block bands), so it changes at most Δ votes. The prediction ``c`` is certified when, for every other class
``c'``, ``n_c > n_c' + 2Δ`` if ``c' < c`` and ``n_c ≥ n_c' + 2Δ`` if ``c' > c`` (the tie-break favours the
smaller index) — :func:`certified_from_counts`.

The base classifier is normally trained on ablated images; :func:`train_ablated_sign_cnn` fine-tunes a sign-cnn on
random bands with the project's one training loop (``worlds.signs.train.fit``, through
``pipelines.defences.patchcleanser.fine_tune_sign_cnn``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.defences import DefenceError

MODES = ("column", "block")


def band_keep(size: tuple[int, int], mode: str, band: int, positions: Tensor) -> Tensor:
    """(N, 1, H, W) float, 1 on the kept band at each position (columns: position = first column; blocks:
    position = y·W + x of the top-left corner), wrapping around the image edges."""
    h, w = size
    if mode not in MODES:
        raise DefenceError(f"ablation mode must be one of {MODES}, got {mode!r}")
    if not 1 <= band <= min(h, w):
        raise DefenceError(f"band must be in [1, {min(h, w)}], got {band!r}")
    pos = positions.long().view(-1, 1)
    cols = torch.arange(w, device=positions.device).view(1, -1)
    if mode == "column":
        in_x = ((cols - pos) % w) < band  # (N, W)
        return in_x[:, None, None, :].expand(-1, 1, h, w).float()
    y0, x0 = pos // w, pos % w
    rows = torch.arange(h, device=positions.device).view(1, -1)
    in_x = ((cols - x0) % w) < band
    in_y = ((rows - y0) % h) < band
    return (in_y[:, None, :, None] & in_x[:, None, None, :]).float()


def n_positions(size: tuple[int, int], mode: str) -> int:
    return size[1] if mode == "column" else size[0] * size[1]


def delta(patch: int, band: int, mode: str) -> int:
    """The most votes a ``patch × patch`` patch can change."""
    d = patch + band - 1
    return d if mode == "column" else d * d


def certified_from_counts(counts: Tensor, patch: int, band: int, mode: str) -> tuple[Tensor, Tensor]:
    """(prediction (B,), certified (B,) bool) from vote counts (B, C) with the tie-breaking rule above."""
    pred = counts.argmax(1)  # ties: smallest index
    n_c = counts.gather(1, pred[:, None])
    d = delta(patch, band, mode)
    idx = torch.arange(counts.shape[1], device=counts.device)[None]
    need = counts + 2 * d + (idx < pred[:, None]).long()  # n_c must reach this for every other class
    need = need.masked_fill(idx == pred[:, None], -1)
    return pred, (n_c >= need).all(1)


@dataclass
class SmoothedVotes:
    counts: Tensor  # (B, C)
    prediction: Tensor  # (B,)


class DerandomizedSmoothing(nn.Module):
    """Column / block de-randomized smoothing around ``base`` (BCHW RGB [0, 1] → logits), ``batch`` ablated images
    per forward pass; ``forward`` returns the vote counts (argmax = the prediction; no gradient). CPU or CUDA."""

    def __init__(self, base: nn.Module, mode: str = "column", band: int = 4, fill: float = 0.5,
                 num_classes: int = 30, batch: int = 1024) -> None:
        super().__init__()
        if mode not in MODES:
            raise DefenceError(f"ablation mode must be one of {MODES}, got {mode!r}")
        self.base, self.mode, self.band, self.fill = base, mode, int(band), float(fill)
        self.num_classes, self.batch = int(num_classes), int(batch)

    @torch.no_grad()
    def votes(self, x: Tensor) -> SmoothedVotes:
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        n = n_positions((h, w), self.mode)
        keep = band_keep((h, w), self.mode, self.band, torch.arange(n, device=x.device))  # (n, 1, H, W)
        counts = torch.zeros(b, self.num_classes, dtype=torch.long, device=x.device)
        per_image = max(1, self.batch // n)
        for i in range(0, b, per_image):
            xi = x[i:i + per_image]
            xs = (xi[:, None] * keep[None] + self.fill * (1 - keep[None])).flatten(0, 1)
            labels = torch.cat([self.base(xs[j:j + self.batch]).argmax(1) for j in range(0, len(xs), self.batch)])
            counts[i:i + len(xi)] = F.one_hot(labels.view(len(xi), n), self.num_classes).sum(1)
        return SmoothedVotes(counts, counts.argmax(1))

    @torch.no_grad()
    def certify(self, x: Tensor, y: Tensor, patch: int) -> tuple[Tensor, Tensor]:
        """(correct (B,), certified-and-correct (B,)) against a ``patch × patch`` patch."""
        v = self.votes(x)
        pred, cert = certified_from_counts(v.counts, patch, self.band, self.mode)
        y = y.to(pred.device)
        return pred == y, cert & (pred == y)

    def forward(self, x: Tensor) -> Tensor:
        return self.votes(x.detach()).counts.float()


def random_bands(mode: str, band: int, fill: float = 0.5) -> Callable[[Tensor, torch.Generator], Tensor]:
    """Training augmentation: each image keeps one band at a random position (the rest set to ``fill``)."""

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        pos = torch.randint(n_positions(size, mode), (x.shape[0],), generator=gen)
        keep = band_keep(size, mode, band, pos).to(x.device)
        return x * keep + fill * (1 - keep)

    return augment


def train_ablated_sign_cnn(mode: str = "column", band: int = 4, *, epochs: int = 3, cache_dir: Path | None = None,
                           force: bool = False, log: Callable[[str], None] | None = None
                           ) -> tuple[nn.Module, dict[str, Any]]:
    """A sign-cnn fine-tuned on ``mode`` ablations of width ``band`` (cached as ``drs_<mode><band>.pt``)."""
    from pipelines.defences.patchcleanser import fine_tune_sign_cnn

    return fine_tune_sign_cnn(f"drs_{mode}{band}", random_bands(mode, band),
                              {"augment": f"{mode} ablation, band {band}, fill 0.5", "mode": mode, "band": band},
                              epochs=epochs, cache_dir=cache_dir, force=force, log=log)
