"""serving/inputs.py piece by piece, in process, no server: the .npz upload's checks (each from what the archive
declares, before anything is allocated), parse_pairs' rules and messages, JSON batches and their cap, the
refusal's status, inline decoding, the scorer's validator, and ensemble/priors.py's manifest entry."""

from __future__ import annotations

import io
import typing as t

import numpy as np
import pytest
from PIL import Image

from ensemble.preprocess import ImageTooLargeError, InvalidImageError
from ensemble.priors import manifest_entry
from serving import inputs
from serving.inputs import ClientError, decode_inline, validate_score_input

#: The limit the .npz tests read under (the service's own is a setting, DIGIT_COMPARE_MAX_PAIRS).
MAX_PAIRS = 10_000


def _pairs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 56), dtype=np.uint8)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 0).save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- small pieces

def test_an_unusable_picture_is_a_413_when_too_large_and_a_400_otherwise():
    too_large = ClientError.of_image(ImageTooLargeError("left: 30000000 pixels"))
    assert too_large.status == 413 and str(too_large) == "left: 30000000 pixels"
    other = ClientError.of_image(InvalidImageError("left: not an image format Pillow can read"))
    assert other.status == 400 and str(other) == "left: not an image format Pillow can read"
    assert ClientError("pairs: bad").status == 400  # a refusal is a 400 unless it says otherwise


def test_small_pictures_are_decoded_inline_and_large_or_unreadable_ones_are_not():
    side = int(inputs.INLINE_DECODE_PIXELS ** 0.5)
    assert decode_inline(_png(28, 56)) and decode_inline(_png(side, side))
    assert not decode_inline(_png(side + 1, side))
    assert not decode_inline(b"not a picture")


def test_the_scorers_validator_passes_pairs_and_says_why_it_refuses():
    pairs = _pairs(2)
    np.testing.assert_array_equal(validate_score_input(pairs), pairs)
    with pytest.raises(ClientError) as direct:
        inputs.parse_pairs(np.zeros((2, 3)))
    with pytest.raises(ValueError) as validated:
        validate_score_input(np.zeros((2, 3)))
    assert not isinstance(validated.value, ClientError) and str(validated.value) == str(direct.value)


def test_the_uniform_priors_manifest_entry():
    entry = manifest_entry(np.array([2.0, 1.0, 1.0, 0, 0, 0, 0, 0, 0, 4.0]), "the pairing rule")
    assert entry == {"digit_frequencies": [0.25, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5],
                     "source": "the pairing rule",
                     "use": "the class frequencies the digit heads were trained under; the uniform prior divides "
                            "them out"}
    assert manifest_entry([1 / 3] * 3, "x")["digit_frequencies"] == [0.333333] * 3  # six decimals
    # normalised in float64 whatever it is given: float16's 1/10 would be written 0.099976
    assert manifest_entry(np.array([1, 2, 3, 4], np.float16), "x")["digit_frequencies"] == [0.1, 0.2, 0.3, 0.4]


@pytest.mark.parametrize("dtype, message", [
    (np.dtype("<U256"), None), (np.dtype("S256"), None), (np.dtype("<U1"), None),
    (np.dtype("<U257"), "ids: ids of up to 257 characters; the limit is 256"),
    (np.dtype("S257"), "ids: ids of up to 257 characters; the limit is 256"),
    (np.dtype("int64"), "ids must hold strings, got dtype int64"),
    (np.dtype("O"), "ids must hold strings, got dtype object"),
])
def test_ids_must_be_short_strings(dtype, message):
    if message is None:
        inputs._check_ids_dtype("ids", dtype)
        return
    with pytest.raises(ClientError) as refused:
        inputs._check_ids_dtype("ids", dtype)
    assert str(refused.value) == message


# --------------------------------------------------------------------------- compare_batch's .npz upload, exactly

def _zip(**members: bytes | np.ndarray) -> bytes:
    """A zip archive of .npy members (arrays saved as numpy does), or of raw bytes."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                member = io.BytesIO()
                np.save(member, value)
                value = member.getvalue()
            archive.writestr(f"{name}.npy", value)
    return buffer.getvalue()


def _refusal(upload: bytes) -> ClientError:
    with pytest.raises(ClientError) as refused:
        inputs.read_npz_upload(io.BytesIO(upload), MAX_PAIRS)
    return refused.value


def test_what_is_not_an_npz_archive_is_named():
    single = io.BytesIO()
    np.save(single, _pairs(1))
    assert str(_refusal(single.getvalue())) == "file: a single .npy array, not an .npz archive with keys x, y/id"
    assert str(_refusal(b"")) == "file: empty upload (0 bytes); send the .npz file's content"
    text = str(_refusal(b"hello world, not a zip"))
    assert text.startswith("file: not an .npz archive (a zip of .npy arrays); it starts with b'hello wo' (")
    assert _refusal(b"").status == 400


def test_an_archive_without_x_names_what_it_holds():
    assert str(_refusal(_zip(a=np.zeros(2), y=np.zeros(2)))) == "file: missing key 'x' (found keys: ['a', 'y'])"
    assert str(_refusal(_zip())) == "file: missing key 'x' (found keys: none)"


def test_the_unpacked_size_is_bounded_before_anything_is_read(monkeypatch):
    upload = _zip(x=_pairs(2))
    size = 128 + 2 * 28 * 56  # the .npy header and the pixels
    monkeypatch.setattr(inputs, "npz_unpacked_limit", lambda max_pairs: size)
    assert len(inputs.read_npz_upload(io.BytesIO(upload), MAX_PAIRS).x) == 2  # exactly at the limit
    monkeypatch.setattr(inputs, "npz_unpacked_limit", lambda max_pairs: size - 1)
    refused = _refusal(upload)
    assert refused.status == 413
    assert str(refused) == f"file: the .npz unpacks to {size} bytes, more than the limit of {size - 1}"


def _largest_upload(n: int) -> dict[str, np.ndarray]:
    """The widest arrays a legitimate upload of ``n`` pairs carries: float64 pixels, 256-character ids, labels."""
    return {"x": np.full((n, 28, 56), 255.0), "id": np.array([f"{i:0256d}" for i in range(n)]),
            "y": np.ones(n, np.int64)}


def test_the_unpacked_limit_admits_the_largest_upload_and_not_much_more():
    """The largest legitimate upload is read, whatever the pair limit; and at the default 10,000 pairs the limit
    is within 10% of what that upload unpacks to, so an archive cannot make the worker unpack much more than a
    real upload would."""
    for max_pairs in (1, 3):
        upload = _zip(**_largest_upload(max_pairs))
        assert len(inputs.read_npz_upload(io.BytesIO(upload), max_pairs).x) == max_pairs
    largest = _largest_upload(MAX_PAIRS)
    unpacked = sum(array.nbytes for array in largest.values())  # without the .npy headers: a lower bound
    assert unpacked < inputs.npz_unpacked_limit(MAX_PAIRS) <= 1.1 * unpacked


def test_the_number_of_pairs_is_bounded_from_the_header():
    assert len(inputs.read_npz_upload(io.BytesIO(_zip(x=_pairs(2))), max_pairs=2).x) == 2
    with pytest.raises(ClientError) as caught:
        inputs.read_npz_upload(io.BytesIO(_zip(x=_pairs(3))), max_pairs=2)
    refused = caught.value
    assert refused.status == 413 and str(refused) == "file: 3 pairs is more than the limit of 2 per request"


@pytest.mark.parametrize("x, message", [
    (_pairs(2).astype(np.float32) / 255, None),
    (_pairs(2).astype(np.float64), None),
    (_pairs(2)[0], None),  # one (28, 56) pair
    (_pairs(2).astype(np.int16), "file: 'x' must be uint8 (or float in [0, 1] / [0, 255]), got dtype int16"),
    (_pairs(2).astype(np.complex64), "file: 'x' must be uint8 (or float in [0, 1] / [0, 255]), got dtype complex64"),
    (np.zeros((2, 28, 28), np.uint8), "file: 'x' must have shape (N, 28, 56), got (2, 28, 28)"),
    (np.zeros((28, 57), np.uint8), "file: 'x' must have shape (N, 28, 56), got (28, 57)"),
])
def test_the_pairs_member_is_judged_by_its_header(x, message):
    if message is None:
        assert inputs.read_npz_upload(io.BytesIO(_zip(x=x)), MAX_PAIRS).x.dtype == np.uint8
    else:
        assert str(_refusal(_zip(x=x))) == message


@pytest.mark.parametrize("key, value, message", [
    ("y", np.array([1, 0], np.int16), None),
    ("y", np.array([1.0, 0.0]), None),
    ("y", np.array([True, False]), None),
    ("digits", np.array([[3, 1], [0, 2]]), None),
    ("digits", np.array([[3, 1, 0], [0, 2, 1]]), "file: key 'digits' must have shape (2, 2) to match 'x', got (2, 3)"),
    ("y", np.array([1, 0, 1]), "file: key 'y' must have shape (2,) to match 'x', got (3,)"),
    ("id", np.array([1, 2]), "file: key 'id' must hold strings, got dtype int64"),
    ("y", np.array([1 + 0j, 0j]), "file: key 'y' must hold integers, got dtype complex128"),
    ("y", np.array([1, 0], np.longdouble), "file: key 'y' must hold integers, got dtype float128"),
    ("y", np.array(["1", "0"]), "file: key 'y' must hold integers, got dtype <U1"),
])
def test_the_other_members_must_match_the_pairs(key, value, message):
    upload = _zip(x=_pairs(2), **{key: value})
    if message is None:
        inputs.read_npz_upload(io.BytesIO(upload), MAX_PAIRS)
    else:
        assert str(_refusal(upload)) == message


def test_an_archive_of_one_pair_has_one_row_of_labels_ids_and_digits() -> None:
    pair = _pairs(1, seed=4)[0]  # (28, 56): N is 1, not the 28 rows
    data = inputs.read_npz_upload(io.BytesIO(_zip(x=pair, y=np.array([1]), id=np.array(["only"]),
                                                  digits=np.array([[7, 2]]))), MAX_PAIRS)
    np.testing.assert_array_equal(data.x, pair[None])
    assert data.y.tolist() == [1] and data.ids.tolist() == ["only"] and data.digits.tolist() == [[7, 2]]


def test_the_archives_own_rules_name_the_file() -> None:
    upload = _zip(x=_pairs(2), id=np.array(["", "b"]))
    assert str(_refusal(upload)) == "file: 'id' contains empty strings"
    labels = _zip(x=_pairs(2), y=np.array([0, 1]), digits=np.array([[1, 2], [3, 4]]))
    assert str(_refusal(labels)) == "file: 'digits' disagree with 'y' (label must be left > right)"


def test_a_truncated_member_says_what_its_header_declares() -> None:
    member = io.BytesIO()
    np.save(member, _pairs(2))
    cut = member.getvalue()[:-10]  # uint8 (2, 28, 56) declares 2 * 28 * 56 = 3136 bytes; 3126 are left
    assert str(_refusal(_zip(x=cut))) == ("file: key 'x' is truncated: its header declares uint8 of shape "
                                          "(2, 28, 56) (3136 bytes), the member holds 3126")


def _stored(npy: bytes) -> bytearray:
    """A zip holding ``npy`` uncompressed as x.npy, as bytes to tamper with."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", npy)
    return bytearray(buffer.getvalue())


def test_a_member_whose_bytes_were_changed_is_corrupt() -> None:
    member = io.BytesIO()
    np.save(member, _pairs(1))
    npy = member.getvalue()
    upload = _stored(npy)
    upload[upload.index(npy) + len(npy) - 1] ^= 0xFF  # the last pixel: the header still reads, the CRC fails
    refused = _refusal(bytes(upload))
    assert str(refused).startswith("file: key 'x' is corrupt (") and refused.status == 400  # zipfile's reason follows


def test_an_encrypted_member_could_not_be_read() -> None:
    member = io.BytesIO()
    np.save(member, _pairs(1))
    upload = _stored(member.getvalue())
    upload[upload.index(b"PK\x01\x02") + 8] |= 1  # the central directory's "encrypted" flag bit
    refused = _refusal(bytes(upload))
    assert str(refused).startswith("file: key 'x' could not be read (RuntimeError: ") and refused.status == 400


# --------------------------------------------------------------------------- compare_batch's JSON pairs

def test_json_pairs_follow_the_whole_array_rules():
    """Integers are pixels; one float pair makes the whole array float, and all in [0, 1] are then scaled."""
    pairs = _pairs(3)
    np.testing.assert_array_equal(inputs.json_batch(pairs.tolist(), None, 10).x, pairs)
    mixed = inputs.json_batch([np.ones((28, 56), int).tolist(), np.full((28, 56), 0.5).tolist()], None, 10).x
    assert mixed[0].max() == 255 and mixed[1].max() == 128
    assert inputs.json_batch(pairs[0].tolist(), None, 10).x.shape == (1, 28, 56)  # one pair


def test_json_ids_travel_with_their_pairs_and_are_checked_against_them():
    data = inputs.json_batch(_pairs(2).tolist(), ["a", "b"], 10)
    assert data.ids.tolist() == ["a", "b"]
    for ids, message in (([], "pairs: 'id' must have shape (2,) to match 'x', got (0,)"),
                         (["a"], "pairs: 'id' must have shape (2,) to match 'x', got (1,)"),
                         (["a", "a"], "pairs: ids must be unique; 1 repeat, e.g. a")):
        with pytest.raises(ClientError) as refused:
            inputs.json_batch(_pairs(2).tolist(), ids, 10)
        assert str(refused.value) == message


def test_json_pairs_past_the_cap_are_a_413_naming_the_npz_upload():
    assert len(inputs.json_batch(_pairs(3).tolist(), None, 3).x) == 3  # exactly at the cap
    with pytest.raises(ClientError) as refused:
        inputs.json_batch(_pairs(4).tolist(), None, 3)
    assert refused.value.status == 413
    assert str(refused.value) == ("pairs: 4 pairs is more than the limit of 3 per JSON request; send more as a "
                                  "course .npz upload (multipart file field 'file')")


def test_a_json_list_of_one_pair_is_one_pair() -> None:
    assert inputs.json_batch([_pairs(1)[0].tolist()], ["only"], 10).x.shape == (1, 28, 56)


def test_parse_pairs_names_its_source_in_every_refusal() -> None:
    for value in (np.zeros((2, 3)), np.zeros((1, 28, 56)) + 0.5 + np.inf):
        with pytest.raises(ClientError) as refused:
            inputs.parse_pairs(value, source="left")
        assert str(refused.value).startswith("left: ") and refused.value.status == 400


# --------------------------------------------------------------------------- parse_pairs, exactly

@pytest.mark.parametrize("value, source, message", [
    (None, "left", "left: missing"),
    (np.zeros((1, 28, 56), np.complex128), "pairs", "pairs: must hold pixel values (numbers), got complex128"),
    ([["a", "b"]], "pairs", "pairs: must hold pixel values (numbers), got strings"),
    ([[True]], "pairs", "pairs: must hold pixel values (numbers), got booleans"),
    ([], "pairs", "pairs: no pairs given (N = 0)"),
    (np.full((1, 28, 56), 300, np.int16), "x",
     "x: integer pixel values must lie in [0, 255], got values in [300, 300]"),
    (np.full((1, 28, 56), -2, np.int64), "x",
     "x: integer pixel values must lie in [0, 255], got values in [-2, -2]"),
])
def test_parse_pairs_says_what_is_wrong(value: t.Any, source: str, message: str) -> None:
    with pytest.raises(ClientError) as refused:
        inputs.parse_pairs(value, source=source)
    assert str(refused.value) == message and refused.value.status == 400


def test_a_ragged_array_is_not_rectangular() -> None:
    with pytest.raises(ClientError) as refused:
        inputs.parse_pairs([[1, 2], [3]])
    assert str(refused.value).startswith("pairs: not a rectangular (N, 28, 56) array of numbers (")  # numpy's reason
    assert refused.value.status == 400


def test_integer_arrays_are_pixel_values_as_they_are() -> None:
    ones = inputs.parse_pairs(np.ones((2, 28, 56), np.int64))
    assert ones.dtype == np.uint8 and ones.min() == 1 and ones.max() == 1


def test_parse_pairs_counts_pairs_not_rows_against_the_limit() -> None:
    assert inputs.parse_pairs(_pairs(1)[0], max_pairs=2).shape == (1, 28, 56)  # one pair: 28 rows, not 28 pairs
    assert inputs.parse_pairs(_pairs(2), max_pairs=2).shape == (2, 28, 56)  # exactly at the limit
    with pytest.raises(ClientError) as refused:
        inputs.parse_pairs(_pairs(3), max_pairs=2)
    assert refused.value.status == 413
    assert str(refused.value) == "pairs: 3 pairs is more than the limit of 2 per request"


def test_reading_a_member_never_unpickles_even_past_loosened_header_checks(monkeypatch) -> None:
    """Never unpickle an upload: _read_member reads without pickles on its own, not only because the header
    checks before it refuse object arrays."""
    import zipfile

    class Tripwire:
        def __reduce__(self) -> tuple:
            return (pytest.fail, ("an uploaded pickle was loaded",))

    monkeypatch.setattr(inputs, "_check_member_header", lambda *args: None)
    monkeypatch.setattr(inputs, "_check_member_size", lambda *args: None)
    with zipfile.ZipFile(io.BytesIO(_zip(x=np.array([Tripwire()], dtype=object)))) as archive:
        with pytest.raises(ClientError):
            inputs._read_member(archive, archive.getinfo("x.npy"), "x", None, MAX_PAIRS)


def test_an_error_response_is_the_one_shape_with_its_detail() -> None:
    import json

    answer = inputs.error_response("pairs: bad", 422, detail=[{"loc": ["pairs"]}], headers={"x-why": "test"})
    assert answer.status_code == 422 and answer.headers["x-why"] == "test"
    assert json.loads(answer.body) == {"error": "pairs: bad", "detail": [{"loc": ["pairs"]}]}
    assert json.loads(inputs.error_response("pairs: bad", 400).body) == {"error": "pairs: bad"}
