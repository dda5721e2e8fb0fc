"""BentoML service: is the left handwritten digit greater than the right one?

- ``POST /compare`` (multipart files ``left``, ``right``): two pictures of single digits, any format, size and
  polarity, each made MNIST-like by ``ensemble.preprocess.prepare_digit``. Prior: ``uniform`` by default.
- ``POST /compare_pair`` (multipart file ``image``): one course-style 28x56 pair (other sizes are resized).
  Prior: ``course`` by default.
- ``POST /compare_batch``: JSON ``{"pairs": [...], "ids"?, "format"?, "prior"?}`` or a course ``.npz`` upload
  (field ``file``, text fields ``format``, ``prior``): probabilities, labels and digits, or the submission CSV.
  Prior: ``course`` by default.
- ``GET /info``, ``GET /ui`` (the web page, ``serving/webui.py``), ``/docs.json`` (the OpenAPI description,
  ``serving/openapi.py``), and BentoML's ``/healthz``, ``/livez``, ``/readyz``, ``/metrics``.

Two layouts (``DIGIT_COMPARE_LAYOUT``, ``serving.settings``): ``in_process`` (the default without a GPU), where
each of the ``DigitCompare`` workers runs the models itself and coalesces concurrent single pairs into one
inference call; and ``scorer`` (the default with a GPU), where ``Scorer`` holds the models behind BentoML's
adaptive batching in one process and the API workers call it (``serving/scoring.py``: retries, chunks of a
batch, single pairs coalesced).

Every answer names its ``prior`` (``ensemble.priors``: ``course``, the stacker fitted on course pairs, or
``uniform``, any two digits a != b). Every client mistake, on every route, is a 4xx in the one shape
``{"error": "...", "detail": ...}`` (``serving/guard.py``). Settings come from ``DIGIT_COMPARE_*`` environment
variables, read at import; a refused model stops ``bentoml serve`` with a message naming the file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t
from pathlib import Path

import anyio
import anyio.to_thread
import bentoml
import numpy as np
from pydantic import AfterValidator, Field, Strict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ensemble.contract import join_pair
from ensemble.course_data import format_submission_csv
from ensemble.manifest import ManifestError, verify_serving_artifacts
from ensemble.preprocess import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    InvalidImageError,
    prepare_digit_bytes,
    prepare_pair_bytes,
)
from ensemble.priors import Prior
from ensemble.runtime import MODELS_ENV, resolve_device
from ensemble.student import ModelChoiceError, load_model, resolve_model, served_names, verify_student
from serving import settings
from serving.errors import log_client_errors_as_one_line
from serving.guard import FrontDoor, RouteRule
from serving.inputs import (
    INLINE_DECODE_BYTES,
    MAX_ID_CHARS,
    MAX_PAIRS,
    MAX_REQUEST_BYTES,
    ClientError,
    client_error,
    decode_inline,
    read_batch,
    validate_score_input,
)
from serving.memory import trace_if_asked
from serving.metrics import bound_path_labels
from serving.openapi import BatchResult, Comparison, build_openapi
from serving.scoring import (
    NEVER_RECYCLE,
    SCORE_COLUMNS,
    UNAVAILABLE,
    LocalScorer,
    ScorerClient,
    base_columns,
    batch_columns,
    comparison,
    score_rows,
    unavailable,
)
from serving.shutdown import DrainBeforeExit
from serving.traffic import release_request_timers
from serving.webui import UI_PATHS, UIError
from serving.webui import routes as ui_routes

logger = logging.getLogger("bentoml.digit_compare")
ROOT = Path(__file__).resolve().parent
MODELS_DIR = Path(os.environ.get(MODELS_ENV) or ROOT / "models")
# Checked here, in the `bentoml serve` process itself: a refused model exits with the message before any worker
# starts (a worker failing its start is restarted by BentoML every few seconds, forever).
try:
    # DIGIT_COMPARE_DEVICE=cuda without a usable GPU: refused here, not by a worker restarted forever.
    resolve_device()
except (RuntimeError, ValueError) as _err:
    raise SystemExit(f"digit_compare: {_err}") from None
try:
    MODEL = resolve_model()  # DIGIT_COMPARE_MODEL: the ensemble (default) or the distilled student
    MANIFEST = verify_serving_artifacts(MODELS_DIR)
    if MODEL == "student":
        verify_student(MODELS_DIR, MANIFEST)
except (ManifestError, ModelChoiceError) as _err:
    raise SystemExit(f"digit_compare: refusing to serve the models in {MODELS_DIR}: {_err}") from None
MODEL_NAMES: tuple[str, ...] = served_names(MANIFEST, MODEL)  # what each answer's "models" lists

IncludeInputs = t.Annotated[bool, Strict(), Field(description="answer the preprocessed halves as base64 PNG")]
PriorField = t.Annotated[Prior, Field(description="the prior over digit pairs: course or uniform (ensemble.priors)")]


def load_served_model() -> t.Any:
    """The model this process serves (verifies the hashes, picks the execution provider)."""
    model = load_model(MODELS_DIR, MODEL, threads=settings.SCORER_THREADS, spinning=settings.ORT_SPINNING)
    logger.info("loaded %d models from %s on %s (layout %s)", len(model.names), MODELS_DIR, model.provider,
                settings.LAYOUT)
    return model


def describe_model(model: t.Any) -> dict[str, t.Any]:
    """Models, manifest version and hashes, training data, metrics, provider, priors, score row columns."""
    return {"model": MODEL, **model.info(), "score_columns": [*SCORE_COLUMNS, *base_columns(model.names)]}


@bentoml.service(name="digit_compare_scorer", workers=1, traffic={"timeout": settings.SCORER_TIMEOUT_S},
                 runner_connection=NEVER_RECYCLE, logging={"access": {"enabled": settings.ACCESS_LOG}})
class Scorer:
    """The models behind BentoML's adaptive batching. Internal: only DigitCompare calls it."""

    def __init__(self) -> None:
        trace_if_asked()  # DIGIT_COMPARE_TRACEMALLOC=DIR: where this worker's memory goes (serving/memory.py)
        self.model = load_served_model()
        self._lock = threading.Lock()  # one inference at a time (no reliance on onnxruntime's thread safety)
        # On SIGTERM, keep scoring until the API workers have finished their requests (serving/shutdown.py).
        self._drain = DrainBeforeExit(limit_s=settings.SCORER_DRAIN_LIMIT_S)
        self._drain.install()

    @bentoml.api(batchable=True, max_batch_size=settings.MAX_BATCH_SIZE, max_latency_ms=settings.MAX_LATENCY_MS)
    def score(self, pairs: t.Annotated[np.ndarray, AfterValidator(validate_score_input)]) -> np.ndarray:
        """(N, 28, 56) uint8 pairs -> one score row per pair (serving.scoring: SCORE_COLUMNS, then each base
        model's probability under each prior)."""
        with self._drain.working(), self._lock:
            return score_rows(self.model.predict(pairs), len(pairs))

    @bentoml.api
    def describe(self) -> dict[str, t.Any]:
        """Models, manifest version and hashes, training data, metrics, provider, priors."""
        return describe_model(self.model)


async def _get_info(request: Request) -> Response:
    return JSONResponse(await bentoml.get_current_service().describe())


async def _compare_batch(request: Request) -> Response:
    return await bentoml.get_current_service().compare_batch(request)


try:  # the page's files, read once: a Bento built without them fails at start, like one without its models
    _UI_ROUTES = ui_routes(ROOT / "ui", ROOT / "samples")
except UIError as _err:
    raise SystemExit(f"digit_compare: {_err}") from None
# compare_batch is a plain route, so its body is parsed off the event loop (BentoML would parse it on the loop).
extra_app = Starlette(routes=[Route("/info", _get_info, methods=["GET"]),
                              Route("/compare_batch", _compare_batch, methods=["POST"]), *_UI_ROUTES])


@bentoml.asgi_app(extra_app, path="/")
@bentoml.service(name="digit_compare", workers=settings.WORKERS, traffic={"timeout": settings.REQUEST_TIMEOUT_S},
                 logging={"access": {"enabled": settings.ACCESS_LOG}})
class DigitCompare:
    """Is the left handwritten digit greater than the right one? Ten Siamese CNNs, read under a prior."""

    # The layout is chosen here, at import, because BentoML builds the service graph from the class's
    # `bentoml.depends` attributes: `bentoml serve` starts one process per dependency it finds (and, in a
    # container, `--depends NAME=URL` points it at a remote one). Without the attribute no Scorer process
    # exists, and each API worker runs the models itself (LocalScorer). Both layouts are BentoML's own
    # mechanisms: a dependency service with adaptive batching, or workers of one service.
    if settings.LAYOUT == "scorer":
        scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        trace_if_asked()
        wait_s = settings.MAX_LATENCY_MS / 1000
        if settings.LAYOUT == "scorer":
            self.models: ScorerClient | LocalScorer = ScorerClient(
                self.scorer, chunk=settings.MAX_BATCH_SIZE, chunks_in_flight=settings.BATCH_IN_FLIGHT,
                single_calls_in_flight=settings.SINGLE_PAIR_CALLS_IN_FLIGHT, max_wait_s=wait_s,
                max_waiting=settings.MAX_WAITING_PAIRS)
        else:
            model = load_served_model()
            self.models = LocalScorer(model, chunk=settings.MAX_BATCH_SIZE, max_group=settings.MAX_BATCH_SIZE,
                                      max_wait_s=wait_s, max_waiting=settings.MAX_WAITING_PAIRS,
                                      info=describe_model(model))
        self._decode_limiter = anyio.CapacityLimiter(settings.DECODE_CONCURRENCY)
        self._parse_limiter = anyio.CapacityLimiter(1)

    async def _answer(self, uploads: tuple[Path, ...], prepare: t.Callable[..., np.ndarray], prior: str,
                      include_inputs: bool) -> Comparison:
        """Decode the uploads into a pair (``prepare(*contents)``), score it, answer under ``prior``."""
        started = time.perf_counter()
        try:
            pair = await self._decode(uploads, prepare)
            row = await self.models.score_one(pair)
        except InvalidImageError as err:
            return client_error(err)
        except UNAVAILABLE as err:
            return unavailable(err)
        return comparison(row, prior, MODEL_NAMES, started, pair if include_inputs else None)

    async def _decode(self, uploads: tuple[Path, ...], prepare: t.Callable[..., np.ndarray]) -> np.ndarray:
        contents = None  # read on the loop only when small; the thread reads large uploads itself
        if sum(path.stat().st_size for path in uploads) <= INLINE_DECODE_BYTES:
            contents = [path.read_bytes() for path in uploads]
            if all(decode_inline(data) for data in contents):  # small pictures: cheaper than a thread hop
                return prepare(*contents)
        return await anyio.to_thread.run_sync(
            lambda: prepare(*(contents or [path.read_bytes() for path in uploads])), limiter=self._decode_limiter)

    @bentoml.api
    async def compare(self, left: Path, right: Path, include_inputs: IncludeInputs = False,
                      prior: PriorField = "uniform") -> Comparison:
        """Two pictures of single digits (multipart files `left` and `right`): is left > right?"""
        return await self._answer((left, right), lambda a, b: join_pair(prepare_digit_bytes(a, "left"),
                                                                        prepare_digit_bytes(b, "right")),
                                  prior, include_inputs)

    @bentoml.api
    async def compare_pair(self, image: Path, include_inputs: IncludeInputs = False,
                           prior: PriorField = "course") -> Comparison:
        """One course-style 28x56 pair picture (multipart file `image`; other sizes are resized)."""
        return await self._answer((image,), lambda data: prepare_pair_bytes(data, "image"), prior, include_inputs)

    async def compare_batch(self, request: Request) -> Response:
        """Many pairs at once: JSON `pairs` or an uploaded course `.npz` -> probabilities and labels."""
        try:
            batch = await read_batch(request, self._parse_limiter, settings.LARGE_BODY_BYTES)
            rows = await self.models.score_many(batch.data.x)
        except ClientError as err:
            return client_error(err)
        except UNAVAILABLE as err:
            return unavailable(err)
        data = batch.data
        probabilities, labels, digits = batch_columns(rows, batch.prior)
        if batch.format == "csv":
            # The course's submission format has no room for the prior: a header names it.
            return Response(format_submission_csv(data.ids_or_row_numbers(), labels), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="submission.csv"',
                                     "X-Prior": batch.prior})
        return JSONResponse(BatchResult(
            n=len(labels), prior=batch.prior, probabilities=probabilities.tolist(), labels=labels.tolist(),
            digits=digits.tolist(), ids=None if data.ids is None else data.ids.tolist(),
            accuracy=None if data.y is None else float((labels == data.y).mean()),
        ).model_dump())

    async def describe(self) -> dict[str, t.Any]:
        models = await self.models.describe()  # models, manifest, artifact hashes, data, metrics, provider
        return {**models, "priors": {**models["priors"], "defaults": settings.DEFAULT_PRIORS},
                **settings.settings_info(), "bentoml_version": bentoml.__version__}

    @bentoml.api(route="/info")
    async def info(self) -> dict[str, t.Any]:
        """Models, manifest (version, hashes, training data, metrics), priors, provider, batching, limits."""
        return await self.describe()


_SLACK = 64 * 1024  # multipart boundaries, part headers and text fields around the files
#: The routes' own rules, loosening or tightening the front door's default (64 KiB of JSON, form or no body).
ROUTE_RULES: dict[str, RouteRule] = {
    "/compare": RouteRule(("POST",), ("multipart/form-data",), file_fields=("left", "right"),
                          text_fields=("include_inputs", "prior"), max_bytes=2 * MAX_IMAGE_BYTES + _SLACK),
    "/compare_pair": RouteRule(("POST",), ("multipart/form-data",), file_fields=("image",),
                               text_fields=("include_inputs", "prior"), max_bytes=MAX_IMAGE_BYTES + _SLACK),
    "/compare_batch": RouteRule(("POST",), ("application/json", "multipart/form-data"), file_fields=("file",),
                                text_fields=("format", "prior"), max_bytes=MAX_REQUEST_BYTES),
    "/info": RouteRule(("GET", "POST"), ("application/json", ""), max_bytes=_SLACK),
    **{path: RouteRule(("GET",)) for path in ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/",
                                              *UI_PATHS)},
}


def _openapi() -> dict:
    return build_openapi(version=str(MANIFEST.get("created") or MANIFEST["format_version"]), max_pairs=MAX_PAIRS,
                         max_request_bytes=MAX_REQUEST_BYTES, max_image_bytes=MAX_IMAGE_BYTES,
                         max_image_pixels=MAX_IMAGE_PIXELS, id_max_chars=MAX_ID_CHARS)


DigitCompare.add_asgi_middleware(FrontDoor, rules=ROUTE_RULES, openapi=_openapi,
                                 body_idle_timeout=settings.BODY_IDLE_TIMEOUT_S, body_timeout=settings.BODY_TIMEOUT_S)
# /metrics labels requests by path: any path outside these shares one label (serving/metrics.py).
bound_path_labels({*ROUTE_RULES, *(api.route for service in (Scorer, DigitCompare) for api in service.apis.values())})
log_client_errors_as_one_line()
release_request_timers()  # each request's timeout timer let go when its answer starts (serving/traffic.py)
