"""ResNet tower with BasicBlocks (stages [2, 2, 2] or deeper [3, 3, 3])."""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def stem(width: int) -> nn.Sequential:
    """3x3 conv at full resolution, then a stride-2 conv: the blurred digits lose little at 14x14."""
    return nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                         nn.Conv2d(width, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


class ResNetTower(nn.Module):
    """28x28 -> stem (14x14) -> stages at 14, 7, 4 px -> global average pool -> feat_dim."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2), width: int = 32, feat_dim: int = 128):
        super().__init__()
        self.stem = stem(width)
        blocks, cin = [], width
        for i, n in enumerate(layers):
            cout = width * 2**i
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, stride=2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*blocks)
        self.proj = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, feat_dim),
                                  nn.BatchNorm1d(feat_dim), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.proj(self.stages(self.stem(x)))
