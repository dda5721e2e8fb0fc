"""BentoML service: is the left handwritten digit greater than the right one?

Endpoints (answers are JSON unless noted; every client mistake, on every route, is a 4xx with the one
shape ``{"error": "...", "detail": ...}``, ``detail`` only when there is one; described at ``/docs.json``):

- ``POST /compare`` (multipart: files ``left`` and ``right``): two pictures of single digits, any format
  Pillow reads, any size, grayscale/RGB/RGBA, dark-on-light or light-on-dark. Each is made MNIST-like by
  ``ensemble.preprocess.prepare_digit`` and the two are put side by side as one 28x56 pair.
- ``POST /compare_pair`` (multipart: file ``image``): one course-style pair (left digit in columns 0-27);
  other sizes are resized to 28x56 (``ensemble.preprocess.prepare_pair``).
  Both answer ``{greater, probability, digits: {left, right}, models: {name: probability}, batch_size,
  digit_probabilities: {left: [10], right: [10]}, elapsed_ms, inputs}`` where ``batch_size`` is the number of
  pairs in the inference call that served the request, and ``inputs`` holds the preprocessed 28x28 halves as
  base64 PNG when the request has the text field ``include_inputs=true`` (else null). A blank picture (or a
  blank half of a pair) is refused on both, by the same test (``require_ink``).
- ``POST /compare_batch``: JSON ``{"pairs": [[[...28x56...]], ...], "ids": [...]?, "format": "json"|"csv"}``
  or multipart with a course ``.npz`` as field ``file`` (keys ``x`` and optionally ``id``, ``y``) and an
  optional field ``format``. Answers probabilities, labels and digits for all pairs (plus ``accuracy``
  when the file has labels ``y``); ``format=csv`` answers ``text/csv`` in the course submission format
  ``id,label`` (row numbers stand in for missing ids).
- ``GET /info`` (also ``POST /info``): model names, manifest version and artifact hashes, training data,
  metrics, the execution provider, batching settings and input limits.
- ``GET /ui``: a web page to try the service (``ui/``: draw or drop two digits, or load a sample pair from
  ``samples/``), with its ``/ui/style.css``, ``/ui/app.js`` and ``/ui/samples.json`` (``serving/webui.py``).
- BentoML's ``/healthz``, ``/livez``, ``/readyz``, ``/metrics`` (request counts and latency histograms per
  route, adaptive batch sizes) and the OpenAPI page at ``/``.

Two services. ``Scorer`` holds the models behind BentoML's adaptive batching (``score``: ``max_batch_size``
/ ``max_latency_ms``); ``DigitCompare`` is the public API: it decodes and checks inputs and calls the
scorer through ``bentoml.depends`` (its own process, on a Unix socket in a private folder: the batch
route is no public door). ``compare``/``compare_pair`` send their pair together with the single pairs waiting
beside it (at most ``SINGLE_PAIR_CALLS_IN_FLIGHT`` calls at a time), and the scorer's dispatcher merges
concurrent calls; ``compare_batch`` sends its pairs in chunks of ``max_batch_size``, at most
``BATCH_IN_FLIGHT`` at a time, into the same queue, so one large request cannot starve single ones.

Environment: ``DIGIT_COMPARE_MODELS`` (models directory, default ``models/`` next to this file),
``DIGIT_COMPARE_DEVICE`` (``cpu``/``cuda``/``auto``, read by ``Ensemble.load``),
``DIGIT_COMPARE_MAX_BATCH_SIZE``, ``DIGIT_COMPARE_MAX_LATENCY_MS``, ``DIGIT_COMPARE_SCORER_THREADS``,
``DIGIT_COMPARE_MAX_PAIRS``, ``DIGIT_COMPARE_MAX_REQUEST_BYTES``, ``DIGIT_COMPARE_BODY_IDLE_TIMEOUT_S``,
``DIGIT_COMPARE_BODY_TIMEOUT_S``
(read at import). Images are limited to ``ensemble.preprocess.MAX_IMAGE_PIXELS`` (25 MP, from the header,
before decoding) and ``MAX_IMAGE_BYTES``. The models' hashes are verified when this module is imported:
a refused model stops ``bentoml serve`` with a message naming the file.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
import typing as t
from pathlib import Path

import aiohttp
import anyio
import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, ServiceUnavailable
from pydantic import AfterValidator, Field, Strict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ensemble import Ensemble
from ensemble.contract import join_pair, split_pair
from ensemble.course_data import format_submission_csv
from ensemble.manifest import ManifestError, verify_serving_artifacts
from ensemble.preprocess import (  # MAX_IMAGE_PIXELS: 25 MP, checked from the header before decoding
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    BlankImageError,
    InvalidImageError,
    open_image,
    prepare_digit,
    prepare_pair,
)
from ensemble.runtime import DEVICE_ENV, MODELS_ENV, usable_cpus
from serving.coalesce import Overloaded, PairCoalescer
from serving.guard import FrontDoor, RouteRule
from serving.inputs import (
    MAX_ID_CHARS,
    MAX_PAIRS,
    MAX_REQUEST_BYTES,
    BatchRequest,
    ClientError,
    client_error,
    decode_json_body,
    env_float,
    env_int,
    error_response,
    parse_batch_text,
    parse_format,
    read_npz_upload,
    validate_score_input,
)
from serving.openapi import BatchResult, Comparison, DigitProbabilities, Digits, PreparedInputs, build_openapi
from serving.webui import UI_PATHS, UIError, png_base64
from serving.webui import routes as ui_routes

logger = logging.getLogger("bentoml.digit_compare")

MODELS_DIR = Path(os.environ.get(MODELS_ENV) or Path(__file__).resolve().parent / "models")
# A tampered or missing model used to fail each worker's start, which BentoML's process manager restarts
# every few seconds, forever. Checked here instead, on import, in the `bentoml serve` process itself: it
# exits non-zero with the message before any worker starts.
try:
    MANIFEST = verify_serving_artifacts(MODELS_DIR)
except ManifestError as _err:
    raise SystemExit(f"digit_compare: refusing to serve the models in {MODELS_DIR}: {_err}") from None
MODEL_NAMES: tuple[str, ...] = tuple(m["name"] for m in MANIFEST["models"])
UI_DIR = Path(__file__).resolve().parent / "ui"
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

#: Adaptive batching of single-pair requests: at most this many pairs per inference call ...
MAX_BATCH_SIZE = env_int("DIGIT_COMPARE_MAX_BATCH_SIZE", 64)
#: ... and requests whose estimated wait plus inference exceeds this many ms are shed with 503. Not lower:
#: under a 10,000-pair batch and 64 clients on a busy 2-core CPU a single pair can wait 2 s, and a shed
#: request is a 503 the client did nothing to earn (the queue is bounded by the clients anyway).
MAX_LATENCY_MS = env_int("DIGIT_COMPARE_MAX_LATENCY_MS", 10_000)
#: compare_batch keeps at most this many chunks (of MAX_BATCH_SIZE pairs) in the scorer's queue at once:
#: two keep the scorer busy while a chunk travels, and leave room for single requests in between.
BATCH_IN_FLIGHT = 2
#: Single pairs (compare, compare_pair) go to the scorer at most this many calls at a time; pairs that arrive
#: meanwhile wait in this worker and go together in the next call (a lone request goes at once). Measured at
#: 64 clients on 2 cores: +34% answers/s and a lower p99 against one call per pair (README, "Speed"), because
#: each call to the scorer costs both processes CPU time (HTTP, serialisation) whatever its size.
SINGLE_PAIR_CALLS_IN_FLIGHT = 2
#: ... and at most this many single pairs wait for a call (more are refused with 503 at once, as are pairs that
#: waited longer than MAX_LATENCY_MS): 16 full batches, a few seconds of inference on 2 CPU cores.
MAX_WAITING_PAIRS = 16 * MAX_BATCH_SIZE
#: ONNX Runtime threads in the scorer (default: one per usable CPU). One fewer leaves a core to the API worker
#: and helps a crowd of single pairs when they are not coalesced, but with coalescing it measured the same at 64
#: clients (205 vs 218 answers/s) and halved compare_batch (330 vs 584 pairs/s; docs/bench.md, 2 cores).
SCORER_THREADS = env_int("DIGIT_COMPARE_SCORER_THREADS", usable_cpus())
#: A client that sends no byte for this long, or not its whole body within BODY_TIMEOUT_S, gets a 408.
BODY_IDLE_TIMEOUT_S = env_float("DIGIT_COMPARE_BODY_IDLE_TIMEOUT_S", 15.0)
BODY_TIMEOUT_S = env_float("DIGIT_COMPARE_BODY_TIMEOUT_S", 100.0)
#: Whole request (BentoML's traffic timeout, 504 after it). Sized for the largest batch: 10,000 pairs
#: take ~50 s at the ~200 pairs/s of this 2-core CPU under load, two at once ~105 s (120 s was too short).
REQUEST_TIMEOUT_S = 300
#: The scorer's, for one inference call.
SCORER_TIMEOUT_S = 60
#: Images decoded at the same time per worker (bounds memory: a 25 MP RGBA image is 100 MB decoded).
DECODE_CONCURRENCY = 2
#: Request bodies above this size are parsed one at a time per worker (a 64 MiB JSON body becomes about
#: 350 MB of Python lists while parsed), in a thread, so the event loop keeps answering.
LARGE_BODY_BYTES = 1024 * 1024
LARGE_PARSES = 1
#: Calls to the scorer that fail at the connection level are tried this many times in all.
SCORER_ATTEMPTS = 3
#: A chunk of compare_batch that the scorer sheds (overload) is tried this many times in all.
CHUNK_ATTEMPTS = 3

#: Columns of the array ``score`` returns, one row per pair: the answer, then each half's ten digit
#: probabilities (the digit heads averaged over the models), then one column per base model, in
#: ``Ensemble.names`` order (``/info`` lists them all as ``score_columns``).
SCORE_COLUMNS = ("probability", "label", "left_digit", "right_digit", "batch_size",
                 *(f"{side}_p{d}" for side in ("left", "right") for d in range(10)))
_PROB, _LABEL, _LEFT, _RIGHT, _BATCH = 0, 1, 2, 3, 4
_LEFT_P = _BATCH + 1
_RIGHT_P = _LEFT_P + 10
_BASE = _RIGHT_P + 10
assert len(SCORE_COLUMNS) == _BASE

# Why the scorer's client never recycles its session: BentoML 1.4.40's internal client
# (_bentoml_impl/client/proxy2.py, SessionManager.get_session) replaces its aiohttp session every
# `max_requests` (100) calls or `max_age` (300 s) and closes the old session while calls on it are still
# in flight. Those calls fail with ServerDisconnectedError / ClientOSError although the inference ran:
# 0.7% of answers at 2 concurrent clients, 30-34% at 64, all false 503s (upstream: bentoml/BentoML#4971
# and #5540; PR #5698 proposes retries). RemoteProxy reads both limits from the *called* service's
# `runner_connection` config, so they are set out of reach here; connection-level failures that can
# still happen (a keep-alive connection closed by the server just as it is reused, a restarting scorer)
# are retried below (`DigitCompare._call_scorer`), scoring being idempotent.
NEVER_RECYCLE = {"max_requests": 2**62, "max_age": 1e12}


class ScorerUnavailable(Exception):
    """The scorer shed the call (overload) or could not be reached: a 503 with Retry-After."""


# --------------------------------------------------------------------------- the model service (internal)


@bentoml.service(name="digit_compare_scorer", workers=1, traffic={"timeout": SCORER_TIMEOUT_S},
                 runner_connection=NEVER_RECYCLE)
class Scorer:
    """The base models (the manifest's list) and the stacker behind BentoML's adaptive batching.
    Internal: only DigitCompare calls it (``bentoml.depends``); it is not served on the public port."""

    def __init__(self) -> None:
        # Once per worker: Ensemble.load verifies the manifest hashes and picks the execution provider.
        self.ensemble = Ensemble.load(MODELS_DIR, threads=SCORER_THREADS)
        self._lock = threading.Lock()  # one inference at a time (and no reliance on thread safety)
        logger.info("loaded %d models from %s on %s", len(self.ensemble.names), MODELS_DIR, self.ensemble.provider)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def score(self, pairs: t.Annotated[np.ndarray, AfterValidator(validate_score_input)]) -> np.ndarray:
        """(N, 28, 56) uint8 pairs -> (N, len(SCORE_COLUMNS) + M) rows: SCORE_COLUMNS (probability, label,
        left digit, right digit, batch size, both halves' digit probabilities), then the M base models'
        probabilities in the manifest's order."""
        with self._lock:
            prediction = self.ensemble.predict(pairs)
        rows = np.empty((len(pairs), len(SCORE_COLUMNS) + len(self.ensemble.names)), dtype=np.float64)
        rows[:, _PROB] = prediction.probability
        rows[:, _LABEL] = prediction.label
        rows[:, _LEFT:_RIGHT + 1] = prediction.digits
        rows[:, _BATCH] = len(pairs)
        rows[:, _LEFT_P:_BASE] = prediction.digit_probs.mean(axis=1).reshape(len(pairs), -1)  # (N, M, 2, 10)
        rows[:, _BASE:] = prediction.base_probabilities
        return rows

    @bentoml.api
    def describe(self) -> dict[str, t.Any]:
        """Models, manifest version and hashes, training data, metrics, provider."""
        return {**self.ensemble.info(), "score_columns": [*SCORE_COLUMNS, *self.ensemble.names]}


# --------------------------------------------------------------------------- routes outside BentoML's API


async def _get_info(request: Request) -> Response:
    return JSONResponse(await bentoml.get_current_service().describe())


async def _compare_batch(request: Request) -> Response:
    return await bentoml.get_current_service().compare_batch(request)


# The page's files are read here, once: a Bento built without them fails at start, with a message, like
# one without its models.
try:
    _UI_ROUTES = ui_routes(UI_DIR, SAMPLES_DIR)
except UIError as _err:
    raise SystemExit(f"digit_compare: {_err}") from None

# compare_batch is a plain route: its JSON body is parsed here, off the event loop and one large body at a
# time (BentoML would parse it on the event loop, into pydantic, whatever its size). The page (/ui) lives
# here too: same Bento, same port.
extra_app = Starlette(routes=[Route("/info", _get_info, methods=["GET"]),
                              Route("/compare_batch", _compare_batch, methods=["POST"]),
                              *_UI_ROUTES])

#: The image routes' optional text field. Strict: only JSON's true/false (which BentoML decodes from the form
#: field), so "1", "yes" or a number is a 400 rather than a guess.
IncludeInputs = t.Annotated[bool, Strict(), Field(description="answer the preprocessed halves as base64 PNG")]


# --------------------------------------------------------------------------- the public service


@bentoml.asgi_app(extra_app, path="/")
@bentoml.service(name="digit_compare", workers=1, traffic={"timeout": REQUEST_TIMEOUT_S})
class DigitCompare:
    """Is the left handwritten digit greater than the right one? An ensemble of Siamese CNNs stacked by LightGBM."""

    scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        self._decode_limiter: anyio.CapacityLimiter | None = None
        self._parse_limiter: anyio.CapacityLimiter | None = None
        self._single_pairs = PairCoalescer(self._score, max_group=MAX_BATCH_SIZE,
                                           max_in_flight=SINGLE_PAIR_CALLS_IN_FLIGHT,
                                           max_wait_s=MAX_LATENCY_MS / 1000, max_waiting=MAX_WAITING_PAIRS)

    # ----------------------------------------------------------------- calling the scorer

    async def _call_scorer(self, method: str, *args: t.Any) -> t.Any:
        """``self.scorer.to_async.<method>(*args)``, retried on connection-level failures (see NEVER_RECYCLE).
        Raises ScorerUnavailable when the scorer sheds the call or stays unreachable."""
        for attempt in range(1, SCORER_ATTEMPTS + 1):
            try:
                return await getattr(self.scorer.to_async, method)(*args)
            except ServiceUnavailable as err:  # the dispatcher shed it: estimated latency > max_latency_ms
                raise ScorerUnavailable("the service is overloaded; retry shortly") from err
            except (aiohttp.ClientConnectionError, RuntimeError) as err:
                if isinstance(err, RuntimeError) and "Session is closed" not in str(err):
                    raise  # upstream #5540's symptom is retried; any other RuntimeError is a bug
                if attempt == SCORER_ATTEMPTS:
                    raise ScorerUnavailable("the model service is not reachable; retry shortly") from err
                logger.warning("scorer call %s failed at the connection level (%s: %s); retrying",
                               method, type(err).__name__, err)
                await asyncio.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    async def _score(self, pairs: np.ndarray) -> np.ndarray:
        return np.asarray(await self._call_scorer("score", pairs), dtype=np.float64)

    async def _score_one(self, pair: np.ndarray, started: float, include_inputs: bool) -> Comparison | Response:
        """One pair through the scorer's adaptive batching; ``started``: the request's perf_counter()."""
        try:
            row = await self._single_pairs.score(pair)
        except (ScorerUnavailable, Overloaded) as err:
            return _unavailable(err)
        # Asked for by the web page only: two small PNGs, but no reason to put them in every answer.
        inputs = None
        if include_inputs:
            left, right = split_pair(pair)
            inputs = PreparedInputs(left=png_base64(left), right=png_base64(right))
        return Comparison(
            greater=bool(row[_LABEL] == 1),
            probability=float(row[_PROB]),
            digits=Digits(left=int(row[_LEFT]), right=int(row[_RIGHT])),
            models={name: float(p) for name, p in zip(MODEL_NAMES, row[_BASE:], strict=True)},
            batch_size=int(row[_BATCH]),
            digit_probabilities=DigitProbabilities(left=row[_LEFT_P:_RIGHT_P].tolist(),
                                                   right=row[_RIGHT_P:_BASE].tolist()),
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
            inputs=inputs,
        )

    async def _score_chunk(self, chunk: np.ndarray) -> np.ndarray:
        for attempt in range(1, CHUNK_ATTEMPTS + 1):
            try:
                return await self._score(chunk)
            except ScorerUnavailable:
                if attempt == CHUNK_ATTEMPTS:
                    raise
                await asyncio.sleep(0.5 * attempt)  # shed under a burst: the rest of the batch is worth a wait
        raise AssertionError("unreachable")

    async def _score_many(self, x: np.ndarray) -> np.ndarray:
        """All pairs in chunks of MAX_BATCH_SIZE through the scorer's queue, BATCH_IN_FLIGHT at a time."""
        pending: collections.deque[asyncio.Task[np.ndarray]] = collections.deque()
        parts: list[np.ndarray] = []
        try:
            for start in range(0, len(x), MAX_BATCH_SIZE):
                pending.append(asyncio.ensure_future(self._score_chunk(x[start:start + MAX_BATCH_SIZE])))
                if len(pending) >= BATCH_IN_FLIGHT:
                    parts.append(await pending.popleft())
            while pending:
                parts.append(await pending.popleft())
        finally:
            for task in pending:  # a failed chunk: do not leave the others running for nobody
                task.cancel()
        return np.concatenate(parts)

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
        try:
            return prepare_pair(image)
        except BlankImageError as err:
            raise BlankImageError(f"image: {err}") from err

    @bentoml.api
    async def compare(self, left: Path, right: Path, include_inputs: IncludeInputs = False) -> Comparison:
        """Two pictures of single digits (multipart files `left` and `right`): is left > right?"""
        started = time.perf_counter()
        try:
            pair = join_pair(await self._in_thread(self._digit, left, "left"),
                             await self._in_thread(self._digit, right, "right"))
        except InvalidImageError as err:
            return client_error(err)
        return await self._score_one(pair, started, include_inputs)

    @bentoml.api
    async def compare_pair(self, image: Path, include_inputs: IncludeInputs = False) -> Comparison:
        """One course-style 28x56 pair picture (multipart file `image`; other sizes are resized)."""
        started = time.perf_counter()
        try:
            pair = await self._in_thread(self._pair, image)
        except InvalidImageError as err:
            return client_error(err)
        return await self._score_one(pair, started, include_inputs)

    # ----------------------------------------------------------------- batch endpoint (a Starlette route)

    async def _read_batch(self, request: Request) -> BatchRequest:
        """The JSON body or the multipart .npz upload -> BatchRequest (ClientError when unusable)."""
        if self._parse_limiter is None:
            self._parse_limiter = anyio.CapacityLimiter(LARGE_PARSES)
        declared = request.headers.get("content-length", "")
        large = not declared.isdigit() or int(declared) > LARGE_BODY_BYTES
        async with self._parse_limiter if large else contextlib.nullcontext():
            if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
                # One buffer, filled as the (already size-checked, spooled) body streams in, handed over to
                # the parsing thread: nothing here keeps it once the parse is done.
                body = bytearray()
                async for chunk in request.stream():
                    body += chunk
                holder = [body]
                del body
                result = await anyio.to_thread.run_sync(_parse_json_body, holder)
            else:  # multipart: FrontDoor checked the fields (one file 'file', an optional text 'format')
                form = await request.form(max_files=1, max_fields=2)
                try:
                    fmt = parse_format(form.get("format", "json"))
                    result = await anyio.to_thread.run_sync(_read_npz_upload, form["file"].file, fmt)  # type: ignore[union-attr]
                finally:
                    await form.close()
        if isinstance(result, ClientError):
            raise result
        return result

    async def compare_batch(self, request: Request) -> Response:
        """Many pairs at once: JSON `pairs` or an uploaded course `.npz` -> probabilities and labels."""
        try:
            batch = await self._read_batch(request)
        except ClientError as err:
            return client_error(err)
        data = batch.data
        try:
            scores = await self._score_many(data.x)
        except ScorerUnavailable as err:
            return _unavailable(err)
        labels = scores[:, _LABEL].astype(np.int64)
        if batch.format == "csv":
            return Response(format_submission_csv(data.ids_or_row_numbers(), labels), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="submission.csv"'})
        return JSONResponse(BatchResult(
            n=len(labels),
            probabilities=scores[:, _PROB].tolist(),
            labels=labels.tolist(),
            digits=scores[:, _LEFT:_RIGHT + 1].astype(np.int64).tolist(),
            ids=None if data.ids is None else data.ids.tolist(),
            accuracy=None if data.y is None else float((labels == data.y).mean()),
        ).model_dump())

    # ----------------------------------------------------------------- info

    async def describe(self) -> dict[str, t.Any]:
        scorer = await self._call_scorer("describe")
        return {
            **scorer,  # models, manifest version, artifact hashes, training data, metrics, provider
            "device_setting": os.environ.get(DEVICE_ENV, "auto"),
            "batching": {"max_batch_size": MAX_BATCH_SIZE, "max_latency_ms": MAX_LATENCY_MS,
                         "batch_endpoint_chunk": MAX_BATCH_SIZE, "batch_endpoint_chunks_in_flight": BATCH_IN_FLIGHT,
                         "single_pair_calls_in_flight": SINGLE_PAIR_CALLS_IN_FLIGHT,
                         "max_waiting_single_pairs": MAX_WAITING_PAIRS, "scorer_threads": SCORER_THREADS},
            "limits": {"max_pairs_per_request": MAX_PAIRS, "max_request_bytes": MAX_REQUEST_BYTES,
                       "max_image_pixels": MAX_IMAGE_PIXELS, "max_image_bytes": MAX_IMAGE_BYTES,
                       "body_idle_timeout_s": BODY_IDLE_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S,
                       "request_timeout_s": REQUEST_TIMEOUT_S},
            "bentoml_version": bentoml.__version__,
        }

    @bentoml.api(route="/info")
    async def info(self) -> dict[str, t.Any]:
        """Models, manifest (version, hashes, training data, metrics), execution provider, batching, limits."""
        return await self.describe()


def _parse_json_body(holder: list[bytearray]) -> BatchRequest | ClientError:
    """In a worker thread: parse the body it is handed (and drops). A refusal comes back as a fresh
    exception without a traceback: one with it would keep the parser's frames, and with them the body
    and its text (120 MB for a 60 MiB body), alive for as long as anything holds the error."""
    try:
        text = decode_json_body(holder.pop())  # the bytes are freed here: the text is all the parse needs
        return parse_batch_text(text)
    except ClientError as err:
        return ClientError(str(err), err.status, err.detail)


def _read_npz_upload(fp: t.BinaryIO, fmt: str) -> BatchRequest | ClientError:
    """In a worker thread, like _parse_json_body."""
    try:
        return BatchRequest(read_npz_upload(fp), fmt)
    except ClientError as err:
        return ClientError(str(err), err.status, err.detail)


def _unavailable(err: Exception) -> Response:
    logger.warning("answered 503: %s", err)
    return error_response(str(err), 503, headers={"Retry-After": "1"})


# --------------------------------------------------------------------------- the front door

_MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and a format field around the files
#: The routes' own rules: they loosen (image and batch bodies) or tighten (methods, content types) FrontDoor's
#: DEFAULT_RULE, which every other path gets (at most 64 KiB of JSON, form or no body; the app answers 404).
ROUTE_RULES: dict[str, RouteRule] = {
    "/compare": RouteRule(("POST",), ("multipart/form-data",), file_fields=("left", "right"),
                          text_fields=("include_inputs",), max_bytes=2 * MAX_IMAGE_BYTES + _MULTIPART_SLACK),
    "/compare_pair": RouteRule(("POST",), ("multipart/form-data",), file_fields=("image",),
                               text_fields=("include_inputs",), max_bytes=MAX_IMAGE_BYTES + _MULTIPART_SLACK),
    "/compare_batch": RouteRule(("POST",), ("application/json", "multipart/form-data"), file_fields=("file",),
                                text_fields=("format",), max_bytes=MAX_REQUEST_BYTES),
    "/info": RouteRule(("GET", "POST"), ("application/json", ""), max_bytes=_MULTIPART_SLACK),
    **{path: RouteRule(("GET",)) for path in ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/",
                                              *UI_PATHS)},
}


def _openapi() -> dict:
    return build_openapi(version=str(MANIFEST.get("created") or MANIFEST["format_version"]), max_pairs=MAX_PAIRS,
                         max_request_bytes=MAX_REQUEST_BYTES, max_image_bytes=MAX_IMAGE_BYTES,
                         max_image_pixels=MAX_IMAGE_PIXELS, id_max_chars=MAX_ID_CHARS)


DigitCompare.add_asgi_middleware(FrontDoor, rules=ROUTE_RULES, openapi=_openapi,
                                 body_idle_timeout=BODY_IDLE_TIMEOUT_S, body_timeout=BODY_TIMEOUT_S)


class _OneLineClientErrors(logging.Filter):
    """BentoML logs a full traceback for every exception an API raises, 4xx included (``log_exception``).
    A client's mistake is not the server's: log those as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        client = isinstance(error, ValidationError) or (
            isinstance(error, BentoMLException) and int(error.error_code) < 500)
        if client:
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {' '.join(str(error).split())}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(_OneLineClientErrors())
