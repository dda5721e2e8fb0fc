"""Binary classification metrics in plain numpy.

The run time has no scikit-learn (it is a training dependency), so these four are written out
here; a test checks them against scikit-learn.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-15


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(((p >= 0.5).astype(np.int64) == y).mean())


def f1(y: np.ndarray, p: np.ndarray) -> float:
    pred = p >= 0.5
    tp = float((pred & (y == 1)).sum())
    fp = float((pred & (y == 0)).sum())
    fn = float((~pred & (y == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic, ties counted half."""
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    ranks = np.empty(len(p), dtype=np.float64)
    ranks[order] = np.arange(1, len(p) + 1)
    # Tied scores share their average rank.
    _, inverse, counts = np.unique(sorted_p, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        mean_rank = np.bincount(inverse, weights=np.arange(1, len(p) + 1)) / counts
        ranks[order] = mean_rank[inverse]
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, _EPS, 1 - _EPS)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    return {"accuracy": accuracy(y, p), "f1": f1(y, p), "roc_auc": roc_auc(y, p), "log_loss": log_loss(y, p)}
