"""An EfficientNet-B0-style tower: MBConv blocks (expand, depthwise, squeeze-excitation, project)."""

from __future__ import annotations

from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), nn.SiLU(inplace=True),
                                nn.Conv2d(squeezed, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x)


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        layers = [] if expand == 1 else [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU(inplace=True)]
        layers += [nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid),
                   nn.SiLU(inplace=True), SqueezeExcite(mid, max(cin // 4, 4)),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class EfficientNetTower(nn.Module):
    """B0's stage pattern (expand ratio, kernel, stride, repeats), scaled down to 28x28 inputs."""

    STAGES = ((1, 3, 1, 1), (4, 3, 2, 2), (4, 5, 2, 2), (4, 3, 1, 2))

    def __init__(self, width: int = 32, feat_dim: int = 128):
        super().__init__()
        # B0's stride-2 stem (28 -> 14 px) and expand ratio 4 instead of 6: depthwise convolutions are
        # slow to train on a CPU, and the blurred digits lose little at 14x14.
        layers = [nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.SiLU(inplace=True)]
        cin = width
        for i, (expand, kernel, stride, repeats) in enumerate(self.STAGES):
            cout = width * (1, 1, 2, 3)[i] // (2 if i == 0 else 1)
            for r in range(repeats):
                layers.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
        head = 4 * width
        layers += [nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(head, feat_dim),
                                  nn.BatchNorm1d(feat_dim), nn.SiLU(inplace=True))

    def forward(self, x):
        return self.proj(self.body(x))
