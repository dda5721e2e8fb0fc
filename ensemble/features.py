"""The stacking features: ONE function, called by training (to fit the meta-learners) and by the
run time (to score), so the two can never drift apart.

Inputs are the fused graph's outputs for N pairs: ``logits`` (N, M) pair logits of the M base
models and ``digit_probs`` (N, M, 2, 10) their digit posteriors for the left and right halves.
"""

from __future__ import annotations

import numpy as np

# 2: adds the course pair prior features; 3: "kind.model" names (LightGBM refuses ":" in feature names,
# and its text model now records them too).
FEATURE_SET_VERSION = 3
_GREATER = np.tril(np.ones((10, 10)), k=-1)  # _GREATER[a, b] = 1 when a > b
_EPS = 1e-6


class FeatureMismatchError(ValueError):
    """Stacking features asked for (by a manifest or a stacker) that this code does not compute."""


def course_pair_prior(adjacent: float = 0.8) -> np.ndarray:
    """P(left = a, right = b) under the course's pairing rule, (10, 10).

    Half the pairs have a > b: with probability ``adjacent`` b = a - 1, else b ~ U{0..a-1}, with
    a ~ U{1..9}; the other half mirror it. Written out from the rule, not estimated from data.
    """
    prior = np.zeros((10, 10))
    for a in range(1, 10):  # left greater
        prior[a, a - 1] += 0.5 * adjacent / 9
        prior[a, :a] += 0.5 * (1 - adjacent) / 9 / a
    for a in range(9):  # left smaller
        prior[a, a + 1] += 0.5 * adjacent / 9
        prior[a, a + 1:] += 0.5 * (1 - adjacent) / 9 / (9 - a)
    return prior


_PRIOR = course_pair_prior()
# The digit heads learn P(digit | half) under the class frequencies they were trained on: the course
# pairs' digit marginal, the same for both halves because every pair is also seen swapped.
_DIGIT_MARGINAL = (_PRIOR.sum(0) + _PRIOR.sum(1)) / 2


def prior_greater_probability(digit_probs: np.ndarray) -> np.ndarray:
    """P(left > right) combining both halves' digit posteriors with the course's pair prior.

    Bayes: P(a, b | pair) is proportional to prior(a, b) * P(a | left) / q(a) * P(b | right) / q(b),
    with q the digit frequencies the heads were trained under. Near-neighbour pairs dominate the
    prior, so a half read as "5 or 6" next to a clear 5 is settled by it. (..., 2, 10) -> (...).
    """
    left = digit_probs[..., 0, :] / _DIGIT_MARGINAL
    right = digit_probs[..., 1, :] / _DIGIT_MARGINAL
    joint = np.einsum("...a,ab,...b->...", left, _PRIOR * _GREATER, right)
    total = np.einsum("...a,ab,...b->...", left, _PRIOR, right)
    return joint / np.clip(total, _EPS, None)


def digit_greater_probability(digit_probs: np.ndarray) -> np.ndarray:
    """P(left > right | the two digits differ) from independent digit posteriors; (..., 2, 10) -> (...)."""
    left, right = digit_probs[..., 0, :], digit_probs[..., 1, :]
    greater = np.einsum("...a,ab,...b->...", left, _GREATER, right)
    equal = (left * right).sum(-1)
    return greater / np.clip(1.0 - equal, _EPS, None)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The inverse of the logit: probabilities from the base models' and the logistic stacker's logits."""
    return 1.0 / (1.0 + np.exp(-x))


def stacking_features(logits: np.ndarray, digit_probs: np.ndarray, names: tuple[str, ...],
                      feature_names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Features for the meta-learner and their names.

    Per base model: its pair logit, the logit of P(left > right) from its digit heads, and the same
    under the course's pair prior. Across the ensemble: mean / spread / min / max of the logits, the
    share of models voting "greater", P(left > right) from the averaged digit posteriors (without
    and with the prior), and those averaged posteriors themselves.

    ``feature_names`` picks and orders the columns, as a stacker recorded them when it was fitted
    (the manifest's ``features.names``); by default every feature of this version, in the order above.
    """
    logits = np.asarray(logits, dtype=np.float64)
    digit_probs = np.asarray(digit_probs, dtype=np.float64)
    n, m = logits.shape
    if digit_probs.shape != (n, m, 2, 10) or len(names) != m:
        raise ValueError(f"expected logits (N, M) and digit_probs (N, M, 2, 10) for {len(names)} models, "
                         f"got {logits.shape} and {digit_probs.shape}")
    mean_digits = digit_probs.mean(axis=1)  # (N, 2, 10)
    columns: dict[str, np.ndarray] = {}
    per_model = {"logit": logits, "digit_greater": _logit(digit_greater_probability(digit_probs)),
                 "prior_greater": _logit(prior_greater_probability(digit_probs))}
    for kind, values in per_model.items():
        columns.update({f"{kind}.{name}": values[:, i] for i, name in enumerate(names)})
    columns.update({"logit_mean": logits.mean(1), "logit_std": logits.std(1), "logit_min": logits.min(1),
                    "logit_max": logits.max(1), "vote_share": (logits > 0).mean(1),
                    "mean_digits_greater": _logit(digit_greater_probability(mean_digits)),
                    "mean_digits_prior_greater": _logit(prior_greater_probability(mean_digits))})
    columns.update({f"p_{side}_{d}": mean_digits[:, s, d] for s, side in enumerate(("left", "right"))
                    for d in range(10)})
    wanted = list(columns) if feature_names is None else list(feature_names)
    unknown = [name for name in wanted if name not in columns]
    if unknown:
        raise FeatureMismatchError(f"unknown stacking feature(s) {', '.join(unknown[:5])}: the stacker was fitted "
                                   "on features this code does not compute (retrain or update the code)")
    return np.stack([columns[name] for name in wanted], axis=1).astype(np.float32), wanted


def check_feature_spec(spec: dict, model_names: tuple[str, ...]) -> list[str]:
    """The feature names a manifest's ``features`` entry records, once this code computes exactly those
    (same feature-set version, every name known); FeatureMismatchError naming the difference otherwise."""
    if not isinstance(spec, dict):
        raise FeatureMismatchError("'features' must be an object with 'version' and 'names'")
    version, names = spec.get("version"), spec.get("names")
    if version != FEATURE_SET_VERSION:
        raise FeatureMismatchError(f"the stackers were fitted on stacking features version {version!r}, "
                                   f"this code computes version {FEATURE_SET_VERSION} "
                                   "(re-stack: python -m training.run_all)")
    if not isinstance(names, list) or not names:
        raise FeatureMismatchError("'features.names' must be the non-empty list of stacking feature names")
    m = len(model_names)
    stacking_features(np.zeros((1, m)), np.full((1, m, 2, 10), 0.1), model_names, names)
    return names
