"""Explainability for every model kind: Grad-CAM, attention rollout and activation maximization.

    from hfxray.explain import explain
    explain("runs/vit-tiny", "gradcam", ["xrays/"], "figures/")       # one PNG per image
    explain("runs/vit-tiny", "actmax", [], "figures/")                # one grid PNG, a row per model

`gradcam_map`, `rollout_map` and `activation_maximization` work on a loaded model and tensors, for notebooks and
tests. Which method applies to which kind: Grad-CAM to all three, rollout to ViT and the hybrid (BiT has no
attention), activation maximization to all three.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import HfxrayError
from ..imaging import ImageProblem, expand_paths, load_rgb
from ..models import model_family
from .actmax import ActMaxResult, activation_maximization, input_spec
from .figures import save_actmax_grid, save_heatmap_figure
from .gradcam import gradcam_map, gradcam_target
from .rollout import NotApplicable, rollout_map

METHODS = ("gradcam", "rollout", "actmax")
APPLIES_TO = {"gradcam": ("vit", "bit", "hybrid"), "rollout": ("vit", "hybrid"), "actmax": ("vit", "bit", "hybrid")}

__all__ = [
    "METHODS", "ActMaxResult", "ExplainError", "NotApplicable", "activation_maximization", "check_applicable",
    "expand_paths", "explain", "explain_actmax", "gradcam_map", "gradcam_target", "load_model", "resolve_class",
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
        family = model_family(model)
    except ValueError as err:
        raise ExplainError(f"{err}. To fix: explain a model trained with hfxray") from None
    if family not in APPLIES_TO[method]:
        usable = [name for name, kinds in APPLIES_TO.items() if family in kinds]
        raise ExplainError(f"{method} does not apply to {family} models (no attention to roll out). To fix: use "
                           f"--method {' or '.join(usable)}")
    return family


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


def explain(model_or_dir, method: str, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            processor=None, *, target_class: int | str | None = None, steps: int = 200, progress: bool = False,
            on_skip: Callable[[Path, str], None] | None = None, name: str | None = None) -> list[Path]:
    """Write explanation PNGs for one model into `out_dir` and return their paths.

    gradcam / rollout: one figure per readable image (folders are searched); unreadable files are skipped and
    passed to `on_skip(path, reason)`. gradcam explains `target_class` (index or label), default each image's
    predicted class;
    rollout is class-agnostic. actmax ignores `images` and writes one grid (a row for this model). `name` labels
    the figures (default: the folder name, or the model kind).
    """
    model, processor, default_name = _model_and_processor(model_or_dir, processor)
    name = name or default_name
    check_applicable(model, method)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if method == "actmax":
        return [explain_actmax({name: (model, processor)}, out / f"{name}.actmax.png", steps=steps)]
    labels = model.config.id2label
    target_class = resolve_class(model, target_class)
    written: list[Path] = []
    used: set[Path] = set()
    paths = expand_paths(images)
    if progress:
        from tqdm.auto import tqdm

        paths = tqdm(paths, desc=f"{method} {name}", unit="image", disable=None)  # no bar in logs
    model.eval()
    for path in paths:
        try:
            image = load_rgb(path)
        except ImageProblem as problem:
            if on_skip is not None:
                on_skip(path, str(problem))
            continue
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            probabilities = model(pixel_values=pixel_values).logits.softmax(-1)[0]
        predicted = int(probabilities.argmax())
        if method == "gradcam":
            explained = predicted if target_class is None else target_class
            heatmap = gradcam_map(model, pixel_values, explained)[0]
            heatmap_title = f"Grad-CAM for class '{labels[explained]}'"
        else:
            heatmap = rollout_map(model, pixel_values)[0]
            heatmap_title = "attention rollout (class-agnostic)"
        title = f"{Path(path).name}: predicted {labels[predicted]} (p = {probabilities[predicted]:.2f})  [{name}]"
        figure_path = _unique_path(out, Path(path).stem, f".{method}.png", used)
        written.append(save_heatmap_figure(_decode(pixel_values[0], processor), heatmap, figure_path, title,
                                           heatmap_title))
    return written


def explain_actmax(models: dict, out_path: str | os.PathLike, steps: int = 200, **options) -> Path:
    """One grid PNG, a row per model ({name: model folder or (model, processor)}) and a column per class."""
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
    return save_actmax_grid(results, class_names, out_path)
