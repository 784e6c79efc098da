"""Parameter and multiply-accumulate counts, measured by running the model once."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one image (convolutions and linear layers).

    Normalisation, activations and pooling are left out, as in the papers' counts.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, channels, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
