"""An FPN-style multi-scale tower: three ResNet stages, a top-down pathway, every level pooled."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.resnet import BasicBlock, stem


class FPNTower(nn.Module):
    def __init__(self, width: int = 32, feat_dim: int = 128, fpn_dim: int = 64):
        super().__init__()
        self.stem = stem(width)
        chans = [width, 2 * width, 4 * width]
        self.stages = nn.ModuleList([
            nn.Sequential(BasicBlock(width, chans[0]), BasicBlock(chans[0], chans[0])),
            nn.Sequential(BasicBlock(chans[0], chans[1], 2), BasicBlock(chans[1], chans[1])),
            nn.Sequential(BasicBlock(chans[1], chans[2], 2), BasicBlock(chans[2], chans[2])),
        ])
        self.lateral = nn.ModuleList([nn.Conv2d(c, fpn_dim, 1) for c in chans])
        self.smooth = nn.ModuleList([nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1) for _ in chans])
        self.proj = nn.Sequential(nn.Linear(3 * fpn_dim, feat_dim), nn.BatchNorm1d(feat_dim), nn.ReLU(inplace=True))

    def forward(self, x):
        feats, x = [], self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        top = self.lateral[2](feats[2])
        levels = [top]
        for i in (1, 0):
            top = self.lateral[i](feats[i]) + F.interpolate(top, size=feats[i].shape[-2:], mode="nearest")
            levels.insert(0, top)
        pooled = [smooth(level).mean((2, 3)) for smooth, level in zip(self.smooth, levels, strict=True)]
        return self.proj(torch.cat(pooled, 1))
