"""Is an input within what a model was trained on? The out-of-distribution (OOD) check, and the one wording of every
out-of-scope flag that predict, explain and serve show beside an answer.

Two sources of flags, neither of which refuses the image (a reader decides):

- the file's own header (DICOM `BodyPartExamined`, `ViewPosition`), read by `hfxray.dicom.header_scope`;
- the model's features, for any file: `OodCheck`, fitted on the run's training split and saved in the run folder
  as `ood.json` (thresholds, figures) and `ood.safetensors` (means and precision matrices).

The OOD score. For each of two layers, the Mahalanobis distance of an image's features to the training images'
(mean and Ledoit-Wolf shrinkage covariance, sklearn), divided by that layer's 99th percentile over the training
split; the score is the larger of the two, and an image is flagged when it exceeds the 99th percentile of the
training images' own scores. Every percentile is taken over out-of-fold distances (5 folds: each training image
scored by a fit that did not see it), so about 1 % of new images like the training ones are flagged, not more.

- `features`: the input of the classifier head (the family adapter's `head`, read by a forward pre-hook), the
  features the decision is made from;
- `first layer`: the mean and spread over the image of each channel of the model's first convolution (the patch
  embedding of a ViT, the stem of a ResNet), i.e. what the image looks like at the pixel level.

Why both: on tiny models trained on the sample, the head's features of an extremity radiograph (NEMA WG04
`RG3_UNCR`) lay inside the training range (distance 3.4 against a threshold of 7.3 for a ViT, 9.0 against 10.1 for
a BiT) while its first-layer statistics were 2-3x beyond it; a chest film from the same set stayed below both.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import HfxrayError
from .logs import get_logger

logger = get_logger(__name__)

OOD_JSON = "ood.json"
OOD_TENSORS = "ood.safetensors"
PERCENTILE = 99.0
FOLDS = 5
MIN_IMAGES = 20  # fewer training images than this give no usable 99th percentile
LAYERS = ("features", "first layer")
LAYER_WORDS = {"features": "the features the classifier decides from",
               "first layer": "its pixel-level appearance (the model's first layer)"}
NOT_CHECKED = "not checked"
IN_RANGE = "in range"
FLAGGED = "unlike the training images"


class OodError(HfxrayError):
    """The OOD check cannot be fitted or read; the message says what to change."""


def first_convolution(model):
    """The model's first convolution (ViT patch embedding, ResNet stem) in registration order, or None."""
    from torch import nn

    return next((module for module in model.modules() if isinstance(module, nn.Conv2d)), None)


@contextmanager
def capture_features(model):
    """Record, for every forward pass inside the block, each layer's pooled features (`LAYERS`).

    Yields a dict layer -> list of (B, D) float32 arrays, one per forward pass, in call order: a forward pre-hook
    on the head (its input, whatever the family) and a forward hook on the first convolution.
    """
    from .families import adapter_for

    captured: dict[str, list[np.ndarray]] = {layer: [] for layer in LAYERS}

    def on_head(_module, inputs):
        features = inputs[0].detach().float()
        captured["features"].append(features.reshape(features.shape[0], -1).cpu().numpy())

    def on_first(_module, _inputs, output):
        output = output.detach().float()
        pooled = [output.mean(dim=(2, 3)), output.std(dim=(2, 3), correction=0)]
        captured["first layer"].append(np.concatenate([p.cpu().numpy() for p in pooled], axis=1))

    handles = [adapter_for(model).checked_head(model).register_forward_pre_hook(on_head)]
    first = first_convolution(model)
    if first is not None:
        handles.append(first.register_forward_hook(on_first))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def stacked(captured: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate what `capture_features` recorded; layers with nothing recorded are left out."""
    return {layer: np.concatenate(chunks) for layer, chunks in captured.items() if chunks}


@dataclass
class OodResult:
    """One image against the check: score and threshold, or None when the model has no check."""

    status: str  # IN_RANGE, FLAGGED or NOT_CHECKED
    score: float | None = None
    threshold: float | None = None
    layer: str = ""  # the layer whose distance gave the score

    @property
    def flagged(self) -> bool:
        return self.status == FLAGGED

    def text(self) -> str:
        if self.status == NOT_CHECKED:
            return "out-of-distribution check: not checked (this run has no ood.json)"
        if self.flagged:
            return (f"unlike the training images (out-of-distribution score {self.score:.2f} > {self.threshold:.2f}, "
                    f"from {LAYER_WORDS.get(self.layer, self.layer)})")
        return f"within the range of the training images (score {self.score:.2f} ≤ {self.threshold:.2f})"


def _mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = features.astype(np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, precision, centred), 0.0))


def _fit_layer(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.covariance import LedoitWolf

    estimate = LedoitWolf().fit(features.astype(np.float64))
    return estimate.location_, estimate.precision_


@dataclass
class OodCheck:
    """Means, precisions and thresholds of a run's OOD check (see the module docstring)."""

    means: dict[str, np.ndarray]
    precisions: dict[str, np.ndarray]
    layer_scale: dict[str, float]  # each layer's 99th percentile of out-of-fold training distances
    threshold: float  # 99th percentile of the training images' out-of-fold scores
    info: dict = field(default_factory=dict)

    def scores(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
        """(score per image, the layer that gave it) for features as `capture_features` records them."""
        layers = [layer for layer in self.means if layer in features]
        if not layers:
            raise OodError("no feature of this model matches its ood check. To fix: refit it with `hfxray ood`")
        ratios = np.stack([_mahalanobis(features[layer], self.means[layer], self.precisions[layer])
                           / self.layer_scale[layer] for layer in layers], axis=1)
        return ratios.max(axis=1), [layers[i] for i in ratios.argmax(axis=1)]

    def judge(self, features: dict[str, np.ndarray]) -> list[OodResult]:
        scores, layers = self.scores(features)
        return [OodResult(FLAGGED if score > self.threshold else IN_RANGE, float(score), self.threshold, layer)
                for score, layer in zip(scores, layers)]

    def save(self, run_dir: str | os.PathLike) -> None:
        from safetensors.numpy import save_file

        run_dir = Path(run_dir)
        tensors = {}
        for layer in self.means:
            key = layer.replace(" ", "_")
            tensors[f"{key}.mean"] = self.means[layer].astype(np.float32)
            tensors[f"{key}.precision"] = self.precisions[layer].astype(np.float32)
        save_file(tensors, str(run_dir / OOD_TENSORS))
        (run_dir / OOD_JSON).write_text(json.dumps(
            dict(self.info, layers={layer: {"dimensions": int(self.means[layer].shape[0]),
                                            "scale": self.layer_scale[layer]} for layer in self.means},
                 threshold=self.threshold), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "OodCheck | None":
        """The run's check; None when the run has none (say "not checked"); OodError when it is unreadable."""
        run_dir = Path(run_dir)
        if not (run_dir / OOD_JSON).is_file() or not (run_dir / OOD_TENSORS).is_file():
            return None
        from safetensors.numpy import load_file

        try:
            info = json.loads((run_dir / OOD_JSON).read_text())
            tensors = load_file(str(run_dir / OOD_TENSORS))
            layers = info.pop("layers")
            threshold = float(info.pop("threshold"))
            means = {layer: tensors[f"{layer.replace(' ', '_')}.mean"].astype(np.float64) for layer in layers}
            precisions = {layer: tensors[f"{layer.replace(' ', '_')}.precision"].astype(np.float64)
                          for layer in layers}
            scale = {layer: float(entry["scale"]) for layer, entry in layers.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise OodError(f"{run_dir / OOD_JSON}: unreadable out-of-distribution check ({type(err).__name__}: "
                           f"{err}). To fix: refit it with `hfxray ood --model {run_dir} --data-dir DIR`") from None
        return cls(means, precisions, scale, threshold, info)


def fit_ood(features: dict[str, np.ndarray], folds: int = FOLDS, seed: int = 0,
            percentile: float = PERCENTILE) -> OodCheck:
    """Fit the check on training features (layer -> (N, D)); percentiles from out-of-fold distances."""
    from sklearn.model_selection import KFold

    count = min(len(values) for values in features.values())
    if not all(np.isfinite(values).all() for values in features.values()):
        raise OodError("the model's features hold NaN or infinite values (a diverged training?). To fix: retrain, "
                       "then refit with `hfxray ood`")
    if count < MIN_IMAGES:
        raise OodError(f"{count} training images: too few for a 99th percentile. To fix: fit on a split of at least "
                       f"{MIN_IMAGES} images")
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    out_of_fold = {layer: np.zeros(len(values)) for layer, values in features.items()}
    for fit_rows, held_rows in splitter.split(np.zeros(count)):
        for layer, values in features.items():
            mean, precision = _fit_layer(values[fit_rows])
            out_of_fold[layer][held_rows] = _mahalanobis(values[held_rows], mean, precision)
    scale = {layer: float(np.percentile(distances, percentile)) for layer, distances in out_of_fold.items()}
    scores = np.stack([out_of_fold[layer] / scale[layer] for layer in features], axis=1).max(axis=1)
    threshold = float(np.percentile(scores, percentile))
    means, precisions = {}, {}
    for layer, values in features.items():
        means[layer], precisions[layer] = _fit_layer(values)
    info = {"method": "Mahalanobis distance (Ledoit-Wolf shrinkage covariance) per layer, divided by the layer's "
                      f"{percentile:g}th percentile of out-of-fold training distances; score = the larger ratio; "
                      f"flagged above the {percentile:g}th percentile of the training images' out-of-fold scores",
            "percentile": percentile, "folds": folds, "n_images": int(count)}
    return OodCheck(means, precisions, scale, threshold, info)


def split_features(model, processor, data_dir, splits: Sequence[str], cache_dir=None, batch_size: int = 64
                   ) -> dict[str, np.ndarray]:
    """Features (`capture_features`) of every image of the prepared `splits`, through the evaluation transform
    (the processor's resize and crop, read from the decode cache as evaluation reads it)."""
    import torch
    from tqdm.auto import tqdm

    from .cache import decoded_split
    from .logs import progress_bar_disable
    from .transforms import Geometry, XrayTensorDataset

    geometry = Geometry.from_processor(processor)
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    with capture_features(model) as captured, torch.no_grad():
        for split in splits:
            images = decoded_split(data_dir, split, geometry.resize, cache_dir=cache_dir)
            dataset = XrayTensorDataset(images, images.labels, geometry)
            for start in tqdm(range(0, len(dataset), batch_size), desc=f"ood features {split}", unit="batch",
                              disable=progress_bar_disable()):
                crops = [dataset.crop(i) for i in range(start, min(start + batch_size, len(dataset)))]
                model(pixel_values=dataset.normalise(torch.stack(crops)).to(device=device, dtype=dtype))
    return stacked(captured)


def fit_ood_or_say_why(run_dir: str | os.PathLike, data_dir, model, processor, splits: Sequence[str] = ("train",),
                       cache_dir=None) -> "OodCheck | None":
    """`fit_ood_run` at the end of training: a check that cannot be fitted (too few images, NaN features) is a
    warning, not a failed run; the run's answers then say "not checked"."""
    try:
        return fit_ood_run(run_dir, data_dir, model, processor, splits=splits, cache_dir=cache_dir)
    except OodError as err:
        logger.warning("out-of-distribution check not fitted: %s", err)
        return None


def fit_ood_run(run_dir: str | os.PathLike, data_dir, model=None, processor=None, splits: Sequence[str] = ("train",),
                cache_dir=None) -> OodCheck:
    """Fit the check on the run's training split(s), write ood.json / ood.safetensors, and log how often it flags
    the validation split (expected: about 1 %) when that split exists and was not fitted on."""
    from .data import prepared_counts
    from .models import load_trained

    run_dir = Path(run_dir)
    counts = prepared_counts(data_dir)
    splits = [split for split in splits if sum(counts[split].values())]  # a cv refit without a validation split
    if model is None:
        model, processor = load_trained(str(run_dir))
    check = fit_ood(split_features(model, processor, data_dir, splits, cache_dir=cache_dir))
    check.info["fitted_on"] = list(splits)
    if "validation" not in splits and sum(counts["validation"].values()):
        flagged = [r.flagged for r in check.judge(split_features(model, processor, data_dir, ["validation"],
                                                                 cache_dir=cache_dir))]
        check.info["validation_flagged"] = {"flagged": int(sum(flagged)), "n": len(flagged),
                                            "rate": round(sum(flagged) / len(flagged), 4)}
        logger.info("out-of-distribution check fitted on %s (%d images): flags %d of %d validation images",
                    " + ".join(splits), check.info["n_images"], sum(flagged), len(flagged))
    check.save(run_dir)
    return check


def load_check(model_source: str | os.PathLike) -> tuple["OodCheck | None", str]:
    """(the check of a run folder or None, why none): a Hub id or a folder without ood.json is "not checked"."""
    folder = Path(model_source)
    if not folder.is_dir():
        return None, f"{model_source} is not a local run folder"
    try:
        check = OodCheck.load(folder)
    except OodError as err:
        logger.warning("%s", err)
        return None, str(err)
    if check is None:
        return None, f"no {OOD_JSON} in {folder} (fit one with `hfxray ood --model {folder} --data-dir DIR`)"
    return check, ""


def judge_images(check: "OodCheck | None", features: dict[str, np.ndarray], count: int) -> list[OodResult]:
    """One OodResult per image; NOT_CHECKED for every image when there is no check."""
    if check is None:
        return [OodResult(NOT_CHECKED) for _ in range(count)]
    return check.judge(features)


def warning_text(out_of_scope: str, ood: OodResult | None) -> str:
    """The one warning sentence shown beside an answer ("" when nothing flags the image): the header's reasons,
    then the OOD flag."""
    parts = [out_of_scope] if out_of_scope else []
    if ood is not None and ood.flagged:
        parts.append(ood.text())
    return ("out of scope: " + "; ".join(parts)) if parts else ""
