"""HTTP input handling for the service: the service's limits, parsing of pair arrays and uploaded
``.npz`` files into clear 4xx errors, and an ASGI middleware that refuses malformed requests before
BentoML parses them. Kept out of ``service.py`` so that file reads as the API itself.
"""

from __future__ import annotations

import logging
import os
import typing as t
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ensemble.course_data import PAIR_SHAPE, CourseData, CourseDataError, as_pairs_uint8, load_course_npz
from ensemble.preprocess import ImageTooLargeError

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



#: At most this many pairs per compare_batch / score request (413 above).
MAX_PAIRS = env_int("DIGIT_COMPARE_MAX_PAIRS", 10_000)
#: At most this many bytes per request body (413 above); 64 MiB fits 10,000 pairs as JSON.
MAX_REQUEST_BYTES = env_int("DIGIT_COMPARE_MAX_REQUEST_BYTES", 64 * 1024 * 1024)
#: An uploaded .npz may unpack to at most this many bytes (float64 pairs at MAX_PAIRS, plus ids/labels).
MAX_NPZ_UNPACKED_BYTES = MAX_PAIRS * PAIR_SHAPE[0] * PAIR_SHAPE[1] * 8 + 16 * 1024 * 1024


class ClientError(Exception):
    """A request the service refuses; ``status`` is the 4xx answered with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def error_response(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def client_error(err: Exception) -> JSONResponse:
    """Map an input problem to its 4xx answer (413 for size limits, else 400)."""
    status = getattr(err, "status", 413 if isinstance(err, ImageTooLargeError) else 400)
    logger.info("refused request: %s (%d)", err, status)
    return error_response(str(err), status)


# --------------------------------------------------------------------------- array inputs


def parse_pairs(value: t.Any, source: str = "pairs") -> np.ndarray:
    """A JSON value (nested lists) or array -> (N, 28, 56) uint8, with a message for every way it can be wrong.

    Integers must be pixel values 0-255; floats follow the course rule (all in [0, 1] -> scaled by 255,
    else [0, 255]; NaN/inf refused). Booleans, strings, objects and ragged nesting are refused.
    """
    if value is None:
        raise ClientError(f"{source}: missing")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as err:
        raise ClientError(f"{source}: not a rectangular (N, 28, 56) array of numbers ({err})") from err
    if array.dtype.kind not in "iuf":
        kind = {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or nested objects / ragged lists"}
        raise ClientError(f"{source}: must hold pixel values (numbers), got {kind.get(array.dtype.kind, array.dtype)}")
    if array.size == 0:
        raise ClientError(f"{source}: no pairs given (N = 0)")
    if array.ndim == 3 and len(array) > MAX_PAIRS:
        raise ClientError(f"{source}: {len(array)} pairs is more than the limit of {MAX_PAIRS} per request", 413)
    if array.dtype.kind in "iu" and array.dtype != np.uint8:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ClientError(f"{source}: integer pixel values must lie in [0, 255], got values in [{low}, {high}]")
        array = array.astype(np.uint8)
    try:
        return as_pairs_uint8(array, source)
    except CourseDataError as err:
        raise ClientError(str(err)) from err


def validate_score_input(value: np.ndarray) -> np.ndarray:
    """Pydantic validator of ``score``'s input: runs per request, BEFORE requests are merged into a batch,
    so one bad request can never fail the others it would have been batched with."""
    try:
        return parse_pairs(value)
    except ClientError as err:
        raise ValueError(str(err)) from err


def _inspect_npz(path: Path) -> None:
    """Refuse an .npz whose members would unpack to too much, before numpy reads any of it."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            head = f.read(8)
        if head.startswith(b"\x93NUMPY"):
            return  # a bare .npy: load_course_npz explains that it wants an .npz
        raise ClientError(f"file: not an .npz archive (a zip of .npy arrays); it starts with {head!r}")
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
            if unpacked > MAX_NPZ_UNPACKED_BYTES:
                raise ClientError(
                    f"file: the .npz unpacks to {unpacked} bytes, more than the limit of {MAX_NPZ_UNPACKED_BYTES}", 413
                )
            if "x.npy" in archive.namelist():
                with archive.open("x.npy") as member:
                    version = np.lib.format.read_magic(member)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, _ = header(member)
                if len(shape) == 3 and shape[0] > MAX_PAIRS:
                    raise ClientError(f"file: {shape[0]} pairs is more than the limit of {MAX_PAIRS} per request", 413)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ClientError(f"file: not a readable .npz archive ({err})") from err


def read_npz_upload(path: Path) -> CourseData:
    _inspect_npz(path)
    try:
        data = load_course_npz(path)
    except CourseDataError as err:  # its messages start with the (temporary, meaningless) path
        raise ClientError("file: " + str(err).replace(str(path), "").lstrip(": ")) from err
    return data


# --------------------------------------------------------------------------- request guard (ASGI middleware)


@dataclass(frozen=True)
class RouteRule:
    media_types: tuple[str, ...]
    file_fields: tuple[str, ...] = ()  # multipart fields that must be file uploads




class RequestGuard:
    """Refuses malformed requests to the API routes with a clear 4xx before BentoML parses them.

    BentoML answers some client mistakes with 500 (a multipart body it cannot parse, a text field where a
    file is expected: it even tries to download it as a URL) and has no request size limit, so this
    checks, per route: the content type (415), the body size (413; the body is buffered and replayed, at
    most ``max_bytes``), that a multipart body parses (400) and that the file fields are files (400).
    """

    def __init__(self, app: t.Any, rules: dict[str, RouteRule], max_bytes: int) -> None:
        self.app = app
        self.rules = rules
        self.max_bytes = max_bytes

    async def __call__(self, scope: t.Any, receive: t.Any, send: t.Any) -> None:
        rule = self.rules.get(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in rule.media_types:
            accepted = " or ".join(m for m in rule.media_types if m) or "none"
            message = f"{scope['path']}: content type {media_type or '(none)'!r} is not accepted; send {accepted}"
            await self._refuse(scope, receive, send, 415, message)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, 413, self._too_large(int(declared)),
                               drain=min(int(declared), 2 * self.max_bytes))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send, 413, self._too_large(len(body)), drain=2 * self.max_bytes)
                return
            if not message.get("more_body", False):
                break
        replay = self._replay(bytes(body), receive)
        if media_type == "multipart/form-data":
            problem = await self._check_multipart(scope, self._replay(bytes(body), receive), rule)
            if problem is not None:
                await error_response(problem, 400)(scope, replay, send)
                return
        await self.app(scope, replay, send)

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes is more than the limit of {self.max_bytes} bytes"

    @staticmethod
    def _replay(body: bytes, receive: t.Any) -> t.Any:
        sent = False

        async def replay() -> dict[str, t.Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as a real receive would

        return replay

    @staticmethod
    async def _check_multipart(scope: t.Any, receive: t.Any, rule: RouteRule) -> str | None:
        request = Request(scope, receive)
        try:
            form = await request.form(max_files=8, max_fields=16)
        except HTTPException as err:  # starlette wraps MultiPartException in a 400 HTTPException
            return f"{scope['path']}: malformed multipart body ({err.detail})"
        except Exception as err:  # noqa: BLE001 - any parser failure means a malformed body
            return f"{scope['path']}: malformed multipart body ({type(err).__name__}: {err})"
        try:
            for name in rule.file_fields:
                values = form.getlist(name)
                if not values:
                    if scope["path"] == "/compare_batch":
                        return "/compare_batch: a multipart request must carry the .npz as file field 'file'"
                    return f"{scope['path']}: missing file field {name!r} (send it as a file upload)"
                if len(values) > 1:
                    return f"{scope['path']}: field {name!r} was sent {len(values)} times; send one file"
                if not isinstance(values[0], UploadFile):
                    return f"{scope['path']}: field {name!r} must be a file upload, got a text value"
        finally:
            await form.close()
        return None

    async def _refuse(self, scope: t.Any, receive: t.Any, send: t.Any, status: int, message: str,
                      drain: int = 0) -> None:
        # Read (and drop) a moderately sized body first: a client still sending would otherwise see a
        # reset connection instead of this answer. Bodies beyond `drain` are cut off.
        received = 0
        more = drain > 0
        while more and received <= drain:
            incoming = await receive()
            if incoming["type"] == "http.disconnect":
                return
            received += len(incoming.get("body", b""))
            more = incoming.get("more_body", False)
        logger.info("refused %s: %s (%d)", scope.get("path"), message, status)
        await error_response(message, status)(scope, receive, send)
