"""ensemble/course_data.py, function by function, with the exact values and messages the format promises:
what the mutation run (docs/mutation.md) showed the file-level tests left unchecked. Fast, in process."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from ensemble import course_data as cd

N = 3


def _x(n: int = N) -> np.ndarray:
    return np.zeros((n, 28, 56), np.uint8)


# --------------------------------------------------------------------------- digits, labels, ids


def test_digits_come_back_as_int64_and_every_rule_is_checked_on_its_own():
    digits = np.array([[3, 1], [0, 9], [8, 2]], dtype=np.int16)
    out = cd._digits(digits, np.array([1, 0, 1]), N, "f.npz")
    assert out.dtype == np.int64 and out.tolist() == digits.tolist()
    assert cd._digits(np.array([[9, 0]] * N), None, N, "f.npz").tolist() == [[9, 0]] * N  # 9 is a class
    shaped = r"^f\.npz: 'digits' must be integers shaped \(3, 2\), got int64 \(3, 3\)$"
    with pytest.raises(cd.CourseDataError, match=shaped):
        cd._digits(np.zeros((N, 3), np.int64), None, N, "f.npz")  # wrong shape alone, integer dtype
    with pytest.raises(cd.CourseDataError, match=r"must be integers shaped \(3, 2\), got float64 \(3, 2\)"):
        cd._digits(np.array([[1.0, 0.0]] * N), None, N, "f.npz")  # right shape alone, float dtype
    with pytest.raises(cd.CourseDataError, match="two different classes 0-9"):
        cd._digits(np.array([[10, 1], [2, 1], [3, 1]]), None, N, "f.npz")  # above 9 alone (none below 0)
    with pytest.raises(cd.CourseDataError, match="two different classes 0-9"):
        cd._digits(np.array([[-1, 1], [2, 1], [3, 1]]), None, N, "f.npz")  # below 0 alone
    with pytest.raises(cd.CourseDataError, match="disagree with 'y'"):
        cd._digits(np.array([[3, 1], [0, 9], [8, 2]]), np.array([1, 1, 1]), N, "f.npz")


def test_labels_take_integers_booleans_and_whole_floats_and_refuse_the_rest_with_the_dtype():
    assert cd._labels(np.array([1.0, 0.0, 1.0]), N, "f").tolist() == [1, 0, 1]
    assert cd._labels(np.array([1.0, 0.0, 1.0], np.float32), N, "f").tolist() == [1, 0, 1]  # any float width
    assert cd._labels(np.array([True, False, True]), N, "f").dtype == np.int64
    with pytest.raises(cd.CourseDataError, match=r"^f: 'y' must hold integer labels 0/1, got dtype <U1$"):
        cd._labels(np.array(["1", "0", "1"]), N, "f")


def test_repeated_ids_are_named_three_at_most_with_their_count():
    ids = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "e"])
    with pytest.raises(cd.CourseDataError) as err:
        cd._ids(ids, 9, "f")
    assert str(err.value) == "f: ids must be unique; 4 repeat, e.g. a, b, c"
    assert cd._ids(np.array([b"x", b"y", b"z"]), N, "f").tolist() == ["x", "y", "z"]  # bytes ids become str


# --------------------------------------------------------------------------- pairs


def test_the_default_source_names_an_array_and_the_float_rule_has_its_exact_threshold():
    with pytest.raises(cd.CourseDataError, match=r"^array: 'x' must have shape"):
        cd.as_pairs_uint8(np.zeros((2, 2)))
    with pytest.raises(cd.CourseDataError, match=r", got \(28, 28\)$"):  # the shape sent, not a reshaped one
        cd.as_pairs_uint8(np.zeros((28, 28)))
    with pytest.raises(cd.CourseDataError, match=r"^array: missing key 'x' \(found keys: none\)$"):
        cd.validate_course_arrays({})
    with pytest.raises(cd.CourseDataError, match=r"^array: missing key 'x' \(found keys: \['y'\]\)$"):
        cd.validate_course_arrays({"y": np.zeros(3)})
    # a float array whose maximum is 1.5 is pixel values (no scaling): 1.5 rounds to 2, not to 382
    x = np.zeros((1, 28, 56))
    x[0, 0, 0] = 1.5
    assert cd.as_pairs_uint8(x)[0, 0, 0] == 2
    x[0, 0, 0] = 1.0
    assert cd.as_pairs_uint8(x)[0, 0, 0] == 255


# --------------------------------------------------------------------------- .npy headers and .npz files


def _npy(array: np.ndarray, version: tuple[int, int] | None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_headers_of_both_versions_are_read_with_their_order_and_offset(version):
    for array in (np.zeros((4, 5), np.uint8), np.asfortranarray(np.zeros((4, 5), np.float32))):
        data = b"prefix" + _npy(array, version)
        fp = io.BytesIO(data)
        fp.seek(6)
        header = cd.read_npy_header(fp)
        assert header.shape == (4, 5) and header.dtype == array.dtype
        assert header.fortran_order is bool(array.flags.f_contiguous and not array.flags.c_contiguous)
        assert header.data_offset == len(data) - 6 - array.nbytes  # from the .npy's start, not the file's


def test_an_unknown_npy_version_is_refused_naming_it():
    data = bytearray(_npy(np.zeros(3, np.uint8), (1, 0)))
    data[6:8] = bytes([3, 0])
    with pytest.raises(ValueError, match=r"^unsupported .npy format version 3\.0$"):
        cd.read_npy_header(io.BytesIO(bytes(data)))


def test_saved_npz_files_are_compressed_reproducible_and_never_pickled(tmp_path):
    x = np.zeros((64, 28, 56), np.uint8)
    cd.save_course_npz(tmp_path / "a.npz", x=x, y=np.zeros(64, np.int64))
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_DEFLATED and info.compress_size < info.file_size
    with pytest.raises(cd.CourseDataError, match=r"a\.npz: refusing to write object array 'x'$"):
        cd.save_course_npz(tmp_path / "a.npz", x=np.array([{"a": 1}], dtype=object))


def test_a_pickled_member_is_named_as_such(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(cd.CourseDataError, match=r"key 'x': holds Python objects \(a pickled array\); refused$"):
        cd.load_course_npz(path)


def test_a_missing_key_is_named_with_those_found(tmp_path):
    path = tmp_path / "k.npz"
    np.savez(path, x=_x(), z=np.zeros(3))
    with pytest.raises(cd.CourseDataError, match=r"k\.npz: missing key 'y', 'id' \(found: "):
        cd.load_course_npz(path, require=("x", "y", "id"))


# --------------------------------------------------------------------------- CSV


def test_labels_csv_header_is_exactly_id_label_and_line_endings_are_kept_apart(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes(b"id,label,extra\r\na,1,x\r\nb,0,y\r\n")
    assert cd.read_labels_csv(path) == {"a": 1, "b": 0}  # a third column is ignored, CRLF is fine
    path.write_bytes(b"label,id\na,1\n")
    with pytest.raises(cd.CourseDataError, match="the first line must be the header 'id,label'"):
        cd.read_labels_csv(path)
    path.write_bytes(b'id,label\n"a\rb",1\n')
    assert cd.read_labels_csv(path) == {"a\rb": 1}  # a quoted carriage return stays in its field


def test_missing_labels_are_named_three_at_most_and_labels_come_back_as_int64():
    labels = {"a": 1, "b": 0}
    assert cd.labels_for_ids(labels, np.array(["b", "a"]), "f").dtype == np.int64
    with pytest.raises(cd.CourseDataError) as err:
        cd.labels_for_ids(labels, np.array(["c", "d", "e", "f"]), "f")
    assert str(err.value) == "f: no label for 4 id(s), e.g. ['c', 'd', 'e']"


def test_submission_csv_lines_end_with_a_bare_newline():
    text = cd.format_submission_csv(np.array(["a", "b"]), np.array([1, 0]))
    assert text == "id,label\na,1\nb,0\n"


def test_a_member_with_a_good_header_and_short_data_names_its_shape_and_dtype(tmp_path):
    """The header reads, the data does not: the message gives the file, key, shape and dtype (then numpy's own
    reason, whose wording is numpy's)."""
    entry = io.BytesIO()
    np.lib.format.write_array(entry, np.arange(4, dtype=np.int64))
    truncated = entry.getvalue()[:-12]  # the last one and a half values missing
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", truncated)
    with pytest.raises(cd.CourseDataError) as err:
        cd.load_course_npz(path)
    assert str(err.value).startswith(f"{path}: key 'x': unreadable array data for shape (4,) of int64 (")
    with pytest.raises(ValueError) as numpy_says:  # what numpy itself says of the member, passed on whole
        np.lib.format.read_array(io.BytesIO(truncated))
    assert str(err.value).endswith(f"({numpy_says.value})")
