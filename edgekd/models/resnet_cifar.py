"""The CIFAR ResNets of He et al. (ResNet-6n+2: 3x3 stem, three stages of n basic blocks at
16/32/64 channels x width, strides 1/2/2, global pool, Linear), from torchvision's BasicBlock.

Dense 3x3 convolutions: often faster per MAC than depthwise ones on GPUs, TensorRT and INT8
CPUs, which is why a student is chosen by measured latency rather than by MACs.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

DEPTHS = (8, 14, 20)
WIDTHS = (0.5, 0.75, 1, 2)  # x 16/32/64 channels


class CifarResNet(nn.Module):
    def __init__(self, num_classes: int = 10, depth: int = 20, width: float = 1):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth is 6n + 2, got {depth}")
        n, c = (depth - 2) // 6, round(16 * width)
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        stages, inp = [], c
        for i, out in enumerate((c, 2 * c, 4 * c)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inp != out:
                down = nn.Sequential(conv1x1(inp, out, stride), nn.BatchNorm2d(out))
            blocks = [BasicBlock(inp, out, stride, down)] + [BasicBlock(out, out) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            inp = out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inp, num_classes)
        for m in self.modules():  # torchvision's ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.stage_paths = ("layer1", "layer2", "layer3")
        self.layout = "resnet_cifar"

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))
