"""Decided: the stacker's shallow trees, 4 leaves of 100 pairs or more (docs/training.md, "The stacker's trees").

Which LightGBM settings to stack with: five-fold out-of-fold scores on the validation pairs, nothing else.

    python -m experiments.stacker_ab [--models models] [--data data] [--out OUT.md]

The stackers are fitted on the base models' outputs on ``DATA/val.npz`` (training.stacking); this refits
LightGBM under each setting of ``VARIANTS`` with the very cross-validation the stacking step runs
(``training.stacking.cross_validate``: the same folds, early stopping inside each fold) and prints the
out-of-fold accuracy and log-loss beside the mean of the base models' probabilities and the logistic stacker.
The test split and the course's files are never read: a setting chosen here is chosen on validation pairs only.
Log-loss is the steadier guide: on 10,000 pairs one accuracy point is 100 pairs, and 0.2 points is noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ensemble.atomic import atomic_write_text
from ensemble.course_data import load_course_npz
from ensemble.features import sigmoid, stacking_features
from ensemble.layout import ArtifactLayout
from ensemble.metrics import binary_metrics
from ensemble.runtime import fused_outputs, open_session
from ensemble.tables import markdown_table
from training.models import model_names
from training.stacking import LGB_PARAMS, cross_validate

# Overrides of training.stacking.LGB_PARAMS; "served" is what the stacking step uses now.
VARIANTS: dict[str, dict] = {
    "served": {},
    "15 leaves, 40 a leaf (before)": {"num_leaves": 15, "min_data_in_leaf": 40},
    "7 leaves, 40 a leaf": {"num_leaves": 7, "min_data_in_leaf": 40},
    "3 leaves, 100 a leaf": {"num_leaves": 3, "min_data_in_leaf": 100},
    "4 leaves, 50 a leaf": {"num_leaves": 4, "min_data_in_leaf": 50},
    "4 leaves, 200 a leaf": {"num_leaves": 4, "min_data_in_leaf": 200},
    "4 leaves, 100 a leaf, half the features a tree": {"num_leaves": 4, "min_data_in_leaf": 100,
                                                       "feature_fraction": 0.5},
    "15 leaves, learning rate 0.01": {"num_leaves": 15, "min_data_in_leaf": 40, "learning_rate": 0.01},
}


def compare(models: Path, data: Path) -> list[list[str]]:
    """The table's rows: one per variant, after the two baselines."""
    names = model_names()
    val = load_course_npz(data / "val.npz", require=("x", "y"))
    logits, digits = fused_outputs(open_session(ArtifactLayout(models).fused, "cpu"), val.x, progress=True)
    features, feature_names = stacking_features(logits, digits, names)
    mean = binary_metrics(val.y, sigmoid(logits).mean(axis=1))
    rows = [["mean of the base models' probabilities", f"{mean['accuracy']:.4f}", f"{mean['log_loss']:.4f}", ""]]
    for label, params in tqdm(VARIANTS.items(), desc="stacker settings", unit="setting"):
        cv = cross_validate(features, val.y, feature_names, lgb_params=params)
        if not rows[1:]:  # the logistic stacker's folds are the same under every variant: shown once
            rows.append(["logistic regression", f"{cv['oof']['logreg']['accuracy']:.4f}",
                         f"{cv['oof']['logreg']['log_loss']:.4f}", ""])
        rows.append([f"LightGBM: {label}", f"{cv['oof']['lightgbm']['accuracy']:.4f}",
                     f"{cv['oof']['lightgbm']['log_loss']:.4f}", str(cv["rounds"])])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.stacker_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"), help="a folder with ensemble.onnx")
    parser.add_argument("--data", type=Path, default=Path("data"), help="the folder with the val.npz it stacked on")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    served = ", ".join(f"{k} {LGB_PARAMS[k]}" for k in ("num_leaves", "min_data_in_leaf", "learning_rate"))
    table = markdown_table(compare(args.models, args.data),
                           ["stacker (five-fold out-of-fold on val.npz)", "accuracy", "log-loss", "rounds"])
    text = f"{args.models}, {args.data / 'val.npz'}; served LightGBM: {served}\n\n{table}\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
