"""The CIFAR change shared by the ImageNet mobile nets: fewer early downsamplings.

A 32x32 image through an ImageNet network (total stride 32) ends as a 1x1 map; the CIFAR
variants keep the first two stride-2 convolutions at stride 1 (total stride 8, a 4x4 final map),
as the papers' CIFAR MobileNetV2 does with its stem and its 24-channel stage.
"""

from __future__ import annotations

from torch import nn


def keep_resolution(model: nn.Module, count: int = 2) -> nn.Module:
    """Set the first `count` stride-2 convolutions (in module order) to stride 1; in place."""
    changed = 0
    for m in model.modules():
        if changed == count:
            break
        if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
            m.stride = (1, 1)
            changed += 1
    if changed < count:
        raise ValueError(f"{type(model).__name__} has only {changed} stride-2 convolutions")
    return model


def stage_ends(features: nn.Sequential, input_size: int = 32) -> tuple[int, ...]:
    """Indices of `features` whose output is the last at its resolution (a stage's end)."""
    import torch

    sizes = []
    with torch.no_grad():
        x = torch.zeros(1, 3, input_size, input_size)
        was = features.training
        features.eval()
        for layer in features:
            x = layer(x)
            sizes.append(x.shape[-1])
        features.train(was)
    return tuple(i for i in range(len(sizes)) if i == len(sizes) - 1 or sizes[i + 1] != sizes[i])
