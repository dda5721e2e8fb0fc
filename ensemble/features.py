"""The stacking features: ONE function, called by training (to fit the meta-learners) and by the
run time (to score), so the two can never drift apart.

Inputs are the fused graph's outputs for N pairs: ``logits`` (N, M) pair logits of the M base
models and ``digit_probs`` (N, M, 2, 10) their digit posteriors for the left and right halves.
"""

from __future__ import annotations

import numpy as np

FEATURE_SET_VERSION = 1
_GREATER = np.tril(np.ones((10, 10)), k=-1)  # _GREATER[a, b] = 1 when a > b
_EPS = 1e-6


def digit_greater_probability(digit_probs: np.ndarray) -> np.ndarray:
    """P(left > right | the two digits differ) from independent digit posteriors; (..., 2, 10) -> (...)."""
    left, right = digit_probs[..., 0, :], digit_probs[..., 1, :]
    greater = np.einsum("...a,ab,...b->...", left, _GREATER, right)
    equal = (left * right).sum(-1)
    return greater / np.clip(1.0 - equal, _EPS, None)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def stacking_features(logits: np.ndarray, digit_probs: np.ndarray,
                      names: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Features for the meta-learner and their names.

    Per base model: its pair logit and the logit of P(left > right) from its digit heads. Across
    the ensemble: mean / spread / min / max of the logits, the share of models voting "greater",
    P(left > right) from the averaged digit posteriors, and those averaged posteriors themselves.
    """
    logits = np.asarray(logits, dtype=np.float64)
    digit_probs = np.asarray(digit_probs, dtype=np.float64)
    n, m = logits.shape
    if digit_probs.shape != (n, m, 2, 10) or len(names) != m:
        raise ValueError(f"expected logits (N, M) and digit_probs (N, M, 2, 10) for {len(names)} models, "
                         f"got {logits.shape} and {digit_probs.shape}")
    digit_greater = _logit(digit_greater_probability(digit_probs))  # (N, M)
    mean_digits = digit_probs.mean(axis=1)  # (N, 2, 10)
    columns = [
        (logits, [f"logit:{name}" for name in names]),
        (digit_greater, [f"digit_greater:{name}" for name in names]),
        (np.stack([logits.mean(1), logits.std(1), logits.min(1), logits.max(1), (logits > 0).mean(1),
                   _logit(digit_greater_probability(mean_digits))], axis=1),
         ["logit_mean", "logit_std", "logit_min", "logit_max", "vote_share", "mean_digits_greater"]),
        (mean_digits.reshape(n, 20), [f"p_{side}_{d}" for side in ("left", "right") for d in range(10)]),
    ]
    features = np.concatenate([c for c, _ in columns], axis=1).astype(np.float32)
    return features, [name for _, group in columns for name in group]
