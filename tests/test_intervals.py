"""hfxray.intervals: Wilson intervals against scipy, the design effect by hand, and the ECE interval's coverage
checked by simulation against models of known true ECE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from hfxray.intervals import (
    design_effect,
    ece_estimates,
    ece_noise_floor,
    null_eces,
    proportion_interval,
    wilson_interval,
)
from hfxray.metrics import expected_calibration_error

N_BINS = 15


@pytest.mark.parametrize("k,n", [(0, 79), (12, 12), (5, 20), (91, 92), (1, 1)])
def test_wilson_equals_scipy(k, n):
    expected = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_proportions_at_the_edges_are_not_zero_width():
    all_right = proportion_interval(np.ones(12))["interval"]
    none_right = proportion_interval(np.zeros(79))["interval"]
    assert all_right[1] == 1.0 and all_right[0] < 0.8
    assert none_right[0] == 0.0 and 0.03 < none_right[1] < 0.06
    assert proportion_interval(np.zeros(0))["interval"] == (None, None)


def test_design_effect_by_hand_and_its_effect():
    # Two patients, each with 4 identical outcomes: the 8 images carry the evidence of about 2.
    hits = np.array([1, 1, 1, 1, 0, 0, 0, 0], float)
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # clustered var = G/(G-1) * sum_g (sum_i (h - p))^2 / n^2 = 2 * (2^2 + 2^2) / 64 = 0.25; binomial 0.25 / 8
    assert design_effect(hits, groups) == pytest.approx(8.0)
    assert design_effect(hits, np.arange(8)) == pytest.approx(8 / 7)  # the G/(G-1) factor only
    assert design_effect(np.ones(8), groups) == 1.0
    one_each = proportion_interval(hits, np.arange(8))
    clustered = proportion_interval(hits, groups)
    assert clustered["n_effective"] == pytest.approx(1.0)
    low, high = clustered["interval"]
    assert high - low > np.diff(one_each["interval"])[0]


def test_noise_floor_matches_a_direct_simulation():
    rng = np.random.default_rng(3)
    probs = rng.uniform(0.02, 0.98, 60)
    conf = np.maximum(probs, 1 - probs)
    direct = []
    for _ in range(400):
        correct = rng.random(60) < conf
        labels = np.where(correct, probs >= 0.5, probs < 0.5).astype(int)
        direct.append(expected_calibration_error(labels, probs, N_BINS))
    assert ece_noise_floor(probs, N_BINS) == pytest.approx(np.mean(direct), rel=0.06)
    assert null_eces(probs, N_BINS, 50, seed=1).tolist() == null_eces(probs, N_BINS, 50, seed=1).tolist()


def _draw(rng, n: int, sharpen: float):
    """Predicted p = sigmoid(d); the true p(virus) = sigmoid(sharpen * d): 1 = calibrated, < 1 over-confident."""
    d = rng.normal(0.0, 2.5, n)
    return (rng.random(n) < 1 / (1 + np.exp(-sharpen * d))).astype(int), 1 / (1 + np.exp(-d))


def _true_ece(sharpen: float) -> float:
    """The model's ECE (same 15 bins) on a very large draw, from the true accuracy of each prediction."""
    d = np.random.default_rng(123).normal(0.0, 2.5, 1_000_000)
    p, p_true = 1 / (1 + np.exp(-d)), 1 / (1 + np.exp(-sharpen * d))
    conf, accuracy = np.maximum(p, 1 - p), np.where(p >= 0.5, p_true, 1 - p_true)
    which = np.digitize(conf, np.linspace(0, 1, N_BINS + 1)[1:-1], right=True)
    return float(np.abs(np.bincount(which, weights=accuracy - conf, minlength=N_BINS)).sum() / len(p))


@pytest.mark.parametrize("sharpen", [1.0, 0.5])
def test_ece_interval_covers_the_truth_in_simulation(sharpen):
    """200 test splits of 92 images: the 95 % interval covers the true ECE in >= 90 % of them, and always holds its
    own point estimate. The plug-in ECE's own bias is visible: for the calibrated model it sits near its floor."""
    rng = np.random.default_rng(7)
    truth = 0.0 if sharpen == 1.0 else _true_ece(sharpen)
    assert sharpen == 1.0 or truth > 0.08  # a clearly miscalibrated model
    covered, plugins, floors = 0, [], []
    for repetition in range(200):
        labels, probs = _draw(rng, 92, sharpen)
        result = ece_estimates(labels, probs, N_BINS, n_resamples=300, seed=repetition)
        low, high = result["interval"]
        assert low <= result["ece_debiased"] <= high
        assert result["ece"] == pytest.approx(expected_calibration_error(labels, probs, N_BINS))
        covered += low <= truth <= high
        plugins.append(result["ece"])
        floors.append(result["ece_noise_floor"])
    assert covered / 200 >= 0.9
    if sharpen == 1.0:
        assert np.mean(plugins) == pytest.approx(np.mean(floors), rel=0.1)  # the floor is the plug-in's bias


def test_calibrated_p_tells_noise_from_miscalibration():
    rng = np.random.default_rng(11)
    labels, probs = _draw(rng, 400, 1.0)
    assert ece_estimates(labels, probs, N_BINS, n_resamples=200)["ece_calibrated_p"] > 0.01
    labels, probs = _draw(rng, 400, 0.3)
    over = ece_estimates(labels, probs, N_BINS, n_resamples=200)
    assert over["ece_calibrated_p"] < 0.01 and over["interval"][0] > 0
