"""Training profiles: plain values, one ``Profile`` each, and the training constants they share.

- ``smoke``: all ten models in a few minutes on 2 CPU cores, for tests; accuracy does not matter.
- ``default``: the committed models; all ten within 100 minutes on 2 CPU cores (``--jobs 2``).
- ``long``: the default profile for 16 epochs instead of 10; ``--resume`` extends a default run.
- ``compare``: one model trained on the course's own files or on fresh pairs, same budget
  (``python -m training.compare_sources``).
- ``full``: for a GPU: wider models, more pairs, more epochs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    """How big the models are and how long they train."""

    width: int  # channels of a tower's first stage (ModelConfig.width_scale multiplies it)
    feat_dim: int  # length of the embedding each tower gives one digit
    epochs: int  # epoch budget (early stopping may end sooner)
    pairs_per_epoch: int  # fresh training pairs drawn per epoch (when the data folder has source digits)
    batch_size: int
    patience: int  # epochs without a better validation accuracy before training stops
    max_train_pairs: int | None  # cap on a fixed training file's pairs (None: all)
    max_val_pairs: int | None  # cap on the validation pairs scored each epoch (None: all)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(width=4, feat_dim=16, epochs=2, pairs_per_epoch=256, batch_size=64, patience=5,
                     max_train_pairs=256, max_val_pairs=128),
    "default": Profile(width=16, feat_dim=64, epochs=10, pairs_per_epoch=32_000, batch_size=128, patience=5,
                       max_train_pairs=None, max_val_pairs=5_000),
    # The default run extended from its checkpoints (``--resume``: the run key leaves epochs out).
    "long": Profile(width=16, feat_dim=64, epochs=16, pairs_per_epoch=32_000, batch_size=128, patience=5,
                    max_train_pairs=None, max_val_pairs=5_000),
    # One model on the course's 50,000 fixed pairs vs 50,000 fresh pairs per epoch: the same budget.
    "compare": Profile(width=16, feat_dim=64, epochs=4, pairs_per_epoch=50_000, batch_size=128, patience=6,
                       max_train_pairs=None, max_val_pairs=5_000),
    "full": Profile(width=48, feat_dim=192, epochs=60, pairs_per_epoch=100_000, batch_size=256, patience=8,
                    max_train_pairs=None, max_val_pairs=None),
}

# Fresh training pairs are drawn at the course's severity: the generator is the course's own process,
# so the judged data comes from this very distribution. A spread > 0 draws each digit's severity from
# 6 +- spread (domain randomisation); at 0.5 already half the digits lose a rectangle (s // 2 = 2).
# The price of 0: the models never see a clean digit, and misread some clean photos on /compare
# (README, "The service"); a spread reaching clean digits is the next thing to train with.
TRAIN_SEVERITY = 6.0
TRAIN_SEVERITY_SPREAD = 0.0
AUX_DIGIT_WEIGHT = 0.5  # weight of the digit cross-entropy next to the pair loss
# The learning rate halves (LR_DECAY_FACTOR) after LR_PATIENCE epochs without a better validation
# accuracy (ReduceLROnPlateau): about one halving per plateau within a 10-epoch budget.
LR_DECAY_FACTOR = 0.5
LR_PATIENCE = 3
