"""What ``service.py`` stands on: start-up checks, the models behind each route, and the one call that installs
the front door, the OpenAPI document and BentoML's fixes.

- ``start``: the settings and the verified models, read once; any problem stops ``bentoml serve`` with its message
  (a worker failing its start would be restarted by BentoML every few seconds, forever);
- ``ScorerModels``: the ``Scorer`` service's side (one inference at a time, draining on SIGTERM);
- ``Answers``: the public service's side, in either layout: decoding uploads, scoring, the answers, the 503s;
- ``pages``: the mounted app (the web page, ``GET /info``);
- ``install``: each API's body read once and checked (``serving.api.read_once``), the front door with the rules
  the signatures imply, ``/docs.json``, ``/metrics`` bounded, client errors logged as one line, request timers
  released (``serving.metrics``, ``serving.errors``, ``serving.traffic``).
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ensemble.course_data import CourseData, format_submission_csv
from ensemble.manifest import ManifestError, verify_serving_artifacts
from ensemble.preprocess import InvalidImageError
from ensemble.reference import read_reference
from ensemble.student import load_model, served_names, verify_student
from serving import settings as settings_module
from serving.answers import BatchResult, Comparison
from serving.api import read_once, route_rules
from serving.errors import log_client_errors_as_one_line
from serving.guard import FrontDoor
from serving.inputs import INLINE_DECODE_BYTES, ClientError, decode_inline, json_batch, read_npz_upload
from serving.memory import trace_if_asked
from serving.metrics import bound_path_labels
from serving.model_metrics import ModelMetrics, RefusalCounter, note_refusal, refusal_reason
from serving.openapi import openapi_document
from serving.scoring import (
    NEVER_RECYCLE,
    SCORE_COLUMNS,
    UNAVAILABLE,
    LocalScorer,
    ScorerClient,
    base_columns,
    batch_columns,
    comparison,
    row_statistics,
    score_rows,
    unavailable,
)
from serving.settings import Settings
from serving.shutdown import DrainBeforeExit
from serving.traffic import release_request_timers
from serving.webui import OPENAPI as PAGE_OPERATIONS
from serving.webui import UIError
from serving.webui import routes as page_routes

logger = logging.getLogger("bentoml.digit_compare")
ROOT = Path(__file__).resolve().parent.parent
#: BentoML's own GET routes, kept on the public port.
BENTOML_GET_PATHS = ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/", "/schema.json")


@dataclass(frozen=True)
class Served:
    """What this service serves, checked at start."""

    settings: Settings
    models_dir: Path
    manifest: dict
    model_names: tuple[str, ...]  # what each answer's "models" lists
    reference: dict | None = None  # the served model's reference statistics (ensemble.reference), when recorded

    @property
    def scorer_config(self) -> dict[str, t.Any]:
        return {"workers": 1, "traffic": {"timeout": settings_module.SCORER_TIMEOUT_S},
                "runner_connection": NEVER_RECYCLE, "logging": {"access": {"enabled": self.settings.access_log}}}

    @property
    def api_config(self) -> dict[str, t.Any]:
        return {"workers": self.settings.workers, "traffic": {"timeout": settings_module.REQUEST_TIMEOUT_S},
                "logging": {"access": {"enabled": self.settings.access_log}}}

    def load_model(self) -> t.Any:
        """The model this process serves (verifies the hashes, picks the execution provider)."""
        s = self.settings
        model = load_model(self.models_dir, s.model, s.device, s.precision, threads=s.scorer_threads,
                           spinning=s.ort_spinning)
        logger.info("loaded %d models from %s on %s, %s graph: %s", len(model.names), self.models_dir, model.provider,
                    model.precision, model.precision_choice.reason)
        return model

    def describe(self, model: t.Any) -> dict[str, t.Any]:
        """Models, manifest version and hashes, training data, metrics, provider, priors, score row columns."""
        return {"model": self.settings.model, **model.info(),
                "score_columns": [*SCORE_COLUMNS, *base_columns(model.names)]}


def start() -> Served:
    """The settings and the verified models; SystemExit with the reason when either is refused."""
    try:
        settings = settings_module.load()
    except ValueError as err:
        raise SystemExit(f"digit_compare: {err}") from None
    models_dir = settings.models or ROOT / "models"
    try:
        manifest = verify_serving_artifacts(models_dir)
        if settings.model == "student":
            verify_student(models_dir, manifest)
        reference = read_reference(manifest, settings.model, models_dir / "manifest.json")
    except ManifestError as err:
        raise SystemExit(f"digit_compare: refusing to serve the models in {models_dir}: {err}") from None
    return Served(settings, models_dir, manifest, served_names(manifest, settings.model), reference)


class ScorerModels:
    """The Scorer service's models: one inference at a time (no reliance on onnxruntime's thread safety); on
    SIGTERM, scoring goes on until the API workers have finished their requests (serving/shutdown.py)."""

    def __init__(self, served: Served) -> None:
        trace_if_asked(served.settings.tracemalloc, served.settings.tracemalloc_every_s)
        self.served, self.model = served, served.load_model()
        self._lock = threading.Lock()
        self._drain = DrainBeforeExit(limit_s=settings_module.SCORER_DRAIN_LIMIT_S)
        self._drain.install()

    def score(self, pairs: np.ndarray) -> np.ndarray:
        with self._drain.working(), self._lock:
            return score_rows(self.model.predict(pairs), len(pairs))

    def describe(self) -> dict[str, t.Any]:
        return self.served.describe(self.model)


class Answers:
    """The public service's side: the models (in this worker, or the Scorer service's client), the answers."""

    def __init__(self, served: Served, scorer: t.Any = None) -> None:
        s = served.settings
        logger.info("settings: %s", s)  # what this worker serves with, in its start-up log
        trace_if_asked(s.tracemalloc, s.tracemalloc_every_s)
        self.served, wait_s = served, s.max_latency_ms / 1000
        waiting = settings_module.MAX_WAITING_BATCHES * s.max_batch_size
        if scorer is not None:
            self.models: ScorerClient | LocalScorer = ScorerClient(
                scorer, chunk=s.max_batch_size, chunks_in_flight=settings_module.BATCH_IN_FLIGHT,
                single_calls_in_flight=settings_module.SINGLE_PAIR_CALLS_IN_FLIGHT, max_wait_s=wait_s,
                max_waiting=waiting)
        else:
            model = served.load_model()
            self.models = LocalScorer(model, chunk=s.max_batch_size, max_group=s.max_batch_size, max_wait_s=wait_s,
                                      max_waiting=waiting, info=served.describe(model))
        self._decode_limiter = anyio.CapacityLimiter(settings_module.DECODE_CONCURRENCY)
        # What the service sees, on /metrics (serving/model_metrics.py); off only to measure what it costs.
        self.metrics = ModelMetrics(served.model_names, served.reference) if s.model_metrics else None

    async def compare(self, route: str, prepare: t.Callable[..., np.ndarray], uploads: tuple[bytes, ...],
                      prior: str, include_inputs: bool) -> Comparison | Response:
        """Decode the uploads into a pair (``prepare(*uploads)``), score it, answer ``route``'s request under
        ``prior``."""
        started = time.perf_counter()
        try:
            if sum(map(len, uploads)) <= INLINE_DECODE_BYTES and all(map(decode_inline, uploads)):  # small: no hop
                pair = prepare(*uploads)
            else:  # a large photo never stalls the other requests
                pair = await anyio.to_thread.run_sync(prepare, *uploads, limiter=self._decode_limiter)
            row = await self.models.score_one(pair)
        except InvalidImageError as err:
            note_refusal(refusal_reason(err))
            raise ClientError.of_image(err) from None
        except UNAVAILABLE as err:
            return unavailable(err)
        if self.metrics is not None:
            self.metrics.record(route, prior, row_statistics(row, prior, len(self.served.model_names)))
        return comparison(row, prior, self.served.model_names, started, pair if include_inputs else None)

    async def read_batch(self, file: Path | None, pairs: t.Any, ids: list[str] | None) -> CourseData:
        """An uploaded course .npz, or JSON pairs (at most JSON_MAX_PAIRS), in a thread: ClientError if unusable."""
        if (file is None) == (pairs is None):
            raise ClientError("send either JSON {\"pairs\": [...]} or a multipart .npz upload as field 'file'")
        if file is not None:
            if ids is not None:
                raise ClientError("ids: an .npz upload carries its ids as its key 'id'")
            read, args = _read_npz_file, (file, self.served.settings.max_pairs)
        else:
            read, args = json_batch, (pairs, ids, min(settings_module.JSON_MAX_PAIRS, self.served.settings.max_pairs))
        try:
            return await anyio.to_thread.run_sync(read, *args)
        except ClientError as err:
            note_refusal("too_large" if err.status == 413 else "invalid_pairs")
            raise

    async def compare_batch(self, data: CourseData, prior: str, answer_format: str) -> Response:
        """Every pair's probability, label and digits under ``prior``, as JSON or the course's submission CSV."""
        try:
            rows = await self.models.score_many(data.x)
        except UNAVAILABLE as err:
            return unavailable(err)
        if self.metrics is not None:  # in a thread: a 10,000-pair batch is 40,000 observations
            stats = row_statistics(rows, prior, len(self.served.model_names))
            await anyio.to_thread.run_sync(self.metrics.record_batch, prior, stats)
        probabilities, labels, digits = batch_columns(rows, prior)
        if answer_format == "csv":  # the course's submission format has no room for the prior: a header names it
            return Response(format_submission_csv(data.ids_or_row_numbers(), labels), media_type="text/csv",
                            headers={"Content-Disposition": 'attachment; filename="submission.csv"', "X-Prior": prior})
        return JSONResponse(BatchResult(
            n=len(labels), prior=prior, probabilities=probabilities.tolist(), labels=labels.tolist(),
            digits=digits.tolist(), ids=None if data.ids is None else data.ids.tolist(),
            accuracy=None if data.y is None else float((labels == data.y).mean())).model_dump())

    async def info(self, defaults: dict[str, str]) -> dict[str, t.Any]:
        models = await self.models.describe()  # models, manifest, artifact hashes, data, metrics, provider
        return {**models, "priors": {**models["priors"], "defaults": defaults},
                **settings_module.describe(self.served.settings), "bentoml_version": bentoml.__version__}


def _read_npz_file(path: Path, max_pairs: int) -> CourseData:
    with path.open("rb") as fp:
        return read_npz_upload(fp, max_pairs)


def default_priors(service: t.Any) -> dict[str, str]:
    """Each route's prior when the request names none: the default in its signature."""
    return {api.route: api.input_spec.model_fields["prior"].default for api in service.apis.values()
            if "prior" in api.input_spec.model_fields}


async def _get_info(request: Request) -> Response:
    return JSONResponse(await bentoml.get_current_service().info())


def pages() -> Starlette:
    """The mounted app: the web page's files (read once: a Bento built without them fails at start, like one
    without its models) and ``GET /info``, the same answer as the API's ``POST /info``."""
    try:
        routes = page_routes(ROOT / "ui", ROOT / "samples")
    except UIError as err:
        raise SystemExit(f"digit_compare: {err}") from None
    return Starlette(routes=[Route("/info", _get_info, methods=["GET"]), *routes])


INFO_OPERATION = {"summary": "models, manifest, provider, priors, batching and limits", "responses": {"200": {
    "description": "models, manifest, provider, batching and limits", "content": {"application/json": {"schema": {
        "type": "object", "required": ["models", "provider", "precision", "precision_reason", "cpu",
                                       "format_version", "artifacts", "batching", "limits", "priors"],
        "properties": {"models": {"type": "array", "items": {"type": "string"}},
                       "priors": {"type": "object", "description": "the priors a request may choose (field 'prior'), "
                                  "each route's default, and the digit frequencies the uniform prior divides out"},
                       "provider": {"type": "string"},
                       "precision": {"type": "string", "enum": ["fp32", "int8"], "description": "the graph that runs"},
                       "precision_reason": {"type": "string", "description": "why: the setting, or the CPU's flags"},
                       "cpu": {"type": "object", "description": "the CPU's model name and the flags the choices "
                               "depend on (avx2, avx512f, avx512_bf16, amx_bf16, avx512_vnni, avx_vnni, amx_int8)"},
                       "format_version": {"type": "integer"},
                       "artifacts": {"type": "object"}, "batching": {"type": "object"},
                       "limits": {"type": "object"}}}}}}}}


def install(service: t.Any, scorer: t.Any, served: Served) -> None:
    """Everything ``service`` needs around its APIs (see the module docstring). Called once, when service.py is
    imported (in ``bentoml serve`` and in every worker)."""
    for api in service.apis.values():  # BentoML built each spec from its signature; read_once subclasses it
        api.input_spec = read_once(api.input_spec)
    get_paths = [*BENTOML_GET_PATHS, "/info", *PAGE_OPERATIONS]
    rules = route_rules(service.apis.values(), get_paths, served.settings)
    json_pairs = min(settings_module.JSON_MAX_PAIRS, served.settings.max_pairs)
    version = str(served.manifest.get("created") or served.manifest["format_version"])

    def document() -> dict:
        return openapi_document(service.openapi_spec.asdict(), rules, {**PAGE_OPERATIONS, "/info": INFO_OPERATION},
                                version=version, json_pairs=json_pairs, samples_dir=ROOT / "samples")

    # The routes that answer with the models: their refused requests are counted by reason (serving/model_metrics).
    answering = RefusalCounter(default_priors(service)) if served.settings.model_metrics else None
    service.add_asgi_middleware(FrontDoor, rules=rules, openapi=document,
                                body_idle_timeout=served.settings.body_idle_timeout_s,
                                body_timeout=served.settings.body_timeout_s, refusals=answering)
    # /metrics labels requests by path: any path outside these shares one label (serving/metrics.py).
    bound_path_labels({*rules, *(api.route for api in scorer.apis.values())})
    log_client_errors_as_one_line()
    release_request_timers()  # each request's timeout timer let go when its answer starts (serving/traffic.py)
