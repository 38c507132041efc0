"""Evaluation of the binary normal (0) / virus (1) classifier: metrics, patient-level CIs and calibration.

Point estimates come from scikit-learn so they match what others compute. Intervals (`evaluation_report`, rules in
`INTERVAL_METHODS`): proportions (accuracy, sensitivity, specificity, precision) get Wilson score intervals with n
shrunk by the patients' design effect, which never collapse to zero width at 0/n or n/n; AUROC, balanced accuracy
and F1 a percentile bootstrap that, given patient ids, resamples whole patients (several X-rays of one child are
not independent evidence); the ECE is reported as the plug-in value beside its noise floor (what a perfectly
calibrated model with the same confidences scores), with a debiased estimate and an interval for the true
calibration error (`hfxray.intervals`). Calibration follows Guo et al. 2017 ("On Calibration of Modern Neural
Networks"): top-label ECE (temperature scaling itself lives in `hfxray.calibration`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

THRESHOLD = 0.5
ECE_BINS = 15
# Metrics that get a CI; the counts n / n_positive are properties of the sample, not of the model.
CI_METRICS = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "precision", "f1", "ece")
# How each interval of `evaluation_report` is made (stored beside them as "ci95_method").
WILSON = "Wilson score, n / design effect of patients"
PERCENTILE = "percentile bootstrap"
DEBIASED_ECE = "debiased ECE, bootstrap pivot; 0 at the low end unless perfect calibration is rejected"
INTERVAL_METHODS = {"accuracy": WILSON, "sensitivity": WILSON, "specificity": WILSON, "precision": WILSON,
                    "balanced_accuracy": PERCENTILE, "auroc": PERCENTILE, "f1": PERCENTILE, "ece": DEBIASED_ECE}
# A model is "at chance" when the 95 % interval of either of these includes 0.5 (`chance_verdict`).
CHANCE_METRICS = {"auroc": "AUROC", "balanced_accuracy": "balanced accuracy"}


def _check_labels_probs(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate once at the API edge so that a wrong input fails with a message, not deep inside numpy."""
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=float)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels and probs must be 1-D, got shapes {y.shape} and {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"labels and probs differ in length: {len(y)} labels vs {len(p)} probs")
    if len(y) == 0:
        raise ValueError("labels and probs are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (virus), got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must be finite probabilities of class 1 (virus) in [0, 1]")
    return y.astype(int), p


def _check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    z = np.asarray(logits, dtype=float)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"{name} must have shape [n, 2] (normal, virus), got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError(f"{name} contain NaN or inf")
    return z


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def binary_metrics(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Threshold (0.5), ranking and calibration (top-label ECE) metrics with virus as the positive class.

    A metric whose defining class is absent is None rather than a misleading 0: auroc and balanced_accuracy
    need both classes, sensitivity needs a virus case, specificity a normal one. precision and f1 follow
    scikit-learn's zero_division=0 (0 when nothing is predicted virus).
    """
    y, p = _check_labels_probs(labels, probs)
    pred = (p >= THRESHOLD).astype(int)
    n_positive = int(y.sum())
    has_pos, has_neg = n_positive > 0, n_positive < len(y)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if has_pos and has_neg else None,
        "auroc": float(roc_auc_score(y, p)) if has_pos and has_neg else None,
        "sensitivity": float(recall_score(y, pred, pos_label=1, zero_division=0)) if has_pos else None,
        "specificity": float(recall_score(y, pred, pos_label=0, zero_division=0)) if has_neg else None,
        "precision": float(precision_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "ece": expected_calibration_error(y, p, ECE_BINS),
        "confusion_matrix": confusion_matrix(y, pred, labels=[0, 1]).tolist(),
        "n": int(len(y)),
        "n_positive": n_positive,
    }


def _weighted_metrics(weights: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """CI_METRICS for many resamples at once; row b of `weights` holds how often each sample was drawn.

    Same definitions as `binary_metrics` (NaN where it returns None), so a row of ones reproduces it. AUROC is
    the Mann-Whitney statistic (ties count 1/2) computed from weighted counts per distinct score.
    """
    w = np.asarray(weights, dtype=float)
    pos, pred = labels.astype(float), (probs >= THRESHOLD).astype(float)
    tp, fn = w @ (pos * pred), w @ (pos * (1 - pred))
    fp, tn = w @ ((1 - pos) * pred), w @ ((1 - pos) * (1 - pred))
    n_pos, n_neg = tp + fn, fp + tn

    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = np.where(n_pos > 0, tp / n_pos, np.nan)
        specificity = np.where(n_neg > 0, tn / n_neg, np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)

        scores, score_index = np.unique(probs, return_inverse=True)
        n_rows, n_scores = w.shape[0], len(scores)
        cells = (np.arange(n_rows)[:, None] * n_scores + score_index[None, :]).ravel()
        pos_at = np.bincount(cells, weights=(w * pos).ravel(), minlength=n_rows * n_scores).reshape(n_rows, -1)
        neg_at = np.bincount(cells, weights=(w * (1 - pos)).ravel(), minlength=n_rows * n_scores).reshape(n_rows, -1)
        neg_below = np.cumsum(neg_at, axis=1) - neg_at
        wins = (pos_at * (neg_below + 0.5 * neg_at)).sum(axis=1)
        auroc = np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)

    # Top-label ECE per resample: the same bins as `reliability_bins`, with weighted sums per bin.
    conf = np.maximum(probs, 1 - probs)
    correct = ((probs >= THRESHOLD).astype(int) == labels).astype(float)
    which = np.digitize(conf, np.linspace(0.0, 1.0, ECE_BINS + 1)[1:-1], right=True)
    in_bin = np.zeros((len(probs), ECE_BINS))
    in_bin[np.arange(len(probs)), which] = 1.0
    gap = w @ (in_bin * (correct - conf)[:, None])
    ece = np.abs(gap).sum(axis=1) / w.sum(axis=1)

    return {
        "ece": ece,
        "accuracy": (tp + tn) / (n_pos + n_neg),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "auroc": auroc,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "f1": f1,
    }


def _resample_weights(y: np.ndarray, groups, n_resamples: int, seed: int):
    """Chunks of (resamples x samples) weights: how often each sample is drawn when whole groups (patients; each
    sample its own group without `groups`) are drawn with replacement."""
    if groups is None:
        group_of = np.arange(len(y))
    else:
        group_ids = np.asarray(groups)
        if group_ids.shape != y.shape:
            raise ValueError(f"groups and labels differ in length: {group_ids.size} groups vs {len(y)} labels")
        group_of = np.unique(group_ids, return_inverse=True)[1].ravel()
    from .intervals import group_weights  # the one patient-level resampler (the Wilson and ECE intervals use it)

    yield from group_weights(group_of, n_resamples, seed)


def paired_difference(labels, probs_a, probs_b, groups=None, n_resamples: int = 1000, confidence: float = 0.95,
                      seed: int = 0, metrics: Sequence[str] = ("auroc", "accuracy")) -> dict[str, tuple]:
    """{metric: (a - b, low, high)}: the difference between two models on the same images, with a percentile
    bootstrap interval that draws the same patients for both (a paired comparison: two models' unpaired intervals
    overlap far more than the interval of their difference is wide)."""
    y, p_a = _check_labels_probs(labels, probs_a)
    _, p_b = _check_labels_probs(labels, probs_b)
    point_a, point_b = binary_metrics(y, p_a), binary_metrics(y, p_b)
    differences: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    for weights in _resample_weights(y, groups, n_resamples, seed):
        values_a, values_b = _weighted_metrics(weights, y, p_a), _weighted_metrics(weights, y, p_b)
        for name in metrics:
            differences[name].append(values_a[name] - values_b[name])
    alpha = (1 - confidence) / 2
    result = {}
    for name in metrics:
        values = np.concatenate(differences[name])
        values = values[~np.isnan(values)]
        low, high = np.quantile(values, [alpha, 1 - alpha]) if len(values) else (math.nan, math.nan)
        point = None if point_a[name] is None or point_b[name] is None else point_a[name] - point_b[name]
        result[name] = (point, float(low), float(high))
    return result


def bootstrap_ci(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap CI for each metric in CI_METRICS.

    With `groups` (patient ids, one per sample) whole patients are drawn with replacement (cluster
    bootstrap): images of one patient are correlated, so resampling images understates the uncertainty.
    Resamples in which a metric is undefined (e.g. one class only for auroc) are dropped for that metric.

    Returns {metric: (low, high)} (both None if no resample defined it) plus
    "n_resamples_used": {metric: count}. Deterministic for a given seed and input.
    """
    y, p = _check_labels_probs(labels, probs)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values: dict[str, list[np.ndarray]] = {name: [] for name in CI_METRICS}
    for weights in _resample_weights(y, groups, n_resamples, seed):
        for name, vals in _weighted_metrics(weights, y, p).items():
            values[name].append(vals)

    alpha = (1 - confidence) / 2
    result: dict[str, Any] = {}
    used: dict[str, int] = {}
    for name in CI_METRICS:
        vals = np.concatenate(values[name])
        vals = vals[~np.isnan(vals)]
        used[name] = int(len(vals))
        if len(vals):
            low, high = np.quantile(vals, [alpha, 1 - alpha])
            result[name] = (float(low), float(high))
        else:
            result[name] = (None, None)
    result["n_resamples_used"] = used
    return result


def reliability_bins(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, n_bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """Top-label reliability per confidence bin; shared by the ECE and the diagram so the two agree.

    confidence = max(p, 1 - p), prediction = virus iff p >= 0.5, correct = prediction == label. Bins are
    n_bins equal-width intervals (lo, hi] over [0, 1] as in Guo et al. (the first also holds 0); for binary
    top-label the confidences lie in [0.5, 1], so the lower bins stay empty. Returns "edges" (n_bins + 1),
    "count", and "confidence" / "accuracy" (bin means, NaN for empty bins).
    """
    y, p = _check_labels_probs(labels, probs)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.maximum(p, 1 - p)
    correct = ((p >= THRESHOLD).astype(int) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.digitize(conf, edges[1:-1], right=True)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Top-label ECE (Guo et al. 2017): sum over bins B of |B|/n * |acc(B) - conf(B)|.

    conf = max(p, 1 - p), prediction = virus iff p >= 0.5, n_bins equal-width bins (lo, hi] over [0, 1];
    empty bins contribute 0. See `reliability_bins`.
    """
    bins = reliability_bins(labels, probs, n_bins)
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((bins["count"][filled] * gaps).sum() / bins["count"].sum())


def apply_temperature(logits: Sequence[Sequence[float]] | np.ndarray, temperature: float) -> np.ndarray:
    """Probability of class 1 (virus) under softmax(logits / T); T = 1 is the plain softmax."""
    z = _check_logits(logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # softmax over two classes is the sigmoid of the logit difference; expit is stable for large logits.
    return expit((z[:, 1] - z[:, 0]) / temperature)


RELIABILITY_COLORS = {"accuracy": "#4C72B0", "over": "#D62728", "under": "#FF9F1C"}


def reliability_figure(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    title: str,
    probs_after: Sequence[float] | np.ndarray | None = None,
    panel_titles: tuple[str, str] = ("Before temperature scaling", "After temperature scaling"),
):
    """The matplotlib Figure behind `plot_reliability_diagram` (for tests and notebooks).

    Gaps are opaque so each is drawn in exactly its legend colour (a translucent gap over the accuracy bar mixed
    into a colour no legend entry has): over-confidence (mean confidence above accuracy) stacks on the accuracy
    bar, under-confidence (accuracy above mean confidence) is the top part of it, so a bar's top is always the
    larger of the two. The legend sits below the panels, outside every axes, so it can never cover a bar.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels = [(panel_titles[0] + "\n" if probs_after is not None else "", probs)]
    if probs_after is not None:
        panels.append((panel_titles[1] + "\n", probs_after))

    fig = Figure(figsize=(5.5 * len(panels), 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(panels), height_ratios=(3, 1))
    for col, (name, panel_probs) in enumerate(panels):
        bins = reliability_bins(labels, panel_probs, ECE_BINS)
        ece = expected_calibration_error(labels, panel_probs, ECE_BINS)
        edges, filled = bins["edges"], bins["count"] > 0
        left, width = edges[:-1][filled], np.diff(edges)[filled]
        acc, conf = bins["accuracy"][filled], bins["confidence"][filled]
        over, under = conf > acc, acc > conf
        # Binary top-label confidence is >= 0.5: show from the bin holding 0.5 onward.
        x_min = edges[np.digitize(0.5, edges[1:-1], right=True)]

        ax = fig.add_subplot(grid[0, col])
        bars = {
            "accuracy": ax.bar(left, acc, width=width, align="edge", color=RELIABILITY_COLORS["accuracy"],
                               edgecolor="black"),
            "gap-over": ax.bar(left[over], (conf - acc)[over], bottom=acc[over], width=width[over], align="edge",
                               color=RELIABILITY_COLORS["over"], edgecolor="black", hatch="//"),
            "gap-under": ax.bar(left[under], (acc - conf)[under], bottom=conf[under], width=width[under],
                                align="edge", color=RELIABILITY_COLORS["under"], edgecolor="black", hatch="\\\\"),
        }
        for role, container in bars.items():
            for patch in container:
                patch.set_gid(role)  # tests and SVG readers find each bar's role
        ax.plot([x_min, 1], [x_min, 1], "k--", linewidth=1.2)
        ax.set(xlim=(x_min, 1), ylim=(0, 1), ylabel="Accuracy", title=f"{name}ECE = {ece:.3f} ({ECE_BINS} bins)")
        ax.tick_params(labelbottom=False)
        ax.grid(alpha=0.3)

        hist = fig.add_subplot(grid[1, col], sharex=ax)
        hist.bar(left, bins["count"][filled], width=width, align="edge", color="#888888", edgecolor="black")
        hist.set(xlabel="Confidence", ylabel="Count")
        hist.grid(alpha=0.3)
    handles = [
        Patch(facecolor=RELIABILITY_COLORS["accuracy"], edgecolor="black", label="Accuracy"),
        Patch(facecolor=RELIABILITY_COLORS["over"], edgecolor="black", hatch="//",
              label="Over-confident: mean confidence above accuracy"),
        Patch(facecolor=RELIABILITY_COLORS["under"], edgecolor="black", hatch="\\\\",
              label="Under-confident: accuracy above mean confidence"),
        Line2D([], [], color="black", linestyle="--", linewidth=1.2, label="Perfect calibration"),
    ]
    # Two columns fit under two panels; under one panel (5.5 in wide) they ran past the figure's edges and were cut.
    fig.legend(handles=handles, loc="outside lower center", ncol=len(panels), fontsize=9)
    fig.suptitle(title, fontsize=13)
    return fig


def plot_reliability_diagram(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    path: str | Path,
    title: str,
    probs_after: Sequence[float] | np.ndarray | None = None,
    panel_titles: tuple[str, str] = ("Before temperature scaling", "After temperature scaling"),
) -> Path:
    """PNG reliability diagram: accuracy per confidence bin against the diagonal, gaps coloured, counts below.

    With `probs_after` (e.g. before and after folding a temperature) the two are drawn side by side, each with
    its ECE in the panel title. Uses the Agg canvas directly, so no global backend is changed.
    """
    fig = reliability_figure(labels, probs, title, probs_after, panel_titles)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def proportion_hits(labels: np.ndarray, probs: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each proportion metric: (which images it counts, whether each counted image is a hit)."""
    pred = (probs >= THRESHOLD).astype(int)
    return {"accuracy": (np.ones(len(labels), bool), pred == labels),
            "sensitivity": (labels == 1, pred == 1),
            "specificity": (labels == 0, pred == 0),
            "precision": (pred == 1, labels == 1)}


def evaluation_report(
    labels: Sequence[int] | np.ndarray,
    logits: Sequence[Sequence[float]] | np.ndarray,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything needed to report one split from its logits, as a flat JSON-serialisable dict.

    Keys: the `binary_metrics` keys ("ece" is the plug-in ECE), "ece_noise_floor" (the expected ECE of a
    perfectly calibrated model with these confidences), "ece_calibrated_p" (share of such models reaching the
    observed ECE), "ece_debiased", "ci95" {metric: [low, high]} (for "ece": the interval of the true calibration
    error, around "ece_debiased"), "ci95_method" {metric: how}, "ci95_n_resamples_used", "bootstrap_unit"
    ("patient" or "image"), "n_resamples", "threshold", "ece_n_bins", "chance" (`chance_verdict`).
    """
    from .intervals import ece_estimates, proportion_interval

    z = _check_logits(logits)
    if len(z) != len(labels):
        raise ValueError(f"labels and logits differ in length: {len(labels)} labels vs {len(z)} logits")
    probs = apply_temperature(z, 1.0)
    y, _ = _check_labels_probs(labels, probs)
    ci = bootstrap_ci(y, probs, groups=groups, n_resamples=n_resamples, confidence=0.95, seed=seed)
    intervals = {name: list(ci[name]) for name in CI_METRICS}
    group_ids = None if groups is None else np.asarray(groups)
    for name, (counted, hits) in proportion_hits(y, probs).items():
        chosen = None if group_ids is None else group_ids[counted]
        intervals[name] = list(proportion_interval(hits[counted], chosen)["interval"])
    ece = ece_estimates(y, probs, ECE_BINS, groups=groups, n_resamples=n_resamples, seed=seed)
    intervals["ece"] = list(ece["interval"])
    return {
        **binary_metrics(y, probs),
        "ece_noise_floor": ece["ece_noise_floor"],
        "ece_calibrated_p": ece["ece_calibrated_p"],
        "ece_debiased": ece["ece_debiased"],
        "ci95": intervals,
        "chance": chance_verdict(intervals),
        "ci95_method": dict(INTERVAL_METHODS),
        "ci95_n_resamples_used": ci["n_resamples_used"],
        "bootstrap_unit": "image" if groups is None else "patient",
        "n_resamples": int(n_resamples),
        "threshold": THRESHOLD,
        "ece_n_bins": ECE_BINS,
    }


def ece_text(ece: float | None, interval: Sequence[float | None] | None = None, noise_floor: float | None = None,
             debiased: float | None = None) -> str:
    """One reading of an ECE for tables and summaries: the plug-in value beside its noise floor, and the debiased
    value with its interval; results written before the floor existed show the plug-in with the interval they
    stored (a percentile bootstrap of the plug-in)."""
    if ece is None:
        return "n/a"
    low, high = interval if interval is not None and len(interval) == 2 else (None, None)
    bounds = f"{low:.3f}-{high:.3f}" if low is not None and high is not None else None
    if noise_floor is None or debiased is None:
        return f"{ece:.3f}" + (f" ({bounds})" if bounds else "")
    return (f"{ece:.3f} (noise floor {noise_floor:.3f}; debiased {debiased:.3f}"
            + (f", 95% CI {bounds}" if bounds else "") + ")")


def chance_verdict(ci95: dict | None) -> str | None:
    """"at chance" when the 95 % interval of the AUROC or of the balanced accuracy includes 0.5, "below chance" when
    one lies wholly below it, else None: the one rule every place that shows a model's figures applies."""
    verdict = None
    for name in CHANCE_METRICS:
        low, high = (ci95 or {}).get(name) or (None, None)
        if low is None or high is None:
            continue
        if low <= 0.5 <= high:
            return "at chance"
        if high < 0.5:
            verdict = "below chance"
    return verdict


def chance_sentence(metrics: dict, ci95: dict | None) -> str | None:
    """The plain words shown beside the figures of a model `chance_verdict` flags, naming the intervals; None when
    the model does better than chance."""
    verdict = chance_verdict(ci95)
    if verdict is None:
        return None
    figures = []
    for name, label in CHANCE_METRICS.items():
        low, high = (ci95 or {}).get(name) or (None, None)
        if metrics.get(name) is not None and low is not None and high is not None:
            figures.append(f"{label} {metrics[name]:.3f} ({low:.3f}-{high:.3f})")
    where = "includes" if verdict == "at chance" else "lies below"
    return (f"{verdict.upper()}: {' and '.join(figures)}; an interval that {where} 0.5 means this model does not tell "
            "normal from virus better than a coin on these images, and its ECE, however low, says nothing about how "
            "well it decides.")
