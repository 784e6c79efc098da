"""CIFAR-stride MobileNetV3 (small and large), built on torchvision's model code.

The only CIFAR change: the first two stride-2 convolutions at stride 1 (edgekd.models.strides),
so a 32x32 image ends as a 4x4 map instead of 1x1. Stage outputs (for layer mappings) are the
last block at each resolution.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenet_v3_small

from edgekd.models.strides import keep_resolution, stage_ends

VARIANTS = {"small": mobilenet_v3_small, "large": mobilenet_v3_large}
WIDTHS = (1.0, 0.75, 0.5)


def mobilenet_v3_cifar(num_classes: int = 10, variant: str = "small",
                       width_mult: float = 1.0) -> nn.Module:
    model = keep_resolution(VARIANTS[variant](weights=None, num_classes=num_classes,
                                              width_mult=width_mult))
    model.stage_paths = tuple(f"features.{i}" for i in stage_ends(model.features))
    model.layout = "mbv3"
    return model
