"""De-randomized smoothing (column / block ablation): bands, the vote-margin certificate with tie-breaking, known
answers on tiny models, soundness against every small patch, CPU/CUDA parity."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipelines.defences import DefenceError
from pipelines.defences.derandomized import (DerandomizedSmoothing, band_keep, certified_from_counts, delta,
                                             random_bands)
from test_patchcleanser import one_pixel_patches


class PixelModel(nn.Module):
    """Class 1 when pixel (py, px) is bright (> 0.75), else class 0: the decision lives in one pixel."""

    def __init__(self, py: int = 3, px: int = 5) -> None:
        super().__init__()
        self.py, self.px = py, px

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = (x[:, :, self.py, self.px].mean(1) > 0.75).float()
        return torch.stack([1 - one, one], 1)


def test_bands_wrap_and_have_the_right_size() -> None:
    k = band_keep((6, 8), "column", 3, torch.arange(8))
    assert k.shape == (8, 1, 6, 8) and (k.sum((1, 2, 3)) == 18).all()
    assert k[7, 0, 0].tolist() == [1, 1, 0, 0, 0, 0, 0, 1]  # wraps around the right edge
    b = band_keep((6, 8), "block", 2, torch.arange(48))
    assert (b.sum((1, 2, 3)) == 4).all()
    assert b[47, 0].nonzero().tolist() == [[0, 0], [0, 7], [5, 0], [5, 7]]  # bottom-right corner wraps both ways
    with pytest.raises(DefenceError):
        band_keep((6, 8), "row", 2, torch.arange(3))


def test_certificate_margin_and_tie_breaking_by_hand() -> None:
    assert delta(3, 4, "column") == 6 and delta(3, 4, "block") == 36
    # Δ = 3 (patch 2, band 2): the winner needs a gap ≥ 2Δ = 6 over larger-index classes, > 6 over smaller ones
    pred, cert = certified_from_counts(torch.tensor([[10, 4, 0], [4, 10, 0], [4, 11, 0], [10, 5, 0]]), 2, 2,
                                       "column")
    assert pred.tolist() == [0, 1, 1, 0]
    assert cert.tolist() == [True, False, True, False]
    # a tie goes to the smaller index and is never certified
    pred, cert = certified_from_counts(torch.tensor([[5, 5]]), 1, 1, "column")
    assert pred.tolist() == [0] and cert.tolist() == [False]


def test_constant_model_is_certified_and_one_pixel_model_is_sound() -> None:
    class Const(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.0, 3.0]]).repeat(len(x), 1)

    x = torch.full((1, 3, 8, 16), 0.2)
    ds = DerandomizedSmoothing(Const(), "column", band=2, num_classes=2)
    correct, cert = ds.certify(x, torch.tensor([1]), patch=3)
    assert correct.all() and cert.all()
    # decision in one pixel: only the 2 bands holding pixel (3, 5) see it. Bright pixel -> those 2 bands vote 1,
    # 14 vote 0: the smoothed class is 0, certified against 1-px patches (Δ = 2 < (14 - 2) / 2) ...
    x[:, :, 3, 5] = 1.0
    ds = DerandomizedSmoothing(PixelModel(), "column", band=2, num_classes=2)
    assert ds.votes(x).counts.tolist() == [[14, 2]]
    correct, cert = ds.certify(x, torch.tensor([0]), patch=1)
    assert cert.all()
    # ... and no 1-px patch anywhere changes it (soundness, exhaustively)
    for xp in one_pixel_patches(x):
        assert ds.votes(xp).prediction.item() == 0
    # a model that is the pixel (class 1 whenever it is bright, whatever the band) is not certified for class 1
    _, cert = ds.certify(x, torch.tensor([1]), patch=1)
    assert not cert.any()


def test_block_ablation_votes_every_position() -> None:
    x = torch.rand(2, 3, 6, 6)
    ds = DerandomizedSmoothing(PixelModel(1, 1), "block", band=2, num_classes=2)
    assert (ds.votes(x).counts.sum(1) == 36).all()


def test_random_bands_keep_one_band_per_image_seeded() -> None:
    x = torch.zeros(5, 3, 8, 8)
    a = random_bands("column", 3, fill=1.0)(x, torch.Generator().manual_seed(0))
    b = random_bands("column", 3, fill=1.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert ((a == 0).float().sum((1, 2, 3)) == 3 * 8 * 3).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_cuda_parity() -> None:
    from testbed.models.registry import get_model

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cpu = DerandomizedSmoothing(get_model("sign-cnn", device="cpu"), "column", 4)
    gpu = DerandomizedSmoothing(get_model("sign-cnn", device="cuda"), "column", 4)
    assert torch.equal(cpu.votes(x).counts, gpu.votes(x.cuda()).counts.cpu())
