"""What the answers look like on course pairs: the reference the service's monitoring compares live traffic with.

Three statistics describe each answer; ``answer_statistics`` computes them, for the reference here and for every
answer the service gives (``serving.model_metrics``), so both always mean the same thing:

- ``confidence``: ``max(p, 1 - p)`` of the answer's probability ``p`` (0.5: a coin toss, 1: certain);
- ``top_digit``: each half's top digit posterior (the models' digit heads averaged): how sure the models are of
  the digit they read (low on a blank, a letter, a photo the course never showed them);
- ``disagreement``: the share of the base models whose own probability votes against the answer's label.

``reference_statistics`` summarises them over a labelled course file (the course's ``val.npz``) under each prior:
mean and low quantiles. The stacking step records them in ``models/manifest.json`` under ``reference``
(``training.stacking``); ``python -m ensemble reference FILE.npz`` adds or renews them in a models folder without
retraining (``record_reference``). ``read_reference`` reads the block; a manifest written before it existed has
none (the service then exports no reference gauges, and the alerts that compare with them stay silent).
"""

from __future__ import annotations

import os
import typing as t
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ensemble.course_data import load_course_npz
from ensemble.manifest import MANIFEST, ManifestError, read_manifest, write_manifest
from ensemble.priors import PRIORS
from ensemble.student import MODELS, load_model

#: The manifest's key of the block.
REFERENCE_KEY = "reference"
HALVES = ("left", "right")
#: The quantiles recorded besides the mean (low ones: drift shows as answers growing unsure).
QUANTILES = {"p05": 0.05, "p25": 0.25, "p50": 0.5}


@dataclass(frozen=True)
class AnswerStatistics:
    confidence: np.ndarray  # (N,) max(p, 1 - p)
    top_digit: np.ndarray  # (N, 2) each half's top digit posterior, left then right
    disagreement: np.ndarray  # (N,) share of the base models voting against the answer's label
    against: np.ndarray  # (N, M) whether each base model voted against the answer's label


def answer_statistics(probability: np.ndarray, base_probabilities: np.ndarray,
                      digit_probabilities: np.ndarray) -> AnswerStatistics:
    """``probability`` (N,) the answers' P(left > right); ``base_probabilities`` (N, M) each base model's under the
    same prior; ``digit_probabilities`` (N, 2, 10) each half's digit posterior (the heads averaged)."""
    probability = np.asarray(probability, dtype=np.float64)
    label = probability >= 0.5
    against = (np.asarray(base_probabilities) >= 0.5) != label[:, None]
    return AnswerStatistics(confidence=np.maximum(probability, 1.0 - probability),
                            top_digit=np.asarray(digit_probabilities, dtype=np.float64).max(axis=-1),
                            disagreement=against.mean(axis=1), against=against)


def summary(values: np.ndarray) -> dict[str, float]:
    """The mean and the QUANTILES of ``values``, rounded to 6 digits."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(values.mean()), 6),
            **{name: round(float(np.quantile(values, q)), 6) for name, q in QUANTILES.items()}}


def reference_statistics(model: t.Any, pairs: np.ndarray) -> dict[str, t.Any]:
    """``model`` (an ``Ensemble`` or ``Student``) on ``pairs``: per prior the confidence and disagreement summaries
    (and the share of answers where any model disagrees), per half the top digit posterior's summary."""
    prediction = model.predict(pairs, progress=True)
    digit_probabilities = prediction.digit_probs.mean(axis=1)  # (N, M, 2, 10) -> (N, 2, 10)
    priors: dict[str, t.Any] = {}
    for prior in PRIORS:
        stats = answer_statistics(prediction.by_prior[prior], prediction.base_by_prior[prior], digit_probabilities)
        priors[prior] = {"confidence": summary(stats.confidence),
                         "disagreement": {**summary(stats.disagreement),
                                          "any": round(float((stats.disagreement > 0).mean()), 6)}}
    top = answer_statistics(prediction.by_prior["course"], prediction.base_by_prior["course"],
                            digit_probabilities).top_digit
    return {"priors": priors, "top_digit_probability": {half: summary(top[:, i]) for i, half in enumerate(HALVES)}}


def read_reference(manifest: dict, model: str = "ensemble", where: str | os.PathLike = MANIFEST) -> dict | None:
    """The reference statistics of ``model`` (``ensemble`` or ``student``), or None where the manifest records
    none (written before they existed); ManifestError when the block is malformed."""
    block = manifest.get(REFERENCE_KEY)
    if block is None:
        return None
    try:
        stats = block["models"].get(model)
        if stats is None:
            return None
        for prior in PRIORS:
            float(stats["priors"][prior]["confidence"]["mean"])
            float(stats["priors"][prior]["disagreement"]["mean"])
        for half in HALVES:
            float(stats["top_digit_probability"][half]["mean"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ManifestError(f"{where}: malformed '{REFERENCE_KEY}' block ({type(err).__name__}: {err}); renew it "
                            "with `python -m ensemble reference FILE.npz`") from None
    return stats


def reference_block(models: dict[str, t.Any], pairs: np.ndarray, source: str) -> dict[str, t.Any]:
    """The manifest's block: each named model's reference statistics on ``pairs``, and where they came from."""
    return {"source": source, "pairs": len(pairs), "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "use": "what the answers look like on course pairs: the service exports them as gauges "
                   "(digit_compare_reference_*); the alert rules compare live traffic with them (docs/monitoring.md)",
            "models": {name: reference_statistics(model, pairs) for name, model in models.items()}}


def record_reference(models_dir: str | os.PathLike, data: str | os.PathLike) -> dict[str, t.Any]:
    """Score the course file ``data`` with the models in ``models_dir`` (the ensemble, and the student where the
    manifest lists one) and write the ``reference`` block into its manifest (atomically; nothing else changes)."""
    models_dir = Path(models_dir)
    manifest = read_manifest(models_dir)
    listed = [m for m in MODELS if m == "ensemble" or m in manifest["artifacts"]]
    loaded = {name: load_model(models_dir, name, device="cpu") for name in listed}
    pairs = load_course_npz(data).x
    manifest[REFERENCE_KEY] = reference_block(loaded, pairs, Path(data).as_posix())
    write_manifest(models_dir, manifest)
    return manifest[REFERENCE_KEY]
