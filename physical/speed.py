"""Speed settings shared by the attacks: the model prepared for an attack's loop (weights frozen, NHWC layout,
optionally compiled), restored as the caller gave it; and one forward pass with the layout / precision settings."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn

#: the optimisation precisions: fp32, or bfloat16 autocast of the forward/backward (outputs returned as float32)
PRECISIONS = ("fp32", "bf16")


@contextlib.contextmanager
def prepared_model(model: nn.Module, *, channels_last: bool, compile: bool):
    """The model for an attack's loop: weights frozen, NHWC layout when ``channels_last``, optionally compiled;
    the caller's ``requires_grad`` flags and memory layout are restored on exit, and its train/eval mode and
    buffers by :func:`testbed.models.base.model_state_guard` (eval mode for the call)."""
    from testbed.models.base import model_state_guard

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    convs = [t for t in [*params, *model.buffers()] if t.ndim == 4]
    convert = channels_last and any(not t.is_contiguous(memory_format=torch.channels_last) for t in convs)
    with model_state_guard(model):
        try:
            for p in params:
                p.requires_grad_(False)
            if convert:
                model.to(memory_format=torch.channels_last)
            yield torch.compile(model) if compile else model
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
            if convert:
                model.to(memory_format=torch.contiguous_format)


def model_outputs(net: Callable[[Tensor], Tensor], x: Tensor, *, channels_last: bool, bf16: bool) -> Tensor:
    """``net(x)`` as float32: the input in NHWC layout when ``channels_last``, the pass under bfloat16 autocast
    when ``bf16`` (on the input's device type)."""
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if bf16:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return net(x).float()
    return net(x)
