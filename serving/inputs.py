"""HTTP input handling for the service: its limits, the one error shape, and the parsing of pair arrays
(JSON) and uploaded ``.npz`` files into clear 4xx errors.

Everything here runs on untrusted bytes, so every size is checked from what the input declares (a JSON
body's length, an ``.npy`` header's dtype and shape, a zip member's size) before anything is allocated,
and nothing is ever unpickled. Kept out of ``service.py`` so that file reads as the API itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import typing as t
import zipfile
from dataclasses import dataclass

import anyio
import anyio.to_thread
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse

from ensemble.contract import PAIR_SHAPE, PAIR_SHAPE_TEXT, PAIRS_SHAPE_TEXT, PIXEL_DTYPE, PIXEL_MAX
from ensemble.course_data import (
    CourseData,
    CourseDataError,
    NpyHeader,
    as_pairs_uint8,
    read_npy_header,
    validate_course_arrays,
)
from ensemble.preprocess import ImageTooLargeError, header_pixels
from ensemble.priors import UnknownPriorError, check_prior

logger = logging.getLogger("bentoml.digit_compare")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from err
    if number <= 0:
        raise ValueError(f"environment variable {name} must be positive, got {number}")
    return number


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name} must be a number, got {value!r}") from err
    if not number > 0:
        raise ValueError(f"environment variable {name} must be positive, got {number}")
    return number


#: At most this many pairs per compare_batch request (413 above).
MAX_PAIRS = env_int("DIGIT_COMPARE_MAX_PAIRS", 10_000)
#: At most this many bytes per compare_batch request body (413 above); 64 MiB fits 10,000 pairs as JSON.
MAX_REQUEST_BYTES = env_int("DIGIT_COMPARE_MAX_REQUEST_BYTES", 64 * 1024 * 1024)
#: An uploaded .npz may unpack to at most this many bytes (float64 pairs at MAX_PAIRS, plus ids/labels).
MAX_NPZ_UNPACKED_BYTES = MAX_PAIRS * PAIR_SHAPE[0] * PAIR_SHAPE[1] * 8 + 16 * 1024 * 1024
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


class ClientError(Exception):
    """A request the service refuses; ``status`` is the 4xx answered with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, detail: t.Any = None):
        super().__init__(message)
        self.status = status
        self.detail = detail


def error_body(message: str, detail: t.Any = None) -> dict[str, t.Any]:
    """The one error shape of every route: ``{"error": "...", "detail": ...}`` (detail only when there is one)."""
    return {"error": message} if detail is None else {"error": message, "detail": detail}


def error_response(message: str, status: int, detail: t.Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, detail), status_code=status, headers=headers)


def client_error(err: Exception) -> JSONResponse:
    """Map an input problem to its 4xx answer (413 for size limits, else 400), logged as one line."""
    status = getattr(err, "status", 413 if isinstance(err, ImageTooLargeError) else 400)
    logger.info("refused request: %s (%d)", str(err), status)  # str: a record must not keep the error's frames
    return error_response(str(err), status, getattr(err, "detail", None))


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


def parse_pairs(value: t.Any, source: str = "pairs") -> np.ndarray:
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
    if array.ndim == 3 and len(array) > MAX_PAIRS:
        raise ClientError(f"{source}: {len(array)} pairs is more than the limit of {MAX_PAIRS} per request", 413)
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
        return parse_pairs(value)
    except ClientError as err:
        raise ValueError(str(err)) from err


#: compare_batch answers course-style pairs: the course prior unless the request says otherwise.
BATCH_DEFAULT_PRIOR = "course"


@dataclass
class BatchRequest:
    data: CourseData
    format: str = "json"  # "json" | "csv"
    prior: str = BATCH_DEFAULT_PRIOR  # ensemble.priors


FORMATS = ("json", "csv")
JSON_KEYS = ("pairs", "ids", "format", "prior")


def parse_format(value: t.Any) -> str:
    if value not in FORMATS:
        raise ClientError(f"format: must be one of {', '.join(map(repr, FORMATS))}, got {value!r}")
    return value


def parse_prior(value: t.Any) -> str:
    """A request's ``prior`` (ensemble.priors.PRIORS), or a ClientError naming the choices."""
    try:
        return check_prior(value)
    except UnknownPriorError as err:
        raise ClientError(str(err)) from None


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr] - the pattern always matches


def _json_value(text: str, pos: int) -> tuple[t.Any, int]:
    """One JSON value starting at ``pos`` (after whitespace) -> (value, end)."""
    try:
        return _DECODER.raw_decode(text, _skip(text, pos))
    except RecursionError as err:  # '[[[[...' nested thousands deep
        raise ClientError("body: JSON nested too deeply") from err
    except ValueError as err:
        raise ClientError(f"body: not valid JSON ({err})") from err


def _expect(text: str, pos: int, chars: str) -> tuple[str, int]:
    pos = _skip(text, pos)
    char = text[pos:pos + 1]
    if not char or char not in chars:
        found = repr(char) if char else "the end of the body"
        raise ClientError(f"body: not valid JSON (expected {' or '.join(map(repr, chars))} at character {pos}, "
                          f"found {found})")
    return char, pos + 1


def _pair_array(value: t.Any, index: int) -> np.ndarray:
    """One decoded JSON pair -> (28, 56) uint8 (integers) or float64 (the course rule applies to all at the end)."""
    try:
        pair = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        raise ClientError(f"pairs: not a rectangular {PAIRS_SHAPE_TEXT} array of numbers (pair {index}: {err})"
                          ) from err
    if pair.dtype.kind not in "iuf":
        raise ClientError(f"pairs: must hold pixel values (numbers), got {_KINDS.get(pair.dtype.kind, pair.dtype)} "
                          f"(pair {index})")
    if pair.shape != PAIR_SHAPE:
        raise ClientError(f"pairs: 'x' must have shape {PAIRS_SHAPE_TEXT}; pair {index} has shape {pair.shape}")
    if pair.dtype.kind == "f":
        return pair.astype(np.float64, copy=False)
    return _integer_pixels(pair, "pairs", f" (pair {index})")


def _one_pair_rows(text: str, first: t.Any, end: int) -> tuple[np.ndarray, int]:
    """"pairs" that is not a list of pairs: one (28, 56) pair, or a wrong shape. Decodes at most 28 rows, then
    lets parse_pairs judge (a flat list of millions of numbers is not read to its end)."""
    rows = [first]
    while True:
        char, end = _expect(text, end, ",]")
        if char == "]":
            return parse_pairs(rows), end
        if len(rows) == PAIR_SHAPE[0]:
            raise ClientError(f"pairs: 'x' must have shape {PAIRS_SHAPE_TEXT} or {PAIR_SHAPE_TEXT}; got more than "
                              f"{PAIR_SHAPE[0]} rows")
        row, end = _json_value(text, end)
        rows.append(row)


def _stack_pairs(arrays: list[np.ndarray]) -> np.ndarray:
    """The decoded pairs (uint8 or float64 each) -> (N, 28, 56) uint8. The list is emptied as soon as the
    stack holds its pairs (the caller's reference would otherwise keep them alive through the conversion)."""
    if all(a.dtype == PIXEL_DTYPE for a in arrays):
        x = np.stack(arrays)
        arrays.clear()
        return x
    # The course rule for floats is over all values at once.
    x = np.stack([a.astype(np.float64, copy=False) for a in arrays])
    arrays.clear()
    try:
        return as_pairs_uint8(x, "pairs")
    except CourseDataError as err:
        raise ClientError(str(err)) from err


def _parse_pairs_stream(text: str, pos: int) -> tuple[np.ndarray, int]:
    """The value of "pairs", decoded one pair at a time -> ((N, 28, 56) uint8, end).

    Never builds the nested lists of all pairs at once (a 64 MiB body would be ~15 million Python
    numbers), stops at the first pair over MAX_PAIRS, and returns to Python between pairs, so a
    parse in a worker thread lets the event loop run (one ``json.loads`` of the whole body holds the
    GIL for seconds). Same rules and messages as ``parse_pairs``.
    """
    pos = _skip(text, pos)
    if text[pos:pos + 1] != "[":  # not an array: decode it whole and let parse_pairs say what is wrong
        value, end = _json_value(text, pos)
        return parse_pairs(value), end
    pos = _skip(text, pos + 1)
    if text[pos:pos + 1] == "]":
        raise ClientError("pairs: no pairs given (N = 0)")
    first, end = _json_value(text, pos)
    if not (isinstance(first, list) and first and isinstance(first[0], list)):
        return _one_pair_rows(text, first, end)
    arrays = [_pair_array(first, 0)]
    while True:
        char, end = _expect(text, end, ",]")
        if char == "]":
            return _stack_pairs(arrays), end
        if len(arrays) == MAX_PAIRS:
            raise ClientError(f"pairs: more than the limit of {MAX_PAIRS} pairs per request", 413)
        value, end = _json_value(text, end)
        arrays.append(_pair_array(value, len(arrays)))
        del value


def decode_json_body(body: bytes | bytearray) -> str:
    """A JSON body's bytes -> text (UTF-8, or UTF-16/32 with their marks, as ``json.loads`` accepts)."""
    try:
        return body.decode(json.detect_encoding(body))
    except (UnicodeDecodeError, LookupError) as err:
        raise ClientError(f"body: not valid JSON (not UTF-8 text: {err})") from None


def parse_batch_json(body: bytes | bytearray) -> BatchRequest:
    """compare_batch's JSON body ``{"pairs": [...], "ids": [...]?, "format": "json"|"csv"?}`` -> BatchRequest."""
    return parse_batch_text(decode_json_body(body))


def parse_batch_text(text: str) -> BatchRequest:
    """``parse_batch_json`` on the decoded text.

    The top-level object is walked here and "pairs" decoded one pair at a time (``_parse_pairs_stream``),
    so memory stays near the size of the uint8 pixels and the event loop keeps answering; the service
    still runs this in a thread, one large body at a time. JSON semantics as ``json.loads`` (NaN and
    Infinity literals parse, and are then refused; a repeated key: the last one wins).
    """
    fields = _batch_fields(text)
    if "pairs" not in fields:
        raise ClientError("send either JSON {\"pairs\": [...]} or a multipart .npz upload as field 'file'")
    fmt = parse_format(fields.get("format", "json"))
    prior = parse_prior(fields.get("prior", BATCH_DEFAULT_PRIOR))
    arrays: dict[str, np.ndarray] = {"x": fields["pairs"]}
    if fields.get("ids") is not None:
        arrays["id"] = _ids_array(fields["ids"])
    try:
        return BatchRequest(validate_course_arrays(arrays, "pairs"), fmt, prior)
    except CourseDataError as err:
        raise ClientError(str(err)) from err


def _batch_fields(text: str) -> dict[str, t.Any]:
    """The top-level JSON object -> its fields (of JSON_KEYS; "pairs" already an array), nothing after it."""
    pos = _skip(text, 0)
    if text[pos:pos + 1] != "{":
        value, _ = _json_value(text, pos)
        raise ClientError(f"body: must be a JSON object with key 'pairs', got {type(value).__name__}")
    fields: dict[str, t.Any] = {}
    pos = _skip(text, pos + 1)
    pos = pos + 1 if text[pos:pos + 1] == "}" else _object_members(text, pos, fields)
    if _skip(text, pos) != len(text):
        raise ClientError(f"body: not valid JSON (extra data after the object at character {_skip(text, pos)})")
    return fields


def _object_members(text: str, pos: int, fields: dict[str, t.Any]) -> int:
    """The members of a non-empty object starting at ``pos`` into ``fields`` -> the position after its '}'."""
    while True:
        pos = _skip(text, pos)
        if text[pos:pos + 1] != '"':
            raise ClientError(f"body: not valid JSON (expected a key in double quotes at character {pos})")
        key, pos = _json_value(text, pos)
        if key not in JSON_KEYS:
            raise ClientError(f"body: unknown key {key!r}; this route takes {', '.join(map(repr, JSON_KEYS))}")
        _, pos = _expect(text, pos, ":")
        fields[key], pos = _parse_pairs_stream(text, pos) if key == "pairs" else _json_value(text, pos)
        char, pos = _expect(text, pos, ",}")
        if char == "}":
            return pos


def _ids_array(ids: t.Any) -> np.ndarray:
    """The JSON "ids" -> an array of strings (uniqueness and count are checked with the pairs)."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ClientError("ids: must be a list of strings")
    if any(len(i) > MAX_ID_CHARS for i in ids):
        raise ClientError(f"ids: an id is longer than {MAX_ID_CHARS} characters")
    return np.asarray(ids, dtype=str) if ids else np.zeros(0, dtype="<U1")


# --------------------------------------------------------------------------- .npz uploads


def _check_member_header(key: str, header: NpyHeader, n: int | None) -> None:
    """Refuse a member from its header alone: wrong dtype, wrong or oversized shape (before any allocation)."""
    dtype, shape = header.dtype, header.shape
    where = f"file: key {key!r}"
    if dtype.hasobject:
        raise ClientError(f"{where} holds Python objects (a pickled array); refused")
    if key == "x":
        _check_pairs_header(dtype, shape)
        return
    expected = {"y": (n,), "id": (n,), "digits": (n, 2)}[key]
    if shape != expected:
        raise ClientError(f"{where} must have shape {expected} to match 'x', got {shape}")
    if key == "id":
        _check_ids_dtype(where, dtype)
    elif dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise ClientError(f"{where} must hold integers, got dtype {dtype}")


def _check_pairs_header(dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """'x': (N, 28, 56) or one (28, 56) pair, at most MAX_PAIRS, uint8 or float."""
    if not (len(shape) == 3 and shape[1:] == PAIR_SHAPE) and shape != PAIR_SHAPE:
        raise ClientError(f"file: 'x' must have shape {PAIRS_SHAPE_TEXT}, got {shape}")
    if len(shape) == 3 and shape[0] > MAX_PAIRS:
        raise ClientError(f"file: {shape[0]} pairs is more than the limit of {MAX_PAIRS} per request", 413)
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


def read_npz_upload(fp: t.BinaryIO) -> CourseData:
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
        for key in _npz_keys(members):  # x first, so the others are checked against its N
            arrays[key], header = _read_member(archive, members[f"{key}.npy"], key, n)
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


def _npz_keys(members: dict[str, zipfile.ZipInfo]) -> list[str]:
    """The NPZ_KEYS the archive holds, 'x' first; refuses an archive that unpacks too large or has no 'x'."""
    unpacked = sum(info.file_size for info in members.values())
    if unpacked > MAX_NPZ_UNPACKED_BYTES:
        raise ClientError(
            f"file: the .npz unpacks to {unpacked} bytes, more than the limit of {MAX_NPZ_UNPACKED_BYTES}", 413
        )
    keys = [k for k in NPZ_KEYS if f"{k}.npy" in members]
    if "x" not in keys:
        found = sorted(name.removesuffix(".npy") for name in members)
        raise ClientError(f"file: missing key 'x' (found keys: {found or 'none'})")
    return keys


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
                 n: int | None) -> tuple[np.ndarray, NpyHeader]:
    """One member's array and header, read only once its header and size are acceptable."""
    try:
        with archive.open(info) as member:
            try:
                header = read_npy_header(member)
            except (ValueError, EOFError) as err:
                raise ClientError(f"file: key {key!r}: malformed .npy header ({err})") from err
            _check_member_header(key, header, n)
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


# --------------------------------------------------------------------------- compare_batch's body


async def read_batch(request: Request, parse_limiter: anyio.CapacityLimiter, large_body_bytes: int) -> BatchRequest:
    """compare_batch's JSON body or multipart .npz upload -> BatchRequest (ClientError when unusable).

    Parsed off the event loop, in a thread; bodies above ``large_body_bytes`` (declared, or undeclared) one at
    a time per worker through ``parse_limiter`` (a 64 MiB JSON body becomes about 350 MB of Python lists).
    """
    declared = request.headers.get("content-length", "")
    large = not declared.isdigit() or int(declared) > large_body_bytes
    async with parse_limiter if large else contextlib.nullcontext():
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            # One buffer, filled as the (already size-checked, spooled) body streams in, handed over to the
            # parsing thread: nothing here keeps it once the parse is done.
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
            holder = [body]
            del body
            result = await anyio.to_thread.run_sync(_parse_json_body, holder)
        else:  # multipart: the front door checked the fields (one file 'file', optional texts 'format', 'prior')
            form = await request.form(max_files=1, max_fields=3)
            try:
                fmt = parse_format(form.get("format", "json"))
                prior = parse_prior(form.get("prior", BATCH_DEFAULT_PRIOR))
                result = await anyio.to_thread.run_sync(_read_npz_upload, form["file"].file, fmt, prior)  # type: ignore[union-attr]
            finally:
                await form.close()
    if isinstance(result, ClientError):
        raise result
    return result


def _parse_json_body(holder: list[bytearray]) -> BatchRequest | ClientError:
    """In a worker thread: parse the body it is handed (and drops). A refusal comes back as a fresh
    exception without a traceback: one with it would keep the parser's frames, and with them the body
    and its text (120 MB for a 60 MiB body), alive for as long as anything holds the error."""
    try:
        text = decode_json_body(holder.pop())  # the bytes are freed here: the text is all the parse needs
        return parse_batch_text(text)
    except ClientError as err:
        return ClientError(str(err), err.status, err.detail)


def _read_npz_upload(fp: t.BinaryIO, fmt: str, prior: str) -> BatchRequest | ClientError:
    """In a worker thread, like _parse_json_body."""
    try:
        return BatchRequest(read_npz_upload(fp), fmt, prior)
    except ClientError as err:
        return ClientError(str(err), err.status, err.detail)
