"""Batch prediction through `pipeline("image-classification")`: the same code path a Hub user runs.

Files are opened with `hfxray.imaging.load_rgb`, so a corrupt or empty file becomes a row with its reason instead of
stopping the run; the decoded images go to the pipeline in batches. The pipeline has no temperature hook (its
postprocess is a plain softmax), so training folds the validation-fitted temperature into the classifier head:
logits / T = (W / T) x + b / T, recorded as `config.folded_temperature` (not `config.temperature`: transformers
treats that name as a generation parameter and refuses to save such a config).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .imaging import ImageProblem, load_rgb

OUTPUT_FORMATS = (".csv", ".json")
COLUMNS = ("file", "label", "probability", "p_virus", "error")
# config.json key: the product of the temperatures folded into the classifier weights.
FOLDED_TEMPERATURE = "folded_temperature"


class PredictError(Exception):
    """The model cannot be loaded or the output cannot be written; the message says what to change."""


@dataclass
class Prediction:
    """One input file: the predicted label with its probability and p(virus), or the reason it was not read."""

    file: str
    label: str = ""
    probability: float | None = None
    p_virus: float | None = None
    error: str = ""


def classifier_head(model):
    """The final nn.Linear of a ViT, BiT or timm hybrid classifier (its output is the logits)."""
    import torch

    from .models import model_family

    family = model_family(model)
    if family == "vit":
        head = model.classifier
    elif family == "bit":
        head = model.classifier[-1]  # Sequential(Flatten, Linear)
    else:
        head = model.timm_model.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"the {family} model's head is {type(head).__name__}, not a Linear layer")
    return head


def fold_temperature_into_head(model, temperature: float) -> None:
    """Divide the classifier's weight and bias by T, so that the model's logits become logits / T.

    After this, `pipeline` (and anything else reading the logits) returns temperature-scaled probabilities with no
    custom code; saving the model publishes them calibrated. `config.folded_temperature` records the product of
    folded temperatures.
    """
    import torch

    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    head = classifier_head(model)
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)
    setattr(model.config, FOLDED_TEMPERATURE, getattr(model.config, FOLDED_TEMPERATURE, 1.0) * temperature)


def load_classifier(model: str, device: str | None = None):
    """`pipeline("image-classification")` for a run folder or Hub id; raises PredictError with what to change."""
    from transformers import pipeline

    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or path.exists() or model.count("/") > 1
    if looks_local and not (path / "config.json").is_file():
        raise PredictError(f"{model}: {'no config.json in this folder' if path.is_dir() else 'no such folder'}. "
                           "To fix: pass a run folder written by `hfxray train` (config.json, model.safetensors, "
                           "preprocessor_config.json) or a Hub id such as owner/name.")
    try:
        classifier = pipeline("image-classification", model=str(path) if looks_local else model, device=device)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = "; HF_HUB_OFFLINE is set, so a Hub id works only if already cached" if offline else ""
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise PredictError(f"cannot load {model!r} ({type(err).__name__}: {reason}). To fix: check the folder or "
                           f"Hub id{hint}.") from None
    return classifier


def predict_files(classifier, files: list[Path], batch_size: int = 16, progress: bool = True) -> list[Prediction]:
    """One Prediction per file, in order. Images are decoded one chunk of `batch_size` at a time, so memory stays
    bounded however many files there are."""
    from tqdm.auto import tqdm

    num_labels = classifier.model.config.num_labels
    predictions: list[Prediction] = []
    with tqdm(total=len(files), desc="predicting", unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            chunk = [Prediction(file=str(path)) for path in files[start:start + batch_size]]
            readable, images = [], []
            for row in chunk:
                try:
                    images.append(load_rgb(row.file))
                    readable.append(row)
                except ImageProblem as problem:
                    row.error = str(problem)
            if images:
                for row, scores in zip(readable, classifier(images, batch_size=batch_size, top_k=num_labels)):
                    by_label = {entry["label"]: entry["score"] for entry in scores}
                    row.label, row.probability = scores[0]["label"], scores[0]["score"]
                    row.p_virus = by_label.get("virus")
            predictions += chunk
            bar.update(len(chunk))
    return predictions


def write_predictions(predictions: list[Prediction], out: str | os.PathLike | None) -> None:
    """CSV or JSON chosen by the extension of `out`; CSV on stdout when `out` is None."""
    rows = [asdict(p) for p in predictions]
    if out is not None and Path(out).suffix.lower() == ".json":
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    if out is None:
        sys.stdout.write(buffer.getvalue())
    else:
        Path(out).write_text(buffer.getvalue())


def check_output_path(out: str | os.PathLike | None) -> None:
    """Fail before loading the model when the output cannot be written in a known format."""
    if out is None:
        return
    out = Path(out)
    if out.is_dir():  # `preds.csv/` included: writing would fail after the whole run, with a traceback
        raise PredictError(f"--out {out} is a folder. To fix: pass a file name, e.g. --out {out / 'predictions.csv'}.")
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise PredictError(f"--out {out}: unknown format {out.suffix or '(no extension)'!r}. To fix: end the name "
                           f"with {' or '.join(OUTPUT_FORMATS)}.")
    if not out.parent.is_dir():
        raise PredictError(f"--out {out}: folder {out.parent} does not exist. To fix: create it first.")


def summary_line(predictions: list[Prediction]) -> str:
    """`predicted 3 of 5 files; 2 unreadable: a.jpg (zero-byte file); ...`"""
    failed = [p for p in predictions if p.error]
    line = f"predicted {len(predictions) - len(failed)} of {len(predictions)} files"
    if failed:
        line += f"; {len(failed)} unreadable: " + "; ".join(f"{p.file} ({p.error})" for p in failed)
    return line
