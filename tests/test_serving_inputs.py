"""Unit tests of the service's input handling (no server): the .npz header checks, the one error shape and the
blank test shared by both image routes. (JSON bodies: tests/test_serving_api.py and tests/test_inputs_units.py.)"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from ensemble.course_data import CourseDataError, load_course_npz
from ensemble.preprocess import BlankImageError, prepare_digit, prepare_pair, require_ink
from serving.guard import normalize_error
from serving.inputs import ClientError, read_npz_upload

MAX_PAIRS = 300  # the limit these uploads are read under


def _pairs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 56)).astype(np.uint8)


# --------------------------------------------------------------------------- .npz


def _zip(**members: bytes) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    buffer.seek(0)
    return buffer


def _header(shape: tuple, descr: str = "|u1") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def test_npz_upload_reads_a_course_file():
    pairs = _pairs(3)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=pairs, id=np.array(["a", "b", "c"]), y=np.array([0, 1, 0]))
    buffer.seek(0)
    data = read_npz_upload(buffer, MAX_PAIRS)
    np.testing.assert_array_equal(data.x, pairs)
    assert data.ids.tolist() == ["a", "b", "c"] and data.y.tolist() == [0, 1, 0]


@pytest.mark.parametrize("members, status, text", [
    ({"x": _header((10**13,))}, 400, "'x' must have shape (N, 28, 56)"),
    ({"x": _header((10_000, 28, 56_000_000))}, 400, "'x' must have shape (N, 28, 56)"),
    ({"x": _header((MAX_PAIRS + 1, 28, 56))}, 413, f"{MAX_PAIRS + 1} pairs"),
    ({"x": _header((5, 28, 56)) + b"\0" * 100}, 400, "is truncated"),
    ({"x": _header((1, 28, 56)) + b"\0" * 2000}, 400, "does not match its header"),
    ({"x": _header((1, 28, 56), "|O")}, 400, "pickled"),
    ({"x": _header((1, 28, 56), "<i4") + b"\0" * 6272}, 400, "dtype int32"),
    ({"x": _npy(_pairs(1)), "id": _header((1,), "<U100000")}, 400, "characters"),
    ({"x": _npy(_pairs(2)), "y": _npy(np.array([1]))}, 400, "'y' must have shape (2,)"),
    ({"x": b"\x93NUMPY\x09"}, 400, "malformed .npy header"),
])
def test_npz_members_are_judged_from_their_headers(members, status, text):
    with pytest.raises(ClientError) as caught:
        read_npz_upload(_zip(**members), MAX_PAIRS)
    assert caught.value.status == status and text in str(caught.value), str(caught.value)


def test_course_loader_says_truncated_not_pickled(tmp_path):
    """load_course_npz used to call every numpy ValueError "a pickled array"."""
    path = tmp_path / "cut.npz"
    path.write_bytes(_zip(x=_npy(_pairs(3))[:-100]).getvalue())
    with pytest.raises(CourseDataError) as caught:
        load_course_npz(path)
    assert "pickled" not in str(caught.value) and "shape (3, 28, 56)" in str(caught.value)


# --------------------------------------------------------------------------- the one error shape


@pytest.mark.parametrize("status, content_type, raw, expected", [
    (400, "application/json", b'[{"error": "bad"}]', {"error": "bad"}),  # BentoML's one-element list
    (400, "application/json", json.dumps({"error": "1 validation error for Input", "detail": [
        {"type": "missing", "loc": ["left"], "msg": "Field required"}]}).encode(),
     {"error": "left: Field required", "detail": [{"type": "missing", "loc": ["left"], "msg": "Field required"}]}),
    (405, "text/plain", b"Method Not Allowed", {"error": "Method Not Allowed"}),
    (404, "text/plain", b"Not Found", {"error": "no route GET /x; the API is described at /docs.json"}),
    (500, "text/plain", b"", {"error": "Internal Server Error"}),
    (400, "application/json", b'{"detail": "x"}', {"error": "x"}),
])
def test_error_answers_are_normalized(status, content_type, raw, expected):
    assert normalize_error(status, content_type, raw, "GET", "/x") == expected


# --------------------------------------------------------------------------- blank or faint


def test_blank_test_is_the_same_for_digits_and_pairs():
    rng = np.random.default_rng(0)
    for blank in (np.full((1, 1), 255, np.uint8), np.zeros((300, 600), np.uint8),
                  np.clip(200 + rng.normal(0, 8, (240, 320)), 0, 255).astype(np.uint8)):  # noisy paper
        with pytest.raises(BlankImageError):
            prepare_digit(Image.fromarray(blank))
        with pytest.raises(BlankImageError):
            prepare_pair(Image.fromarray(blank))


def test_faint_occluded_digit_has_ink():
    digit = np.zeros((28, 28), np.float32)
    digit[8:20, 12:15] = 18 / 255  # a dim stroke, peak 0.07 of full scale (the old threshold was 0.08)
    digit += np.random.default_rng(1).integers(0, 3, digit.shape) / 255
    require_ink(digit)
    pair = np.concatenate([digit, digit], axis=1)
    assert prepare_pair(Image.fromarray(np.rint(pair * 255).astype(np.uint8))).shape == (28, 56)
