"""Decided: a stacker fitted on uniform pairs beats the served Bayes read-out by 0.5-1.4 points (docs/priors.md).

Which uniform-prior answer to serve: the Bayes read-out of the digit heads, or a stacker fitted on uniform pairs?
The read-out stays served until the stacking step fits such a stacker (docs/priors.md says what that needs).

    python -m experiments.prior_choice [--fit-pairs 1500] [--test-pairs 1000] [--seed 0]

This measures both on held-out uniform pairs, as ``ensemble.freeform`` renders them.

- Fitting pairs: uniform ordered pairs (a != b) of MNIST's *validation* digits (training.data.split_sources
  with the dataset's seed 42: digits no model trained on), rendered each of the four ways of
  ``ensemble.freeform.RENDERINGS`` and read through ``/compare``'s preprocessing. Two stackers are fitted on
  their stacking features (``ensemble.features``, the same columns as the course stackers), with
  training.stacking's own fitting functions: a logistic regression and LightGBM (rounds by 5-fold CV).
- Held-out pairs: uniform pairs of MNIST *test* digits, the same renderings (ensemble.freeform's pairs).

Prints pair accuracy and log-loss per rendering for: the Bayes read-out (what the service serves under
``uniform``), the two uniform-fitted stackers, and the course stacker; twice: stackers fitted on all four
renderings, then on the other three only (a picture style the fit never saw). Needs data/cache/mnist.npz.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ensemble import freeform
from ensemble.contract import join_pair
from ensemble.metrics import binary_metrics
from ensemble.runtime import Ensemble
from ensemble.tables import markdown_table
from training.data import load_source_digits, split_sources
from training.stacking import cross_validate, fit_lightgbm, fit_logreg

ROOT = Path(__file__).resolve().parents[1]
DATASET_SEED = 42  # the built dataset's seed: the same validation digits the course stackers were fitted on


def _rendered(ensemble: Ensemble, images: np.ndarray, labels: np.ndarray, pairs: np.ndarray, render, seed: int):
    """(features, uniform read-out, course probability, truth) of the pairs whose both pictures were read."""
    rng = np.random.default_rng(seed)
    halves = [[freeform.picture_to_digit(render(images[i], rng), "x") for i in pair] for pair in pairs]
    kept = [k for k, pair in enumerate(halves) if all(h is not None for h in pair)]
    prediction = ensemble.predict(np.stack([join_pair(*halves[k]) for k in kept]))
    digits = labels[pairs[kept]]
    return (prediction.features, prediction.by_prior["uniform"], prediction.by_prior["course"],
            (digits[:, 0] > digits[:, 1]).astype(np.int64))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.prior_choice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit-pairs", type=int, default=1500, help="validation pairs per rendering")
    parser.add_argument("--test-pairs", type=int, default=1000, help="test pairs per rendering")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ensemble = Ensemble.load(ROOT / "models", device="cpu")
    val_images, val_labels = split_sources(load_source_digits("mnist"), DATASET_SEED)["val"]
    test_images, test_labels = freeform.load_digits(ROOT / freeform.DEFAULT_MNIST)
    fit_pairs = freeform.uniform_pairs(val_labels, args.fit_pairs, np.random.default_rng(args.seed + 100))
    test_pairs = freeform.uniform_pairs(test_labels, args.test_pairs, np.random.default_rng(args.seed))
    fit, held = [], {}
    for k, (name, render) in enumerate(freeform.RENDERINGS.items()):
        fit.append(_rendered(ensemble, val_images, val_labels, fit_pairs, render, args.seed + 200 + k))
        held[name] = _rendered(ensemble, test_images, test_labels, test_pairs, render, args.seed + 1 + k)
    names = ensemble.feature_names
    print(f"fitted on uniform pairs of validation digits ({args.fit_pairs} per rendering); held out: "
          f"{args.test_pairs} pairs of test digits per rendering\n")
    for leave_out in (False, True):
        rows = []
        for k, (name, (features, readout, course, truth)) in enumerate(held.items()):
            # leave_out: the stackers never saw this rendering (fitted on the other three): a picture style of
            # a user that nobody anticipated
            used = [f for j, f in enumerate(fit) if not (leave_out and j == k)]
            x, y = np.concatenate([f[0] for f in used]), np.concatenate([f[3] for f in used])
            rounds = cross_validate(x, y, names, args.seed)["rounds"]
            booster = fit_lightgbm(x, y, args.seed, names, rounds=rounds)
            scaler, logreg = fit_logreg(x, y)
            methods = {"Bayes read-out (served)": readout,
                       "logistic stacker, uniform pairs": logreg.predict_proba(scaler.transform(features))[:, 1],
                       f"LightGBM stacker, uniform pairs ({rounds} rounds)": booster.predict(features),
                       "course stacker": course}
            for method, p in methods.items():
                m = binary_metrics(truth, p)
                rows.append([name, method, f"{m['accuracy']:.4f}", f"{m['log_loss']:.4f}", str(len(truth))])
        print("stackers fitted on the other three renderings only (this one unseen):" if leave_out else
              "stackers fitted on all four renderings (other digits):")
        print(markdown_table(rows, ["pictures", "P(left > right) from", "accuracy", "log-loss", "pairs"]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
