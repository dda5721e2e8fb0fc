"""BentoML service: is the left handwritten digit greater than the right one?

Each route is a typed ``@bentoml.api``: its signature is the API. The OpenAPI document at ``/docs.json``, what the
front door lets through and the README's API table all come from these signatures (``serving.api``). Every answer
names its ``prior`` (``ensemble.priors``: ``course``, the stacker fitted on course pairs, or ``uniform``, any two
digits a != b); every client mistake is a 4xx ``{"error": "...", "detail": ...}``. Settings: ``DIGIT_COMPARE_*``
(``serving.settings``). Also served: ``GET /info``, the web page at ``/ui``, and BentoML's ``/healthz``, ``/livez``,
``/readyz`` and ``/metrics``.

Two layouts (``DIGIT_COMPARE_LAYOUT``): ``in_process`` (the default without a GPU), where each API worker runs the
models and coalesces concurrent single pairs into one inference call; and ``scorer`` (the default with a GPU),
where ``Scorer`` holds the models behind BentoML's adaptive batching in one process and the API workers call it.
"""

from __future__ import annotations

import typing as t

import bentoml
import numpy as np
from pydantic import AfterValidator

from ensemble.contract import join_pair
from ensemble.preprocess import prepare_digit_bytes, prepare_pair_bytes
from serving import app
from serving.answers import Comparison
from serving.api import CourseFile, Format, Ids, IncludeInputs, Pairs, Picture, PriorChoice
from serving.inputs import validate_score_input

SERVED = app.start()  # the settings and the verified models: a problem stops `bentoml serve` with its message
SETTINGS = SERVED.settings


@bentoml.service(name="digit_compare_scorer", **SERVED.scorer_config)
class Scorer:
    """The models behind BentoML's adaptive batching. Internal: only DigitCompare calls it."""

    def __init__(self) -> None:
        self.models = app.ScorerModels(SERVED)

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def score(self, pairs: t.Annotated[np.ndarray, AfterValidator(validate_score_input)]) -> np.ndarray:
        """(N, 28, 56) uint8 pairs -> one score row per pair (serving.scoring: SCORE_COLUMNS, then each base
        model's probability under each prior)."""
        return self.models.score(pairs)

    @bentoml.api
    def describe(self) -> dict[str, t.Any]:
        """Models, manifest version and hashes, training data, metrics, provider, priors."""
        return self.models.describe()


def two_digits(left: bytes, right: bytes) -> np.ndarray:
    return join_pair(prepare_digit_bytes(left, "left"), prepare_digit_bytes(right, "right"))


def one_pair(image: bytes) -> np.ndarray:
    return prepare_pair_bytes(image, "image")


@bentoml.asgi_app(app.pages(), path="/")
@bentoml.service(name="digit_compare", **SERVED.api_config)
class DigitCompare:
    """Is the left handwritten digit greater than the right one? Ten Siamese CNNs, read under a prior."""

    # BentoML starts a process for each `bentoml.depends` on the class (in a container, `--depends NAME=URL` points
    # it elsewhere). Without one, no Scorer process exists and each API worker runs the models itself.
    if SETTINGS.layout == "scorer":
        scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        self.answers = app.Answers(SERVED, getattr(self, "scorer", None))

    @bentoml.api
    async def compare(self, left: Picture, right: Picture, include_inputs: IncludeInputs = False,
                      prior: PriorChoice = "uniform") -> Comparison:
        """Two pictures of single digits, any format, size and polarity (files `left` and `right`): is left >
        right? Under the uniform prior unless asked: two free pictures can be any two digits."""
        return await self.answers.compare("/compare", two_digits, (left, right), prior, include_inputs)

    @bentoml.api
    async def compare_pair(self, image: Picture, include_inputs: IncludeInputs = False,
                           prior: PriorChoice = "course") -> Comparison:
        """One course-style 28x56 pair picture (file `image`; other sizes are resized): is left > right? Under the
        course's prior unless asked."""
        return await self.answers.compare("/compare_pair", one_pair, (image,), prior, include_inputs)

    @bentoml.api
    async def compare_batch(self, file: CourseFile = None, pairs: Pairs = None, ids: Ids = None,
                            format: Format = "json", prior: PriorChoice = "course"):  # noqa: ANN201 - JSON or CSV
        """Many course pairs at once: an uploaded course `.npz` (`file`, up to the request limit) or JSON `pairs`
        (up to 1,000) -> each pair's probability, label and digits, or (`format=csv`) the submission file."""
        data = await self.answers.read_batch(file, pairs, ids)
        return await self.answers.compare_batch(data, prior, format)

    @bentoml.api(route="/info")
    async def info(self) -> dict[str, t.Any]:
        """Models, manifest (version, hashes, training data, metrics), priors, provider, batching, limits."""
        return await self.answers.info(app.default_priors(DigitCompare))


app.install(DigitCompare, Scorer, SERVED)  # bodies read once, the front door, /docs.json, BentoML's fixes
