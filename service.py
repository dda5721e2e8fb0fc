"""BentoML service: is the left handwritten digit greater than the right one?

Endpoints (all answers are JSON unless noted; every client mistake gets a 4xx ``{"error": "..."}``):

- ``POST /compare`` (multipart: files ``left`` and ``right``): two pictures of single digits, any format
  Pillow reads, any size, grayscale/RGB/RGBA, dark-on-light or light-on-dark. Each is made MNIST-like by
  ``ensemble.preprocess.prepare_digit`` and the two are put side by side as one 28x56 pair.
- ``POST /compare_pair`` (multipart: file ``image``): one course-style pair (left digit in columns 0-27);
  other sizes are resized to 28x56 (``ensemble.preprocess.prepare_pair``).
  Both answer ``{greater, probability, digits: {left, right}, models: {name: probability}, batch_size}``
  where ``batch_size`` is the number of pairs in the inference call that served the request.
- ``POST /compare_batch``: JSON ``{"pairs": [[[...28x56...]], ...], "ids": [...]?, "format": "json"|"csv"}``
  or multipart with a course ``.npz`` as field ``file`` (keys ``x`` and optionally ``id``, ``y``) and an
  optional field ``format``. Answers probabilities, labels and digits for all pairs (plus ``accuracy``
  when the file has labels ``y``); ``format=csv`` answers ``text/csv`` in the course submission format
  ``id,label`` (row numbers stand in for missing ids).
- ``GET /info`` (also ``POST /info``): model names, manifest version and artifact hashes, training data,
  metrics, the execution provider, batching settings and input limits.
- ``POST /score``: the batchable inference method behind ``compare`` and ``compare_pair``; JSON
  ``{"pairs": (N, 28, 56) uint8}`` -> an (N, 15) array: ``SCORE_COLUMNS`` then the ten base models.

Adaptive batching: ``compare``/``compare_pair`` call ``score`` through the service's own proxy
(``self.to_async.score``), so BentoML's dispatcher merges concurrent single-pair requests into one
``Ensemble.predict`` call (``max_batch_size``/``max_latency_ms`` below). ``compare_batch`` brings its own
batch and calls the ensemble directly, in chunks, so it neither waits on nor starves the dispatcher.

BentoML's own ``/healthz``, ``/livez``, ``/readyz``, ``/metrics``, ``/docs.json`` and the OpenAPI UI at
``/`` stay on. Environment: ``DIGIT_COMPARE_MODELS`` (models directory, default ``models/`` next to this
file), ``DIGIT_COMPARE_DEVICE`` (``cpu``/``cuda``/``auto``, read by ``Ensemble.load``),
``DIGIT_COMPARE_MAX_BATCH_SIZE``, ``DIGIT_COMPARE_MAX_LATENCY_MS``, ``DIGIT_COMPARE_MAX_PAIRS``,
``DIGIT_COMPARE_MAX_REQUEST_BYTES`` (read at import). Images are limited to
``ensemble.preprocess.MAX_IMAGE_PIXELS`` (25 MP, from the header, before decoding) and ``MAX_IMAGE_BYTES``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import typing as t
import zipfile
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import aiohttp
import anyio
import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from pydantic import AfterValidator, BaseModel, Field
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ensemble import Ensemble
from ensemble.course_data import (
    PAIR_SHAPE,
    CourseData,
    CourseDataError,
    as_pairs_uint8,
    load_course_npz,
    validate_course_arrays,
    write_submission_csv,
)
from ensemble.preprocess import (  # MAX_IMAGE_PIXELS: 25 MP, checked from the header before decoding
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    BlankImageError,
    ImageTooLargeError,
    InvalidImageError,
    open_image,
    prepare_digit,
    prepare_pair,
)

logger = logging.getLogger("bentoml.digit_compare")


def _env_int(name: str, default: int) -> int:
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


MODELS_DIR = Path(os.environ.get("DIGIT_COMPARE_MODELS") or Path(__file__).resolve().parent / "models")
#: Adaptive batching of single-pair requests: at most this many pairs per inference call ...
MAX_BATCH_SIZE = _env_int("DIGIT_COMPARE_MAX_BATCH_SIZE", 64)
#: ... and requests that cannot be served within this many ms (queue + inference) are shed with 503.
MAX_LATENCY_MS = _env_int("DIGIT_COMPARE_MAX_LATENCY_MS", 2000)
#: At most this many pairs per compare_batch / score request (413 above).
MAX_PAIRS = _env_int("DIGIT_COMPARE_MAX_PAIRS", 10_000)
#: compare_batch runs the ensemble on this many pairs at a time, letting batched requests in between.
BATCH_CHUNK = 256
#: At most this many bytes per request body (413 above); 64 MiB fits 10,000 pairs as JSON.
MAX_REQUEST_BYTES = _env_int("DIGIT_COMPARE_MAX_REQUEST_BYTES", 64 * 1024 * 1024)
#: An uploaded .npz may unpack to at most this many bytes (float64 pairs at MAX_PAIRS, plus ids/labels).
MAX_NPZ_UNPACKED_BYTES = MAX_PAIRS * PAIR_SHAPE[0] * PAIR_SHAPE[1] * 8 + 16 * 1024 * 1024
#: Images decoded at the same time per worker (bounds memory: a 25 MP RGBA image is 100 MB).
DECODE_CONCURRENCY = 4

#: Columns of the array ``score`` returns, one row per pair; then one column per base model, in
#: ``Ensemble.names`` order (``/info`` lists them all as ``score_columns``).
SCORE_COLUMNS = ("probability", "label", "left_digit", "right_digit", "batch_size")
_PROB, _LABEL, _LEFT, _RIGHT, _BATCH, _BASE = 0, 1, 2, 3, 4, 5


class ClientError(Exception):
    """A request the service refuses; ``status`` is the 4xx answered with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _error_response(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _client_error(err: Exception) -> JSONResponse:
    """Map an input problem to its 4xx answer (413 for size limits, else 400)."""
    status = getattr(err, "status", 413 if isinstance(err, ImageTooLargeError) else 400)
    logger.info("refused request: %s (%d)", err, status)
    return _error_response(str(err), status)


# --------------------------------------------------------------------------- array inputs


def _as_pairs(value: t.Any, source: str = "pairs") -> np.ndarray:
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


def _validate_score_input(value: np.ndarray) -> np.ndarray:
    """Pydantic validator of ``score``'s input: runs per request, BEFORE requests are merged into a batch,
    so one bad request can never fail the others it would have been batched with."""
    try:
        return _as_pairs(value)
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


def _read_npz(path: Path) -> CourseData:
    _inspect_npz(path)
    try:
        data = load_course_npz(path)
    except CourseDataError as err:  # its messages start with the (temporary, meaningless) path
        raise ClientError("file: " + str(err).replace(str(path), "").lstrip(": ")) from err
    return data


def _submission_csv(ids: np.ndarray, labels: np.ndarray) -> str:
    """The course submission CSV, written by the shared writer so the format cannot drift."""
    with tempfile.TemporaryDirectory(prefix="digit-compare-") as tmp:
        path = Path(tmp) / "submission.csv"
        write_submission_csv(path, ids, labels)
        return path.read_text()


def _artifact_hashes(artifacts: t.Any) -> dict[str, str]:
    """{artifact: sha256} from the manifest's artifacts, whether a mapping or a list of records."""
    hashes: dict[str, str] = {}
    if isinstance(artifacts, dict):
        for name, entry in artifacts.items():
            digest = entry.get("sha256") if isinstance(entry, dict) else entry
            if isinstance(digest, str):
                hashes[str(name)] = digest
    elif isinstance(artifacts, list):
        for i, entry in enumerate(artifacts):
            if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
                name = entry.get("name") or entry.get("path") or entry.get("file") or str(i)
                hashes[str(name)] = entry["sha256"]
    return hashes


# --------------------------------------------------------------------------- response models


class Digits(BaseModel):
    left: int = Field(description="most likely class of the left digit (mean of the ten digit heads)")
    right: int = Field(description="most likely class of the right digit")


class Comparison(BaseModel):
    greater: bool = Field(description="is the left digit greater than the right one?")
    probability: float = Field(description="stacked ensemble probability that left > right")
    digits: Digits
    models: dict[str, float] = Field(description="each base model's probability that left > right")
    batch_size: int = Field(description="pairs in the inference call that served this request (adaptive batching)")


class BatchResult(BaseModel):
    n: int
    probabilities: list[float]
    labels: list[int]
    digits: list[list[int]] = Field(description="[left, right] most likely classes per pair")
    ids: list[str] | None = None
    accuracy: float | None = Field(default=None, description="against the file's labels 'y', when it has them")


# --------------------------------------------------------------------------- request guard (ASGI middleware)


@dataclass(frozen=True)
class RouteRule:
    media_types: tuple[str, ...]
    file_fields: tuple[str, ...] = ()  # multipart fields that must be file uploads


ROUTE_RULES: dict[str, RouteRule] = {
    "/compare": RouteRule(("multipart/form-data",), ("left", "right")),
    "/compare_pair": RouteRule(("multipart/form-data",), ("image",)),
    "/compare_batch": RouteRule(("application/json", "multipart/form-data"), ("file",)),
    "/score": RouteRule(("application/json",)),
    "/info": RouteRule(("application/json", ""), ()),
}


class RequestGuard:
    """Refuses malformed requests to the API routes with a clear 4xx before BentoML parses them.

    BentoML answers some client mistakes with 500 (a multipart body it cannot parse, a text field where a
    file is expected: it even tries to download it as a URL) and has no request size limit, so this
    checks, per route: the content type (415), the body size (413; the body is buffered and replayed, at
    most MAX_REQUEST_BYTES), that a multipart body parses (400) and that the file fields are files (400).
    """

    def __init__(self, app: t.Any, rules: dict[str, RouteRule] | None = None,
                 max_bytes: int | None = None) -> None:
        self.app = app
        self.rules = ROUTE_RULES if rules is None else rules
        self.max_bytes = MAX_REQUEST_BYTES if max_bytes is None else max_bytes

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
                await _error_response(problem, 400)(scope, replay, send)
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
        await _error_response(message, status)(scope, receive, send)


# --------------------------------------------------------------------------- GET /info


async def _get_info(request: Request) -> Response:
    return JSONResponse(bentoml.get_current_service().describe())


info_app = Starlette(routes=[Route("/info", _get_info, methods=["GET"])])


# --------------------------------------------------------------------------- the service


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(name="digit_compare", workers=1, traffic={"timeout": 120})
class DigitCompare:
    """Is the left handwritten digit greater than the right one? A ten-model ensemble stacked by LightGBM."""

    def __init__(self) -> None:
        # Once per worker: Ensemble.load verifies the manifest hashes and picks the execution provider.
        self.ensemble = Ensemble.load(MODELS_DIR)
        self._predict_lock = threading.Lock()  # one inference at a time (and no reliance on thread safety)
        self._decode_limiter: anyio.CapacityLimiter | None = None
        logger.info("loaded %d models from %s on %s", len(self.ensemble.names), MODELS_DIR, self.ensemble.provider)

    # ----------------------------------------------------------------- inference

    def _predict_rows(self, pairs: np.ndarray) -> np.ndarray:
        """Ensemble.predict -> the SCORE_COLUMNS array (the only place that calls the ensemble)."""
        with self._predict_lock:
            prediction = self.ensemble.predict(pairs)
        n = len(pairs)
        rows = np.empty((n, len(SCORE_COLUMNS) + len(self.ensemble.names)), dtype=np.float64)
        rows[:, _PROB] = prediction.probability
        rows[:, _LABEL] = prediction.label
        rows[:, _LEFT:_RIGHT + 1] = prediction.digits
        rows[:, _BATCH] = n
        rows[:, _BASE:] = prediction.base_probabilities
        return rows

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def score(self, pairs: t.Annotated[np.ndarray, AfterValidator(_validate_score_input)]) -> np.ndarray:
        """Batchable inference: (N, 28, 56) uint8 pairs -> (N, 15) rows of SCORE_COLUMNS
        (probability, label, left digit, right digit, batch size, the ten base model probabilities)."""
        return self._predict_rows(pairs)

    async def _score_one(self, pair: np.ndarray) -> Comparison | Response:
        """One pair through ``score``, i.e. through BentoML's adaptive batching (the self-proxy call is an
        in-process HTTP request to /score that the dispatcher merges with concurrent ones)."""
        proxy = getattr(self, "to_async", None)  # set by the server; absent when the class is used directly
        if proxy is not None:
            try:
                rows = np.asarray(await proxy.score(pair[None]), dtype=np.float64)
            except (BentoMLException, aiohttp.ClientError) as err:
                # Overload, not a bug: the dispatcher shed the request (it could not be served within
                # max_latency_ms: 503), or, under heavy overload, the in-process connection of the
                # self-proxy (aiohttp over ASGI) was dropped. Anything else stays a 500.
                if isinstance(err, BentoMLException) and err.error_code != HTTPStatus.SERVICE_UNAVAILABLE:
                    raise
                logger.warning("shed a request under load: %s: %s", type(err).__name__, err)
                return JSONResponse({"error": "the service is overloaded; retry shortly"}, status_code=503,
                                    headers={"Retry-After": "1"})
        else:
            rows = await anyio.to_thread.run_sync(self._predict_rows, pair[None])
        row = rows[0]
        return Comparison(
            greater=bool(row[_LABEL] == 1),
            probability=float(row[_PROB]),
            digits=Digits(left=int(row[_LEFT]), right=int(row[_RIGHT])),
            models={name: float(p) for name, p in zip(self.ensemble.names, row[_BASE:], strict=True)},
            batch_size=int(row[_BATCH]),
        )

    async def _in_thread(self, func: t.Callable[..., t.Any], *args: t.Any) -> t.Any:
        if self._decode_limiter is None:
            self._decode_limiter = anyio.CapacityLimiter(DECODE_CONCURRENCY)
        return await anyio.to_thread.run_sync(func, *args, limiter=self._decode_limiter)

    # ----------------------------------------------------------------- image endpoints

    @staticmethod
    def _digit(path: Path, name: str) -> np.ndarray:
        image = open_image(path.read_bytes(), max_pixels=MAX_IMAGE_PIXELS, max_bytes=MAX_IMAGE_BYTES, name=name)
        try:
            return prepare_digit(image)
        except BlankImageError as err:
            raise BlankImageError(f"{name}: {err}") from err

    @staticmethod
    def _pair(path: Path) -> np.ndarray:
        image = open_image(path.read_bytes(), max_pixels=MAX_IMAGE_PIXELS, max_bytes=MAX_IMAGE_BYTES, name="image")
        return prepare_pair(image)

    @bentoml.api
    async def compare(self, left: Path, right: Path) -> Comparison:
        """Two pictures of single digits (multipart files `left` and `right`): is left > right?"""
        try:
            pair = np.concatenate([await self._in_thread(self._digit, left, "left"),
                                   await self._in_thread(self._digit, right, "right")], axis=1)
        except InvalidImageError as err:
            return _client_error(err)
        return await self._score_one(pair)

    @bentoml.api
    async def compare_pair(self, image: Path) -> Comparison:
        """One course-style 28x56 pair picture (multipart file `image`; other sizes are resized)."""
        try:
            pair = await self._in_thread(self._pair, image)
        except InvalidImageError as err:
            return _client_error(err)
        return await self._score_one(pair)

    # ----------------------------------------------------------------- batch endpoint

    @bentoml.api
    async def compare_batch(
        self,
        pairs: t.Annotated[t.Any, Field(description="(N, 28, 56) pixel values (JSON requests)")] = None,
        ids: t.Annotated[list[str] | None, Field(description="ids of the pairs (JSON requests, optional)")] = None,
        # An optional upload has to be a list in BentoML 1.4: `Path | None` is not treated as a file (the
        # upload fails validation) and `Optional[Path]` cannot even be declared (FileSchema is unhashable).
        file: list[Path] = Field(default_factory=list, description="one course .npz: key x, optionally id, y"),  # noqa: B008
        format: t.Annotated[t.Literal["json", "csv"], Field(description="csv: the submission file")] = "json",
    ) -> BatchResult:
        """Many pairs at once: JSON `pairs` or an uploaded course `.npz` -> probabilities and labels."""
        try:
            if bool(file) == (pairs is not None):
                raise ClientError("send either JSON {\"pairs\": [...]} or a multipart .npz upload as field "
                                  "'file'" + (", not both" if file else ""))
            if len(file) > 1:
                raise ClientError(f"file: send one .npz, got {len(file)}")
            if file:
                data = await self._in_thread(_read_npz, file[0])
            else:
                x = _as_pairs(pairs)
                arrays = {"x": x} if ids is None else {"x": x, "id": np.asarray(ids, dtype=str)}
                try:
                    data = validate_course_arrays(arrays, "pairs")
                except CourseDataError as err:
                    raise ClientError(str(err)) from err
        except ClientError as err:
            return _client_error(err)

        rows = []
        for start in range(0, len(data.x), BATCH_CHUNK):  # chunks: batched requests get a turn in between
            rows.append(await anyio.to_thread.run_sync(self._predict_rows, data.x[start:start + BATCH_CHUNK]))
        scores = np.concatenate(rows)
        labels = scores[:, _LABEL].astype(np.int64)
        if format == "csv":
            return Response(_submission_csv(data.ids_or_row_numbers(), labels), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="submission.csv"'})
        return BatchResult(
            n=len(labels),
            probabilities=scores[:, _PROB].tolist(),
            labels=labels.tolist(),
            digits=scores[:, _LEFT:_RIGHT + 1].astype(np.int64).tolist(),
            ids=None if data.ids is None else data.ids.tolist(),
            accuracy=None if data.y is None else float((labels == data.y).mean()),
        )

    # ----------------------------------------------------------------- info

    def describe(self) -> dict[str, t.Any]:
        manifest = self.ensemble.manifest
        return {
            "service": "digit_compare",
            "models": list(self.ensemble.names),
            "manifest_version": manifest.get("version", manifest.get("format_version")),
            "created": manifest.get("created"),
            "artifact_hashes": _artifact_hashes(manifest.get("artifacts")),
            "training_data": manifest.get("training_data", manifest.get("training", manifest.get("data"))),
            "metrics": manifest.get("metrics"),
            "provider": self.ensemble.provider,
            "device_setting": os.environ.get("DIGIT_COMPARE_DEVICE", "auto"),
            "batching": {"max_batch_size": MAX_BATCH_SIZE, "max_latency_ms": MAX_LATENCY_MS,
                         "batch_endpoint_chunk": BATCH_CHUNK},
            "limits": {"max_pairs_per_request": MAX_PAIRS, "max_request_bytes": MAX_REQUEST_BYTES,
                       "max_image_pixels": MAX_IMAGE_PIXELS, "max_image_bytes": MAX_IMAGE_BYTES},
            "score_columns": [*SCORE_COLUMNS, *self.ensemble.names],
            "bentoml_version": bentoml.__version__,
            "manifest": json.loads(json.dumps(manifest, default=str)),
        }

    @bentoml.api(route="/info")
    def info(self) -> dict[str, t.Any]:
        """Models, manifest (version, hashes, training data, metrics), execution provider, batching, limits."""
        return self.describe()


DigitCompare.add_asgi_middleware(RequestGuard)
