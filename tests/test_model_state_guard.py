"""Every attack leaves the model as it found it: weights and BatchNorm buffers bit-identical, each module's
train/eval flag restored, and the attack itself run in eval mode (testbed.models.base.model_state_guard, applied by
physical.speed.prepared_model, which the attack base and the physical loop both use)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from physical.attacks.registry import build_attack, get_attack_spec, list_attacks
from testbed.models.base import NormalizedModel, model_state_guard

CLASSES = 5


class BNNet(nn.Module):
    """Conv-BN-ReLU-Dropout-pool-linear; records whether any forward ran in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Dropout(0.5), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES))
        self.train_mode_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.train_mode_calls += int(self.training)
        return self.head(self.features(x))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = NormalizedModel(BNNet(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with torch.no_grad():  # running statistics away from their defaults, so a reset would show too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    model.train()
    model.net.head.eval()  # a mixed model: each module's own flag must come back, not one flag for all
    return model


def _state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool], dict[str, bool]]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()})


def _assert_unchanged(model: nn.Module, before) -> None:
    tensors, modes, flags = before
    after_tensors, after_modes, after_flags = _state(model)
    assert after_modes == modes and after_flags == flags
    assert after_tensors.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(after_tensors[k], tensors[k]), k
    assert all(p.grad is None for p in model.parameters())


def _images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_train_mode_would_change_the_buffers():
    """The control: the same model run once in train mode does change its BatchNorm buffers."""
    model = _model()
    before = _state(model)
    model(_images())
    assert not torch.equal(model.state_dict()["net.features.1.running_mean"], before[0]["net.features.1.running_mean"])


def _small(name: str) -> dict:
    spec = get_attack_spec(name)
    params = set(spec.params)
    defaults = {f.name: f.default for f in dataclasses.fields(spec.cls)}
    hp: dict = {"steps": 2} if (defaults.get("steps") or 3) > 2 else {}  # None: chosen from eps (BIM)
    if "binary_search_steps" in params:
        hp["binary_search_steps"] = 1
    if "eps" in params:
        hp["eps"] = 0.5 if get_attack_spec(name).budget_units == "absolute" else 8 / 255
    return hp


@pytest.mark.parametrize("name", list_attacks())
def test_every_digital_attack_leaves_a_train_mode_bn_model_unchanged(name):
    model = _model()
    before = _state(model)
    x = _images()
    labels = torch.tensor([0, 1])
    attack = build_attack(name, **_small(name))
    result = attack(model, x, labels)
    assert result.adversarial.shape == x.shape
    assert model.net.train_mode_calls == 0  # every forward of the attack ran in eval mode
    _assert_unchanged(model, before)
    # the result is what the eval-mode model gives: the same attack on a copy put in eval mode agrees
    ref = _model().eval()
    assert torch.equal(attack(ref, x, labels).adversarial, result.adversarial)


def test_patch_sticker_and_saliency_leave_a_train_mode_bn_model_unchanged():
    from physical.universal import SignSticker, UniversalPatch

    model = _model()
    before = _state(model)
    run = {"steps": 2, "batch_size": 2, "eval_samples": 4, "eval_batch_size": 4, "seed": 0}
    patch = UniversalPatch(patch_size=6, shape="square", placement={"area": [0.1, 0.1], "rotation": 0.0}, **run)
    result = patch(model, _images(3, 24), labels=torch.tensor([0, 1, 2]))
    assert result.success.numel() == 4
    _assert_unchanged(model, before)

    mask = torch.zeros(1, 1, 24, 24)
    mask[..., 4:8, 4:20] = 1
    sticker = SignSticker(input_size=16, **run)
    saliency = sticker.saliency(model, _images(1, 24), target=3, samples=4)  # RP2's mask-placing stage
    assert saliency.shape == (1, 1, 24, 24)
    _assert_unchanged(model, before)
    result = sticker(model, _images(1, 24), mask, target=3)
    assert result.success.numel() == 4
    assert model.net.train_mode_calls == 0
    _assert_unchanged(model, before)


def test_guard_restores_modes_and_buffers_on_error_and_after_writes():
    model = _model()
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"), model_state_guard(model):
        assert not any(m.training for m in model.modules())
        with torch.no_grad():
            model.net.features[1].running_mean.add_(1.0)  # something writes a buffer...
        raise RuntimeError("boom")
    _assert_unchanged(model, before)  # ...and it is put back bit for bit, modes too
