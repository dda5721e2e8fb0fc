"""Training profiles: plain values, one ``Profile`` each, and the training constants they share.

- ``smoke``: all ten models in a few minutes on 2 CPU cores, for tests; accuracy does not matter.
- ``default``: the committed models; all ten within 100 minutes on 2 CPU cores (``--jobs 2``, bf16).
- ``long``: the default recipe with a 1.5x budget (at most 150 minutes with ``--jobs 2``).
- ``compare``: one model trained on the course's own files or on fresh pairs, same budget
  (``python -m training.compare_sources``).
- ``gpu``: all ten in about 8 minutes on one large GPU: wider towers, large batches, pairs drawn
  by many processes (``make train-gpu``).
- ``full``: a long GPU run: wider models, more pairs, more epochs.

Every profile trains with the same recipe: AdamW, a learning rate that warms up over the first
``WARMUP_FRACTION`` of the budget and then follows a cosine down to ``FINAL_LR_FRACTION`` of the peak
at its very end, and an exponential moving average of the weights (``EMA_DECAY``) that is what gets
scored, kept and exported. The budget is known in advance, so the schedule spends all of it.
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
    clean_share: float = 0.0  # share of training digits drawn nearly clean (severity U[0, CLEAN_SEVERITY_MAX])
    data_workers: int = 1  # processes drawing each epoch's fresh pairs (a GPU trains faster than one CPU draws)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(width=4, feat_dim=16, epochs=2, pairs_per_epoch=256, batch_size=64, patience=5,
                     max_train_pairs=256, max_val_pairs=128, clean_share=0.2),
    "default": Profile(width=16, feat_dim=64, epochs=12, pairs_per_epoch=32_000, batch_size=128, patience=12,
                       max_train_pairs=None, max_val_pairs=5_000, clean_share=0.2),
    "long": Profile(width=16, feat_dim=64, epochs=18, pairs_per_epoch=32_000, batch_size=128, patience=18,
                    max_train_pairs=None, max_val_pairs=5_000, clean_share=0.2),
    # One model on the course's 50,000 fixed pairs vs 50,000 fresh pairs per epoch: the same budget.
    "compare": Profile(width=16, feat_dim=64, epochs=4, pairs_per_epoch=50_000, batch_size=128, patience=6,
                       max_train_pairs=None, max_val_pairs=5_000),
    "gpu": Profile(width=48, feat_dim=128, epochs=12, pairs_per_epoch=120_000, batch_size=512, patience=12,
                   max_train_pairs=None, max_val_pairs=None, clean_share=0.2, data_workers=12),
    "full": Profile(width=48, feat_dim=192, epochs=60, pairs_per_epoch=100_000, batch_size=256, patience=60,
                    max_train_pairs=None, max_val_pairs=None, clean_share=0.2, data_workers=12),
}

# Fresh training pairs are drawn at the course's severity: the generator is the course's own process,
# so the judged data comes from this very distribution. A spread > 0 draws each digit's severity from
# 6 +- spread (domain randomisation); at 0.5 already half the digits lose a rectangle (s // 2 = 2).
# ``Profile.clean_share`` of the digits are drawn nearly clean instead, so that the digit heads also
# read the clean pictures people draw or photograph (the course's digits are all at severity 6).
TRAIN_SEVERITY = 6.0
TRAIN_SEVERITY_SPREAD = 0.0
CLEAN_SEVERITY_MAX = 2.0
AUX_DIGIT_WEIGHT = 0.5  # weight of the digit cross-entropy next to the pair loss
# The learning-rate schedule over the whole budget (epochs x batches), and the weight average.
WARMUP_FRACTION = 0.05  # of all steps, rising linearly from FINAL_LR_FRACTION to the peak (ModelConfig.lr)
FINAL_LR_FRACTION = 0.01  # the floor the cosine reaches at the last step, relative to the peak
EMA_DECAY = 0.998  # per step: the average spans the last ~500 steps (two epochs of the default profile)
