"""Speed settings shared by the attacks: the model prepared for an attack's loop (weights frozen, NHWC layout,
optionally BatchNorm folded into the convolutions, optionally compiled), restored as the caller gave it; and one
forward pass with the layout / precision settings."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor, nn

#: the optimisation precisions: fp32, or bfloat16 autocast of the forward/backward (outputs returned as float32)
PRECISIONS = ("fp32", "bf16")


def fold_batch_norms(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` in eval mode with every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an
    ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``, most CNN blocks) folded into that convolution's
    weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and replaced by ``nn.Identity``: the same function
    in eval mode up to float rounding (MobileNetV2: logits within 1e-5), without the BatchNorm passes forward and
    backward. Returns (the copy, how many pairs were folded); the caller's model is not touched. A BatchNorm without
    running statistics, or one called outside a Sequential (e.g. ResNet's ``bn1`` in ``forward``), is left as is."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from testbed.errors import ConfigError

    try:
        folded = copy.deepcopy(model).eval()
    except Exception as exc:  # e.g. a model holding a handle that cannot be copied
        raise ConfigError(f"fold_bn: this model cannot be copied to fold its BatchNorm layers ({exc})") from None
    count = 0
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.running_mean is not None
                    and bn.running_var is not None and conv.out_channels == bn.num_features):
                seq._modules[first] = fuse_conv_bn_eval(conv, bn)
                seq._modules[second] = nn.Identity()
                count += 1
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded, count


@contextlib.contextmanager
def prepared_model(model: nn.Module, *, channels_last: bool, compile: bool, fold_bn: bool = False):
    """The model for an attack's loop: weights frozen, NHWC layout when ``channels_last``, optionally compiled;
    the caller's ``requires_grad`` flags and memory layout are restored on exit, and its train/eval mode and
    buffers by :func:`testbed.models.base.model_state_guard` (eval mode for the call). ``fold_bn``: the loop runs
    on a copy with its BatchNorm layers folded into the convolutions (:func:`fold_batch_norms`; same function up to
    float rounding, fewer passes), the caller's model untouched."""
    from testbed.models.base import model_state_guard

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    convs = [t for t in [*params, *model.buffers()] if t.ndim == 4]
    convert = (channels_last and not fold_bn
               and any(not t.is_contiguous(memory_format=torch.channels_last) for t in convs))
    with model_state_guard(model):
        try:
            for p in params:
                p.requires_grad_(False)
            net = model
            if fold_bn:
                net, _ = fold_batch_norms(model)
                if channels_last:
                    net.to(memory_format=torch.channels_last)
            elif convert:
                model.to(memory_format=torch.channels_last)
            yield torch.compile(net) if compile else net
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
