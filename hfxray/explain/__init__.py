"""Explainability for every model kind: Grad-CAM, attention rollout and activation maximization.

    from hfxray.explain import explain
    explain("runs/vit-tiny", "rollout", ["xrays/"], "figures/")  # <image>.vit-tiny.rollout.png per image, its
                                                                   # map as <image>.vit-tiny.rollout.npz (the file's
                                                                   # pixel grid), vit-tiny.rollout.csv/.json: each
                                                                   # map's status and localisation (lifts)
    explain("runs/vit-tiny", "actmax", [], "figures/")           # vit-tiny.actmax.png, a row per model

`gradcam_map`, `rollout_map` and `activation_maximization` work on a loaded model and tensors, for notebooks and
tests. Which method applies to which kind is each family adapter's `explanations` (`hfxray.families`): activation
maximization to every family, rollout to those with attention (ViT, the hybrid), Grad-CAM to every family but
ViT, whose Grad-CAM fails the planted-marker positive control (the adapter's `not_offered` says so when asked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import HfxrayError, printable
from ..imaging import ImageProblem, expand_paths, load_rgb, out_of_scope
from ..families import METHODS, UnsupportedModelError, adapter_for, model_family
from ..outputs import csv_row
from .. import logs
from .actmax import ActMaxResult, activation_maximization, input_spec
from .arrays import array_origin, input_geometry, save_map_array
from .figures import save_actmax_grid, save_heatmap_figure
from .localisation import localisation
from .gradcam import QUANTITY, STATUS_TEXT, GradCamResult, gradcam_map, gradcam_target, gradcam_with_status
from .rollout import NotApplicable, rollout_map

__all__ = [
    "METHODS", "QUANTITY", "ActMaxResult", "Explained", "ExplainError", "GradCamResult", "NotApplicable",
    "activation_maximization", "check_applicable", "check_overwrite", "expand_paths", "explain", "explain_actmax",
    "explain_images", "gradcam_map", "gradcam_target", "gradcam_with_status", "load_model", "resolve_class",
    "rollout_map",
]


class ExplainError(HfxrayError):
    """The model cannot be loaded or explained this way; the message is one line and says how to fix it."""


def load_model(model_dir: str | os.PathLike):
    """(model, processor) from a trained model folder, with a clear message instead of Hub errors."""
    from ..models import ModelLoadError, load_trained

    try:
        model, processor = load_trained(str(model_dir))
    except ModelLoadError as err:
        raise ExplainError(str(err)) from None
    return model.eval(), processor


def check_applicable(model: nn.Module, method: str) -> str:
    """The model's family, or ExplainError when `method` does not exist for it."""
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}. To fix: choose one of {', '.join(METHODS)}")
    try:
        adapter = adapter_for(model)
    except UnsupportedModelError as err:
        raise ExplainError(str(err)) from None
    if method in adapter.not_offered:
        raise ExplainError(f"{method} is not offered for {adapter.name} models: {adapter.not_offered[method]}. To "
                           f"fix: use --method {' or '.join(adapter.explanations)}")
    if method not in adapter.explanations:
        why = " (no attention to roll out)" if method == "rollout" else ""
        raise ExplainError(f"{method} does not apply to {adapter.name} models{why}. To fix: use --method "
                           f"{' or '.join(adapter.explanations)}")
    return adapter.name


def _model_and_processor(model_or_dir, processor):
    if isinstance(model_or_dir, (str, os.PathLike)):
        model, loaded = load_model(model_or_dir)
        return model, processor or loaded, Path(model_or_dir).name
    if processor is None:
        raise ExplainError("a loaded model needs its image processor. To fix: pass processor=... (or a model folder)")
    return model_or_dir, processor, model_family(model_or_dir)


def _unique_path(out_dir: Path, stem: str, suffix: str, used: set[Path]) -> Path:
    """Two inputs named alike (a/1.png, b/1.png) must not overwrite each other's figure."""
    path, counter = out_dir / f"{stem}{suffix}", 2
    while path in used:
        path, counter = out_dir / f"{stem}-{counter}{suffix}", counter + 1
    used.add(path)
    return path


def _origin(source: str, method: str) -> dict[str, str]:
    return {"hfxray-model": source, "hfxray-method": method}


def check_overwrite(paths: Sequence[Path], origin: dict[str, str]) -> None:
    """Refuse, before anything is written, to replace a file this model and method did not write.

    A figure of the same model (same folder) and method is replaced: re-running an explanation updates it. Anything
    else at a planned path (another model of the same folder name, a user's file) stops the run.
    """
    from .figures import figure_origin

    for path in paths:
        if not path.exists():
            continue
        if path.suffix == ".png":
            found = figure_origin(path)
        elif path.suffix == ".npz":
            found = array_origin(path)
        else:
            found = _summary_origin(path)
        if found != origin:
            by = f"by {found['hfxray-model']} ({found['hfxray-method']})" if found else "by something else"
            raise ExplainError(f"{path} exists and was written {by}, not by {origin['hfxray-model']} "
                               f"({origin['hfxray-method']}). To fix: write to another --out folder, or remove it")


def _summary_origin(path: Path) -> dict[str, str] | None:
    import json

    if path.suffix == ".csv":
        # The CSV's twin holds the origin; the CSV itself must also be one hfxray wrote (its header), or a user's
        # file of that name would be replaced whenever the .json beside it is hfxray's.
        try:
            with path.open(encoding="utf-8") as handle:
                header = handle.readline().strip()
        except (OSError, UnicodeDecodeError):
            return None
        if header != ",".join(SUMMARY_FIELDS):
            return None
        path = path.with_suffix(".json")
    elif path.suffix == ".md":  # the sanity report: its own title, and the origin in its .json twin
        from .sanity_report import REPORT_TITLE

        try:
            with path.open(encoding="utf-8") as handle:
                if handle.readline().strip() != REPORT_TITLE:
                    return None
        except (OSError, UnicodeDecodeError):
            return None
        path = path.with_suffix(".json")
    try:
        data = json.loads(path.read_text())
        return _origin(data["model"], data["method"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _decode(pixel_values: torch.Tensor, processor) -> np.ndarray:
    """Normalised (3, H, W) back to uint8 (H, W, 3): the exact pixels the heatmap refers to."""
    _, mean, std = input_spec(processor)
    image = pixel_values.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def resolve_class(model: nn.Module, target: int | str | None) -> int | None:
    """Class index from an index or a label name ("virus", "1"); None stays None (the predicted class)."""
    if target is None:
        return None
    labels = {name: int(index) for index, name in model.config.id2label.items()}
    if isinstance(target, str) and target in labels:
        return labels[target]
    if str(target).isdigit() and int(target) < len(labels):
        return int(target)
    raise ExplainError(f"unknown class {target!r}. To fix: use one of {', '.join(labels)} or its index")


@dataclass
class Explained:
    """What `explain_images` wrote: figure paths, and the per-image summary (CSV and JSON) with each map's status."""

    figures: list[Path] = field(default_factory=list)
    arrays: list[Path] = field(default_factory=list)  # the maps as .npz, one per figure (hfxray.explain.arrays)
    rows: list[dict] = field(default_factory=list)
    summary_csv: Path | None = None
    summary_json: Path | None = None

    @property
    def degenerate(self) -> list[dict]:
        return [row for row in self.rows if row["status"] != "ok"]


SUMMARY_FIELDS = ("image", "figure", "array", "predicted", "probability", "explained", "quantity", "layer", "status",
                  "positive_share", "body_lift", "body_area", "band_lift", "band_area", "ood", "ood_score", "warning")


def explain_images(model_or_dir, method: str, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   processor=None, *, target_class: int | str | None = None, progress: bool = False,
                   on_skip: Callable[[Path, str], None] | None = None, name: str | None = None,
                   source: str | None = None, ood_check=None) -> Explained:
    """Grad-CAM or rollout figures for one model, `<image>.<name>.<method>.png`, plus `<name>.<method>.csv/.json`.

    Each map is also saved as `<image>.<name>.<method>.npz` beside its figure, in the pixel grid of the image file
    (`hfxray.explain.arrays`); the summary gives each map's lift over the body and over the outer band
    (`hfxray.explain.localisation`: 1 = a uniform map's value) with the regions' area shares.
    Each row and figure says when the image is out of scope (`hfxray.scope`): its DICOM header names another body
    part or view, or the run's OOD check (`ood_check`, default: read from the `source` folder) finds it unlike the
    training images; "not checked" when the run has no check.

    `name` labels the figures (default: the model folder's name, or the model kind); `source` identifies the model
    for the overwrite check (default: the resolved model folder, else `name`). A figure this model and method wrote
    before is replaced; any other file in the way stops the run before anything is written (`check_overwrite`).
    """
    if isinstance(model_or_dir, (str, os.PathLike)) and source is None:
        source = str(Path(model_or_dir).resolve())
    model, processor, default_name = _model_and_processor(model_or_dir, processor)
    name = name or default_name
    source = source or name
    check_applicable(model, method)
    if method not in ("gradcam", "rollout"):
        raise ExplainError(f"{method} explains no images. To fix: call explain_actmax")
    out = Path(out_dir)
    labels = model.config.id2label
    target_class = resolve_class(model, target_class)
    paths = expand_paths(images)
    used: set[Path] = set()
    # Figure names and every name in titles and summaries as printable text: a file name that is not UTF-8 would
    # stop matplotlib's text and the CSV (its bytes are kept as \xNN)
    planned = [_unique_path(out, printable(Path(path).stem), f".{name}.{method}.png", used) for path in paths]
    result = Explained(summary_csv=out / f"{name}.{method}.csv", summary_json=out / f"{name}.{method}.json")
    origin = _origin(source, method)
    check_overwrite([*planned, *(path.with_suffix(".npz") for path in planned), result.summary_csv,
                     result.summary_json], origin)
    if ood_check is None:
        from ..scope import load_check

        ood_check, why_not = load_check(source)
        if ood_check is None:
            from ..logs import get_logger

            get_logger(__name__).warning("out-of-distribution check of %s: not checked (%s)", name, why_not)
    out.mkdir(parents=True, exist_ok=True)
    items = zip(paths, planned)
    if progress:  # a bar on a terminal, else a line every 10 s; nothing under -q
        items = logs.progress(items, total=len(paths), desc=f"{method} {name}", unit="image")
    model.eval()
    layer = quantity = ""
    for path, figure_path in items:
        try:
            image = load_rgb(path)
        except ImageProblem as problem:
            if on_skip is not None:
                on_skip(path, str(problem))
            continue
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        from ..scope import capture_features, judge_images, stacked, warning_text

        with torch.no_grad(), capture_features(model) as captured:
            probabilities = model(pixel_values=pixel_values).logits.softmax(-1)[0]
        ood = judge_images(ood_check, stacked(captured), 1)[0]
        scope_warning = warning_text(out_of_scope(image), ood)
        predicted = int(probabilities.argmax())
        if method == "gradcam":
            explained = predicted if target_class is None else target_class
            cam = gradcam_with_status(model, pixel_values, explained)
            heatmap, status, share = cam.maps[0], cam.status[0], cam.positive_share[0]
            layer, quantity = cam.layer, f"{cam.quantity} of '{labels[explained]}'"
            heatmap_title = f"Grad-CAM: {quantity}\nat {layer}"
            explained_label = labels[explained]
        else:
            heatmap = rollout_map(model, pixel_values)[0]
            status, share = ("ok" if np.ptp(heatmap) > 0 else "constant"), 1.0
            layer, quantity = "all attention blocks", "attention rollout (class-agnostic)"
            heatmap_title = quantity
            explained_label = ""
        warning = "" if status == "ok" else f"degenerate map ({status}): {STATUS_TEXT[status]}"
        title = (f"{printable(Path(path).name)}: predicted {labels[predicted]} (p = {probabilities[predicted]:.2f})"
                 f"  [{name}]")
        seen = _decode(pixel_values[0], processor)
        result.figures.append(save_heatmap_figure(seen, heatmap, figure_path, title, heatmap_title, warning, origin,
                                                  scope_warning))
        array_path = save_map_array(
            figure_path.with_suffix(".npz"), heatmap, input_geometry(processor, (image.height, image.width)),
            method=method, model=source, model_name=name, layer=layer, quantity=quantity, status=status,
            target_class=explained if method == "gradcam" else -1, target_label=explained_label,
            predicted=labels[predicted], probability=float(probabilities[predicted]), image=str(path))
        result.arrays.append(array_path)
        lifts = localisation(heatmap, seen[..., 0] / 255.0) if status == "ok" else {}
        result.rows.append({"image": printable(str(path)), "figure": figure_path.name, "array": array_path.name,
                            "predicted": labels[predicted],
                            "probability": round(float(probabilities[predicted]), 4), "explained": explained_label,
                            "quantity": quantity, "layer": layer, "status": status,
                            "positive_share": round(float(share), 4),
                            **{key: _rounded(lifts.get(key)) for key in ("body_lift", "body_area", "band_lift",
                                                                          "band_area")},
                            "ood": ood.status, "ood_score": None if ood.score is None else round(ood.score, 4),
                            "warning": scope_warning})
    _write_summary(result, origin, name)
    return result


def _rounded(value: float | None) -> float | None:
    """4 decimals for the summary; a lift that does not exist (degenerate map, empty region) is left blank."""
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _write_summary(result: Explained, origin: dict[str, str], name: str) -> None:
    import csv
    import json

    with open(result.summary_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(csv_row(row) for row in result.rows)  # image names are untrusted text
    summary = {"model": origin["hfxray-model"], "method": origin["hfxray-method"], "name": name,
               "images": len(result.rows), "degenerate": len(result.degenerate),
               "statuses": {status: sum(row["status"] == status for row in result.rows)
                            for status in sorted({row["status"] for row in result.rows})},
               "rows": result.rows}
    result.summary_json.write_text(json.dumps(summary, indent=1) + "\n")


def explain(model_or_dir, method: str, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            processor=None, *, target_class: int | str | None = None, steps: int = 200, progress: bool = False,
            on_skip: Callable[[Path, str], None] | None = None, name: str | None = None,
            source: str | None = None) -> list[Path]:
    """Write explanation PNGs for one model into `out_dir` and return their paths.

    gradcam / rollout: one figure per readable image (folders are searched), `<image>.<name>.<method>.png`, and a
    per-image summary `<name>.<method>.csv/.json` that flags degenerate maps (`explain_images`); unreadable files
    are skipped and passed to `on_skip(path, reason)`. gradcam explains `target_class` (index or label), default
    each image's predicted class; rollout is class-agnostic. actmax ignores `images` and writes one grid
    `<name>.actmax.png` (a row for this model). `name` labels the figures (default: the folder name, or the model
    kind).
    """
    if method == "actmax":
        if isinstance(model_or_dir, (str, os.PathLike)) and source is None:
            source = str(Path(model_or_dir).resolve())
        model, processor, default_name = _model_and_processor(model_or_dir, processor)
        name = name or default_name
        return [explain_actmax({name: (model, processor)}, Path(out_dir) / f"{name}.actmax.png", steps=steps,
                               sources=[source or name])]
    return explain_images(model_or_dir, method, images, out_dir, processor, target_class=target_class,
                          progress=progress, on_skip=on_skip, name=name, source=source).figures


def explain_actmax(models: dict, out_path: str | os.PathLike, steps: int = 200, sources: Sequence[str] | None = None,
                   **options) -> Path:
    """One grid PNG, a row per model ({name: model folder or (model, processor)}) and a column per class.

    `sources` identify the models for the overwrite check (default: their folders, or names); an existing grid of
    the same models is replaced, anything else at `out_path` stops the run.
    """
    if sources is None:
        sources = [str(Path(entry).resolve()) if isinstance(entry, (str, os.PathLike)) else name
                   for name, entry in models.items()]
    origin = _origin(" + ".join(sources), "actmax")
    check_overwrite([Path(out_path)], origin)
    results: dict[str, list[ActMaxResult]] = {}
    class_names: list[str] = []
    for name, entry in models.items():
        model, processor = entry if isinstance(entry, tuple) else load_model(entry)
        check_applicable(model, "actmax")
        labels = model.config.id2label
        if len(labels) > len(class_names):
            class_names = [labels[index] for index in range(len(labels))]
        results[name] = [activation_maximization(model, processor, index, steps=steps, **options)
                         for index in range(len(labels))]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    return save_actmax_grid(results, class_names, out_path, origin)
