"""Evaluate a trained model on a prepared split: metrics with patient-level bootstrap CIs, and calibration.

Temperature scaling is fitted on the validation split (never on the split being reported) and reported as
ECE before / after on the evaluated split.
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
        for start in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch"):
            crops = [dataset.crop(i) for i in range(start, min(start + batch_size, len(dataset)))]
            batch = dataset.normalise(torch.stack(crops))
            chunks.append(model(pixel_values=batch.to(device)).logits.float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 2))


def load_split(dataset, data_dir, split: str, geometry):
    """(XrayTensorDataset, labels, patient groups) for one split of a loaded prepared folder."""
    from .transforms import XrayTensorDataset, decode_split

    if split not in dataset:
        raise DataError(f"{data_dir}: no {split!r} split (has {', '.join(dataset)}). To fix: choose --split "
                        "train, validation or test, or prepare with --val-fraction > 0.")
    images, labels = decode_split(dataset[split], geometry.resize, desc=f"decoding {split}")
    groups = patient_groups(data_dir, split_paths(dataset[split]))
    return XrayTensorDataset(images, labels, geometry), np.asarray(labels), groups


def evaluate_model(model, processor, data_dir, split: str = "test", out: str | Path | None = None,
                   n_resamples: int = 1000, seed: int = 0, title: str | None = None) -> dict:
    """Full evaluation report of `model` on `split`; writes JSON + reliability diagram when `out` is given."""
    from .data import load_imagefolder
    from .metrics import apply_temperature, evaluation_report, plot_reliability_diagram
    from .transforms import Geometry

    geometry = Geometry.from_processor(processor)
    dataset = load_imagefolder(data_dir)
    split_dataset, labels, groups = load_split(dataset, data_dir, split, geometry)
    logits = predict_logits(model, split_dataset, desc=f"predicting {split}")
    val_logits = val_labels = None
    if split != "validation":
        try:
            val_dataset, val_labels, _ = load_split(dataset, data_dir, "validation", geometry)
            val_logits = predict_logits(model, val_dataset, desc="predicting validation")
        except DataError as err:  # no validation split: report without calibration, and say so
            print(f"warning: no temperature scaling ({err})")
    report = evaluation_report(labels, logits, groups=groups, val_logits=val_logits, val_labels=val_labels,
                               n_resamples=n_resamples, seed=seed)
    report["split"] = split
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        probs = apply_temperature(logits, 1.0)
        after = apply_temperature(logits, report["temperature"]) if "temperature" in report else None
        diagram = out.with_name(out.stem + "_reliability.png")
        plot_reliability_diagram(labels, probs, diagram, title or f"Reliability ({split} split)", probs_after=after)
        report["reliability_diagram"] = diagram.name
        out.write_text(json.dumps(report, indent=2))
    return report
