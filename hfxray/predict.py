"""Batch prediction through `pipeline("image-classification")`: the same code path a Hub user runs.

Files are opened with `hfxray.imaging.load_rgb`, so a corrupt or empty file becomes a row with its reason instead of
stopping the run; the decoded images go to the pipeline in batches. Probabilities are calibrated when training
folded a temperature into the head (`hfxray.calibration`).

Each row also says whether the image is within what the model was trained on (`hfxray.scope`): `ood` is "in range",
"unlike the training images" or "not checked" (a run without ood.json), `ood_score` the score, and `warning` every
reason to doubt the answer (a DICOM header that names another body part or a lateral view, the OOD flag). Flagged
images are still predicted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .env import hub_offline
from .errors import HfxrayError, excerpt, printable
from .imaging import ImageProblem, load_rgb, out_of_scope
from .logs import progress_bar_disable
from .outputs import csv_row
from .scope import NOT_CHECKED

OUTPUT_FORMATS = (".csv", ".json")
COLUMNS = ("file", "label", "probability", "p_virus", "ood", "ood_score", "warning", "error")


class PredictError(HfxrayError):
    """The model cannot be loaded or the output cannot be written; the message says what to change."""


@dataclass
class Prediction:
    """One input file: the predicted label with its probability and p(virus), or the reason it was not read."""

    file: str
    label: str = ""
    probability: float | None = None
    p_virus: float | None = None
    ood: str = ""  # hfxray.scope: "in range", "unlike the training images" or "not checked"
    ood_score: float | None = None
    warning: str = ""  # why the answer is out of scope ("" when nothing says so)
    error: str = ""


def load_classifier(model: str, device: str | None = None):
    """`pipeline("image-classification")` for a run folder or Hub id; raises PredictError with what to change."""
    from transformers import pipeline

    from .logs import hide_weight_loading_bars
    from .models import ModelLoadError, check_labels, hub_load_message, load_errors, model_source

    hide_weight_loading_bars()
    check_device(device)
    try:
        folder, source = model_source(model)
    except ModelLoadError as err:
        raise PredictError(str(err)) from None
    try:
        # Never the folder's own code, never pickled weights: a model folder is data, not a program.
        classifier = pipeline("image-classification", model=source, device=device,
                              trust_remote_code=False, model_kwargs={"use_safetensors": True})
    except load_errors() as err:
        if folder is None and source != model:
            raise PredictError(hub_load_message(model, source, err)) from None
        hint = "; HF_HUB_OFFLINE is set, so a Hub id works only if already cached" if hub_offline() else ""
        raise PredictError(f"cannot load {model!r} ({type(err).__name__}: {excerpt(err, 200)}). To fix: check "
                           f"the folder or Hub id{hint}.") from None
    try:
        check_labels(classifier.model.config, model)
    except ModelLoadError as err:
        raise PredictError(str(err)) from None
    return classifier


def check_device(device: str | None) -> None:
    """A --device torch cannot parse or does not have is named as such, not blamed on the model folder."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise PredictError(f"--device {printable(str(device))}: not a device torch knows. To fix: pass cpu, cuda, "
                           "cuda:0 or mps (or leave it out).") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise PredictError(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s) here. To fix: pass "
                           "cpu, or another GPU index.")


def predict_files(classifier, files: list[Path], batch_size: int = 16, progress: bool = True,
                  ood_check=None) -> list[Prediction]:
    """One Prediction per file, in order. Images are decoded one chunk of `batch_size` at a time, so memory stays
    bounded however many files there are. `ood_check` (`hfxray.scope.OodCheck`, read from the same forward pass as
    the probabilities) flags images unlike the training ones; None marks every row "not checked"."""
    from tqdm.auto import tqdm

    from .scope import capture_features, judge_images, stacked, warning_text

    num_labels = classifier.model.config.num_labels
    predictions: list[Prediction] = []
    disable = progress_bar_disable() if progress else True
    with tqdm(total=len(files), desc="predicting", unit="img", disable=disable) as bar:
        for start in range(0, len(files), batch_size):
            chunk = [Prediction(file=str(path)) for path in files[start:start + batch_size]]
            readable, images, scopes = [], [], []
            for row in chunk:
                try:
                    images.append(load_rgb(row.file))
                    readable.append(row)
                    scopes.append(out_of_scope(images[-1]))
                except ImageProblem as problem:
                    row.error = str(problem)
            if images:
                with capture_features(classifier.model) as captured:
                    answers = classifier(images, batch_size=batch_size, top_k=num_labels)
                judged = judge_images(ood_check, stacked(captured), len(images))
                for row, scores, scope, ood in zip(readable, answers, scopes, judged):
                    by_label = {entry["label"]: entry["score"] for entry in scores}
                    row.label, row.probability = scores[0]["label"], scores[0]["score"]
                    row.p_virus = by_label.get("virus")
                    row.ood, row.ood_score = ood.status, None if ood.score is None else round(ood.score, 4)
                    row.warning = warning_text(scope, ood)
            predictions += chunk
            bar.update(len(chunk))
    return predictions


def write_predictions(predictions: list[Prediction], out: str | os.PathLike | None) -> None:
    """CSV or JSON chosen by the extension of `out`; CSV on stdout when `out` is None."""
    # A file name that is not UTF-8 (surrogate-escaped by Python) is written as printable text (\xNN), as
    # manifest.csv writes names: the raw bytes would make the CSV or JSON file undecodable.
    rows = [{k: printable(v) if isinstance(v, str) else v for k, v in asdict(p).items()} for p in predictions]
    if out is not None and Path(out).suffix.lower() == ".json":
        Path(out).write_text(json.dumps(rows, indent=2) + "\n")
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(csv_row({k: "" if v is None else v for k, v in row.items()}) for row in rows)
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
    """`predicted 3 of 5 files; 2 unreadable: a.jpg (zero-byte file); ...; 1 out of scope (see the warning
    column): b.dcm`"""
    failed = [p for p in predictions if p.error]
    line = f"predicted {len(predictions) - len(failed)} of {len(predictions)} files"
    if failed:
        line += f"; {len(failed)} unreadable: " + "; ".join(f"{printable(p.file)} ({p.error})" for p in failed)
    flagged = [p for p in predictions if p.warning]
    if flagged:
        line += f"; {len(flagged)} out of scope (see the warning column): " + ", ".join(
            printable(Path(p.file).name) for p in flagged[:5]) + (" ..." if len(flagged) > 5 else "")
    readable = [p for p in predictions if not p.error]
    if readable and all(p.ood == NOT_CHECKED for p in readable):
        line += "; out-of-distribution check: not checked (the run has no ood.json)"
    return line
