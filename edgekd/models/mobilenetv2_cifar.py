"""CIFAR MobileNetV2 (the papers' teacher), its truncated students and a width-multiplier family.

Built on torchvision's mobilenet_v2 so module paths (`features.13`, `classifier.1`) match the
papers' code. CIFAR changes: the stem conv and the first block of the 24-channel stage use
stride 1 instead of 2, so a 32x32 image keeps 32x32 / 16x16 maps in the early layers.
"""

from __future__ import annotations

import math

from torch import nn
from torchvision.models import mobilenet_v2

# features[:-L] for the paper's table (docs/methods.md): L removed -> compression factor.
TRUNCATIONS = (3, 5, 7, 9, 11, 13, 15, 17)
WIDTHS = (0.75, 0.5, 0.35, 0.25)
# The depth x width grid: blocks per stage ceil(n * depth), channels x width.
GRID_DEPTHS = (0.5, 0.25)
GRID_WIDTHS = (1.0, 0.75, 0.5, 0.35)
# torchvision's (t, c, n, s) per stage; the 24-channel stage at stride 1 for CIFAR.
SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))


def _stage_paths(blocks_per_stage) -> tuple[str, ...]:
    """`features.i` of each stage's last block (features.0 is the stem)."""
    ends, i = [], 0
    for n in blocks_per_stage:
        i += n
        ends.append(f"features.{i}")
    return tuple(ends)


FULL_STAGE_PATHS = _stage_paths(n for _t, _c, n, _s in SETTING)  # features.1, .3, .6, ... .17


def mobilenet_v2_cifar(num_classes: int = 10, width_mult: float = 1.0,
                       depth_mult: float = 1.0) -> nn.Module:
    """MobileNetV2 with the CIFAR stride changes; head = GAP, Dropout(0.2), Linear.

    `depth_mult` < 1 keeps ceil(n * depth_mult) blocks of each stage (fewer layers as well as,
    with `width_mult`, narrower ones). `stage_paths` names each stage's output for the layer
    mappings of InDistill and AT (`layout` "mbv2": stages pair by position).
    """
    if depth_mult == 1.0:
        model = mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult)
        model.features[2].conv[1][0].stride = (1, 1)
        counts = [n for _t, _c, n, _s in SETTING]
    else:
        counts = [max(1, math.ceil(n * depth_mult)) for _t, _c, n, _s in SETTING]
        setting = [[t, c, k, s] for (t, c, _n, s), k in zip(SETTING, counts, strict=True)]
        model = mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult,
                             inverted_residual_setting=setting)
    model.features[0][0].stride = (1, 1)
    model.stage_paths = _stage_paths(counts)
    model.layout = "mbv2"
    return model


class TruncatedMobileNetV2(nn.Module):
    """The papers' student: teacher `features[:-L]`, global average pool, Linear; no dropout."""

    def __init__(self, num_classes: int = 10, removed: int = 5):
        super().__init__()
        full = mobilenet_v2_cifar(num_classes)
        if not 1 <= removed < len(full.features):
            raise ValueError(f"removed must be in 1..{len(full.features) - 1}, got {removed}")
        self.features = full.features[:-removed]
        last = self.features[-1]
        channels = last.out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.removed = removed
        self.stage_paths = tuple(p for p in FULL_STAGE_PATHS
                                 if int(p.split(".")[1]) < len(self.features))
        self.layout = "mbv2"
        # torchvision's init for the new Linear, like the teacher's head.
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))
