"""Multiply-accumulates of one forward pass, counted on the layers that do the work.

A conv with C_in / groups input channels and a k_h x k_w kernel costs C_in / groups * k_h * k_w MACs
per output value; a transposed conv the same per *input* value and output channel; a linear layer
in * out per row.  Everything else (activations, additions, norms, pooling, resizing) is left out:
it is small beside these for the networks here.
"""

from __future__ import annotations

import torch
from torch import nn


def _layer_macs(module: nn.Module, inputs, output) -> int:
    x = inputs[0]
    if isinstance(module, nn.ConvTranspose2d):
        per_value = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return x.numel() * per_value
    if isinstance(module, nn.Conv2d):
        per_value = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * per_value
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


@torch.no_grad()
def count_macs(fn, *inputs) -> int:
    """MACs of ``fn(*inputs)`` for every Conv2d, ConvTranspose2d and Linear inside ``fn`` (a module,
    or a function whose modules are reached through ``fn.__self__`` when it is a bound method)."""
    root = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    if not isinstance(root, nn.Module):
        raise TypeError("count_macs needs a module or a bound method of one")
    total = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + _layer_macs(m, i, o)))
             for m in root.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        fn(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def autoencoder_macs(model, image_size: tuple[int, int]) -> dict:
    """MACs per image of size ``image_size``: the pre-noise map (once per image) and one draw after it."""
    c = model.arch.in_channels
    x = torch.zeros(1, c, *image_size, device=next(model.parameters()).device)
    pre = count_macs(model.pre_noise, x)
    post = count_macs(model.post_noise, model.pre_noise(x), tuple(image_size))
    return {"image_size": list(image_size), "pre_noise": pre, "per_draw": post}
