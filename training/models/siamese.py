"""The Siamese frame every model shares: one tower, an antisymmetric comparison head, a digit head."""

from __future__ import annotations

import torch
from torch import nn

from ensemble.contract import DIGIT_SIZE


class ConcatHead(nn.Module):
    """h(a, b) = MLP([a, b, a - b, |a - b|, a * b])."""

    def __init__(self, dim: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(5 * dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([a, b, a - b, (a - b).abs(), a * b], dim=1)).squeeze(1)


class MultiFusionHead(nn.Module):
    """Several fusions side by side (concat, difference, |difference|, product, attention-weighted),
    each projected to a common width and mixed by weights the head computes from the pair itself."""

    def __init__(self, dim: int, hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(2 * dim, dim), nn.Sigmoid())
        widths = {"concat": 2 * dim, "diff": dim, "absdiff": dim, "product": dim, "attended": 2 * dim}
        self.branches = nn.ModuleDict({k: nn.Sequential(nn.Linear(w, hidden), nn.ReLU(inplace=True))
                                       for k, w in widths.items()})
        self.gate = nn.Linear(len(widths) * hidden, len(widths))
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        weights = self.attention(torch.cat([a, b], dim=1))
        fused = {"concat": torch.cat([a, b], 1), "diff": a - b, "absdiff": (a - b).abs(), "product": a * b,
                 "attended": torch.cat([a * weights, b * weights], 1)}
        branch = torch.stack([self.branches[k](v) for k, v in fused.items()], dim=1)  # (B, 5, hidden)
        mix = torch.softmax(self.gate(branch.flatten(1)), dim=1).unsqueeze(2)
        return self.out((branch * mix).sum(1)).squeeze(1)


HEADS = {"concat": ConcatHead, "fusion": MultiFusionHead}


class SiameseNet(nn.Module):
    """Scores "left digit > right digit" for pairs of shape (B, 28, 56), pixels in [0, 1].

    Returns the pair logit (B,) and digit logits (B, 2, 10) for the left and right halves. The
    comparison is antisymmetric by construction, logit(a, b) = h(a, b) - h(b, a), so swapping the
    halves gives exactly the complementary probability.
    """

    def __init__(self, tower: nn.Module, feat_dim: int, head: str = "concat", dropout: float = 0.2):
        super().__init__()
        self.tower = tower
        self.head = HEADS[head](feat_dim, dropout=dropout)
        self.digit_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feat_dim, 10))

    def forward(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, digit_logits, _ = self.forward_with_features(pairs)
        return logit, digit_logits

    def forward_with_features(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``'s outputs and the tower's embeddings (2B, feat_dim): all left halves, then all right ones
        (training's reconstruction head reads them: ``training.privileged``)."""
        batch = pairs.shape[0]
        halves = torch.cat([pairs[:, None, :, :DIGIT_SIZE], pairs[:, None, :, DIGIT_SIZE:]], dim=0)  # (2B, 1, 28, 28)
        features = self.tower(halves)
        left, right = features[:batch], features[batch:]
        logit = self.head(left, right) - self.head(right, left)
        digit_logits = self.digit_head(features).view(2, batch, 10).transpose(0, 1)
        return logit, digit_logits, features
