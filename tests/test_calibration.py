"""hfxray.calibration: the temperature fit, the shipping rule, folding into each family's head, reading it back."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hfxray.calibration import (CalibrationError, decide_temperature, fit_temperature, fold_temperature,
                                folded_temperature, nll, unfolded_logits)
from hfxray.metrics import apply_temperature, expected_calibration_error
from hfxray.models import create_model

KINDS = ("vit", "bit", "hybrid")


def synthetic(n: int, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated probabilities, logits multiplied by `scale` (> 1: over-confident)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, 2.0, size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-d))).astype(int)
    return scale * np.stack([-d / 2, d / 2], axis=1), labels


def test_temperature_recovers_overconfidence():
    logits, labels = synthetic(4000, seed=8, scale=5.0)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(5.0, rel=0.1)
    assert fit_temperature(logits, labels) == t  # deterministic
    before = expected_calibration_error(labels, apply_temperature(logits, 1.0))
    after = expected_calibration_error(labels, apply_temperature(logits, t))
    assert after < before / 3


def test_nll_matches_its_definition():
    logits, labels = synthetic(50, seed=1)
    p = torch.softmax(torch.tensor(logits) / 2.0, dim=-1).numpy()
    assert nll(logits, labels, 2.0) == pytest.approx(-np.log(p[np.arange(50), labels]).sum())


def test_an_overconfident_model_ships_its_temperature():
    logits, labels = synthetic(400, seed=2, scale=4.0)
    decision = decide_temperature(logits, labels)
    assert decision.fold and decision.temperature == pytest.approx(fit_temperature(logits, labels))
    assert decision.heldout_nll_fitted < decision.heldout_nll_plain


def test_a_calibrated_model_on_a_small_split_keeps_t_1_when_the_check_says_so():
    """On calibrated logits any fitted T is noise: whenever it does not predict held-out folds better, no fold."""
    refused = 0
    for seed in range(20):
        logits, labels = synthetic(40, seed=100 + seed, scale=1.0)
        decision = decide_temperature(logits, labels)
        assert decision.fold == (decision.heldout_nll_fitted < decision.heldout_nll_plain)
        refused += not decision.fold
    assert refused >= 5  # calibrated logits: the check refuses a good share of the fitted temperatures


def test_the_check_keeps_each_patients_images_in_one_fold(monkeypatch):
    """Patients' images never straddle the check's folds; without groups, each image is its own group."""
    from hfxray import calibration

    logits, labels = synthetic(120, seed=4, scale=3.0)
    groups = np.arange(120) // 4  # 30 patients of 4 images
    seen = []
    real = calibration.check_folds
    monkeypatch.setattr(calibration, "check_folds", lambda *a: seen.append(real(*a)) or seen[-1])
    decision = decide_temperature(logits, labels, groups=groups)
    assert "patient-grouped" in decision.reason and decision.fold
    folds = seen[-1]
    assert sorted(np.concatenate(folds).tolist()) == list(range(120))
    assert all(set(groups[f]).isdisjoint(groups[np.setdiff1d(np.arange(120), f)]) for f in folds)
    assert len(folds) == 5


def test_patient_count_not_image_count_limits_the_check():
    logits, labels = synthetic(60, seed=5, scale=3.0)
    one_patient_virus = np.where(labels == 1, 999, np.arange(60))
    assert decide_temperature(logits, labels).fold  # per image the check runs and passes
    decision = decide_temperature(logits, labels, groups=one_patient_virus)
    assert not decision.fold and "single validation patient" in decision.reason


def test_explicit_folds_check_transfer_between_models():
    """The CV refit: one fold per model; T fitted on the other models' logits is scored on each model's own."""
    logits, labels = synthetic(500, seed=6, scale=4.0)
    fold_of = np.arange(500) % 5
    logits[fold_of == 4] /= 4.0  # model 4 is calibrated: the others' T does not suit it
    decision = decide_temperature(logits, labels, folds=fold_of)
    assert "5-fold fold of held-out logits per CV model" in decision.reason
    expected = sum(nll(logits[fold_of == f], labels[fold_of == f],
                       fit_temperature(logits[fold_of != f], labels[fold_of != f])) for f in range(5))
    assert decision.heldout_nll_fitted == pytest.approx(expected, rel=1e-5)
    assert decision.heldout_nll_plain == pytest.approx(nll(logits, labels, 1.0))
    one_model = decide_temperature(logits, labels, folds=np.zeros(500))
    assert not one_model.fold and "one CV model" in one_model.reason


def test_one_class_validation_is_never_folded():
    logits, labels = synthetic(60, seed=3, scale=3.0)
    decision = decide_temperature(logits, np.zeros_like(labels))
    assert not decision.fold and decision.temperature is None and "only normal" in decision.reason


def test_separable_validation_hits_the_bound_and_is_not_folded():
    labels = np.array([0, 1] * 20)
    logits = np.stack([-(labels * 2 - 1) * 0.01, (labels * 2 - 1) * 0.01], axis=1)  # perfectly separated
    decision = decide_temperature(logits, labels)
    assert not decision.fold and "search bound" in decision.reason


def test_bad_logits_are_refused():
    with pytest.raises(CalibrationError, match="NaN"):
        decide_temperature([[0.0, math.nan], [1.0, 0.0]], [0, 1])
    with pytest.raises(CalibrationError, match="differ in length"):
        fit_temperature([[0.0, 1.0]], [0, 1])


@pytest.mark.parametrize("kind", KINDS)
def test_folding_divides_each_familys_logits_and_is_read_back(kind):
    model, _, spec = create_model(kind, "tiny")
    model.eval()
    pixels = torch.randn(3, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
        fold_temperature(model, 2.5)
        after = model(pixel_values=pixels).logits
        fold_temperature(model, 2.0)
    torch.testing.assert_close(after, before / 2.5, atol=1e-5, rtol=1e-5)
    assert folded_temperature(model) == 5.0 and folded_temperature(model.config.to_dict()) == 5.0
    np.testing.assert_allclose(unfolded_logits(after.numpy(), 2.5), before.numpy(), atol=1e-5)


def test_folding_rejects_a_non_positive_temperature():
    model, _, _ = create_model("vit", "tiny")
    assert folded_temperature(model) == 1.0
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(CalibrationError, match="positive"):
            fold_temperature(model, bad)
