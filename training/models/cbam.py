"""A plain CNN whose blocks carry CBAM attention (channel, then spatial)."""

from __future__ import annotations

import torch
from torch import nn

from training.models.resnet import stem


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, max(channels // reduction, 4)), nn.ReLU(inplace=True),
                                 nn.Linear(max(channels // reduction, 4), channels))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        channel = torch.sigmoid(self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3))))
        x = x * channel[:, :, None, None]
        spatial = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        return x * spatial


class CBAMTower(nn.Module):
    def __init__(self, width: int = 32, feat_dim: int = 128):
        super().__init__()
        layers, cin = [], width
        for i in range(3):
            cout = width * 2**i
            layers += [nn.Conv2d(cin, cout, 3, 2 if i else 1, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), CBAM(cout)]
            cin = cout
        self.body = nn.Sequential(stem(width), *layers)
        self.proj = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, feat_dim),
                                  nn.BatchNorm1d(feat_dim), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.proj(self.body(x))
