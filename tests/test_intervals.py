"""hfxray.intervals: Wilson intervals against scipy, the design effect by hand, and the ECE interval's coverage
checked by simulation against models of known true ECE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from hfxray.intervals import (
    calibration_model,
    calibration_model_ece,
    design_effect,
    ece_estimates,
    ece_noise_floor,
    null_eces,
    proportion_interval,
    simulate_ece_interval,
    wilson_interval,
)
from hfxray.metrics import expected_calibration_error

N_BINS = 15
COVERAGE = Path(__file__).resolve().parents[1] / "docs" / "results" / "evidence" / "ece_coverage.json"


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
    return calibration_model(rng, n, sharpen)


def test_the_models_true_ece_by_hand():
    """The simulation's truth: at sharpen 1 the true accuracy equals the confidence in every bin (ECE 0); a much
    over-confident model has a clearly positive one."""
    assert calibration_model_ece(1.0, N_BINS, size=200_000) == pytest.approx(0.0, abs=1e-12)
    assert calibration_model_ece(0.5, N_BINS) > 0.08


@pytest.mark.parametrize("sharpen", [1.0, 0.5])
def test_ece_interval_covers_the_truth_in_simulation(sharpen):
    """200 test splits of 92 images: the 95 % interval covers the true ECE in >= 90 % of them, and always holds its
    own point estimate. The plug-in ECE's own bias is visible: for the calibrated model it sits near its floor.
    The figures are docs/evidence.md's first rows, as `scripts/evidence_figures.py ece-coverage` committed them."""
    result = simulate_ece_interval(92, sharpen, N_BINS, draws=200, n_resamples=400, seed=7)
    assert result["coverage"] >= 0.9 and result["holds_point"] == 1.0
    if sharpen == 1.0:
        assert result["true_ece"] == 0.0
        assert result["mean_ece"] == pytest.approx(result["mean_noise_floor"], rel=0.1)  # the floor is its bias
    committed = json.loads(COVERAGE.read_text())["rows"]
    assert result in committed, "docs/results/evidence/ece_coverage.json differs from what the code gives now: " \
        "python scripts/evidence_figures.py ece-coverage, then python scripts/results_tables.py --write"


def test_calibrated_p_tells_noise_from_miscalibration():
    rng = np.random.default_rng(11)
    labels, probs = _draw(rng, 400, 1.0)
    calibrated = ece_estimates(labels, probs, N_BINS, n_resamples=200)
    assert calibrated["ece_calibrated_p"] > 0.01
    assert calibrated["ece"] == pytest.approx(expected_calibration_error(labels, probs, N_BINS))
    labels, probs = _draw(rng, 400, 0.3)
    over = ece_estimates(labels, probs, N_BINS, n_resamples=200)
    assert over["ece_calibrated_p"] < 0.01 and over["interval"][0] > 0
