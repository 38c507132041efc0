"""Temperature scaling: fit on validation, decide whether it may ship, fold it into the head, read it back.

`pipeline("image-classification")` has no temperature hook (its postprocess is a plain softmax), so a temperature
that ships is folded into the classifier head: logits / T = (W / T) x + b / T. The product of folded temperatures
is recorded as `config.folded_temperature` (not `config.temperature`: transformers treats that name as a
generation parameter and refuses to save such a config).

The rule for shipping a temperature (`decide_temperature`), stated once here and in the README:
1. the validation split holds both classes (a one-class split rewards T -> infinity: every p -> 0.5);
2. the fitted T lies strictly inside the search interval [0.01, 100] (at a bound the fit is degenerate);
3. a K-fold check on the validation split itself (scikit-learn's `StratifiedGroupKFold`, K = 5, fewer when a
   class has fewer patients): T fitted on K - 1 folds lowers the negative log-likelihood of the held-out fold
   compared with T = 1, summed over the folds. A temperature that does not predict better on validation images it
   was not fitted on is noise of a small split, and folding it would make the shipped model worse. The folds keep
   each patient's images together (given patient groups): a patient's other X-rays in the fitting part would
   make the held-out NLL optimistic. Given explicit folds instead (the CV refit: one fold per CV model), the check
   asks whether T fitted on some models' held-out logits lowers the NLL of another model's.
Accuracy and AUROC never change (T > 0 keeps the ranking and the 0.5 threshold); only calibration does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from .errors import HfxrayError

# config.json key: the product of the temperatures folded into the classifier weights.
FOLDED_TEMPERATURE = "folded_temperature"
# log T search interval: T in [0.01, 100] covers any plausible network; a fit at the edge is degenerate.
LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))
CHECK_FOLDS = 5


class CalibrationError(HfxrayError):
    """A temperature cannot be fitted or folded; the message says why."""


@dataclass(frozen=True)
class TemperatureDecision:
    """The fitted temperature and whether it ships (folded into the head), with the reason."""

    temperature: float | None
    fold: bool
    reason: str
    n_validation: int
    heldout_nll_fitted: float | None = None  # summed over the check's folds
    heldout_nll_plain: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=float)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[1] != 2:
        raise CalibrationError(f"expected logits of shape (n, 2), got {z.shape}")
    if y.shape != (len(z),):
        raise CalibrationError(f"logits and labels differ in length: {len(z)} logits vs {y.size} labels")
    if not np.isin(y, (0, 1)).all():
        raise CalibrationError(f"labels must be 0 (normal) or 1 (virus), got {np.unique(y)[:10].tolist()}")
    if not np.isfinite(z).all():
        raise CalibrationError("the logits hold NaN or infinite values")
    return z, y.astype(int)


def nll(logits: Any, labels: Any, temperature: float) -> float:
    """Summed negative log-likelihood of softmax(logits / T)."""
    z, y = _check(logits, labels)
    scaled = z / temperature
    return float(np.sum(logsumexp(scaled, axis=1) - scaled[np.arange(len(z)), y]))


def _fit_log_t(z: np.ndarray, y: np.ndarray) -> float:
    true_logit = z[np.arange(len(z)), y]

    def mean_nll(log_t: float) -> float:
        scaled = np.exp(-log_t)
        return float(np.mean(logsumexp(z * scaled, axis=1) - true_logit * scaled))

    # Bounded Brent is deterministic; the NLL is convex in 1/T, hence unimodal in log T.
    return float(minimize_scalar(mean_nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6}).x)


def fit_temperature(logits: Any, labels: Any) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al. 2017), searched in [0.01, 100]."""
    z, y = _check(logits, labels)
    if len(z) == 0:
        raise CalibrationError("no validation images to fit a temperature on")
    return float(math.exp(_fit_log_t(z, y)))


def at_search_bound(temperature: float) -> bool:
    return min(abs(math.log(temperature) - bound) for bound in LOG_T_BOUNDS) < 1e-3


def check_folds(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Held-out index sets of the check: `StratifiedGroupKFold` (shuffled with `seed`), patients kept together."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [np.sort(held) for _, held in splitter.split(np.zeros(len(labels)), labels, groups)]


def decide_temperature(logits: Any, labels: Any, seed: int = 0, groups: Any = None,
                       folds: Any = None) -> TemperatureDecision:
    """Fit T on the validation logits and apply the shipping rule of this module's docstring.

    `groups` (patient group per image) keeps a patient's images in one fold of the check; without them each image
    is its own group. `folds` (a fold id per image) gives the check's folds outright (one per CV model).
    """
    z, y = _check(logits, labels)
    n = len(z)
    for name, values in (("groups", groups), ("folds", folds)):
        if values is not None and len(values) != n:
            raise CalibrationError(f"{name} and logits differ in length: {len(values)} vs {n}")
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        present = "normal" if counts[0] else "virus"
        return TemperatureDecision(None, False, f"the validation split has only {present} images: a temperature "
                                   "fitted on one class is degenerate", n)
    temperature = fit_temperature(z, y)
    if at_search_bound(temperature):
        return TemperatureDecision(temperature, False, f"the fitted T = {temperature:.3g} lies at the search bound "
                                   "(the validation logits are separable or degenerate)", n)
    if folds is not None:
        fold_of = np.asarray(folds)
        held_out = [np.flatnonzero(fold_of == f) for f in np.unique(fold_of)]
        k, unit = len(held_out), "fold of held-out logits per CV model"
        if k < 2:
            return TemperatureDecision(temperature, False, "the logits come from one CV model: the check needs "
                                       "at least two", n)
    else:
        group_ids = np.arange(n) if groups is None else np.asarray(groups)
        k = int(min(CHECK_FOLDS, *(len(set(group_ids[y == cls].tolist())) for cls in (0, 1))))
        unit = "patient-grouped" if groups is not None else "image"
        if k < 2:
            return TemperatureDecision(temperature, False, "a class has a single validation patient: the held-out "
                                       "check needs at least two", n)
        held_out = check_folds(y, group_ids, k, seed)
    fitted = plain = 0.0
    for fold in held_out:
        rest = np.setdiff1d(np.arange(n), fold)
        t_fold = math.exp(_fit_log_t(z[rest], y[rest]))
        fitted += nll(z[fold], y[fold], t_fold)
        plain += nll(z[fold], y[fold], 1.0)
    if fitted < plain:
        return TemperatureDecision(temperature, True, f"T lowers the held-out validation NLL ({k}-fold {unit} "
                                   f"check: {fitted:.2f} vs {plain:.2f} at T = 1)", n, fitted, plain)
    return TemperatureDecision(temperature, False, f"T does not lower the held-out validation NLL ({k}-fold {unit} "
                               f"check: {fitted:.2f} vs {plain:.2f} at T = 1), so it is not shipped", n, fitted, plain)


def classifier_head(model):
    """The model's final nn.Linear (its output is the logits), found by the model family's adapter."""
    from .families import adapter_for

    return adapter_for(model).checked_head(model)


def fold_temperature(model, temperature: float) -> None:
    """Divide the classifier's weight and bias by T, so that the model's logits become logits / T.

    After this, `pipeline` (and anything else reading the logits) returns temperature-scaled probabilities with no
    custom code; saving the model publishes them calibrated.
    """
    import torch

    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise CalibrationError(f"temperature must be a positive number, got {temperature}")
    head = classifier_head(model)
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)
    setattr(model.config, FOLDED_TEMPERATURE, folded_temperature(model.config) * temperature)


def folded_temperature(config_or_model) -> float:
    """The temperature already folded into a model's head (1.0 when none)."""
    config = getattr(config_or_model, "config", config_or_model)
    value = config.get(FOLDED_TEMPERATURE) if isinstance(config, dict) else getattr(config, FOLDED_TEMPERATURE, None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else 1.0


def unfolded_logits(logits: Sequence[Sequence[float]] | np.ndarray, temperature: float) -> np.ndarray:
    """The logits the model gave before a temperature T was folded into its head (logits x T)."""
    return np.asarray(logits, dtype=float) * temperature
