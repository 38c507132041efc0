"""Every figure in hfxray.metrics checked against an independent computation written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from hfxray.metrics import (
    CI_METRICS,
    _weighted_metrics,
    apply_temperature,
    binary_metrics,
    bootstrap_ci,
    ece_text,
    evaluation_report,
    expected_calibration_error,
    plot_reliability_diagram,
    reliability_bins,
)
from hfxray.intervals import proportion_interval

# 4 virus, 6 normal. Predictions at >= 0.5: virus 1,1,0,1 -> tp 3, fn 1; normal 0,0,1,0,1(0.5 counts),0 -> tn 4, fp 2.
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PROBS = [0.9, 0.8, 0.4, 0.6, 0.1, 0.2, 0.7, 0.3, 0.5, 0.05]


def mann_whitney_auroc(labels, probs) -> float:
    """P(score of a virus case > score of a normal case), ties counted 1/2, by explicit pairs."""
    pos = [p for y, p in zip(labels, probs) if y == 1]
    neg = [p for y, p in zip(labels, probs) if y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def naive_ece(labels, probs, n_bins=15) -> float:
    """Guo et al. top-label ECE with a plain loop over bins (lo, hi]; 0 goes in the first bin."""
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        members = []
        for y, p in zip(labels, probs):
            conf = max(p, 1 - p)
            if lo < conf <= hi or (m == 0 and conf == 0):
                members.append((conf, float((1 if p >= 0.5 else 0) == y)))
        if members:
            acc = sum(c for _, c in members) / len(members)
            conf = sum(c for c, _ in members) / len(members)
            total += len(members) / len(labels) * abs(acc - conf)
    return total


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated probabilities: 'true' logit difference d, p = sigmoid(d)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, 2.0, size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-d))).astype(int)
    return labels, d


# ---------------------------------------------------------------- binary_metrics


def test_binary_metrics_hand_counted():
    m = binary_metrics(LABELS, PROBS)
    assert m["confusion_matrix"] == [[4, 2], [1, 3]]
    assert m["n"] == 10 and m["n_positive"] == 4
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["auroc"] == pytest.approx(21 / 24)  # pairs: 0.9 -> 6, 0.8 -> 6, 0.4 -> 4, 0.6 -> 5


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=60)
    probs = rng.integers(0, 8, size=60) / 7  # many ties
    assert binary_metrics(labels, probs)["auroc"] == pytest.approx(mann_whitney_auroc(labels, probs))


def test_one_class_only_gives_none_not_crash():
    m = binary_metrics([0, 0, 0], [0.2, 0.7, 0.1])
    assert m["auroc"] is None and m["sensitivity"] is None and m["balanced_accuracy"] is None
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[2, 1], [0, 0]]
    ci = bootstrap_ci([0, 0, 0], [0.2, 0.7, 0.1], n_resamples=50)
    assert ci["auroc"] == (None, None) and ci["n_resamples_used"]["auroc"] == 0


def test_mismatched_lengths_name_the_arguments():
    with pytest.raises(ValueError, match="labels and probs differ in length"):
        binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="groups and labels"):
        bootstrap_ci([0, 1], [0.2, 0.8], groups=["a"])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        binary_metrics([0, 2], [0.1, 0.2])


# ---------------------------------------------------------------- bootstrap


def test_vectorised_metrics_equal_sklearn_on_repeated_samples():
    """A resample is integer weights; weighting must equal binary_metrics on the repeated data."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, size=30)
    probs = rng.integers(0, 11, size=30) / 10
    weights = rng.integers(0, 4, size=(5, 30))
    weights[0] = 1
    got = _weighted_metrics(weights, labels, probs)
    for row, w in enumerate(weights):
        expected = binary_metrics(np.repeat(labels, w), np.repeat(probs, w))
        for name in CI_METRICS:
            assert got[name][row] == pytest.approx(expected[name]), name


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    labels, d = synthetic(120, seed=3)
    probs = 1 / (1 + np.exp(-d))
    point = binary_metrics(labels, probs)
    ci = bootstrap_ci(labels, probs, n_resamples=1000, seed=7)
    for name in CI_METRICS:
        low, high = ci[name]
        assert low <= point[name] <= high, name
        assert ci["n_resamples_used"][name] == 1000
    assert bootstrap_ci(labels, probs, n_resamples=1000, seed=7) == ci
    assert bootstrap_ci(labels, probs, n_resamples=1000, seed=8) != ci


def test_bootstrap_narrower_with_more_data():
    small, large = synthetic(100, seed=4), synthetic(2000, seed=4)
    widths = []
    for labels, d in (small, large):
        ci = bootstrap_ci(labels, 1 / (1 + np.exp(-d)), n_resamples=500)
        widths.append({name: ci[name][1] - ci[name][0] for name in CI_METRICS})
    for name in CI_METRICS:
        assert widths[1][name] < widths[0][name] / 2, name


def test_bootstrap_drops_undefined_resamples():
    labels = [1, 0, 0, 0, 0, 0, 0, 0]  # a resample misses the single virus case with p = (7/8)^8 ~ 0.34
    probs = [0.9, 0.1, 0.2, 0.6, 0.3, 0.4, 0.2, 0.1]
    ci = bootstrap_ci(labels, probs, n_resamples=1000)
    used = ci["n_resamples_used"]
    assert used["accuracy"] == used["specificity"] == 1000
    assert 550 < used["auroc"] == used["sensitivity"] == used["balanced_accuracy"] < 780
    assert 0 <= ci["auroc"][0] <= ci["auroc"][1] <= 1


def test_group_bootstrap_with_one_sample_per_group_equals_image_bootstrap():
    labels, d = synthetic(80, seed=5)
    probs = 1 / (1 + np.exp(-d))
    groups = [f"patient{i:03d}" for i in range(80)]  # sorted ids: group k is sample k, same draws
    assert bootstrap_ci(labels, probs, groups=groups, seed=3) == bootstrap_ci(labels, probs, seed=3)


def test_group_bootstrap_resamples_whole_patients():
    """5 patients x 20 identical images: the evidence is 5 patients, not 100 images."""
    labels = np.repeat([1, 0, 1, 0, 1], 20)
    probs = np.repeat([0.9, 0.2, 0.3, 0.8, 0.7], 20)  # patients 0, 1, 4 right; 2, 3 wrong
    groups = np.repeat(["p0", "p1", "p2", "p3", "p4"], 20)
    by_image = bootstrap_ci(labels, probs, n_resamples=1000)
    by_patient = bootstrap_ci(labels, probs, groups=groups, n_resamples=1000)
    image_width = by_image["accuracy"][1] - by_image["accuracy"][0]
    patient_width = by_patient["accuracy"][1] - by_patient["accuracy"][0]
    assert patient_width > 2.5 * image_width
    # Each patient draw adds 20 images of one outcome, so accuracy moves in steps of 1/5: the 2.5th
    # percentile of whole-patient resamples is 0.2 or 0.4 (image resampling gives ~0.5).
    assert by_patient["accuracy"][0] in (pytest.approx(0.2), pytest.approx(0.4))


def test_bootstrap_in_small_chunks_gives_the_same_intervals(monkeypatch):
    """Memory is bounded by drawing resamples in chunks; the chunking must not change any interval."""
    import hfxray.intervals as intervals

    labels, d = synthetic(100, seed=6)
    probs, groups = 1 / (1 + np.exp(-d)), np.arange(100) // 2
    whole = bootstrap_ci(labels, probs, groups=groups, n_resamples=300)
    monkeypatch.setattr(intervals, "CHUNK_CELLS", 700)  # 14 resamples of 50 patients per chunk
    assert bootstrap_ci(labels, probs, groups=groups, n_resamples=300) == whole


# ---------------------------------------------------------------- calibration


def test_ece_hand_computed():
    labels = [1, 0, 0, 1, 1]
    probs = [0.95, 0.97, 0.1, 0.3, 0.72]
    # conf .95 (right), .97 (wrong) -> bin 14 (14/15, 1]: acc .5, conf .96
    # conf .90 (right)              -> bin 13 (13/15, 14/15]: acc 1, conf .90
    # conf .70 (wrong), .72 (right) -> bin 10 (10/15, 11/15]: acc .5, conf .71
    expected = (2 * abs(0.5 - 0.96) + 1 * abs(1 - 0.90) + 2 * abs(0.5 - 0.71)) / 5
    assert expected == pytest.approx(0.288)
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    bins = reliability_bins(labels, probs)
    assert bins["count"].tolist() == [0] * 10 + [2, 0, 0, 1, 2]
    assert bins["accuracy"][10] == pytest.approx(0.5) and bins["confidence"][14] == pytest.approx(0.96)
    assert np.isnan(bins["accuracy"][0])


def test_ece_matches_naive_loop():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=300)
    probs = np.concatenate([rng.random(297), [0.0, 0.5, 1.0]])
    assert expected_calibration_error(labels, probs) == pytest.approx(naive_ece(labels, probs))
    assert expected_calibration_error(labels, probs, n_bins=7) == pytest.approx(naive_ece(labels, probs, 7))
    bins = reliability_bins(labels, probs)
    assert bins["count"].sum() == 300 and bins["count"][:7].sum() == 0  # top-label confidence >= 0.5


def test_apply_temperature_one_is_softmax():
    logits = np.array([[0.3, -1.2], [2.0, 2.0], [-40.0, 45.0], [1.5, 0.5]])
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax = exp / exp.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(apply_temperature(logits, 1.0), softmax[:, 1], rtol=1e-12)
    np.testing.assert_allclose(apply_temperature(logits, 2.0), apply_temperature(logits / 2, 1.0), rtol=1e-12)


# ---------------------------------------------------------------- plot and report


@pytest.mark.parametrize("with_after", [False, True])
def test_reliability_diagram_png(tmp_path, with_after):
    labels, d = synthetic(300, seed=9)
    logits = 4 * np.stack([-d / 2, d / 2], axis=1)
    after = apply_temperature(logits, 4.0) if with_after else None
    path = plot_reliability_diagram(labels, apply_temperature(logits, 1.0), tmp_path / "sub" / "rel.png",
                                    "Test split", probs_after=after)
    assert path.exists()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 20
    assert pixels.shape[1] > (1000 if with_after else 500)


def test_evaluation_report_is_json_and_consistent():
    labels, d = synthetic(150, seed=10)
    logits = 3 * np.stack([-d / 2, d / 2], axis=1)
    groups = np.arange(150) // 3
    report = evaluation_report(labels, logits, groups=groups, n_resamples=200, seed=1)
    decoded = json.loads(json.dumps(report, allow_nan=False))
    probs = apply_temperature(logits, 1.0)
    point = binary_metrics(labels, probs)
    for name, value in point.items():
        assert decoded[name] == (pytest.approx(value) if isinstance(value, float) else value)
    bootstrap = bootstrap_ci(labels, probs, groups, 200, seed=1)
    assert set(decoded["ci95"]) == set(CI_METRICS) == set(decoded["ci95_method"])
    for name in ("auroc", "balanced_accuracy", "f1"):  # not proportions: the patient bootstrap's percentiles
        assert decoded["ci95"][name] == list(bootstrap[name])
        assert decoded["ci95_method"][name] == "percentile bootstrap"
    pred = (probs >= 0.5).astype(int)
    # accuracy: Wilson with n shrunk by the design effect of the 50 patients of 3 images each
    accuracy = proportion_interval(pred == labels, groups)
    assert decoded["ci95"]["accuracy"] == list(accuracy["interval"])
    assert 1 <= accuracy["design_effect"] and accuracy["n"] == 150
    sensitivity = proportion_interval((pred == 1)[labels == 1], groups[labels == 1])
    assert decoded["ci95"]["sensitivity"] == list(sensitivity["interval"])
    assert decoded["bootstrap_unit"] == "patient"
    assert decoded["ece"] == pytest.approx(naive_ece(labels, probs))
    low, high = decoded["ci95"]["ece"]
    assert 0 <= low <= decoded["ece_debiased"] <= high
    assert 0 < decoded["ece_noise_floor"] < 0.2 and 0 < decoded["ece_calibrated_p"] <= 1
    assert all(isinstance(v, (float, int, str, list, dict, type(None))) for v in decoded.values())


def test_evaluation_report_single_class_and_arguments():
    report = evaluation_report([0, 0, 0, 0], [[1.0, 0.0], [2.0, -1.0], [0.0, 0.5], [0.3, 0.1]], n_resamples=20)
    json.dumps(report, allow_nan=False)
    assert report["auroc"] is None and report["ci95"]["auroc"] == [None, None]
    assert report["ci95"]["sensitivity"] == [None, None]  # no virus image to count
    low, high = report["ci95"]["specificity"]  # 2 of 4 normals right: Wilson, never zero width
    assert low < 0.5 < high


def test_proportions_at_zero_or_one_get_wilson_not_zero_width():
    """12/12 correct has a one-value bootstrap distribution ([1, 1]); the reported interval is Wilson's."""
    labels = np.array([1] * 6 + [0] * 6)
    logits = np.stack([-(2 * labels - 1) * 3.0, (2 * labels - 1) * 3.0], axis=1)
    report = evaluation_report(labels, logits, groups=np.arange(12), n_resamples=100)
    assert bootstrap_ci(labels, apply_temperature(logits, 1.0), np.arange(12), 100)["accuracy"] == (1.0, 1.0)
    assert report["accuracy"] == 1.0
    assert report["ci95"]["accuracy"] == pytest.approx([0.7575, 1.0], abs=1e-3)  # binomtest(12, 12), Wilson


def test_ece_text_reads_new_and_old_results():
    assert ece_text(0.071, [0.0, 0.05], 0.070, 0.004) == "0.071 (noise floor 0.070; debiased 0.004, 95% CI 0.000-0.050)"
    assert ece_text(0.071, [0.065, 0.140]) == "0.071 (0.065-0.140)"  # a results file from before the floor
    assert ece_text(None) == "n/a"
    with pytest.raises(ValueError, match="labels and logits differ"):
        evaluation_report([0, 1, 1], [[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="shape \\[n, 2\\]"):
        apply_temperature([0.1, 0.2], 1.0)


def test_chance_verdict_is_the_one_rule_for_auroc_and_balanced_accuracy():
    from hfxray.metrics import chance_sentence, chance_verdict

    above = {"auroc": [0.62, 0.81], "balanced_accuracy": [0.55, 0.70]}
    assert chance_verdict(above) is None and chance_sentence({"auroc": 0.7}, above) is None
    assert chance_verdict({**above, "auroc": [0.43, 0.67]}) == "at chance"
    assert chance_verdict({**above, "balanced_accuracy": [0.5, 0.5]}) == "at chance"  # one class predicted
    assert chance_verdict({"auroc": [0.20, 0.40], "balanced_accuracy": [0.30, 0.45]}) == "below chance"
    sentence = chance_sentence({"auroc": 0.547, "balanced_accuracy": 0.51},
                               {"auroc": [0.43, 0.66], "balanced_accuracy": [0.45, 0.57]})
    assert sentence.startswith("AT CHANCE: AUROC 0.547 (0.430-0.660) and balanced accuracy 0.510 (0.450-0.570)")


def test_paired_difference_draws_the_same_patients_for_both_models():
    from hfxray.metrics import paired_difference

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    groups = np.arange(80) // 2
    good = labels * 0.3 + rng.uniform(0, 0.7, 80)  # overlapping classes: accuracy about 0.8
    coin = rng.uniform(0, 1, 80)
    same = paired_difference(labels, good, good, groups=groups)
    assert same["auroc"] == (0.0, 0.0, 0.0) and same["accuracy"] == (0.0, 0.0, 0.0)
    value, low, high = paired_difference(labels, good, coin, groups=groups)["auroc"]
    assert value == pytest.approx(roc_auc_score(labels, good) - roc_auc_score(labels, coin))
    assert 0 < low < value < high
    # a nearly identical second model: the paired interval is far narrower than either model's own
    near = np.clip(good + rng.normal(0, 0.02, 80), 0, 1)
    _, low, high = paired_difference(labels, good, near, groups=groups)["accuracy"]
    own = bootstrap_ci(labels, good, groups=groups)["accuracy"]
    assert 0 < high - low < (own[1] - own[0]) / 2


@pytest.mark.parametrize("two_panels", [False, True])
def test_reliability_legend_lies_inside_the_figure(two_panels, tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    probs = rng.uniform(0, 1, 60)
    path = plot_reliability_diagram(labels, probs, tmp_path / "r.png", "Reliability", probs if two_panels else None,
                                    ("before", "after"))
    pixels = np.asarray(Image.open(path).convert("L"))
    legend_rows = pixels[int(pixels.shape[0] * 0.9):]
    # a legend cut by the figure's edge leaves its text in the outermost columns
    assert legend_rows[:, :3].min() > 240 and legend_rows[:, -3:].min() > 240
    assert legend_rows.min() < 100  # the legend is there
