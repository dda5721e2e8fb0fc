"""The stacking features (ensemble/features.py) on hand-worked digit posteriors: the digit read-outs with and
without the course's pair prior, the prior itself, every feature column and name, and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ensemble.features import (
    FEATURE_SET_VERSION,
    FeatureMismatchError,
    check_feature_spec,
    course_pair_prior,
    digit_greater_probability,
    prior_greater_probability,
    sigmoid,
    stacking_features,
)

LOGIT_CLIP = math.log((1 - 1e-6) / 1e-6)  # the logit of a certain answer, clipped at 1e-6 from 0 and 1


def _posterior(weights: dict[int, float]) -> np.ndarray:
    p = np.zeros(10)
    for digit, w in weights.items():
        p[digit] = w
    return p


def _pair(left: dict[int, float], right: dict[int, float]) -> np.ndarray:
    return np.stack([_posterior(left), _posterior(right)])  # (2, 10)


# --------------------------------------------------------------------------- P(left > right | a != b)

@pytest.mark.parametrize("left, right, expected", [
    ({7: 1.0}, {3: 1.0}, 1.0),
    ({3: 1.0}, {7: 1.0}, 0.0),
    ({2: 0.5, 5: 0.5}, {3: 1.0}, 0.5),  # 5 > 3, 2 < 3: no equal pair to leave out
    # (3, 3) is equal (0.5) and left out; of the rest, (5, 3) is all: 0.5 / (1 - 0.5) = 1
    ({3: 0.5, 5: 0.5}, {3: 1.0}, 1.0),
    # (4,4) 0.3 equal, (4,5) 0.3 less, (6,4) 0.2 and (6,5) 0.2 greater: 0.4 / 0.7
    ({4: 0.6, 6: 0.4}, {4: 0.5, 5: 0.5}, 4 / 7),
    # uniform halves: of the 90 ordered pairs a != b, 45 have a > b
    ({d: 0.1 for d in range(10)}, {d: 0.1 for d in range(10)}, 0.5),
])
def test_digit_greater_probability_by_hand(left, right, expected):
    assert digit_greater_probability(_pair(left, right)) == pytest.approx(expected, abs=1e-9)


def test_digit_greater_probability_of_two_equal_certain_digits_is_finite():
    """No pair a != b is left: the clip keeps the answer finite (0 / eps) instead of nan."""
    assert digit_greater_probability(_pair({4: 1.0}, {4: 1.0})) == 0.0


def test_digit_greater_probability_keeps_the_leading_axes():
    pairs = np.stack([_pair({7: 1.0}, {3: 1.0}), _pair({4: 0.6, 6: 0.4}, {4: 0.5, 5: 0.5}),
                      _pair({3: 0.5, 5: 0.5}, {3: 1.0})])
    batch = np.stack([pairs, pairs[::-1]])  # (2, 3, 2, 10)
    np.testing.assert_allclose(digit_greater_probability(batch), [[1.0, 4 / 7, 1.0], [1.0, 4 / 7, 1.0]])


# --------------------------------------------------------------------------- the course's pair prior

def _rule(a: int, b: int) -> float:
    """The course's pairing rule written out again, digit by digit: half the pairs have a left digit
    a ~ U{1..9} greater, its right neighbour b = a - 1 with 0.8, else b ~ U{0..a-1}; the other half a left
    digit a ~ U{0..8} smaller, b = a + 1 with 0.8, else b ~ U{a+1..9}."""
    if a > b:
        return 0.5 / 9 * (0.8 * (b == a - 1) + 0.2 / a)
    if a < b:
        return 0.5 / 9 * (0.8 * (b == a + 1) + 0.2 / (9 - a))
    return 0.0


def _frequency(d: int) -> float:
    """How often digit d is drawn, averaged over the two halves (the heads see every pair swapped too)."""
    return (sum(_rule(d, b) for b in range(10)) + sum(_rule(a, d) for a in range(10))) / 2


def _bayes_greater(left: dict[int, float], right: dict[int, float]) -> float:
    """P(left > right) by the double sum over digit pairs: prior(a, b) * p(a) / q(a) * p(b) / q(b)."""
    weight = {(a, b): _rule(a, b) * pa / _frequency(a) * pb / _frequency(b)
              for a, pa in left.items() for b, pb in right.items()}
    return sum(w for (a, b), w in weight.items() if a > b) / sum(weight.values())


def test_course_pair_prior_written_out_from_the_rule():
    prior = course_pair_prior()
    np.testing.assert_allclose(prior, [[_rule(a, b) for b in range(10)] for a in range(10)], rtol=1e-12)
    assert prior.sum() == pytest.approx(1.0)
    assert np.tril(prior, -1).sum() == pytest.approx(0.5)
    assert prior[5, 4] == pytest.approx(0.5 / 9 * (0.8 + 0.2 / 5))
    assert prior[9, 0] == pytest.approx(0.5 / 9 * 0.2 / 9)
    assert prior[5, 7] == pytest.approx(0.5 / 9 * 0.2 / 4)
    only_neighbours = course_pair_prior(adjacent=1.0)
    assert only_neighbours[5, 4] == pytest.approx(0.5 / 9) and only_neighbours[5, 3] == 0
    assert only_neighbours.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("left, right, expected", [
    ({7: 1.0}, {3: 1.0}, 1.0),
    ({3: 1.0}, {7: 1.0}, 0.0),
    ({5: 0.5, 6: 0.5}, {5: 1.0}, 1.0),  # (5, 5) never happens: the prior settles "5 or 6" next to a 5
    ({4: 0.5, 6: 0.5}, {5: 1.0}, None),  # neighbours either way: the frequencies and the rule's 1/a decide
    ({0: 0.5, 2: 0.5}, {1: 1.0}, None),  # 0 is half as frequent as 2: divided out, it weighs twice
    ({2: 0.3, 3: 0.7}, {1: 0.2, 3: 0.5, 8: 0.3}, None),
])
def test_prior_greater_probability_by_hand(left, right, expected):
    expected = _bayes_greater(left, right) if expected is None else expected
    assert prior_greater_probability(_pair(left, right)) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_prior_greater_probability_of_a_pair_the_rule_never_draws_is_finite():
    """Both halves a certain 5: the rule never pairs equal digits, so no pair has any weight; the clip keeps
    the answer 0 instead of 0 / 0."""
    assert prior_greater_probability(_pair({5: 1.0}, {5: 1.0})) == 0.0


def test_prior_greater_probability_divides_the_frequencies_out():
    """0 vs 2 next to a 1: with the frequencies divided out the answer is below one half, without it above."""
    p = prior_greater_probability(_pair({0: 0.5, 2: 0.5}, {1: 1.0}))
    without = _rule(2, 1) / (_rule(2, 1) + _rule(0, 1))
    assert without > 0.5 > p


# --------------------------------------------------------------------------- the feature table

NAMES = ("a", "b")
EXPECTED_NAMES = (["logit.a", "logit.b", "digit_greater.a", "digit_greater.b", "prior_greater.a", "prior_greater.b",
                   "logit_mean", "logit_std", "logit_min", "logit_max", "vote_share", "mean_digits_greater",
                   "mean_digits_prior_greater"]
                  + [f"p_left_{d}" for d in range(10)] + [f"p_right_{d}" for d in range(10)])


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    """Two pairs, two models. Pair 0: model a reads 7 vs 3, model b 4-or-6 vs 4-or-5. Pair 1: both 3 vs 7."""
    logits = np.array([[1.0, -2.0], [3.0, 4.0]])
    digit_probs = np.stack([
        np.stack([_pair({7: 1.0}, {3: 1.0}), _pair({4: 0.6, 6: 0.4}, {4: 0.5, 5: 0.5})]),
        np.stack([_pair({3: 1.0}, {7: 1.0}), _pair({3: 1.0}, {7: 1.0})]),
    ])
    return logits, digit_probs


def test_stacking_features_by_hand():
    logits, digit_probs = _inputs()
    table, names = stacking_features(logits, digit_probs, NAMES)
    assert names == EXPECTED_NAMES and table.shape == (2, len(EXPECTED_NAMES)) and table.dtype == np.float32
    col = {name: table[:, i] for i, name in enumerate(names)}
    np.testing.assert_allclose(col["logit.a"], [1, 3])
    np.testing.assert_allclose(col["logit.b"], [-2, 4])
    np.testing.assert_allclose(col["digit_greater.a"], [LOGIT_CLIP, -LOGIT_CLIP], rtol=1e-5)
    np.testing.assert_allclose(col["digit_greater.b"], [math.log(4 / 3), -LOGIT_CLIP], rtol=1e-5)
    np.testing.assert_allclose(col["prior_greater.a"], [LOGIT_CLIP, -LOGIT_CLIP], rtol=1e-5)
    np.testing.assert_allclose(col["logit_mean"], [-0.5, 3.5])
    np.testing.assert_allclose(col["logit_std"], [1.5, 0.5])  # population spread of two values
    np.testing.assert_allclose(col["logit_min"], [-2, 3])
    np.testing.assert_allclose(col["logit_max"], [1, 4])
    np.testing.assert_allclose(col["vote_share"], [0.5, 1.0])
    # pair 0 averaged: left 7 (0.5), 4 (0.3), 6 (0.2); right 3 (0.5), 4 (0.25), 5 (0.25)
    np.testing.assert_allclose([col[f"p_left_{d}"][0] for d in range(10)], [0, 0, 0, 0, .3, 0, .2, .5, 0, 0])
    np.testing.assert_allclose([col[f"p_right_{d}"][0] for d in range(10)], [0, 0, 0, .5, .25, .25, 0, 0, 0, 0])
    np.testing.assert_allclose([col[f"p_left_{d}"][1] for d in range(10)], np.eye(10)[3])
    np.testing.assert_allclose([col[f"p_right_{d}"][1] for d in range(10)], np.eye(10)[7])
    # greater: (7, any) 0.5 + (4, 3) 0.15 + (6, 3|4|5) 0.2 = 0.85; equal: (4, 4) 0.075 -> 0.85 / 0.925
    greater = 0.85 / 0.925
    np.testing.assert_allclose(col["mean_digits_greater"], [math.log(greater / (1 - greater)), -LOGIT_CLIP],
                               rtol=1e-5)
    assert col["mean_digits_prior_greater"][0] > 0 and col["mean_digits_prior_greater"][1] == pytest.approx(
        -LOGIT_CLIP, rel=1e-5)


def test_stacking_features_of_float32_outputs_are_computed_in_float64():
    """The fused graph answers float32; the features are computed from it in float64, so a certain digit's
    read-out is the logit clipped at 1e-6 (13.8155), not float32's 1 - 1e-6 rounded (13.8023)."""
    logits, digit_probs = _inputs()
    wide, _ = stacking_features(logits, digit_probs, NAMES)
    narrow, names = stacking_features(logits.astype(np.float32), digit_probs.astype(np.float32), NAMES)
    np.testing.assert_allclose(narrow[:, names.index("digit_greater.a")], [LOGIT_CLIP, -LOGIT_CLIP], rtol=1e-6)
    np.testing.assert_allclose(narrow, wide, rtol=1e-6, atol=1e-6)


def test_near_certain_float32_posteriors_are_read_in_float64():
    """Both halves nearly sure of a 4: P(a != b) is 1 minus a number near 1, which float32 gets wrong in the
    fourth digit (1/3 would come out 0.333327)."""
    left, right = {4: 1 - 3e-4, 5: 1e-4, 3: 2e-4}, {4: 1 - 3e-4, 5: 2e-4, 3: 1e-4}
    digit_probs = np.stack([_pair(left, right)] * 2)[None]  # (1, 2, 2, 10)
    wide, names = stacking_features(np.zeros((1, 2)), digit_probs, NAMES)
    as_float32 = digit_probs.astype(np.float32)  # what the graph hands over
    narrow, _ = stacking_features(np.zeros((1, 2), np.float32), as_float32, NAMES)
    np.testing.assert_allclose(narrow, stacking_features(np.zeros((1, 2)), as_float32.astype(np.float64), NAMES)[0],
                               rtol=1e-6)
    # greater: (5,4) + (4,3) + (5,3); less: (3,4) + (4,5) + (3,5); by hand, about 1/3
    p = (1e-4 * (1 - 3e-4) + (1 - 3e-4) * 1e-4 + 1e-8) / (3e-4 * (1 - 3e-4) * 2 + 1e-8 + 4e-8)
    assert wide[0, names.index("digit_greater.a")] == pytest.approx(math.log(p / (1 - p)), rel=1e-6)


def test_float32_logits_are_summarised_in_float64():
    """The graph's logits are float32. Their mean and spread across the models are computed in float64 and
    rounded once to the table's float32: summed in float32 they come out one float32 step off in most rows, and
    a stacker's split can fall between the two values."""
    rng = np.random.default_rng(11)
    m = 10
    names = tuple(f"m{i}" for i in range(m))
    logits = (rng.standard_normal((1000, m)) * 4).astype(np.float32)
    digit_probs = np.full((1000, m, 2, 10), 0.1)
    table, columns = stacking_features(logits, digit_probs, names)
    wide = logits.astype(np.float64)  # exact: every float32 is a float64
    for name, expected in (("logit_mean", wide.mean(1)), ("logit_std", wide.std(1)), ("logit_min", wide.min(1)),
                           ("logit_max", wide.max(1))):
        np.testing.assert_array_equal(table[:, columns.index(name)], expected.astype(np.float32), err_msg=name)


def test_a_zero_logit_is_no_vote_for_greater():
    table, names = stacking_features(np.array([[0.0, 2.0], [0.0, -1.0]]), _inputs()[1], NAMES)
    np.testing.assert_array_equal(table[:, names.index("vote_share")], [0.5, 0.0])


def test_stacking_features_pick_and_order_the_recorded_columns():
    logits, digit_probs = _inputs()
    full, names = stacking_features(logits, digit_probs, NAMES)
    wanted = ["vote_share", "logit.b", "p_right_7"]
    table, picked = stacking_features(logits, digit_probs, NAMES, wanted)
    assert picked == wanted
    np.testing.assert_array_equal(table, full[:, [names.index(n) for n in wanted]])
    with pytest.raises(FeatureMismatchError) as refused:
        stacking_features(logits, digit_probs, NAMES, ["logit.a", "logit.c", "logit.d"])
    assert str(refused.value) == ("unknown stacking feature(s) logit.c, logit.d: the stacker was fitted on features "
                                  "this code does not compute (retrain or update the code)")
    with pytest.raises(FeatureMismatchError) as refused:  # at most five named
        stacking_features(logits, digit_probs, NAMES, [f"z{i}" for i in range(7)])
    assert str(refused.value).startswith("unknown stacking feature(s) z0, z1, z2, z3, z4: the stacker")


@pytest.mark.parametrize("logits_shape, probs_shape, names", [
    ((2, 2), (2, 3, 2, 10), NAMES),
    ((2, 2), (2, 2, 10), NAMES),
    ((2, 2), (2, 2, 2, 10), ("a",)),
    ((3, 2), (2, 2, 2, 10), NAMES),
])
def test_stacking_features_refuse_mismatched_shapes(logits_shape, probs_shape, names):
    with pytest.raises(ValueError, match=r"expected logits \(N, M\) and digit_probs \(N, M, 2, 10\)"):
        stacking_features(np.zeros(logits_shape), np.full(probs_shape, 0.1), names)


def test_sigmoid_inverts_the_logit():
    np.testing.assert_allclose(sigmoid(np.array([0.0, math.log(3), -math.log(3)])), [0.5, 0.75, 0.25])


def test_check_feature_spec_accepts_what_this_code_computes():
    spec = {"version": FEATURE_SET_VERSION, "names": ["logit.a", "vote_share"]}
    assert check_feature_spec(spec, NAMES) == ["logit.a", "vote_share"]


OLD_VERSION = (f"the stackers were fitted on stacking features version {FEATURE_SET_VERSION - 1}, this code computes "
               f"version {FEATURE_SET_VERSION} (re-stack: python -m training.run_all)")
NO_NAMES = "'features.names' must be the non-empty list of stacking feature names"


@pytest.mark.parametrize("spec, message", [
    (["logit.a"], "'features' must be an object with 'version' and 'names'"),
    ({"version": FEATURE_SET_VERSION - 1, "names": ["logit.a"]}, OLD_VERSION),
    ({"names": ["logit.a"]}, OLD_VERSION.replace(f"version {FEATURE_SET_VERSION - 1},", "version None,")),
    ({"version": FEATURE_SET_VERSION, "names": []}, NO_NAMES),
    ({"version": FEATURE_SET_VERSION, "names": "logit.a"}, NO_NAMES),
    ({"version": FEATURE_SET_VERSION, "names": ["logit.z"]}, "unknown stacking feature(s) logit.z: the stacker"),
])
def test_check_feature_spec_refuses_what_it_cannot_compute(spec, message):
    with pytest.raises(FeatureMismatchError) as refused:
        check_feature_spec(spec, NAMES)
    assert str(refused.value).startswith(message), str(refused.value)
