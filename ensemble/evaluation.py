"""The side-by-side table: every base model, the baselines and the two stackers, on labelled pairs."""

from __future__ import annotations

import numpy as np

from ensemble.metrics import binary_metrics
from ensemble.runtime import Ensemble, Prediction
from ensemble.tables import markdown_table


def evaluation_rows(ensemble: Ensemble, pred: Prediction, y: np.ndarray) -> list[dict]:
    """One row per method: name, kind (base | baseline | stack) and the four metrics."""
    return [{"name": name, "kind": kind, **binary_metrics(y, p)}
            for name, (kind, p) in ensemble.method_probabilities(pred).items()]


def format_rows(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    return markdown_table([[r["name"], r["kind"], *(f"{r[k]:.4f}" for k in ("accuracy", "f1", "roc_auc", "log_loss"))]
                           for r in rows], ["method", "kind", "accuracy", "F1", "ROC-AUC", "log-loss"])
