"""CIFAR-stride ShuffleNetV2, built on torchvision's model code.

CIFAR changes: the stem convolution at stride 1 and no max-pool, so a 32x32 image keeps
32x32 into stage 2 and ends as a 4x4 map (total stride 8, as the CIFAR MobileNetV2).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import shufflenet_v2_x0_5, shufflenet_v2_x1_0, shufflenet_v2_x1_5

from edgekd.models.strides import keep_resolution

WIDTHS = {"0.5": shufflenet_v2_x0_5, "1.0": shufflenet_v2_x1_0, "1.5": shufflenet_v2_x1_5}


def shufflenet_v2_cifar(num_classes: int = 10, width: str = "1.0") -> nn.Module:
    model = keep_resolution(WIDTHS[width](weights=None, num_classes=num_classes), count=1)
    model.maxpool = nn.Identity()
    model.stage_paths = ("stage2", "stage3", "stage4")
    model.layout = "shufflenetv2"
    return model
