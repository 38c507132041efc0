"""Intervals that stay honest at the edges: proportions (Wilson) and the calibration error (debiased, with its floor).

Two failures of the plain percentile bootstrap motivate this module:

* A proportion at 0 or 1 (12/12 correct, sensitivity 0/79) has a bootstrap distribution of one value, so its
  percentile interval has zero width. The Wilson score interval does not degenerate. Images of one patient are
  not independent, so n is replaced by an effective n = n / deff, the design effect deff (>= 1) being the
  patient-clustered variance of the proportion (ratio estimator, with the G/(G-1) small-sample factor) over the
  binomial one (Kish 1965; the effective-n interval of Korn & Graubard 1998, with Wilson's score in place of
  Clopper-Pearson). At 0 or 1 the clustered variance is 0 and cannot be measured; deff = 1 there.
* The plug-in ECE is biased upward: a perfectly calibrated model still shows a gap in each bin from the Bernoulli
  noise of its few images. Its *noise floor* is the expected ECE of a perfectly calibrated model with the same
  confidences (correctness ~ Bernoulli(confidence), simulated with a fixed seed); an ECE near its floor says
  nothing about miscalibration. The *debiased ECE* is Kumar et al.'s estimator (2019, "Verified Uncertainty
  Calibration", sec. 5) for the l1 error: per bin, the plug-in gap |g| minus its estimated upward bias
  E|g + e| - |g|, e ~ N(0, s^2) with s^2 = sum c_i (1 - c_i) / n_b^2 (the bin's Bernoulli variance), in closed form
  (the folded normal's mean). Its interval is a bootstrap pivot (whole patients resampled): in the bootstrap
  world the true ECE is the sample's plug-in ECE, so the law of (debiased* - plug-in) stands in for that of
  (debiased - truth). A percentile interval of the plug-in centres on a value above the truth and in simulations
  of a perfectly calibrated model never covered 0; scipy's BCa on the debiased statistic shifts by the median bias
  of the resamples, which is about the floor, and its jackknife acceleration is unstable at a value pinned to 0,
  so the pivot is used (`tests/test_intervals.py` checks its coverage by simulation).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.special import ndtr
from scipy.stats import norm

THRESHOLD = 0.5
NOISE_FLOOR_SIMULATIONS = 2000
NOISE_FLOOR_SEED = 0
# Upper bound on resamples x samples held in memory at once by a bootstrap.
CHUNK_CELLS = 2_000_000


# --- proportions ------------------------------------------------------------------------------------------------

def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for successes / n; n may be an effective (non-integer) size.

    Equal to `scipy.stats.binomtest(k, n).proportion_ci(confidence, method="wilson")` for integer k and n (tested);
    written out because the design-effect version needs a non-integer n.
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    z = norm.ppf(1 - (1 - confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def design_effect(hits: np.ndarray, groups: np.ndarray) -> float:
    """Patient-clustered variance of mean(hits) over the binomial variance, at least 1 (1 at a proportion of 0 or 1,
    or with one patient, where the clustered variance cannot be measured)."""
    hits = np.asarray(hits, dtype=float)
    n = len(hits)
    p = hits.mean()
    _, group_of = np.unique(groups, return_inverse=True)
    n_groups = int(group_of.max()) + 1
    if n_groups < 2 or p in (0.0, 1.0):
        return 1.0
    residual = np.bincount(group_of, weights=hits - p, minlength=n_groups)
    clustered = n_groups / (n_groups - 1) * float((residual ** 2).sum()) / n ** 2
    return max(1.0, clustered / (p * (1 - p) / n))


def proportion_interval(hits: Any, groups: Any | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """Wilson interval of mean(hits) (0/1 per image) with n shrunk by the patients' design effect.

    Returns {"interval": (low, high) or (None, None) when there is no image, "n": images, "n_effective",
    "design_effect"}.
    """
    hits = np.asarray(hits, dtype=float)
    n = len(hits)
    if n == 0:
        return dict(interval=(None, None), n=0, n_effective=None, design_effect=None)
    deff = 1.0 if groups is None else design_effect(hits, np.asarray(groups))
    n_effective = n / deff
    low, high = wilson_interval(hits.mean() * n_effective, n_effective, confidence)
    return dict(interval=(low, high), n=n, n_effective=n_effective, design_effect=deff)


# --- ECE: noise floor, debiased estimate, interval ---------------------------------------------------------------

def _top_label(labels: np.ndarray, probs: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, correct, bin index) as `hfxray.metrics.reliability_bins` defines them."""
    conf = np.maximum(probs, 1 - probs)
    correct = ((probs >= THRESHOLD).astype(int) == labels).astype(float)
    which = np.digitize(conf, np.linspace(0.0, 1.0, n_bins + 1)[1:-1], right=True)
    return conf, correct, which


def _in_bin(which: np.ndarray, n_bins: int) -> np.ndarray:
    member = np.zeros((len(which), n_bins))
    member[np.arange(len(which)), which] = 1.0
    return member


def _plugin_and_debiased(weights: np.ndarray, conf: np.ndarray, correct: np.ndarray,
                         member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plug-in and debiased ECE for each row of `weights` (how often each image was drawn)."""
    w = np.asarray(weights, dtype=float)
    total = w.sum(axis=1)
    count = w @ member
    gap_sum = w @ (member * (correct - conf)[:, None])
    var_sum = w @ (member * (conf * (1 - conf))[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(count > 0, gap_sum / count, 0.0)
        sd = np.where(count > 0, np.sqrt(var_sum) / count, 0.0)
        ratio = np.where(sd > 0, gap / sd, 0.0)
    # E|g + e|, e ~ N(0, sd^2): the folded normal's mean.
    folded = sd * math.sqrt(2 / math.pi) * np.exp(-ratio ** 2 / 2) + gap * (1 - 2 * ndtr(-ratio))
    plugin = np.abs(gap_sum).sum(axis=1) / total
    bias = (count * (folded - np.abs(gap))).sum(axis=1) / total
    return plugin, plugin - bias


def null_eces(probs: Any, n_bins: int, simulations: int = NOISE_FLOOR_SIMULATIONS,
              seed: int = NOISE_FLOOR_SEED) -> np.ndarray:
    """Top-label ECEs of a perfectly calibrated model with these confidences (same bins), one per simulation.

    Correctness is drawn ~ Bernoulli(confidence), image by image, with a fixed seed (the figures are reproducible).
    """
    p = np.asarray(probs, dtype=float)
    conf = np.maximum(p, 1 - p)
    member = _in_bin(_top_label(np.zeros(len(p), int), p, n_bins)[2], n_bins)
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, CHUNK_CELLS // len(p))
    values = []
    for start in range(0, simulations, rows_per_chunk):
        drawn = (rng.random((min(rows_per_chunk, simulations - start), len(p))) < conf).astype(float)
        values.append(np.abs((drawn - conf) @ member).sum(axis=1) / len(p))
    return np.concatenate(values)


def ece_noise_floor(probs: Any, n_bins: int, simulations: int = NOISE_FLOOR_SIMULATIONS,
                    seed: int = NOISE_FLOOR_SEED) -> float:
    """Expected top-label ECE of a perfectly calibrated model with these confidences: the mean of `null_eces`."""
    return float(null_eces(probs, n_bins, simulations, seed).mean())


def group_weights(group_of: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of image weights (resamples x images): whole groups drawn with replacement, in a fixed order."""
    n_groups = int(group_of.max()) + 1
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // max(len(group_of), n_groups))
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        drawn = rng.integers(0, n_groups, size=(rows, n_groups))
        cells = (np.arange(rows)[:, None] * n_groups + drawn).ravel()
        yield np.bincount(cells, minlength=rows * n_groups).reshape(rows, n_groups)[:, group_of]


def ece_estimates(labels: Any, probs: Any, n_bins: int, groups: Any | None = None, n_resamples: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The plug-in ECE, its noise floor, a test against perfect calibration, the debiased ECE (>= 0) and its interval.

    Returns {"ece", "ece_noise_floor", "ece_calibrated_p", "ece_debiased", "interval": (low, high)}.
    `ece_calibrated_p` is the share of simulated perfectly calibrated models (`null_eces`) whose ECE reaches the
    observed one (Bröcker & Smith's consistency resampling): a large p says the ECE is what noise alone gives.
    The interval is the pivot of this module's docstring, except that its lower end is 0 whenever that test does
    not reject perfect calibration at level (1 - confidence) / 2: near 0 the pivot's bias estimate fails (the
    observed gaps are noise, and their correction is underestimated), and the test is exact there. In simulation
    (`tests/test_intervals.py`) the interval covers 0 for a perfectly calibrated model and the true ECE of
    miscalibrated ones in >= 90 % of draws. `labels` 0/1 and `probs` p(class 1) as `hfxray.metrics` validates them.
    """
    y, p = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    conf, correct, which = _top_label(y, p, n_bins)
    member = _in_bin(which, n_bins)
    plugin, debiased = (float(v[0]) for v in _plugin_and_debiased(np.ones((1, len(y))), conf, correct, member))
    group_of = (np.arange(len(y)) if groups is None
                else np.unique(np.asarray(groups), return_inverse=True)[1].ravel())
    # The bootstrap world's true ECE is the sample's plug-in ECE (same bins): debiased* - plugin mimics
    # debiased - truth.
    pivots = np.concatenate([_plugin_and_debiased(w, conf, correct, member)[1] - plugin
                             for w in group_weights(group_of, n_resamples, seed)])
    alpha = (1 - confidence) / 2
    low_pivot, high_pivot = np.quantile(pivots, [alpha, 1 - alpha])
    null = null_eces(p, n_bins)
    p_calibrated = float((1 + (null >= plugin - 1e-12).sum()) / (1 + len(null)))
    point = max(0.0, debiased)
    low = 0.0 if p_calibrated > alpha else min(point, max(0.0, debiased - high_pivot))
    high = max(point, debiased - low_pivot)
    return dict(ece=plugin, ece_noise_floor=float(null.mean()), ece_calibrated_p=p_calibrated, ece_debiased=point,
                interval=(float(low), float(high)))


# --- the ECE interval's coverage, by simulation --------------------------------------------------------------------

def calibration_model(rng: np.random.Generator, n: int, sharpen: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted p): d ~ N(0, 2.5), predicted p = sigmoid(d), true p(class 1) = sigmoid(sharpen * d);
    sharpen 1 is calibrated, below 1 over-confident, above 1 under-confident."""
    d = rng.normal(0.0, 2.5, n)
    return (rng.random(n) < 1 / (1 + np.exp(-sharpen * d))).astype(int), 1 / (1 + np.exp(-d))


def calibration_model_ece(sharpen: float, n_bins: int, size: int = 1_000_000, seed: int = 123) -> float:
    """The true top-label ECE (same bins) of `calibration_model`, from each prediction's true accuracy on a very
    large draw."""
    d = np.random.default_rng(seed).normal(0.0, 2.5, size)
    p, p_true = 1 / (1 + np.exp(-d)), 1 / (1 + np.exp(-sharpen * d))
    conf, accuracy = np.maximum(p, 1 - p), np.where(p >= THRESHOLD, p_true, 1 - p_true)
    which = np.digitize(conf, np.linspace(0, 1, n_bins + 1)[1:-1], right=True)
    return float(np.abs(np.bincount(which, weights=accuracy - conf, minlength=n_bins)).sum() / size)


def simulate_ece_interval(n: int, sharpen: float, n_bins: int = 15, draws: int = 200, n_resamples: int = 400,
                          seed: int = 7) -> dict[str, Any]:
    """How often `ece_estimates`' interval covers the true ECE of `calibration_model` over `draws` test splits of
    n images (fixed seeds: the same call gives the same figures).

    Returns the settings, true_ece (0 when calibrated), the means over the draws of the plug-in ECE, its noise floor,
    the debiased ECE and the interval's width, coverage (share of intervals holding the true ECE) and holds_point
    (share holding their own point estimate; 1 by construction).
    """
    rng = np.random.default_rng(seed)
    truth = 0.0 if sharpen == 1.0 else calibration_model_ece(sharpen, n_bins)
    results = [ece_estimates(*calibration_model(rng, n, sharpen), n_bins, n_resamples=n_resamples, seed=repetition)
               for repetition in range(draws)]
    lows, highs = (np.array([r["interval"][k] for r in results]) for k in (0, 1))
    debiased = np.array([r["ece_debiased"] for r in results])
    return dict(n=n, sharpen=sharpen, n_bins=n_bins, draws=draws, n_resamples=n_resamples, seed=seed,
                true_ece=truth, mean_ece=float(np.mean([r["ece"] for r in results])),
                mean_noise_floor=float(np.mean([r["ece_noise_floor"] for r in results])),
                mean_debiased=float(debiased.mean()), mean_width=float((highs - lows).mean()),
                coverage=float(((lows <= truth) & (truth <= highs)).mean()),
                holds_point=float(((lows <= debiased) & (debiased <= highs)).mean()))
