"""CIFAR MobileNetV2 (the papers' teacher), its truncated students and a width-multiplier family.

Built on torchvision's mobilenet_v2 so module paths (`features.13`, `classifier.1`) match the
papers' code. CIFAR changes: the stem conv and the first block of the 24-channel stage use
stride 1 instead of 2, so a 32x32 image keeps 32x32 / 16x16 maps in the early layers.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v2

# features[:-L] for the paper's table (PAPERS.md): L removed -> compression factor.
TRUNCATIONS = (3, 5, 7, 9, 11, 13, 15, 17)
WIDTHS = (0.75, 0.5, 0.35, 0.25)


def mobilenet_v2_cifar(num_classes: int = 10, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV2 with the CIFAR stride changes; head = GAP, Dropout(0.2), Linear."""
    model = mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult)
    model.features[0][0].stride = (1, 1)
    model.features[2].conv[1][0].stride = (1, 1)
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
        # torchvision's init for the new Linear, like the teacher's head.
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))
