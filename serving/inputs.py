"""The service's inputs: the one error shape, and pair arrays (JSON) and uploaded ``.npz`` files made into
(N, 28, 56) uint8 pairs or clear 4xx errors.

Everything here runs on untrusted bytes, so every size is checked from what the input declares (a JSON array's
length, an ``.npy`` header's dtype and shape, a zip member's size) before anything is allocated, and nothing is
ever unpickled (numpy's own loader has no such checks: a 201-byte .npz can claim a terabyte).
"""

from __future__ import annotations

import typing as t
import zipfile
from http import HTTPStatus

import numpy as np
from bentoml.exceptions import BentoMLException
from starlette.responses import JSONResponse

from ensemble.contract import PAIR_SHAPE, PAIRS_SHAPE_TEXT, PIXEL_DTYPE, PIXEL_MAX
from ensemble.course_data import (
    CourseData,
    CourseDataError,
    NpyHeader,
    as_pairs_uint8,
    read_npy_header,
    validate_course_arrays,
)
from ensemble.preprocess import ImageTooLargeError, InvalidImageError, header_pixels


def npz_unpacked_limit(max_pairs: int) -> int:
    """What an uploaded .npz of at most ``max_pairs`` may unpack to: float64 pairs, plus ids and labels."""
    return max_pairs * PAIR_SHAPE[0] * PAIR_SHAPE[1] * 8 + 16 * 1024 * 1024


#: Ids longer than this are refused (an .npz 'id' header could declare a dtype of gigabytes per string).
MAX_ID_CHARS = 256
#: Uploads of at most this many bytes in all, whose headers declare at most INLINE_DECODE_PIXELS pixels each, are
#: decoded on the event loop: a course pair (28x56) or a small digit picture takes a fraction of a millisecond,
#: less than handing it to a thread and back (docs/speed.md). Anything larger goes to a thread, so a big photo
#: never stalls the other requests.
INLINE_DECODE_BYTES = 64 * 1024
INLINE_DECODE_PIXELS = 256 * 256


def decode_inline(data: bytes) -> bool:
    """Whether this upload is small enough to decode on the event loop (an unreadable one is not: its error is
    raised, with the same message, on the thread path)."""
    pixels = header_pixels(data)
    return pixels is not None and pixels <= INLINE_DECODE_PIXELS


#: The keys of a course .npz that are read; any other member is ignored, unread.
NPZ_KEYS = ("x", "y", "id", "digits")


class ClientError(BentoMLException):
    """A request the service refuses: raised anywhere in an API, BentoML answers its 4xx ``status`` with the
    message (``serving.guard`` gives the answer the one error shape; ``serving.errors`` logs it as one line)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message, error_code=HTTPStatus(status))

    @property
    def status(self) -> int:
        return int(self.error_code)

    @classmethod
    def of_image(cls, err: InvalidImageError) -> ClientError:
        """An upload that is no usable picture: 413 when it is too large, else 400."""
        return cls(str(err), 413 if isinstance(err, ImageTooLargeError) else 400)


def error_body(message: str, detail: t.Any = None) -> dict[str, t.Any]:
    """The one error shape of every route: ``{"error": "...", "detail": ...}`` (detail only when there is one)."""
    return {"error": message} if detail is None else {"error": message, "detail": detail}


def error_response(message: str, status: int, detail: t.Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, detail), status_code=status, headers=headers)


# --------------------------------------------------------------------------- array inputs

#: How a message names what a non-numeric array holds, by numpy dtype kind.
_KINDS = {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or nested objects / ragged lists"}


def _integer_pixels(array: np.ndarray, source: str, which: str = "") -> np.ndarray:
    """Integer pixel values -> PIXEL_DTYPE, refusing any outside [0, PIXEL_MAX]."""
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > PIXEL_MAX:
        raise ClientError(f"{source}: integer pixel values must lie in [0, {PIXEL_MAX}], got values in "
                          f"[{low}, {high}]{which}")
    return array.astype(PIXEL_DTYPE)


def parse_pairs(value: t.Any, max_pairs: int | None = None, source: str = "pairs") -> np.ndarray:
    """A JSON value (nested lists) or array -> (N, 28, 56) uint8, with a message for every way it can be wrong.

    Integers must be pixel values 0-255; floats follow the course rule (all in [0, 1] -> scaled by 255,
    else [0, 255]; NaN/inf refused). Booleans, strings, objects and ragged nesting are refused.
    """
    if value is None:
        raise ClientError(f"{source}: missing")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        raise ClientError(f"{source}: not a rectangular {PAIRS_SHAPE_TEXT} array of numbers ({err})") from err
    if array.dtype.kind not in "iuf":
        kind = _KINDS.get(array.dtype.kind, array.dtype)
        raise ClientError(f"{source}: must hold pixel values (numbers), got {kind}")
    if array.size == 0:
        raise ClientError(f"{source}: no pairs given (N = 0)")
    if max_pairs is not None and array.ndim == 3 and len(array) > max_pairs:
        raise ClientError(f"{source}: {len(array)} pairs is more than the limit of {max_pairs} per request", 413)
    if array.dtype.kind in "iu" and array.dtype != PIXEL_DTYPE:
        array = _integer_pixels(array, source)
    try:
        return as_pairs_uint8(array, source)
    except CourseDataError as err:
        raise ClientError(str(err)) from err


def validate_score_input(value: np.ndarray) -> np.ndarray:
    """Pydantic validator of the scorer's input: runs per request, BEFORE requests are merged into a batch,
    so one bad request can never fail the others it would have been batched with."""
    try:
        return parse_pairs(value)  # the API workers sent it, in chunks of at most max_batch_size
    except ClientError as err:
        raise ValueError(str(err)) from err


def json_batch(pairs: t.Any, ids: list[str] | None, max_pairs: int) -> CourseData:
    """compare_batch's JSON ``pairs`` (and ``ids``) -> validated CourseData. At most ``max_pairs`` pairs: more is a
    413 that names the .npz upload, which carries up to the service's whole limit."""
    if isinstance(pairs, list) and pairs and isinstance(pairs[0], list) and pairs[0] and \
            isinstance(pairs[0][0], list) and len(pairs) > max_pairs:
        raise ClientError(f"pairs: {len(pairs)} pairs is more than the limit of {max_pairs} per JSON request; send "
                          "more as a course .npz upload (multipart file field 'file')", 413)
    arrays = {"x": parse_pairs(pairs, max_pairs)}
    if ids is not None:
        arrays["id"] = np.asarray(ids, dtype=str) if ids else np.zeros(0, dtype="<U1")
    try:
        return validate_course_arrays(arrays, "pairs")
    except CourseDataError as err:
        raise ClientError(str(err)) from err


# --------------------------------------------------------------------------- .npz uploads


def _check_member_header(key: str, header: NpyHeader, n: int | None, max_pairs: int) -> None:
    """Refuse a member from its header alone: wrong dtype, wrong or oversized shape (before any allocation)."""
    dtype, shape = header.dtype, header.shape
    where = f"file: key {key!r}"
    if dtype.hasobject:
        raise ClientError(f"{where} holds Python objects (a pickled array); refused")
    if key == "x":
        _check_pairs_header(dtype, shape, max_pairs)
        return
    expected = {"y": (n,), "id": (n,), "digits": (n, 2)}[key]
    if shape != expected:
        raise ClientError(f"{where} must have shape {expected} to match 'x', got {shape}")
    if key == "id":
        _check_ids_dtype(where, dtype)
    elif dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise ClientError(f"{where} must hold integers, got dtype {dtype}")


def _check_pairs_header(dtype: np.dtype, shape: tuple[int, ...], max_pairs: int) -> None:
    """'x': (N, 28, 56) or one (28, 56) pair, at most ``max_pairs``, uint8 or float."""
    if not (len(shape) == 3 and shape[1:] == PAIR_SHAPE) and shape != PAIR_SHAPE:
        raise ClientError(f"file: 'x' must have shape {PAIRS_SHAPE_TEXT}, got {shape}")
    if len(shape) == 3 and shape[0] > max_pairs:
        raise ClientError(f"file: {shape[0]} pairs is more than the limit of {max_pairs} per request", 413)
    if dtype != PIXEL_DTYPE and dtype.kind != "f":
        raise ClientError(f"file: 'x' must be {PIXEL_DTYPE} (or float in [0, 1] / [0, {PIXEL_MAX}]), "
                          f"got dtype {dtype}")


def _check_ids_dtype(where: str, dtype: np.dtype) -> None:
    """'id': strings of at most MAX_ID_CHARS characters (a header could declare gigabytes per string)."""
    if dtype.kind not in "US":
        raise ClientError(f"{where} must hold strings, got dtype {dtype}")
    chars = dtype.itemsize // (4 if dtype.kind == "U" else 1)
    if chars > MAX_ID_CHARS:
        raise ClientError(f"{where}: ids of up to {chars} characters; the limit is {MAX_ID_CHARS}")


def read_npz_upload(fp: t.BinaryIO, max_pairs: int) -> CourseData:
    """An uploaded course ``.npz`` (a binary file object) -> validated CourseData, or a ClientError.

    Nothing is allocated before it is checked: the zip's declared sizes bound what unpacks (zip bombs),
    and each member's ``.npy`` header (dtype, full shape) must be acceptable and agree exactly with the
    member's size before its data is read. Errors say what is wrong: not a zip, a pickled (object)
    array, a truncated member, a header that does not match the data, a corrupt (CRC) member.
    """
    with _open_npz(fp) as archive:
        members = {info.filename: info for info in archive.infolist()}
        arrays: dict[str, np.ndarray] = {}
        n: int | None = None
        for key in _npz_keys(members, npz_unpacked_limit(max_pairs)):  # x first: the others are checked against N
            arrays[key], header = _read_member(archive, members[f"{key}.npy"], key, n, max_pairs)
            if key == "x":
                n = 1 if header.shape == PAIR_SHAPE else header.shape[0]
    try:
        return validate_course_arrays(arrays, "file")
    except CourseDataError as err:
        raise ClientError(str(err)) from err


def _open_npz(fp: t.BinaryIO) -> zipfile.ZipFile:
    """The upload as a zip archive; a single .npy, an empty upload or anything not a zip is refused."""
    head = fp.read(8)
    fp.seek(0)
    if head.startswith(b"\x93NUMPY"):
        raise ClientError("file: a single .npy array, not an .npz archive with keys x, y/id")
    if not head:
        raise ClientError("file: empty upload (0 bytes); send the .npz file's content")
    try:
        return zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as err:
        raise ClientError(f"file: not an .npz archive (a zip of .npy arrays); it starts with {head!r} ({err})") from err


def _npz_keys(members: dict[str, zipfile.ZipInfo], max_unpacked: int) -> list[str]:
    """The NPZ_KEYS the archive holds, 'x' first; refuses an archive that unpacks too large or has no 'x'."""
    unpacked = sum(info.file_size for info in members.values())
    if unpacked > max_unpacked:
        raise ClientError(f"file: the .npz unpacks to {unpacked} bytes, more than the limit of {max_unpacked}", 413)
    keys = [k for k in NPZ_KEYS if f"{k}.npy" in members]
    if "x" not in keys:
        found = sorted(name.removesuffix(".npy") for name in members)
        raise ClientError(f"file: missing key 'x' (found keys: {found or 'none'})")
    return keys


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, n: int | None,
                 max_pairs: int) -> tuple[np.ndarray, NpyHeader]:
    """One member's array and header, read only once its header and size are acceptable."""
    try:
        with archive.open(info) as member:
            try:
                header = read_npy_header(member)
            except (ValueError, EOFError) as err:
                raise ClientError(f"file: key {key!r}: malformed .npy header ({err})") from err
            _check_member_header(key, header, n, max_pairs)
            _check_member_size(key, header, info.file_size - header.data_offset)
            member.seek(0)  # read_array reads the header again
            return np.lib.format.read_array(member, allow_pickle=False), header
    except ClientError:
        raise
    except zipfile.BadZipFile as err:  # a CRC mismatch, a member cut short inside the zip
        raise ClientError(f"file: key {key!r} is corrupt ({err})") from err
    except (ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as err:
        # NotImplementedError / RuntimeError: a compression method or encryption zipfile cannot read
        raise ClientError(f"file: key {key!r} could not be read ({type(err).__name__}: {err})") from err


def _check_member_size(key: str, header: NpyHeader, stored: int) -> None:
    """The member must hold exactly the bytes its header declares."""
    if stored < header.nbytes:
        raise ClientError(f"file: key {key!r} is truncated: its header declares {header.dtype} of "
                          f"shape {header.shape} ({header.nbytes} bytes), the member holds {stored}")
    if stored > header.nbytes:
        raise ClientError(f"file: key {key!r} does not match its header: {header.dtype} of shape "
                          f"{header.shape} is {header.nbytes} bytes, the member holds {stored}")
