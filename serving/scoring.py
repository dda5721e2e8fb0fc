"""The API worker's side of the models: what a score row holds, where the rows come from (the models in this
process, or the ``Scorer`` service), and turning rows into answers.

A score row holds, per pair, ``SCORE_COLUMNS`` then each base model's probability under each prior (``PRIORS``
order, one block of M columns each). Both priors are in every row (the uniform read-outs cost nothing next to
the models), so single pairs asking for different priors still share one inference call; the answer picks its
prior's columns.

Two backends with one interface (``score_one``, ``score_many``, ``describe``), chosen by the service's layout
(``DIGIT_COMPARE_LAYOUT``, ``serving.settings``):

- ``LocalScorer``: the models in the API worker itself (the CPU layout): no process hop, concurrent single pairs
  coalesced into one inference call, one call at a time per worker.
- ``ScorerClient``: calls the ``Scorer`` service (``bentoml.depends``; the GPU layout), its adaptive batching
  behind it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import typing as t

import aiohttp
import anyio
import anyio.to_thread
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from starlette.responses import JSONResponse

from ensemble.contract import split_pair
from ensemble.priors import PRIORS
from ensemble.reference import AnswerStatistics, answer_statistics
from serving.answers import Comparison, DigitProbabilities, Digits, PreparedInputs
from serving.coalesce import Overloaded, PairCoalescer
from serving.inputs import error_response
from serving.webui import png_base64

if t.TYPE_CHECKING:
    from ensemble.runtime import Ensemble, Prediction
    from ensemble.student import Student

logger = logging.getLogger("bentoml.digit_compare")

#: Columns of a score row, one row per pair: each prior's P(left > right), the digits read, the batch size, then
#: each half's ten digit probabilities (the digit heads averaged), then ``base_columns``: each base model's
#: probability under each prior, in ``Ensemble.names`` order (``/info`` lists them all as ``score_columns``).
SCORE_COLUMNS = (*(f"{prior}_probability" for prior in PRIORS), "left_digit", "right_digit", "batch_size",
                 *(f"{side}_p{d}" for side in ("left", "right") for d in range(10)))
_PROB = {prior: i for i, prior in enumerate(PRIORS)}
_LEFT = len(PRIORS)
_RIGHT, _BATCH = _LEFT + 1, _LEFT + 2
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
# `runner_connection` config, so they are set out of reach there; connection-level failures that can
# still happen (a keep-alive connection closed by the server just as it is reused, a restarting scorer)
# are retried (`ScorerClient.call`), scoring being idempotent.
NEVER_RECYCLE = {"max_requests": 2**62, "max_age": 1e12}
#: Calls to the scorer that fail at the connection level are tried this many times in all.
SCORER_ATTEMPTS = 3
#: A chunk of compare_batch that the scorer sheds (overload) is tried this many times in all.
CHUNK_ATTEMPTS = 3


class ScorerUnavailable(Exception):
    """The scorer shed the call (overload) or could not be reached: a 503 with Retry-After."""


def base_columns(names: t.Sequence[str]) -> list[str]:
    """The names of a score row's last columns: ``PRIOR:MODEL`` for each prior, then each model."""
    return [f"{prior}:{name}" for prior in PRIORS for name in names]


def score_rows(prediction: Prediction, n: int) -> np.ndarray:
    """The score rows of ``n`` pairs: (n, len(SCORE_COLUMNS) + len(PRIORS) * M)."""
    m = prediction.base_probabilities.shape[1]
    rows = np.empty((n, len(SCORE_COLUMNS) + len(PRIORS) * m), dtype=np.float64)
    for prior, column in _PROB.items():
        rows[:, column] = prediction.by_prior[prior]
    rows[:, _LEFT:_RIGHT + 1] = prediction.digits
    rows[:, _BATCH] = n
    rows[:, _LEFT_P:_BASE] = prediction.digit_probs.mean(axis=1).reshape(n, -1)  # (N, M, 2, 10) -> (N, 20)
    for k, prior in enumerate(PRIORS):
        rows[:, _BASE + k * m:_BASE + (k + 1) * m] = prediction.base_by_prior[prior]
    return rows


def comparison(row: np.ndarray, prior: str, model_names: tuple[str, ...], started: float,
               pair: np.ndarray | None = None) -> Comparison:
    """One score row as the image routes' answer; ``pair``: the preprocessed pair, when the request asked
    for its halves (include_inputs); ``started``: the request's perf_counter()."""
    probability = float(row[_PROB[prior]])
    m = len(model_names)
    models = row[_BASE + _PROB[prior] * m:_BASE + (_PROB[prior] + 1) * m]  # each model under the asked prior
    inputs = None
    if pair is not None:  # asked for by the web page only: two small PNGs, no reason to put them in every answer
        left, right = split_pair(pair)
        inputs = PreparedInputs(left=png_base64(left), right=png_base64(right))
    return Comparison(
        greater=probability >= 0.5,
        probability=probability,
        prior=prior,
        digits=Digits(left=int(row[_LEFT]), right=int(row[_RIGHT])),
        models={name: float(p) for name, p in zip(model_names, models, strict=True)},
        batch_size=int(row[_BATCH]),
        digit_probabilities=DigitProbabilities(left=row[_LEFT_P:_RIGHT_P].tolist(), right=row[_RIGHT_P:_BASE].tolist()),
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
        inputs=inputs,
    )


def batch_columns(rows: np.ndarray, prior: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """compare_batch's (probabilities, labels, digits (N, 2)) under ``prior``."""
    probabilities = rows[:, _PROB[prior]]
    return probabilities, (probabilities >= 0.5).astype(np.int64), rows[:, _LEFT:_RIGHT + 1].astype(np.int64)


def row_statistics(rows: np.ndarray, prior: str, m: int) -> AnswerStatistics:
    """What the monitoring records of the answers in ``rows`` (one row or (N, columns)) under ``prior``, with ``m``
    base models: ``ensemble.reference.answer_statistics``, the function the reference statistics come from."""
    rows = np.atleast_2d(rows)
    column = _PROB[prior]
    return answer_statistics(rows[:, column], rows[:, _BASE + column * m:_BASE + (column + 1) * m],
                             rows[:, _LEFT_P:_BASE].reshape(len(rows), 2, 10))


def unavailable(err: Exception) -> JSONResponse:
    """The 503 for a shed or unreachable scorer, in the one error shape, with Retry-After."""
    logger.warning("answered 503: %s", err)
    return error_response(str(err), 503, headers={"Retry-After": "1"})


class ScorerClient:
    """Calls the scorer (``bentoml.depends``) for the public service.

    ``score_one``: a single pair, coalesced with the single pairs waiting beside it (at most
    ``single_calls_in_flight`` calls at a time, ``serving.coalesce``); ``score_many``: a batch in chunks of
    ``chunk`` pairs, at most ``chunks_in_flight`` at a time, into the scorer's queue, so one large request
    cannot starve single ones.
    """

    def __init__(self, proxy: t.Any, *, chunk: int, chunks_in_flight: int, single_calls_in_flight: int,
                 max_wait_s: float, max_waiting: int) -> None:
        self.proxy = proxy
        self.chunk, self.chunks_in_flight = chunk, chunks_in_flight
        self._single_pairs = PairCoalescer(self.score, max_group=chunk, max_in_flight=single_calls_in_flight,
                                           max_wait_s=max_wait_s, max_waiting=max_waiting)

    async def call(self, method: str, *args: t.Any) -> t.Any:
        """``proxy.to_async.<method>(*args)``, retried on connection-level failures (see NEVER_RECYCLE).
        Raises ScorerUnavailable when the scorer sheds the call or stays unreachable."""
        for attempt in range(1, SCORER_ATTEMPTS + 1):
            try:
                return await getattr(self.proxy.to_async, method)(*args)
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

    async def score(self, pairs: np.ndarray) -> np.ndarray:
        return np.asarray(await self.call("score", pairs), dtype=np.float64)

    async def describe(self) -> dict[str, t.Any]:
        """The scorer's models, manifest, artifact hashes, data, metrics, provider."""
        return await self.call("describe")

    async def score_one(self, pair: np.ndarray) -> np.ndarray:
        """One pair's row. Raises ScorerUnavailable or Overloaded (both: answer 503)."""
        return await self._single_pairs.score(pair)

    async def _score_chunk(self, chunk: np.ndarray) -> np.ndarray:
        for attempt in range(1, CHUNK_ATTEMPTS + 1):
            try:
                return await self.score(chunk)
            except ScorerUnavailable:
                if attempt == CHUNK_ATTEMPTS:
                    raise
                await asyncio.sleep(0.5 * attempt)  # shed under a burst: the rest of the batch is worth a wait
        raise AssertionError("unreachable")

    async def score_many(self, x: np.ndarray) -> np.ndarray:
        """All pairs' rows, in chunks through the scorer's queue. Raises ScorerUnavailable."""
        pending: collections.deque[asyncio.Task[np.ndarray]] = collections.deque()
        parts: list[np.ndarray] = []
        try:
            for start in range(0, len(x), self.chunk):
                pending.append(asyncio.ensure_future(self._score_chunk(x[start:start + self.chunk])))
                if len(pending) >= self.chunks_in_flight:
                    parts.append(await pending.popleft())
            while pending:
                parts.append(await pending.popleft())
        finally:
            for task in pending:  # a failed chunk: do not leave the others running for nobody
                task.cancel()
        return np.concatenate(parts)


class LocalScorer:
    """The models inside this API worker (the CPU layout): no hop to another process.

    ``score_one`` coalesces concurrent single pairs into one inference call (``serving.coalesce``: while a call
    runs, the pairs that arrive wait and go together in the next); ``score_many`` scores a batch in chunks of
    ``chunk`` pairs, so single pairs get a turn between two chunks. One inference call at a time, in a thread
    (ONNX Runtime and LightGBM release the GIL), so the event loop keeps reading requests meanwhile.
    """

    def __init__(self, model: Ensemble | Student, *, chunk: int, max_group: int, max_wait_s: float,
                 max_waiting: int, info: dict[str, t.Any]) -> None:
        self.model, self.chunk, self._info = model, chunk, info
        self._inference = anyio.CapacityLimiter(1)  # FIFO: chunks of a batch and groups of single pairs take turns
        self._single_pairs = PairCoalescer(self.score, max_group=max_group, max_in_flight=1,
                                           max_wait_s=max_wait_s, max_waiting=max_waiting)

    def _score_now(self, pairs: np.ndarray) -> np.ndarray:
        return score_rows(self.model.predict(pairs), len(pairs))

    async def score(self, pairs: np.ndarray) -> np.ndarray:
        return await anyio.to_thread.run_sync(self._score_now, pairs, limiter=self._inference)

    async def score_one(self, pair: np.ndarray) -> np.ndarray:
        """One pair's row. Raises Overloaded (answer 503) when too many pairs wait or one waited too long."""
        return await self._single_pairs.score(pair)

    async def score_many(self, x: np.ndarray) -> np.ndarray:
        """All pairs' rows, chunk by chunk."""
        return np.concatenate([await self.score(x[start:start + self.chunk])
                               for start in range(0, len(x), self.chunk)])

    async def describe(self) -> dict[str, t.Any]:
        return self._info


#: What the 503 answers catch: the scorer shed a call, or a single pair waited too long for one.
UNAVAILABLE = (ScorerUnavailable, Overloaded)
