"""Evaluate a model on a prepared split: one entry (`report_split`) for the end of training and `hfxray evaluate`.

The report describes the model as it ships: metrics with patient-level bootstrap CIs, and the ECE of the saved
model's own probabilities. When a temperature was folded into the head (`hfxray.calibration`), the logits
before folding are the shipped logits times T, so the ECE before folding is reported beside it, with its CI,
from the same forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import DataError, read_manifest


def split_paths(split) -> list[str]:
    """Image file paths of a datasets split, in row order (without decoding the images)."""
    from datasets import Image

    return [item["path"] for item in split.cast_column("image", Image(decode=False))["image"]]


def patient_groups(data_dir: str | Path, paths: list[str]) -> list[str]:
    """Patient group of each image path, from the prepared folder's manifest."""
    data_dir = Path(data_dir).resolve()
    by_file = {row["file"]: row["patient_group"] for row in read_manifest(data_dir) if row["status"] == "kept"}
    groups = []
    for path in paths:
        relative = str(Path(path).resolve().relative_to(data_dir)) if Path(path).is_absolute() else path
        groups.append(by_file.get(relative, f"file:{relative}"))
    return groups


def predict_logits(model, dataset, batch_size: int = 64, desc: str = "predicting") -> np.ndarray:
    """Logits [n, 2] of `model` on an XrayTensorDataset (evaluation transform), batched, no gradients."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch", disable=None):
            crops = [dataset.crop(i) for i in range(start, min(start + batch_size, len(dataset)))]
            batch = dataset.normalise(torch.stack(crops))
            chunks.append(model(pixel_values=batch.to(device)).logits.float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 2))


def split_logits(model, processor, data_dir, split: str, dataset=None, cache_dir=None
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(logits, labels, patient groups) of `model` on one split of a prepared folder (images from the decode
    cache, `hfxray.cache`)."""
    from .cache import decoded_split
    from .data import load_imagefolder
    from .transforms import Geometry, XrayTensorDataset

    dataset = dataset if dataset is not None else load_imagefolder(data_dir)
    if split not in dataset:
        raise DataError(f"{data_dir}: no {split!r} split (has {', '.join(dataset)}). To fix: choose --split "
                        "train, validation or test, or prepare with --val-fraction > 0.")
    geometry = Geometry.from_processor(processor)
    images = decoded_split(dataset[split], split, data_dir, geometry.resize, cache_dir=cache_dir)
    logits = predict_logits(model, XrayTensorDataset(images, images.labels, geometry), desc=f"predicting {split}")
    return logits, np.asarray(images.labels), patient_groups(data_dir, split_paths(dataset[split]))


def report_split(model, processor, data_dir, split: str = "test", out: str | Path | None = None,
                 n_resamples: int = 1000, seed: int = 0, title: str | None = None, prefix: str = "") -> dict:
    """Full report of `model` as it ships on `split`; writes JSON + reliability diagram when `out` is given.

    With `prefix` ("test"), the JSON's keys are prefixed as the Trainer names split metrics (`test_accuracy`).
    """
    from .calibration import folded_temperature, unfolded_logits
    from .metrics import apply_temperature, evaluation_report, plot_reliability_diagram

    logits, labels, groups = split_logits(model, processor, data_dir, split)
    report = evaluation_report(labels, logits, groups=groups, n_resamples=n_resamples, seed=seed)
    temperature = folded_temperature(model)
    report.update(split=split, folded_temperature=temperature)
    before = None
    if temperature != 1.0:
        before = evaluation_report(labels, unfolded_logits(logits, temperature), groups=groups,
                                   n_resamples=n_resamples, seed=seed)
        report.update(ece_before_folding=before["ece"], ece_before_folding_ci95=before["ci95"]["ece"])
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        diagram = out.with_name(out.stem.removesuffix("_results") + "_reliability.png")
        shipped = apply_temperature(logits, 1.0)
        if before is None:
            plot_reliability_diagram(labels, shipped, diagram, title or f"Reliability ({split} split, as shipped: "
                                     "no temperature folded)")
        else:
            plot_reliability_diagram(labels, apply_temperature(unfolded_logits(logits, temperature), 1.0), diagram,
                                     title or f"Reliability ({split} split)", probs_after=shipped,
                                     panel_titles=("Before folding (T = 1)", f"As shipped (T = {temperature:.3g} "
                                                                             "folded)"))
        report["reliability_diagram"] = diagram.name
        out.write_text(json.dumps(prefixed(report, prefix) if prefix else report, indent=2))
    return report


def prefixed(report: dict, prefix: str) -> dict:
    """`{prefix}_{key}` for every key, as the Trainer names split metrics (`test_accuracy`, ...)."""
    return {f"{prefix}_{key}": value for key, value in report.items()}
