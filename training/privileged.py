"""Learning from what only training knows: the clean digit behind each corrupted one.

The generator knows, for every training digit, the clean picture behind the corruption: the same scale, rotation
and crop, before contrast, noise, blur, line and rectangles (``training.corrupt.corrupt_digits_and_clean``). The
test never has it. Two ways to learn from it, each switched on by a weight in the profile's ``Recipe``:

- **reconstruction** (``clean_reconstruction_weight``): a small decoder draws the clean 28x28 digit from the
  tower's embedding of the corrupted one, so the embedding the heads read must carry the strokes the rectangles
  hide. Decoding from the embedding, not from an earlier feature map, works for every tower alike (fpn has no
  single map) and puts the pressure where the comparison and digit heads read.
- **distillation** (``teacher_distill_weight``): a teacher of the same network, trained on clean digits
  (``Recipe.train_on_clean``), reads the clean version of each pair; its softened digit posteriors ("a 7 that
  looks like a 1") are a KL target for the digit head on the corrupted version.

Both are training-only: the decoder is not part of the model and the teacher is a separate one, so neither is in
the weights that are kept and exported, and serving costs what it did.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ensemble.contract import DIGIT_SIZE
from ensemble.layout import ArtifactLayout

INK_WEIGHT = 4.0  # extra weight of a pixel's loss per unit of clean ink: strokes are ~20% of the pixels


class CleanDecoder(nn.Module):
    """Embedding (N, feat_dim) -> clean-digit logits (N, 28, 28): a linear map to 7x7, two 2x up-convolutions."""

    def __init__(self, feat_dim: int, channels: int = 32):
        super().__init__()
        self.channels = channels
        self.expand = nn.Sequential(nn.Linear(feat_dim, channels * 7 * 7), nn.ReLU(inplace=True))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1), nn.BatchNorm2d(channels // 2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(channels // 2, 1, 4, 2, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.expand(features).view(-1, self.channels, 7, 7)
        return self.up(maps).squeeze(1)


def split_halves(pairs: torch.Tensor) -> torch.Tensor:
    """(B, 28, 56) pairs -> (2B, 28, 28) digits, all left halves then all right halves (the towers' order)."""
    return torch.cat([pairs[:, :, :DIGIT_SIZE], pairs[:, :, DIGIT_SIZE:]], dim=0)


def reconstruction_loss(decoded_logits: torch.Tensor, clean_pairs: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy against the clean pairs (pixels in [0, 1], as the model's input: soft
    targets), ink weighted."""
    target = split_halves(clean_pairs).float()
    weight = 1.0 + INK_WEIGHT * target
    return F.binary_cross_entropy_with_logits(decoded_logits.float(), target, weight=weight)


def distillation_loss(student_digit_logits: torch.Tensor, teacher_digit_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the digit posteriors softened by ``temperature``, times T^2 (Hinton et al.) so
    that its gradients keep their size whatever the temperature."""
    student = F.log_softmax(student_digit_logits.float().reshape(-1, 10) / temperature, dim=1)
    teacher = F.log_softmax(teacher_digit_logits.float().reshape(-1, 10) / temperature, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def teacher_run_key(teacher_dir: Path, name: str) -> str:
    """The teacher's own run key (its history.json), part of its students' run keys: another teacher, another run."""
    history = ArtifactLayout(teacher_dir).history(name)
    if not history.is_file():
        raise FileNotFoundError(f"no trained teacher for {name} in {teacher_dir} (expected {history}); train one "
                                f"with a profile whose recipe sets train_on_clean")
    return json.loads(history.read_text())["run_key"]
