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

import logging
import os
import threading
import typing as t
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
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ensemble import Ensemble
from ensemble.course_data import CourseDataError, format_submission_csv, validate_course_arrays
from ensemble.http_inputs import (
    MAX_PAIRS,
    MAX_REQUEST_BYTES,
    ClientError,
    RequestGuard,
    RouteRule,
    client_error,
    env_int,
    parse_pairs,
    read_npz_upload,
    validate_score_input,
)
from ensemble.preprocess import (  # MAX_IMAGE_PIXELS: 25 MP, checked from the header before decoding
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    BlankImageError,
    InvalidImageError,
    open_image,
    prepare_digit,
    prepare_pair,
)

logger = logging.getLogger("bentoml.digit_compare")

MODELS_DIR = Path(os.environ.get("DIGIT_COMPARE_MODELS") or Path(__file__).resolve().parent / "models")
#: Adaptive batching of single-pair requests: at most this many pairs per inference call ...
MAX_BATCH_SIZE = env_int("DIGIT_COMPARE_MAX_BATCH_SIZE", 64)
#: ... and requests that cannot be served within this many ms (queue + inference) are shed with 503.
MAX_LATENCY_MS = env_int("DIGIT_COMPARE_MAX_LATENCY_MS", 2000)
#: compare_batch runs the ensemble on this many pairs at a time, letting batched requests in between.
BATCH_CHUNK = 256
#: Images decoded at the same time per worker (bounds memory: a 25 MP RGBA image is 100 MB).
DECODE_CONCURRENCY = 4

#: Columns of the array ``score`` returns, one row per pair; then one column per base model, in
#: ``Ensemble.names`` order (``/info`` lists them all as ``score_columns``).
SCORE_COLUMNS = ("probability", "label", "left_digit", "right_digit", "batch_size")
_PROB, _LABEL, _LEFT, _RIGHT, _BATCH, _BASE = 0, 1, 2, 3, 4, 5


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


# Per route: accepted content types and the multipart fields that must be files (see RequestGuard).
ROUTE_RULES: dict[str, RouteRule] = {
    "/compare": RouteRule(("multipart/form-data",), ("left", "right")),
    "/compare_pair": RouteRule(("multipart/form-data",), ("image",)),
    "/compare_batch": RouteRule(("application/json", "multipart/form-data"), ("file",)),
    "/score": RouteRule(("application/json",)),
    "/info": RouteRule(("application/json", ""), ()),
}


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
    def score(self, pairs: t.Annotated[np.ndarray, AfterValidator(validate_score_input)]) -> np.ndarray:
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
        image = open_image(path.read_bytes(), name=name)
        try:
            return prepare_digit(image)
        except BlankImageError as err:
            raise BlankImageError(f"{name}: {err}") from err

    @staticmethod
    def _pair(path: Path) -> np.ndarray:
        image = open_image(path.read_bytes(), name="image")
        return prepare_pair(image)

    @bentoml.api
    async def compare(self, left: Path, right: Path) -> Comparison:
        """Two pictures of single digits (multipart files `left` and `right`): is left > right?"""
        try:
            pair = np.concatenate([await self._in_thread(self._digit, left, "left"),
                                   await self._in_thread(self._digit, right, "right")], axis=1)
        except InvalidImageError as err:
            return client_error(err)
        return await self._score_one(pair)

    @bentoml.api
    async def compare_pair(self, image: Path) -> Comparison:
        """One course-style 28x56 pair picture (multipart file `image`; other sizes are resized)."""
        try:
            pair = await self._in_thread(self._pair, image)
        except InvalidImageError as err:
            return client_error(err)
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
                data = await self._in_thread(read_npz_upload, file[0])
            else:
                x = parse_pairs(pairs)
                arrays = {"x": x} if ids is None else {"x": x, "id": np.asarray(ids, dtype=str)}
                try:
                    data = validate_course_arrays(arrays, "pairs")
                except CourseDataError as err:
                    raise ClientError(str(err)) from err
        except ClientError as err:
            return client_error(err)

        rows = []
        for start in range(0, len(data.x), BATCH_CHUNK):  # chunks: batched requests get a turn in between
            rows.append(await anyio.to_thread.run_sync(self._predict_rows, data.x[start:start + BATCH_CHUNK]))
        scores = np.concatenate(rows)
        labels = scores[:, _LABEL].astype(np.int64)
        if format == "csv":
            return Response(format_submission_csv(data.ids_or_row_numbers(), labels), media_type="text/csv",
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
        return {
            **self.ensemble.info(),  # models, manifest version, artifact hashes, training data, metrics, provider
            "device_setting": os.environ.get("DIGIT_COMPARE_DEVICE", "auto"),
            "batching": {"max_batch_size": MAX_BATCH_SIZE, "max_latency_ms": MAX_LATENCY_MS,
                         "batch_endpoint_chunk": BATCH_CHUNK},
            "limits": {"max_pairs_per_request": MAX_PAIRS, "max_request_bytes": MAX_REQUEST_BYTES,
                       "max_image_pixels": MAX_IMAGE_PIXELS, "max_image_bytes": MAX_IMAGE_BYTES},
            "score_columns": [*SCORE_COLUMNS, *self.ensemble.names],
            "bentoml_version": bentoml.__version__,
        }

    @bentoml.api(route="/info")
    def info(self) -> dict[str, t.Any]:
        """Models, manifest (version, hashes, training data, metrics), execution provider, batching, limits."""
        return self.describe()


DigitCompare.add_asgi_middleware(RequestGuard, rules=ROUTE_RULES, max_bytes=MAX_REQUEST_BYTES)
