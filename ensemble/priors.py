"""Which pairs the question is about: the prior over ordered digit pairs (left, right) behind an answer.

- ``course``: the course's pairs, where 86% of pairs are neighbours (7 vs 6 or 8). The LightGBM stacker was
  fitted on such pairs and carries that prior in its features; ``compare_pair`` and ``compare_batch``
  (course-style pairs) use it by default.
- ``uniform``: two free pictures, any ordered pair a != b equally likely (``/compare`` and the web page's
  drawings). The answer is the Bayes read-out of the ten models' averaged digit posteriors: the heads were
  trained under the course's digit frequencies (0 and 9 are rare there), so those are divided out first
  (``P(d | picture) / q(d)`` is proportional to the likelihood of the picture given d), then the uniform
  pair prior is applied:

      P(left > right) = sum_{a > b} l(a) r(b) / sum_{a != b} l(a) r(b),   l = p_left / q,  r = p_right / q.

  The frequencies ``q`` come from the manifest (``priors.digit_frequencies``, written by the stacking step
  from the pairing rule the models were trained on); a manifest without them is read with the course rule's
  own frequencies (``ensemble.features.course_pair_prior``), which is what every model so far trained on.
"""

from __future__ import annotations

import typing as t

import numpy as np

from ensemble.features import course_pair_prior

Prior = t.Literal["course", "uniform"]
PRIORS: tuple[str, ...] = t.get_args(Prior)
#: One sentence per prior, for /info, the OpenAPI description and the CLI's help.
DESCRIPTIONS: dict[str, str] = {
    "course": "the course's pairs (86% neighbours such as 7 vs 6): the LightGBM stacker fitted on course pairs",
    "uniform": "any two digits a != b equally likely: Bayes read-out of the ten models' averaged digit "
               "probabilities, with the course's digit frequencies divided out",
}
_GREATER = np.tril(np.ones((10, 10)), k=-1)  # _GREATER[a, b] = 1 when a > b
_DIFFERENT = 1.0 - np.eye(10)
_EPS = 1e-12


class UnknownPriorError(ValueError):
    """A prior other than those in PRIORS."""


def check_prior(prior: str) -> str:
    """``prior`` when it is one of PRIORS; UnknownPriorError naming the choices otherwise."""
    if prior not in PRIORS:
        raise UnknownPriorError(f"prior: must be one of {', '.join(map(repr, PRIORS))}, got {prior!r}")
    return prior


def course_digit_frequencies() -> np.ndarray:
    """The digit frequencies of the course's pairing rule (the same for both halves; pairs are seen swapped):
    what the heads learned when a manifest does not record its own."""
    prior = course_pair_prior()
    return (prior.sum(0) + prior.sum(1)) / 2


def uniform_greater_probability(digit_probs: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """P(left > right) under a uniform prior over ordered pairs a != b; (..., 2, 10) -> (...).

    ``digit_probs``: each half's digit posterior (the models' heads averaged), learned under the class
    ``frequencies`` (10 positive numbers, any scale), which are divided out first.
    """
    digit_probs = np.asarray(digit_probs, dtype=np.float64)
    frequencies = np.asarray(frequencies, dtype=np.float64)
    left = digit_probs[..., 0, :] / frequencies
    right = digit_probs[..., 1, :] / frequencies
    greater = np.einsum("...a,ab,...b->...", left, _GREATER, right)
    different = np.einsum("...a,ab,...b->...", left, _DIFFERENT, right)
    # Both halves certain of the same digit: no pair a != b is left to weigh; say "don't know".
    return np.where(different > _EPS, greater / np.maximum(different, _EPS), 0.5)


def read_frequencies(entry: t.Any) -> np.ndarray:
    """The manifest's ``priors`` entry -> the 10 digit frequencies (normalised); ValueError when malformed.
    ``None`` (a manifest written before the entry existed) gives the course rule's frequencies."""
    if entry is None:
        return course_digit_frequencies()
    values = entry.get("digit_frequencies") if isinstance(entry, dict) else None
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"'priors.digit_frequencies' must be 10 positive numbers ({err})") from None
    if array.shape != (10,) or not np.all(np.isfinite(array)) or not np.all(array > 0):
        raise ValueError(f"'priors.digit_frequencies' must be 10 positive numbers, got {values!r}")
    return array / array.sum()


def manifest_entry(frequencies: np.ndarray, source: str) -> dict[str, t.Any]:
    """What the stacking step records in the manifest for the uniform prior."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    return {"digit_frequencies": [round(float(f), 6) for f in frequencies / frequencies.sum()],
            "source": source,
            "use": "the class frequencies the digit heads were trained under; the uniform prior divides them out"}
