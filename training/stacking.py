"""Fit the meta-learners on the stacking set and write the serving artifacts + manifest.

The stackers' training set is the base models' outputs on the **stacking set**: fresh pairs of the held-out
validation digits, drawn from their own random stream (``training.datasets.stacking_set``), which early stopping
and the weight average never see (they watch ``val.npz``). A data folder without source digits (the course's own
files) stacks on ``val.npz`` instead. Five-fold stratified cross-validation gives out-of-fold predictions and fold
scores; the final LightGBM model (text format) and a logistic regression (JSON) are fit on all of it. The test
split is only scored, never used to choose anything.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import lightgbm as lgb
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from ensemble.atomic import atomic_path, atomic_write_text
from ensemble.contract import DIGIT_SIZE, PAIR_SHAPE, PIXEL_DTYPE
from ensemble.course_data import load_course_npz, save_course_npz
from ensemble.evaluation import evaluation_rows
from ensemble.features import FEATURE_SET_VERSION, stacking_features
from ensemble.layout import ArtifactLayout
from ensemble.manifest import artifact_entry, write_manifest
from ensemble.metrics import binary_metrics
from ensemble.priors import manifest_entry as prior_manifest_entry
from ensemble.reference import REFERENCE_KEY, reference_block
from ensemble.runtime import Ensemble, fused_outputs, open_session
from training.data import dataset_fingerprint, sample_digit_pairs
from training.datasets import load_labelled_test, stacking_set
from training.models import model_names
from training.profiles import get_profile

#: Pairs drawn to count the digit frequencies the heads were trained under (sampling error below 0.001).
FREQUENCY_PAIRS = 1_000_000
REFERENCE_PAIRS = 64  # validation pairs whose served probabilities are recorded for regression tests
LOGREG_C = 0.5  # inverse L2 strength of the logistic stacker: mild, the features are standardised
# Shallow trees: on the wide ten (strongly correlated, each near the mean) 15-leaf trees fitted noise. Chosen by the
# five-fold out-of-fold log-loss on val.npz only (docs/training.md, "The stacker's trees"): 4 leaves and 100 pairs a
# leaf scored 0.9114 / 0.1957 against 0.9089 / 0.1986 for 15 and 40; 3-5 leaves and 50-200 pairs all did as well.
# (fit_lightgbm lowers the leaf minimum for small fitting sets.)
LGB_PARAMS = {"objective": "binary", "learning_rate": 0.03, "num_leaves": 4, "min_data_in_leaf": 100,
              "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
              "verbose": -1, "num_threads": 2, "deterministic": True, "force_row_wise": True}
MAX_ROUNDS, EARLY_STOP, FOLDS = 1000, 50, 5


def fit_lightgbm(x: np.ndarray, y: np.ndarray, seed: int, feature_names: list[str], rounds: int | None = None,
                 valid: tuple[np.ndarray, np.ndarray] | None = None, params: dict | None = None) -> lgb.Booster:
    """The LightGBM stacker: ``rounds`` rounds, or early stopping on ``valid``; ``params`` override LGB_PARAMS."""
    params = {**LGB_PARAMS, **(params or {}), "seed": seed}
    # The leaf minimum is at most 5% of the fitting pairs: below 2,000 pairs (a smoke run's) a fixed 100 would forbid
    # every split and leave a constant answer. Full runs (8,000-10,000 pairs) keep the chosen 100.
    params["min_data_in_leaf"] = min(params["min_data_in_leaf"], max(1, len(y) // 20))
    # The names go into the text model, where Ensemble.load checks them against the manifest's.
    train = lgb.Dataset(x, y, feature_name=list(feature_names), free_raw_data=False)
    if valid is None:
        return lgb.train(params, train, num_boost_round=rounds)
    valid_set = lgb.Dataset(valid[0], valid[1], reference=train)
    return lgb.train(params, train, num_boost_round=MAX_ROUNDS, valid_sets=[valid_set],
                     callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)])


def fit_logreg(x: np.ndarray, y: np.ndarray) -> tuple[StandardScaler, LogisticRegression]:
    """The logistic stacker on standardised features."""
    scaler = StandardScaler().fit(x)
    return scaler, LogisticRegression(C=LOGREG_C, max_iter=5000).fit(scaler.transform(x), y)


def cross_validate(features: np.ndarray, y: np.ndarray, feature_names: list[str], seed: int = 0,
                   lgb_params: dict | None = None) -> dict:
    """Five-fold out-of-fold predictions and fold scores for both stackers; the LightGBM round count
    for the final fit is the mean of the folds' early-stopping rounds (chosen inside val only).
    ``lgb_params`` overrides ``LGB_PARAMS`` (experiments/stacker_ab.py compares settings this way)."""
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    oof = {"lightgbm": np.zeros(len(y)), "logreg": np.zeros(len(y))}
    fold_rows, rounds = [], []
    for k, (fit, held) in enumerate(folds.split(features, y)):
        booster = fit_lightgbm(features[fit], y[fit], seed, feature_names, valid=(features[held], y[held]),
                               params=lgb_params)
        rounds.append(booster.best_iteration)
        oof["lightgbm"][held] = booster.predict(features[held], num_iteration=booster.best_iteration)
        scaler, logreg = fit_logreg(features[fit], y[fit])
        oof["logreg"][held] = logreg.predict_proba(scaler.transform(features[held]))[:, 1]
        fold_rows.append({"fold": k + 1, "rounds": booster.best_iteration,
                          **{f"{m}_{key}": v for m in oof for key, v in binary_metrics(y[held], oof[m][held]).items()}})
    return {"folds": fold_rows, "rounds": int(np.mean(rounds)),
            "oof": {m: binary_metrics(y, p) for m, p in oof.items()}}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("numpy", "torch", "onnx", "onnxruntime-gpu", "lightgbm", "scikit-learn", "bentoml"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def fit_stackers(out: str | Path, data_dir: str | Path, profile: str, seed: int = 0,
                 score_files: tuple[str | Path, ...] = ()) -> dict:
    """Fit both stackers on the stacking set, write them, the manifest and reference predictions; returns the
    metrics (cross-validation, the test table, and a table per labelled ``score_files`` entry, e.g.
    the course's own val.npz: scored only, never fitted on) that the report shows.

    The monitoring's reference statistics (``ensemble.reference``) are taken on the first ``score_files`` entry (the
    course's val.npz: what live course pairs should look like), else on the built val.npz.

    The base models are the registry's, in its order: the order of the fused graph's outputs.
    """
    layout, data_dir = ArtifactLayout(out), Path(data_dir)
    names = model_names()
    session = open_session(layout.fused, "cpu")
    val = load_course_npz(data_dir / "val.npz", require=("x", "y"))
    val_logits, val_digits = fused_outputs(session, val.x, progress=True)
    stack = stacking_set(data_dir, get_profile(profile).stacking_pairs, workers=os.cpu_count() or 1, progress=True)
    if stack is None:
        fit_set, fit_logits, fit_digits = f"val.npz ({len(val)} pairs)", val_logits, val_digits
        fit_y = val.y
    else:
        fit_logits, fit_digits = fused_outputs(session, stack.x, progress=True)
        fit_set, fit_y = f"stacking set ({len(stack)} fresh pairs of the held-out validation digits)", stack.y
    features, feature_names = stacking_features(fit_logits, fit_digits, names)
    cv = cross_validate(features, fit_y, feature_names, seed)
    booster = write_stackers(layout, features, fit_y, feature_names, seed, cv["rounds"])

    val_acc = {name: float(((val_logits[:, i] > 0) == val.y).mean()) for i, name in enumerate(names)}
    manifest = build_manifest(layout, data_dir, profile, names, val_acc, feature_names, fit_set)
    manifest["artifacts"] = _artifacts(layout, names)
    write_manifest(layout.root, manifest)

    # Score through the very path serving uses, and record reference predictions.
    ens = Ensemble.load(layout.root, device="cpu", precision="fp32")
    metrics = {"stacking_cv": cv, "val_acc": val_acc, "best_single": manifest["best_single"],
               "stacker_training_set": fit_set}
    metrics.update(score_labelled(ens, data_dir, score_files))
    for entry in manifest["models"]:
        if "test" in metrics:
            entry["test_acc"] = next(r["accuracy"] for r in metrics["test"]["rows"] if r["name"] == entry["name"])
    reference_x = val.x[:REFERENCE_PAIRS]
    save_course_npz(layout.reference, x=reference_x, probability=ens.predict(reference_x).probability)
    reference_file = Path(score_files[0]) if score_files else data_dir / "val.npz"
    manifest[REFERENCE_KEY] = reference_block({"ensemble": ens}, load_course_npz(reference_file).x,
                                              reference_file.as_posix())
    metrics["feature_importance"] = dict(zip(feature_names, booster.feature_importance("gain").tolist(), strict=True))
    manifest["metrics"] = {k: v for k, v in metrics.items() if k != "feature_importance"}
    manifest["artifacts"] = _artifacts(layout, names)
    write_manifest(layout.root, manifest)
    return metrics


def write_stackers(layout: ArtifactLayout, features: np.ndarray, y: np.ndarray, feature_names: list[str],
                   seed: int, rounds: int) -> lgb.Booster:
    """Fit both stackers on all of the stacking set and write them: LightGBM's text model and the logistic JSON."""
    booster = fit_lightgbm(features, y, seed, feature_names, rounds=rounds)
    with atomic_path(layout.lightgbm) as tmp:
        booster.save_model(str(tmp))
    scaler, logreg = fit_logreg(features, y)
    spec = {"features": feature_names, "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
            "coef": logreg.coef_[0].tolist(), "intercept": float(logreg.intercept_[0])}
    atomic_write_text(layout.logreg, json.dumps(spec) + "\n")
    return booster


def build_manifest(layout: ArtifactLayout, data_dir: Path, profile: str, names: tuple[str, ...],
                   val_acc: dict[str, float], feature_names: list[str], stacker_training_set: str) -> dict:
    """The manifest's content (artifacts and metrics are added by the caller)."""
    histories = {n: json.loads(layout.history(n).read_text()) for n in names}
    dataset = json.loads((data_dir / "dataset.json").read_text()) if (data_dir / "dataset.json").is_file() else {}
    m = len(names)
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": [{"name": n, "file": layout.onnx(n).relative_to(layout.root).as_posix(),
                    "params": histories[n]["result"]["params"], "config": histories[n]["config"],
                    "val_acc": val_acc[n]} for n in names],
        "best_single": max(val_acc, key=val_acc.get),  # chosen on val, never on test
        "input": {"name": "pairs", "dtype": PIXEL_DTYPE.name, "shape": [None, *PAIR_SHAPE],
                  "layout": f"two {DIGIT_SIZE}x{DIGIT_SIZE} digits side by side; left = columns 0-{DIGIT_SIZE - 1}; "
                            "raw pixels 0-255"},
        "outputs": {"fused": {"logits": [None, m], "digit_probs": [None, m, 2, 10]},
                    "single": {"logit": [None], "digit_probs": [None, 2, 10]}},
        "features": {"version": FEATURE_SET_VERSION, "names": feature_names},
        "decision": "label = 1 when the LightGBM probability >= 0.5",
        "training": {"profile": profile, "data": dataset, "data_fingerprint": dataset_fingerprint(data_dir),
                     "stacker_training_set": f"{stacker_training_set}, {FOLDS}-fold CV"},
        "versions": package_versions(),
        "priors": prior_manifest_entry(trained_digit_frequencies(),
                                       "training.data.sample_digit_pairs (the course pairing rule), counted"),
    }


def trained_digit_frequencies(seed: int = 0) -> np.ndarray:
    """How often each digit occurs in the pairs training draws, counted on the sampler itself (so a change to
    the pairing rule follows here): what the uniform prior divides out of the digit heads (ensemble.priors)."""
    digits = sample_digit_pairs(np.random.default_rng(seed), FREQUENCY_PAIRS)
    return np.bincount(digits.reshape(-1), minlength=10) / digits.size


def score_labelled(ens: Ensemble, data_dir: Path, score_files: tuple[str | Path, ...]) -> dict:
    """The method table on the built test split (if labelled) and on each labelled ``score_files`` entry."""
    metrics: dict = {"scored": {}}
    test = load_labelled_test(data_dir)
    if test is not None:
        pred = ens.predict(test.x)
        metrics["test"] = {"n": len(test), "rows": evaluation_rows(ens, pred, test.y)}
        metrics["test_confusion"] = _confusion(test.y, pred.label)
    for path in score_files:
        scored = load_course_npz(path, require=("x", "y"))
        metrics["scored"][str(path)] = {"n": len(scored), "rows": evaluation_rows(ens, ens.predict(scored.x), scored.y)}
    return metrics


def _confusion(y: np.ndarray, label: np.ndarray) -> list[list[int]]:
    return [[int(((y == t) & (label == p)).sum()) for p in (0, 1)] for t in (0, 1)]


def _artifacts(layout: ArtifactLayout, names: tuple[str, ...]) -> dict:
    return {role: artifact_entry(layout.root, path) for role, path in layout.role_paths(names).items()}
