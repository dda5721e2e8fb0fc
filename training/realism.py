"""The realism gate: can a classifier tell our built digits from the course's real ones?

    python -m training.realism REAL.npz [--built DIR] [--n 10000] [--epochs 4] [--out models/report]

A classifier two-sample test: a small CNN is trained to separate real halves (from ``REAL.npz``,
e.g. the course's ``val.npz``) from built halves (``DIR/val.npz``, by default ``data/``), and
scored by ROC-AUC on halves it never saw. 0.5 means it cannot tell them apart; 1.0 means the
generator is plainly different. Beside it, a side-by-side table of simple statistics of both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from ensemble.atomic import atomic_write_text
from ensemble.contract import PIXEL_MAX, split_pair
from ensemble.course_data import load_course_npz
from ensemble.tables import markdown_table

TARGET_AUC = 0.55
HELD_OUT = 0.3  # share of halves kept out of the classifier's training, for the AUC


def halves(x: np.ndarray) -> np.ndarray:
    """(N, 28, 56) pairs -> (2N, 28, 28) single digits, left halves first."""
    return np.concatenate(split_pair(x))


def half_statistics(images: np.ndarray) -> dict[str, float]:
    """The statistics the course's process description quotes, for (N, 28, 28) uint8 halves."""
    peak = images.max(axis=(1, 2))
    ink = images >= np.maximum(peak, 1)[:, None, None] / 2  # "ink": at least half the half's peak
    border = ink[:, 0].any(1) | ink[:, -1].any(1) | ink[:, :, 0].any(1) | ink[:, :, -1].any(1)
    mass = images.astype(np.float64).sum(axis=(1, 2)).clip(1e-9)
    grid = np.arange(images.shape[1])
    rows = (images.sum(axis=2) * grid).sum(1) / mass
    cols = (images.sum(axis=1) * grid).sum(1) / mass
    nonzero = images[images > 0]
    return {
        "zero fraction": float((images == 0).mean()),
        "mean pixel": float(images.mean()),
        "median peak": float(np.median(peak)),
        "ink touching a border": float(border.mean()),
        "ink centre row p5-p95": tuple(np.percentile(rows, [5, 95]).round(1)),
        "ink centre col p5-p95": tuple(np.percentile(cols, [5, 95]).round(1)),
        "non-zero median": float(np.median(nonzero)) if nonzero.size else 0.0,
        "non-zero p90": float(np.percentile(nonzero, 90)) if nonzero.size else 0.0,
    }


def statistics_table(real: np.ndarray, built: np.ndarray) -> str:
    """Real and built halves side by side as a markdown table."""
    a, b = half_statistics(real), half_statistics(built)

    def fmt(value) -> str:
        return f"{value[0]:g}-{value[1]:g}" if isinstance(value, tuple) else f"{value:.3f}".rstrip("0").rstrip(".")

    return markdown_table([(k, fmt(a[k]), fmt(b[k])) for k in a], ["statistic", "real", "built"])


def _discriminator() -> nn.Module:
    # Small on purpose: enough to notice textures, blur and geometry, quick on two CPU cores.
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 1))


def two_sample_auc(real: np.ndarray, built: np.ndarray, epochs: int = 4, seed: int = 0,
                   progress: bool = True) -> float:
    """Held-out ROC-AUC of a CNN trained to tell ``real`` halves (label 1) from ``built`` ones (0).

    Both sets are cut to the same size first, so the AUC is about appearance, not about counts.
    """
    n = min(len(real), len(built))
    rng = np.random.default_rng(seed)
    x = np.concatenate([real[rng.permutation(len(real))[:n]], built[rng.permutation(len(built))[:n]]])
    y = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.float32)
    order = rng.permutation(2 * n)
    cut = int(len(order) * (1 - HELD_OUT))
    fit, held = order[:cut], order[cut:]
    inputs = torch.from_numpy(x).float().div_(PIXEL_MAX).unsqueeze(1)
    targets = torch.from_numpy(y)

    torch.manual_seed(seed)
    model = _discriminator()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="realism classifier", unit="epoch", disable=not progress, leave=False):
        model.train()
        perm = torch.from_numpy(fit)[torch.randperm(len(fit), generator=generator)]
        for start in range(0, len(perm), 256):
            idx = perm[start:start + 256]
            optimizer.zero_grad()
            loss_fn(model(inputs[idx]).squeeze(1), targets[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(inputs[torch.from_numpy(held[i:i + 1024])]).squeeze(1)
                            for i in range(0, len(held), 1024)]).numpy()
    return float(roc_auc_score(y[held], scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.realism", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("real", help="a course file of real pairs, e.g. ../shared/course/val.npz")
    parser.add_argument("--built", default="data", help="built dataset folder; its val.npz is compared (default: data)")
    parser.add_argument("--n", type=int, default=10_000, help="pairs taken from each file (default: 10,000)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write realism.json and realism.md into this folder")
    args = parser.parse_args(argv)
    built_file = Path(args.built) / "val.npz"
    for path in (Path(args.real), built_file):
        if not path.is_file():
            hint = " (build it: python -m training.data build)" if path == built_file else ""
            parser.error(f"{path} not found{hint}")
    real = halves(load_course_npz(args.real).x[:args.n])
    built = halves(load_course_npz(built_file).x[:args.n])

    table = statistics_table(real, built)
    auc = two_sample_auc(real, built, epochs=args.epochs, seed=args.seed)
    verdict = "pass" if auc <= TARGET_AUC else "FAIL"
    summary = (f"real-vs-built classifier ROC-AUC on held-out halves: {auc:.3f} "
               f"(target <= {TARGET_AUC}: {verdict}; 0.5 = indistinguishable)")
    print(table)
    print()
    print(summary)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "realism.md", f"Real: `{args.real}`; built: `{built_file}`; "
                                              f"{len(real):,} halves each.\n\n{table}\n\n{summary}\n")
        atomic_write_text(out / "realism.json", json.dumps({"auc": auc, "target": TARGET_AUC, "real": str(args.real),
                                                            "built": str(built_file), "halves": len(real),
                                                            "statistics": {"real": half_statistics(real),
                                                                           "built": half_statistics(built)}},
                                                           indent=2) + "\n")
    return 0 if auc <= TARGET_AUC else 1


if __name__ == "__main__":
    sys.exit(main())
