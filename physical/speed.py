"""Speed settings shared by the attacks: the model prepared for an attack's loop (weights frozen, NHWC layout,
optionally compiled), restored as the caller gave it."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def prepared_model(model: nn.Module, *, channels_last: bool, compile: bool):
    """The model for an attack's loop: weights frozen, NHWC layout when ``channels_last``, optionally compiled;
    the caller's ``requires_grad`` flags and memory layout are restored on exit."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    convs = [t for t in [*params, *model.buffers()] if t.ndim == 4]
    convert = channels_last and any(not t.is_contiguous(memory_format=torch.channels_last) for t in convs)
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
