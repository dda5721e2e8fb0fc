"""The service's answers: the pydantic models the routes answer with, and from which their OpenAPI schemas come."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ensemble.contract import DIGIT_SIZE
from ensemble.priors import DESCRIPTIONS

_DIGIT_TEXT = f"{DIGIT_SIZE}x{DIGIT_SIZE}"


class Digits(BaseModel):
    left: int = Field(description="most likely class of the left digit (the models' digit heads averaged)")
    right: int = Field(description="most likely class of the right digit")


class DigitProbabilities(BaseModel):
    left: list[float] = Field(min_length=10, max_length=10,
                              description="P(the left digit is 0..9), the models' digit heads averaged; "
                                          "digits.left is its most likely class")
    right: list[float] = Field(min_length=10, max_length=10, description="the same for the right digit")


class PreparedInputs(BaseModel):
    left: str = Field(description=f"the left {_DIGIT_TEXT} half the models saw, as a base64 grayscale PNG "
                                  "(light ink on black)")
    right: str = Field(description=f"the right {_DIGIT_TEXT} half, the same way")


class Comparison(BaseModel):
    greater: bool = Field(description="is the left digit greater than the right one?")
    probability: float = Field(description="probability that left > right, under the answer's prior")
    prior: str = Field(description="which prior over digit pairs produced the probability: "
                                   + "; ".join(f"{name}: {text}" for name, text in DESCRIPTIONS.items()))
    digits: Digits
    models: dict[str, float] = Field(description="each base model's probability that left > right under the "
                                     "answer's prior: with `course`, its pair head; with `uniform`, the Bayes "
                                     "read-out of its own digit heads (as the answer's, for that model alone)")
    batch_size: int = Field(description="pairs in the inference call that served this request (adaptive batching)")
    # Added for the web page; the fields above are unchanged, so older clients read answers as before.
    digit_probabilities: DigitProbabilities
    elapsed_ms: float = Field(description="milliseconds the service spent on this request, from the received "
                                          "upload to the answer (decoding, preprocessing, queueing, inference)")
    inputs: PreparedInputs | None = Field(default=None, description="the preprocessed halves; only when the "
                                                                    "request asks with include_inputs=true")


class BatchResult(BaseModel):
    n: int
    prior: str = Field(description="which prior over digit pairs produced the probabilities (see Comparison)")
    probabilities: list[float]
    labels: list[int]
    digits: list[list[int]] = Field(description="[left, right] most likely classes per pair")
    ids: list[str] | None = None
    accuracy: float | None = Field(default=None, description="against the file's labels 'y', when it has them")
