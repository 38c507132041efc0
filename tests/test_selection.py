"""hfxray.selection: Holm by hand, the corrected t-test by hand, its error rate and power on synthetic fold scores,
and the paired patient bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from hfxray.selection import ALPHA, corrected_t_test, decide, holm, paired_bootstrap, simulate_design


def test_holm_against_a_hand_example():
    # p sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06, running max), 0.04 (x1 = 0.04 -> 0.06)
    assert holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.003]) == [0.003]
    # Holm rejects 0.01 and 0.02 at 0.05 here where Bonferroni (x4) would reject only 0.01
    assert sum(p < 0.05 for p in holm([0.01, 0.0125, 0.2, 0.5])) == 2


def test_corrected_t_test_by_hand():
    diffs = [0.02, 0.01, 0.03, -0.01, 0.02, 0.015]
    result = corrected_t_test(diffs, n_train=400, n_evaluation=100, min_gain=0.005)
    d = np.array(diffs)
    se = math.sqrt((1 / 6 + 100 / 400) * d.var(ddof=1))
    assert result["se"] == pytest.approx(se)
    assert result["t"] == pytest.approx((d.mean() - 0.005) / se)
    assert result["p"] == pytest.approx(stats.t.sf((d.mean() - 0.005) / se, 5))
    assert result["lower_bound"] == pytest.approx(d.mean() - stats.t.ppf(0.95, 5) * se)
    # one-sided: a loss of the same size has p near 1, never a pass
    assert corrected_t_test([-x for x in diffs], 400, 100)["p"] > 0.9
    assert corrected_t_test([0.01], 400, 100)["p"] is None


def test_decide_states_each_candidate():
    tests = {"a": dict(p=0.01, mean=0.02, min_gain=0.0), "b": dict(p=0.03, mean=0.01, min_gain=0.0),
             "d": dict(p=0.06, mean=0.01, min_gain=0.0),
             "c": dict(p=None, mean=None, min_gain=0.0)}
    decisions = decide(tests)
    # sorted 0.01 x 4, 0.03 x 3, 0.06 x 2 (running maximum); the candidate without a p counts as p = 1
    assert decisions["a"]["passes"] and decisions["a"]["p_holm"] == pytest.approx(0.04)
    assert not decisions["b"]["passes"] and decisions["b"]["p_holm"] == pytest.approx(0.09)
    assert not decisions["d"]["passes"] and decisions["d"]["p_holm"] == pytest.approx(0.12)
    assert decisions["b"]["decision"].startswith("does not pass") and "passes: gain +0.0200" in decisions["a"]["decision"]
    assert decisions["c"]["passes"] is False and decisions["c"]["decision"].startswith("no decision")


def test_no_gain_passes_at_most_at_the_stated_rate():
    """200 null CV runs (R = 2, K = 5, 1,750 images): false passes <= alpha + 3 sd."""
    rate = simulate_design(gain=0.0, simulations=200, seed=3)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 200)


def test_a_planted_gain_is_detected():
    """A 3-point gain passes in most runs; the same data with min_gain above the gain rarely do."""
    assert simulate_design(gain=0.03, simulations=100, seed=4) >= 0.9
    assert simulate_design(gain=0.03, min_gain=0.04, simulations=100, seed=4) <= 0.1


def test_paired_bootstrap_resamples_patients():
    rng = np.random.default_rng(0)
    reference = (rng.random(400) < 0.9).astype(float)
    candidate = np.where(rng.random(400) < 0.1, 1.0, reference)
    one_each = paired_bootstrap(reference, candidate, np.arange(400), n_resamples=500)
    assert one_each["mean"] == pytest.approx((candidate - reference).mean())
    assert one_each["ci95"][0] <= one_each["mean"] <= one_each["ci95"][1]
    # the same differences, each patient holding 4 copies of one image: 100 patients' worth of evidence, wider
    clustered = paired_bootstrap(np.repeat(reference[:100], 4), np.repeat(candidate[:100], 4),
                                 np.repeat(np.arange(100), 4), n_resamples=500)
    assert clustered["n_patients"] == 100
    assert np.diff(clustered["ci95"])[0] > 1.5 * np.diff(one_each["ci95"])[0]
    assert paired_bootstrap(reference, reference, np.arange(400), n_resamples=200)["p"] == 1.0


def test_the_committed_power_table_is_what_simulate_design_gives():
    """docs/evidence.md's power table renders docs/results/evidence/selection_power.json; one of its rows (R = 2, a
    1.5-point gain) is recomputed here at the file's simulations and seed."""
    import json
    from pathlib import Path

    power = json.loads((Path(__file__).resolve().parents[1] / "docs" / "results" / "evidence"
                        / "selection_power.json").read_text())
    row = next(r for r in power["rows"] if (r["repeats"], r["gain"], r["min_gain"]) == (2, 0.015, 0.0))
    for alpha, share in row["passes"].items():
        assert simulate_design(repeats=2, gain=0.015, alpha=float(alpha), simulations=power["simulations"],
                               seed=power["seed"]) == share, \
            "selection_power.json differs from the code: python scripts/evidence_figures.py selection-power"
