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


def agreement_matrix(labels: np.ndarray) -> np.ndarray:
    """``labels`` (pairs, models) of 0/1 -> (models, models): the share of pairs each two models label alike."""
    labels = np.asarray(labels, dtype=bool)
    same = labels[:, :, None] == labels[:, None, :]
    return same.mean(axis=0)


def most_alike(names: list[str], agreement: np.ndarray, top: int = 5) -> list[tuple[str, str, float]]:
    """The ``top`` pairs of different models that agree most often, most alike first (near-duplicates)."""
    i, j = np.triu_indices(len(names), k=1)
    order = np.argsort(-agreement[i, j], kind="stable")[:top]
    return [(names[i[k]], names[j[k]], float(agreement[i[k], j[k]])) for k in order]


def plot_agreement(names: list[str], agreement: np.ndarray, path: str, title: str) -> None:
    """The matrix as a heatmap PNG (matplotlib: the training extra, ``pip install -e .[training]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.4))
    off_diagonal = agreement[~np.eye(len(names), dtype=bool)]
    image = ax.imshow(agreement, cmap="viridis", vmin=off_diagonal.min(), vmax=off_diagonal.max())
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    middle = (off_diagonal.min() + off_diagonal.max()) / 2
    for (r, c), value in np.ndenumerate(agreement):
        if r != c:  # dark text on the bright (most alike) cells
            ax.text(c, r, f"{100 * value:.1f}", ha="center", va="center", fontsize=6,
                    color="black" if value > middle else "white")
    fig.colorbar(image, ax=ax, label="share of pairs labelled alike")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
