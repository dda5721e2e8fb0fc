"""The prior behind an answer (ensemble/priors.py): the uniform read-out worked out by hand, the manifest's
frequencies, and Ensemble.predict's two priors on the committed models (the course prior's answers unchanged)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ensemble.manifest import ManifestError
from ensemble.priors import (
    PRIORS,
    UnknownPriorError,
    check_prior,
    course_digit_frequencies,
    read_frequencies,
    uniform_greater_probability,
)

ROOT = Path(__file__).resolve().parents[1]
FLAT = np.ones(10)  # heads trained under equal class frequencies: nothing to divide out


def _one_hot(digit: int) -> np.ndarray:
    return np.eye(10)[digit]


def _pair(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.stack([left, right])  # (2, 10)


@pytest.mark.parametrize("left, right, expected", [(7, 3, 1.0), (3, 7, 0.0), (9, 0, 1.0), (0, 1, 0.0)])
def test_certain_digits_give_a_certain_answer(left, right, expected):
    """One-hot posteriors: the only pair left is (left, right), so the answer is whether left > right,
    whatever frequencies are divided out."""
    for frequencies in (FLAT, course_digit_frequencies()):
        p = uniform_greater_probability(_pair(_one_hot(left), _one_hot(right)), frequencies)
        assert p == pytest.approx(expected)


def test_a_half_torn_between_two_digits():
    """Left is 3 or 5 (0.5 each), right is surely 4. With equal frequencies: pairs (3, 4) and (5, 4) weigh
    0.5 each, and only (5, 4) has left > right: 1/2. Heads trained where 5 was twice as frequent as 3 said
    0.5/0.5 although the picture favours 3 two to one (likelihood = posterior / frequency):
    P = (0.5 / 2) / (0.5 / 1 + 0.5 / 2) = 1/3."""
    left = 0.5 * (_one_hot(3) + _one_hot(5))
    pair = _pair(left, _one_hot(4))
    assert uniform_greater_probability(pair, FLAT) == pytest.approx(0.5)
    frequencies = np.ones(10)
    frequencies[5] = 2.0
    assert uniform_greater_probability(pair, frequencies) == pytest.approx(1 / 3)


def test_pairs_of_equal_digits_are_left_out():
    """The prior is over a != b: left 3 or 4, right surely 4, so (4, 4) is impossible and left is 3 < 4."""
    left = 0.5 * (_one_hot(3) + _one_hot(4))
    assert uniform_greater_probability(_pair(left, _one_hot(4)), FLAT) == pytest.approx(0.0)
    # both halves certain of the same digit: no pair is left at all, and the answer says it does not know
    assert uniform_greater_probability(_pair(_one_hot(6), _one_hot(6)), FLAT) == pytest.approx(0.5)


def test_two_uncertain_halves_by_hand():
    """Left: 2 (0.6) or 8 (0.4); right: 5 (0.7) or 2 (0.3). Pairs a != b and their weights: (2, 5) 0.42,
    (8, 5) 0.28, (8, 2) 0.12; (2, 2) is left out. Left greater: (8, 5) and (8, 2): 0.40 / 0.82."""
    left = 0.6 * _one_hot(2) + 0.4 * _one_hot(8)
    right = 0.7 * _one_hot(5) + 0.3 * _one_hot(2)
    assert uniform_greater_probability(_pair(left, right), FLAT) == pytest.approx(0.40 / 0.82)
    # batched: (N, 2, 10) -> (N,), each row on its own
    batch = np.stack([_pair(left, right), _pair(_one_hot(1), _one_hot(0))])
    np.testing.assert_allclose(uniform_greater_probability(batch, FLAT), [0.40 / 0.82, 1.0])


def test_the_dont_know_threshold_is_strict():
    """P(a != b) of exactly 1e-12 (left a sure 4; right a 4 but for 1e-12 on 5) is still "don't know"."""
    right = _one_hot(4) * (1 - 1e-12)
    right[5] = 1e-12
    assert uniform_greater_probability(_pair(_one_hot(4), right), FLAT) == 0.5
    right[5] = 2e-12  # past it: the only different pair, 4 < 5, decides
    assert uniform_greater_probability(_pair(_one_hot(4), right), FLAT) == 0.0


def test_course_frequencies_follow_the_pairing_rule():
    """Worked from the rule: in the half of pairs with left > right, the greater digit a ~ U{1..9}, the
    smaller one is a - 1 (0.8) or ~ U{0..a-1} (0.2); the other half mirrors it (d -> 9 - d). Each pair
    holds two digits, so the frequencies are the mean of the greater's and the smaller's."""
    half = np.zeros(10)
    for a in range(1, 10):
        half[a] += 1 / 9
        half[a - 1] += 0.8 / 9
        half[:a] += 0.2 / 9 / a
    q = (half + half[::-1]) / 4
    np.testing.assert_allclose(course_digit_frequencies(), q, atol=1e-12)
    assert q[0] == q[9] and q[0] < q[1]  # 0 and 9 are the rarest


def test_course_frequencies_match_what_training_draws():
    """The pairs training draws (training.data.sample_digit_pairs), counted: the frequencies the heads saw."""
    from training.data import sample_digit_pairs

    digits = sample_digit_pairs(np.random.default_rng(0), 400_000)
    counted = np.bincount(digits.reshape(-1), minlength=10) / digits.size
    np.testing.assert_allclose(course_digit_frequencies(), counted, atol=0.002)


def test_manifest_frequencies_are_read_and_checked():
    np.testing.assert_allclose(read_frequencies(None), course_digit_frequencies())  # an older manifest
    np.testing.assert_allclose(read_frequencies({"digit_frequencies": [2] * 10}), np.full(10, 0.1))
    for bad in ({"digit_frequencies": [1] * 9}, {"digit_frequencies": [0] + [1] * 9}, {}, [1] * 10,
                {"digit_frequencies": ["a"] * 10}):
        with pytest.raises(ValueError, match="10 positive numbers"):
            read_frequencies(bad)


def test_unknown_prior_is_refused_by_name():
    assert [check_prior(p) for p in PRIORS] == ["course", "uniform"]
    with pytest.raises(UnknownPriorError, match="'course', 'uniform'"):
        check_prior("flat")


# --------------------------------------------------------------------------- the committed models


@pytest.fixture(scope="module")
def ensemble():
    from ensemble import Ensemble

    return Ensemble.load(ROOT / "models", device="cpu")


def test_course_prior_answers_are_unchanged(ensemble):
    """The default prior is the course's, and it answers exactly the probabilities recorded when the models
    were stacked (models/reference_predictions.npz)."""
    with np.load(ROOT / "models" / "reference_predictions.npz") as ref:
        x, recorded = ref["x"], ref["probability"]
    default = ensemble.predict(x)
    assert default.prior == "course"
    np.testing.assert_allclose(default.probability, recorded, atol=1e-6)
    np.testing.assert_allclose(ensemble.predict(x, prior="course").probability, recorded, atol=1e-6)


def test_uniform_prior_is_the_read_out_of_the_averaged_heads(ensemble):
    with np.load(ROOT / "models" / "reference_predictions.npz") as ref:
        x = ref["x"][:16]
    pred = ensemble.predict(x, prior="uniform")
    mean = pred.digit_probs.mean(axis=1)  # (N, 2, 10)
    q = ensemble.digit_frequencies
    left, right = mean[:, 0] / q, mean[:, 1] / q
    weights = left[:, :, None] * right[:, None, :]  # (N, a, b)
    a, b = np.meshgrid(range(10), range(10), indexing="ij")
    expected = (weights * (a > b)).sum((1, 2)) / (weights * (a != b)).sum((1, 2))
    assert pred.prior == "uniform"
    np.testing.assert_allclose(pred.probability, expected, atol=1e-9)
    np.testing.assert_array_equal(pred.label, (expected >= 0.5).astype(int))
    np.testing.assert_allclose(pred.by_prior["course"], ensemble.predict(x).probability)
    with pytest.raises(UnknownPriorError):
        ensemble.predict(x, prior="flat")


def test_the_manifest_entry_is_used_and_a_bad_one_refused(tmp_path, ensemble):
    from ensemble import Ensemble

    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns("weights", "report"))
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["priors"] = {"digit_frequencies": [1.0] * 10, "source": "a test"}
    (models / "manifest.json").write_text(json.dumps(manifest))
    flat = Ensemble.load(models, device="cpu")
    np.testing.assert_allclose(flat.digit_frequencies, np.full(10, 0.1))
    assert flat.info()["priors"]["digit_frequencies_source"] == "a test"
    manifest["priors"] = {"digit_frequencies": [1.0] * 3}
    (models / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="priors.digit_frequencies"):
        Ensemble.load(models, device="cpu")


def _independent_probabilities(models: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each prior's answer without Ensemble: ONNX Runtime on the fused graph; the course prior is LightGBM's
    own Booster on the stacking features, the uniform one the double sum over digit pairs with the
    manifest's frequencies divided out."""
    import lightgbm
    import onnxruntime

    from ensemble.features import stacking_features

    manifest = json.loads((models / "manifest.json").read_text())
    session = onnxruntime.InferenceSession(str(models / manifest["artifacts"]["fused"]["file"]),
                                           providers=["CPUExecutionProvider"])
    logits, digit_probs = session.run(None, {"pairs": x})
    names = tuple(m["name"] for m in manifest["models"])
    features, _ = stacking_features(logits, digit_probs, names, manifest["features"]["names"])
    course = lightgbm.Booster(model_file=str(models / manifest["artifacts"]["lightgbm"]["file"])).predict(features)
    q = np.asarray(manifest["priors"]["digit_frequencies"], dtype=np.float64)
    mean = digit_probs.astype(np.float64).mean(axis=1)
    uniform = []
    for left, right in zip(mean[:, 0] / q, mean[:, 1] / q, strict=True):
        greater = sum(left[a] * right[b] for a in range(10) for b in range(a))
        different = sum(left[a] * right[b] for a in range(10) for b in range(10) if a != b)
        uniform.append(greater / different)
    return {"course": course, "uniform": np.array(uniform)}


def test_the_command_line_predicts_under_either_prior(tmp_path):
    """`python -m ensemble predict --prior uniform` writes the uniform read-out; the default stays the course's."""
    import csv

    from ensemble.__main__ import main

    x = np.load(ROOT / "samples" / "batch.npz")["x"]
    expected = _independent_probabilities(ROOT / "models", x)
    for prior in ("course", "uniform"):
        proba = tmp_path / f"{prior}.csv"
        argv = ["predict", str(ROOT / "samples" / "batch.npz"), "--out", str(tmp_path / "labels.csv"),
                "--proba", str(proba)] + (["--prior", prior] if prior == "uniform" else [])
        assert main(argv) == 0
        with proba.open() as f:
            written = [float(row["probability"]) for row in csv.DictReader(f)]
        np.testing.assert_allclose(written, expected[prior], atol=1e-6)  # the CSV keeps six decimals
    assert np.abs(expected["course"] - expected["uniform"]).max() > 0.01  # the two priors are told apart
