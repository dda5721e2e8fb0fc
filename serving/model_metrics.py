"""What the service sees, on ``/metrics``: its answers, the inputs it refuses, and the reference to compare with.

BentoML's own metrics count requests and their latency per route and status; these describe the answers
(docs/monitoring.md says what each means and what normal looks like):

- ``digit_compare_answers_total{route, prior}``: pairs answered (a ``compare_batch`` request answers many);
- ``digit_compare_confidence{route, prior}``: histogram of each answer's ``max(p, 1 - p)``;
- ``digit_compare_top_digit_probability{route, half}``: histogram of each half's top digit posterior;
- ``digit_compare_disagreement{route, prior}``: histogram of the share of the base models voting against the
  answer's label; ``digit_compare_model_dissent_total{prior, model}``: answers each model voted against;
- ``digit_compare_refused_total{route, reason}``: requests to the answering routes refused, by ``REASONS``;
- ``digit_compare_batch_pairs``: histogram of the pairs per ``compare_batch`` request;
- ``digit_compare_reference_*``: gauges of the same statistics on the course's validation pairs, from the manifest
  (``ensemble.reference``), which the alert rules (deploy/monitoring/) compare live traffic with.

Bounded by construction: every label value comes from this code (the routes, ``PRIORS``, the manifest's model names,
``REASONS``, the halves), never from a request. The API worker records them, in both layouts: it alone knows the
route and the prior, and the score rows it gets from the Scorer carry every number (the Scorer records none, so
``/metrics``, which BentoML gathers from every process of the server, shows each answer once).

``prometheus_client`` directly, as BentoML 1.4.40 says (``bentoml/metrics.py``: ``bentoml.metrics`` is deprecated,
and prometheus_client must be imported once ``PROMETHEUS_MULTIPROC_DIR`` is set): the instruments are made on first
use, inside the worker. Refusals are counted once per request by the front door (``serving.guard``), which knows the
final status; the code that refuses says why with ``note_refusal``.
"""

from __future__ import annotations

import contextvars
import functools
import typing as t

import numpy as np

from ensemble.preprocess import BlankImageError, EmptyUploadError, ImageTooLargeError, InvalidImageError
from ensemble.priors import PRIORS
from ensemble.reference import HALVES, AnswerStatistics

NAMESPACE = "digit_compare"
CONFIDENCE_BUCKETS = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 0.999)
TOP_DIGIT_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
#: With ten models the share is a multiple of 0.1 (exactly: k / 10 lands on these bounds).
DISAGREEMENT_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BATCH_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
#: Why an input was refused: the picture (empty, not a picture, too large, blank), a batch's pairs, or the request
#: around them (its body's shape or fields, its content type, its method, a stalled upload).
REASONS = ("empty", "not_a_picture", "too_large", "blank", "invalid_pairs", "invalid_request", "content_type",
           "method", "timeout")
_BY_STATUS = {413: "too_large", 415: "content_type", 405: "method", 408: "timeout"}


def refusal_reason(err: InvalidImageError) -> str:
    """The reason a picture was refused, from its error's class."""
    if isinstance(err, BlankImageError):
        return "blank"
    if isinstance(err, ImageTooLargeError):
        return "too_large"
    if isinstance(err, EmptyUploadError):
        return "empty"
    return "not_a_picture"


class Instruments:
    """The metric objects of this process (prometheus_client's, imported here: see the module docstring)."""

    def __init__(self, registry: t.Any = None) -> None:
        import prometheus_client as prom

        kw = {"namespace": NAMESPACE, **({"registry": registry} if registry is not None else {})}
        self.answers = prom.Counter("answers", "pairs answered", ["route", "prior"], **kw)
        self.confidence = prom.Histogram("confidence", "each answer's max(p, 1 - p)", ["route", "prior"],
                                         buckets=CONFIDENCE_BUCKETS, **kw)
        self.top_digit = prom.Histogram("top_digit_probability", "each half's top digit posterior (the models' "
                                        "digit heads averaged)", ["route", "half"], buckets=TOP_DIGIT_BUCKETS, **kw)
        self.disagreement = prom.Histogram("disagreement", "share of the base models voting against the answer's "
                                           "label", ["route", "prior"], buckets=DISAGREEMENT_BUCKETS, **kw)
        self.dissent = prom.Counter("model_dissent", "answers a base model voted against", ["prior", "model"], **kw)
        self.refused = prom.Counter("refused", "requests to the answering routes refused, by reason",
                                    ["route", "reason"], **kw)
        self.batch_pairs = prom.Histogram("batch_pairs", "pairs per compare_batch request", buckets=BATCH_BUCKETS,
                                          **kw)
        # The same value in every worker: one series each, whatever the number of processes.
        gauge = functools.partial(prom.Gauge, multiprocess_mode="max", **kw)
        self.reference_confidence = gauge("reference_confidence_mean", "mean confidence on the course's "
                                          "validation pairs (manifest)", ["prior"])
        self.reference_disagreement = gauge("reference_disagreement_mean", "mean disagreement on the course's "
                                            "validation pairs (manifest)", ["prior"])
        self.reference_top_digit = gauge("reference_top_digit_probability_mean", "mean top digit posterior on the "
                                         "course's validation pairs (manifest)", ["half"])


@functools.cache
def process_instruments() -> Instruments:
    """This process's instruments, in prometheus_client's default registry (made once)."""
    return Instruments()


class ModelMetrics:
    """Records the answers of one API worker. ``reference``: the served model's reference statistics
    (``ensemble.reference.read_reference``), exported as gauges; None: none."""

    def __init__(self, model_names: t.Sequence[str], reference: dict | None,
                 instruments: Instruments | None = None) -> None:
        self.names = tuple(model_names)
        self.instruments = instruments or process_instruments()
        self._children: dict[tuple[str, str], tuple] = {}
        if reference is not None:
            self.set_reference(reference)

    def set_reference(self, reference: dict) -> None:
        i = self.instruments
        for prior in PRIORS:
            i.reference_confidence.labels(prior=prior).set(reference["priors"][prior]["confidence"]["mean"])
            i.reference_disagreement.labels(prior=prior).set(reference["priors"][prior]["disagreement"]["mean"])
        for half in HALVES:
            i.reference_top_digit.labels(half=half).set(reference["top_digit_probability"][half]["mean"])

    def _series(self, route: str, prior: str) -> tuple:
        """The labelled series one answer of ``route`` under ``prior`` touches, looked up once (prometheus_client's
        ``labels`` takes a lock and sorts; an answer touches ten series or more)."""
        found = self._children.get((route, prior))
        if found is None:
            i = self.instruments
            found = (i.answers.labels(route=route, prior=prior), i.confidence.labels(route=route, prior=prior),
                     *(i.top_digit.labels(route=route, half=half) for half in HALVES),
                     i.disagreement.labels(route=route, prior=prior),
                     tuple(i.dissent.labels(prior=prior, model=name) for name in self.names))
            self._children[(route, prior)] = found
        return found

    def record(self, route: str, prior: str, stats: AnswerStatistics) -> None:
        """One or many answers of ``route`` under ``prior``."""
        answers, confidence, left, right, disagreement, dissent = self._series(route, prior)
        answers.inc(len(stats.confidence))
        for value in stats.confidence.tolist():
            confidence.observe(value)
        for left_value, right_value in stats.top_digit.tolist():
            left.observe(left_value)
            right.observe(right_value)
        for value in stats.disagreement.tolist():
            disagreement.observe(value)
        for series, count in zip(dissent, np.count_nonzero(stats.against, axis=0).tolist(), strict=True):
            if count:
                series.inc(count)

    def record_batch(self, prior: str, stats: AnswerStatistics) -> None:
        """A compare_batch request's answers, and its size."""
        self.record("/compare_batch", prior, stats)
        self.instruments.batch_pairs.observe(len(stats.confidence))


# --------------------------------------------------------------------------- refusals, counted once per request

_REFUSAL: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("digit_compare_refusal", default=None)


def note_refusal(reason: str) -> None:
    """Say why the request being answered is refused (the front door counts it when the answer goes out).
    Outside a watched request (a test calling the code directly), nothing happens."""
    holder = _REFUSAL.get()
    if holder is not None:
        holder.append(reason)


class RefusalWatch:
    """One request to an answering route, watched by the front door: counts it as refused, once, when its answer
    is a 4xx (with the reason the refusing code noted, else the status's)."""

    def __init__(self, route: str, count: t.Callable[[str, str], None]) -> None:
        self.route, self._count = route, count
        self.status: int | None = None
        self.reasons: list[str] = []
        self._token = _REFUSAL.set(self.reasons)  # tasks and threads started inside copy the context: same list

    def send(self, send: t.Callable[[t.Any], t.Awaitable[None]]) -> t.Callable[[t.Any], t.Awaitable[None]]:
        async def watched(message: t.Any) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            await send(message)

        return watched

    def finish(self) -> None:
        _REFUSAL.reset(self._token)
        if self.status is not None and 400 <= self.status < 500:
            self._count(self.route, self.reasons[0] if self.reasons else _BY_STATUS.get(self.status,
                                                                                       "invalid_request"))


class RefusalCounter:
    """What the front door is given: the answering routes, and where their refusals are counted."""

    def __init__(self, routes: t.Iterable[str], instruments: t.Callable[[], Instruments] = process_instruments):
        self.routes = frozenset(routes)
        self._instruments = instruments

    def watch(self, path: str) -> RefusalWatch | None:
        return RefusalWatch(path, self._count) if path in self.routes else None

    def _count(self, route: str, reason: str) -> None:
        self._instruments().refused.labels(route=route, reason=reason).inc()
