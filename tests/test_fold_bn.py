"""``fold_bn`` (issue 18's print-aware recipe): the physical loop optimises and validates on a copy of the model
with each BatchNorm folded into the convolution before it — the same function up to float rounding, the caller's
model untouched, the evaluation on the model as given, the option recorded in the config only when on."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from physical.speed import fold_batch_norms, prepared_model
from test_patch import _patch, _scenes
from testbed.errors import ConfigError


class _Block(nn.Module):
    """A BatchNorm called from ``forward`` (ResNet style), not in a Sequential: left as is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def _bn_model(nc: int = 5) -> nn.Module:
    """A seeded CNN with Conv-BN pairs inside Sequentials (one conv without bias), non-trivial running statistics,
    one BN outside a Sequential and one BN not after a conv."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()),
        _Block(),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        nn.BatchNorm2d(16),  # after a ReLU, not a conv: stays
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, nc),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (2 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.3) + (p.ndim == 1))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.train()  # the caller's mode: prepared_model must put it back


def test_fold_batch_norms_is_the_same_function_and_leaves_the_model_alone():
    net = _bn_model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded, count = fold_batch_norms(net)
    assert count == 2  # the two Conv-BN pairs in Sequentials; the ResNet-style and the post-ReLU BN stay
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 2
    assert not folded.training and all(not p.requires_grad for p in folded.parameters())
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = net.eval()(x)
        out = folded(x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)  # rounding only (logits up to ~25 here)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 4


def test_prepared_model_with_fold_bn_yields_a_copy_and_restores_the_callers_state():
    net = _bn_model()
    flags = [p.requires_grad for p in net.parameters()]
    with prepared_model(net, channels_last=True, compile=False, fold_bn=True) as inner:
        assert inner is not net
        assert sum(isinstance(m, nn.BatchNorm2d) for m in inner.modules()) == 2
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in inner.parameters() if w.ndim == 4)
        assert not net.training  # eval for the call (model_state_guard)
    assert net.training and [p.requires_grad for p in net.parameters()] == flags
    assert all(w.is_contiguous() for w in net.parameters() if w.ndim == 4)  # the caller's layout untouched


def test_patch_with_fold_bn_optimises_the_same_function_and_records_the_option():
    scenes = _scenes()
    net = _bn_model()
    kw = dict(steps=4, batch_size=4, select_every=2, select_samples=8, eval_samples=16, eval_batch_size=16)
    plain = _patch(**kw)(net, scenes, target=1)
    folded = _patch(fold_bn=True, **kw)(net, scenes, target=1)
    assert "fold_bn" not in plain.config and folded.config["fold_bn"] is True
    # the same optimisation up to float rounding: losses agree closely, colours too
    assert len(plain.loss_history) == len(folded.loss_history) == 4
    assert all(abs(a - b) < 1e-4 * max(1.0, abs(a)) for a, b in zip(plain.loss_history, folded.loss_history))
    assert float((plain.colours - folded.colours).abs().max()) < 1e-3
    # the evaluation scores the initial patch on the model as given: exactly the plain run's
    assert torch.equal(plain.initial_success, folded.initial_success)
    assert net.training and sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 4
    with pytest.raises(ConfigError, match="fold_bn"):
        _patch(fold_bn=1)


def test_cli_fold_bn_reaches_the_attack():
    from physical.cli_eot import _speed_kwargs
    from pipelines.main import build_parser

    base = ["patch", "--target", "toaster", "--out", "unused-out"]
    assert _speed_kwargs(build_parser().parse_args(base))["fold_bn"] is False
    assert _speed_kwargs(build_parser().parse_args([*base, "--fold-bn"]))["fold_bn"] is True


def test_bench_print_aware_step_quick_reports_every_part_with_frozen_weights():
    from bench.cases import run_case

    out = run_case("print_aware_step", True, {})
    assert out["weights_frozen"] == {"plain": True, "fold_bn": True}
    for arm in ("plain", "fold_bn"):
        parts = out["parts"][arm]
        assert set(parts) == {"sample", "render", "model_forward", "model_backward", "render_backward", "adam", "step"}
        assert all(v > 0 for v in parts.values())
        assert parts["step"] >= 0.9 * sum(v for k, v in parts.items() if k != "step")
    assert out["batch"] == 4 and out["patch_size"] == 80 and len(out["seconds"]) == 2
