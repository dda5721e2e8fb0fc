"""Tests of the course file contract (ensemble/course_data.py): every malformed file is refused with a
CourseDataError naming the file and the problem; valid files round-trip exactly."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ensemble.course_data import (
    CourseDataError,
    as_pairs_uint8,
    labels_for_ids,
    load_course_npz,
    read_labels_csv,
    save_course_npz,
    validate_course_arrays,
    write_probabilities_csv,
    write_submission_csv,
)

N = 6


def _x(n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 56), dtype=np.uint8)


def _y(n: int = N) -> np.ndarray:
    return np.arange(n) % 2


def _ids(n: int = N) -> np.ndarray:
    return np.array([f"PUB_{i:07d}" for i in range(n)])


# --------------------------------------------------------------------------- malformed npz files

def _nan_float() -> np.ndarray:
    x = _x().astype(np.float32)
    x[2, 3, 4] = np.nan
    return x


def _out_of_range_float() -> np.ndarray:
    x = _x().astype(np.float64)
    x[1, 0, 0] = 300.0
    return x


def _negative_float() -> np.ndarray:
    x = _x().astype(np.float32) / 255.0
    x[0, 5, 5] = -0.5
    return x


MALFORMED = {
    "missing_x": ({"y": _y()}, r"missing key 'x'"),
    "wrong_shape": ({"x": _x()[:, :, :28], "y": _y()}, r"shape \(N, 28, 56\).*\(6, 28, 28\)"),
    "transposed": ({"x": _x().transpose(0, 2, 1).copy()}, r"shape \(N, 28, 56\)"),
    "int32": ({"x": _x().astype(np.int32), "y": _y()}, r"dtype int32"),
    "float_above_255": ({"x": _out_of_range_float()}, r"\[0, 1\] or \[0, 255\]"),
    "float_negative": ({"x": _negative_float()}, r"\[0, 1\] or \[0, 255\]"),
    "nan": ({"x": _nan_float()}, r"NaN"),
    "label_2": ({"x": _x(), "y": np.array([0, 1, 2, 0, 1, 0])}, r"labels must be 0 or 1.*row 2"),
    "label_negative": ({"x": _x(), "y": np.array([0, 1, -1, 0, 1, 0])}, r"labels must be 0 or 1"),
    "label_fraction": ({"x": _x(), "y": np.array([0, 1, 0.5, 0, 1, 0])}, r"labels must be 0 or 1"),
    "y_too_short": ({"x": _x(), "y": _y(N - 1)}, r"'y' must have shape \(6,\)"),
    "y_too_long": ({"x": _x(), "y": _y(N + 1)}, r"'y' must have shape \(6,\)"),
    "y_two_dimensional": ({"x": _x(), "y": _y()[:, None]}, r"'y' must have shape \(6,\)"),
    "duplicate_ids": ({"x": _x(), "id": np.array(["a", "b", "c", "b", "e", "f"])}, r"unique.*\bb\b"),
    "id_length": ({"x": _x(), "id": _ids(N - 1)}, r"'id' must have shape \(6,\)"),
    "id_numbers": ({"x": _x(), "id": np.arange(N)}, r"'id' must hold strings"),
    "id_empty": ({"x": _x(), "id": np.array(["a", "", "c", "d", "e", "f"])}, r"empty"),
    "no_pairs": ({"x": np.zeros((0, 28, 56), np.uint8)}, r"no pairs"),
    "digits_disagree_with_y": ({"x": _x(), "y": np.ones(N, int), "digits": np.tile([[1, 2]], (N, 1))},
                               r"disagree"),
    "digits_equal": ({"x": _x(), "digits": np.tile([[3, 3]], (N, 1))}, r"two different classes"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_is_refused_naming_file_and_problem(tmp_path, case):
    arrays, problem = MALFORMED[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    with pytest.raises(CourseDataError) as err:
        load_course_npz(path)
    message = str(err.value)
    assert str(path) in message
    assert re.search(problem, message), message


@pytest.mark.parametrize("key", ["x", "id"])
def test_pickled_object_array_is_refused(tmp_path, key):
    arrays = {"x": _x(), "id": _ids()}
    arrays[key] = np.array([{"evil": i} for i in range(N)], dtype=object)
    path = tmp_path / f"pickled_{key}.npz"
    np.savez(path, **arrays)  # allow_pickle defaults to True when writing
    with pytest.raises(CourseDataError) as err:
        load_course_npz(path)
    message = str(err.value)
    assert str(path) in message
    assert f"{key!r}" in message and "pickle" in message


def test_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("id,label\nPUB_0000000,1\n")
    with pytest.raises(CourseDataError) as err:
        load_course_npz(path)
    assert str(path) in str(err.value) and "not a readable .npz" in str(err.value)


def test_truncated_zip_is_refused(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=_x())
    path = tmp_path / "truncated.npz"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CourseDataError) as err:
        load_course_npz(path)
    assert str(path) in str(err.value)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(CourseDataError) as err:
        load_course_npz(path)
    assert str(path) in str(err.value)


def test_plain_npy_file_is_refused(tmp_path):
    path = tmp_path / "pairs.npy"
    np.save(path, _x())
    with pytest.raises(CourseDataError) as err:
        load_course_npz(path)
    assert str(path) in str(err.value)


def test_nonexistent_path_is_refused(tmp_path):
    path = tmp_path / "nowhere" / "train.npz"
    with pytest.raises(CourseDataError) as err:
        load_course_npz(path)
    assert str(path) in str(err.value) and "no such file" in str(err.value)


def test_directory_is_refused(tmp_path):
    with pytest.raises(CourseDataError) as err:
        load_course_npz(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_required_key_missing_is_refused(tmp_path):
    path = tmp_path / "no_labels.npz"
    np.savez(path, x=_x())
    assert len(load_course_npz(path)) == N  # fine when only x is required
    with pytest.raises(CourseDataError) as err:
        load_course_npz(path, require=("x", "y"))
    assert str(path) in str(err.value) and "missing key 'y'" in str(err.value)


def test_course_data_error_is_a_value_error():
    assert issubclass(CourseDataError, ValueError)


def test_validate_arrays_names_the_source():
    with pytest.raises(CourseDataError, match=r"^upload: 'x' must be uint8"):
        validate_course_arrays({"x": _x().astype(np.int64)}, source="upload")


# --------------------------------------------------------------------------- float conversion

def test_float_in_unit_range_is_scaled_by_255_and_rounded():
    x = np.zeros((2, 28, 56), np.float32)
    x[0, 0, :4] = [0.2, 0.101, 0.999, 1.0]
    x[1, 5, 5] = 0.0017  # 0.43 -> 0
    x[1, 6, 6] = 0.0021  # 0.54 -> 1
    out = as_pairs_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 28, 56)
    np.testing.assert_array_equal(out[0, 0, :4], [51, 26, 255, 255])
    assert out[1, 5, 5] == 0 and out[1, 6, 6] == 1
    assert out.sum() == 51 + 26 + 255 + 255 + 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_in_pixel_range_is_rounded_not_scaled(dtype):
    x = np.zeros((1, 28, 56), dtype)
    x[0, 0, :6] = [0.4, 0.6, 100.4, 100.6, 254.9, 255.0]
    out = as_pairs_uint8(x)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0, :6], [0, 1, 100, 101, 255, 255])
    assert out[0, 1:].sum() == 0


def test_uint8_passes_unchanged_and_single_pair_gains_batch_axis():
    x = _x()
    np.testing.assert_array_equal(as_pairs_uint8(x), x)
    single = as_pairs_uint8(x[0])
    assert single.shape == (1, 28, 56)
    np.testing.assert_array_equal(single[0], x[0])


def test_float_file_is_converted_on_load(tmp_path):
    x = _x()
    path = tmp_path / "float.npz"
    np.savez(path, x=x.astype(np.float32) / 255.0, y=_y())
    data = load_course_npz(path, require=("x", "y"))
    assert data.x.dtype == np.uint8
    np.testing.assert_array_equal(data.x, x)


# --------------------------------------------------------------------------- round trips

def test_train_format_round_trip(tmp_path):
    x, y = _x(seed=1), _y()
    digits = np.array([[1, 0], [2, 3], [5, 4], [6, 7], [9, 8], [0, 1]])
    y = (digits[:, 0] > digits[:, 1]).astype(np.int64)
    path = tmp_path / "train.npz"
    save_course_npz(path, x=x, y=y, digits=digits)
    data = load_course_npz(path, require=("x", "y"))
    assert data.x.dtype == np.uint8 and data.x.shape == (N, 28, 56)
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_array_equal(data.digits, digits)
    assert data.ids is None
    assert list(data.ids_or_row_numbers()) == [str(i) for i in range(N)]
    # A real npz that numpy reads without pickle.
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["digits", "x", "y"]


def test_test_format_round_trip(tmp_path):
    x, ids = _x(seed=2), _ids()
    path = tmp_path / "test_public.npz"
    save_course_npz(path, x=x, id=ids)
    data = load_course_npz(path, require=("x", "id"))
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.ids, ids)
    assert data.ids.dtype.kind == "U"
    assert data.y is None
    assert list(data.ids_or_row_numbers()) == list(ids)


def test_save_is_byte_reproducible(tmp_path):
    x, y = _x(seed=3), _y()
    save_course_npz(tmp_path / "a.npz", x=x, y=y)
    save_course_npz(tmp_path / "b.npz", x=x, y=y)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_save_refuses_object_arrays(tmp_path):
    with pytest.raises(CourseDataError):
        save_course_npz(tmp_path / "bad.npz", x=_x(), id=np.array(["a", 1, None, 2, 3, 4], dtype=object))
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed])
def test_plain_numpy_files_load(tmp_path, writer):
    x, y, ids = _x(seed=4), _y(), _ids()
    path = tmp_path / "plain.npz"
    writer(path, x=x, y=y, id=ids)
    data = load_course_npz(path, require=("x", "y", "id"))
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_array_equal(data.ids, ids)


def test_bytes_ids_and_bool_labels_are_accepted(tmp_path):
    path = tmp_path / "bytes.npz"
    np.savez(path, x=_x(), y=_y().astype(bool), id=np.array([f"r{i}".encode() for i in range(N)]))
    data = load_course_npz(path)
    assert list(data.ids) == [f"r{i}" for i in range(N)]
    np.testing.assert_array_equal(data.y, _y())
    assert data.y.dtype == np.int64


# --------------------------------------------------------------------------- label CSVs

def test_labels_csv_round_trip(tmp_path):
    ids, labels = _ids(), np.array([1, 0, 0, 1, 1, 0])
    path = tmp_path / "labels.csv"
    write_submission_csv(path, ids, labels)
    assert path.read_text().splitlines()[0] == "id,label"
    read = read_labels_csv(path)
    assert read == {i: int(v) for i, v in zip(ids, labels, strict=True)}
    np.testing.assert_array_equal(labels_for_ids(read, ids, str(path)), labels)
    # Order of lookup follows the ids asked for, not the file.
    np.testing.assert_array_equal(labels_for_ids(read, ids[::-1], str(path)), labels[::-1])


def test_probabilities_go_to_their_own_file_and_the_submission_stays_id_label(tmp_path):
    ids, labels, probs = _ids(), np.array([1, 0, 0, 1, 1, 0]), np.linspace(0, 1, N)
    submission, proba = tmp_path / "submission.csv", tmp_path / "proba.csv"
    write_submission_csv(submission, ids, labels)
    write_probabilities_csv(proba, ids, probs)
    assert submission.read_text().splitlines()[0] == "id,label"
    lines = proba.read_text().splitlines()
    assert lines[0] == "id,probability" and len(lines) == N + 1
    assert lines[1] == "PUB_0000000,0.000000" and lines[-1] == f"{ids[-1]},1.000000"
    assert [float(line.split(",")[1]) for line in lines[1:]] == pytest.approx(probs, abs=5e-7)


BAD_CSV = {
    "bad_header": ("identifier,label\nPUB_0000000,1\n", r"header 'id,label'"),
    "no_header": ("PUB_0000000,1\nPUB_0000001,0\n", r"header 'id,label'"),
    "empty": ("", r"header 'id,label'"),
    "label_2": ("id,label\nPUB_0000000,1\nPUB_0000001,2\n", r"line 3.*label must be 0 or 1.*'2'"),
    "label_text": ("id,label\nPUB_0000000,yes\n", r"line 2.*label must be 0 or 1"),
    "duplicate_id": ("id,label\nPUB_0000000,1\nPUB_0000001,0\nPUB_0000000,0\n",
                     r"line 4.*'PUB_0000000' appears twice"),
    "one_column": ("id,label\nPUB_0000000\n", r"line 2 has 1 column"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_labels_csv_is_refused_naming_file(tmp_path, case):
    text, problem = BAD_CSV[case]
    path = tmp_path / f"{case}.csv"
    path.write_text(text)
    with pytest.raises(CourseDataError) as err:
        read_labels_csv(path)
    message = str(err.value)
    assert str(path) in message
    assert re.search(problem, message), message


def test_missing_labels_csv_is_refused(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(CourseDataError, match="no such file") as err:
        read_labels_csv(path)
    assert str(path) in str(err.value)


def test_labels_for_ids_refuses_unknown_id():
    labels = {"PUB_0000000": 1, "PUB_0000001": 0}
    with pytest.raises(CourseDataError) as err:
        labels_for_ids(labels, np.array(["PUB_0000000", "PUB_0000009"]), "test_public_labels.csv")
    message = str(err.value)
    assert message.startswith("test_public_labels.csv")
    assert "PUB_0000009" in message and "1 id" in message
