"""PNG figures: image | heatmap | overlay per input, and the activation-maximization grid (models x classes).

Drawn with matplotlib's Agg backend through the object API (no pyplot state), so figures can be made from
worker threads and headless machines alike. Every PNG carries text chunks naming the model and method that wrote
it (`figure_origin`), so a later run can tell its own earlier figure from another model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .actmax import ActMaxResult

HEATMAP_CMAP = "jet"  # the Grad-CAM convention readers expect: blue = low, red = high
OVERLAY_ALPHA = 0.45
ORIGIN_KEYS = ("hfxray-model", "hfxray-method")  # PNG text chunks: who wrote the figure
WARNING_COLOR = "#B00020"


def figure_origin(path: str | Path) -> dict[str, str] | None:
    """{"hfxray-model": ..., "hfxray-method": ...} of a PNG hfxray wrote, None for any other file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or {})
    except (OSError, ValueError):
        return None
    return {key: text[key] for key in ORIGIN_KEYS} if all(key in text for key in ORIGIN_KEYS) else None


def _save(figure, path: str | Path, origin: Mapping[str, str] | None) -> Path:
    path = Path(path)
    metadata = {"Software": "hfxray", **(origin or {})}
    figure.savefig(path, metadata=metadata)
    return path


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _show_image(axis, image: np.ndarray) -> None:
    """Gray X-rays stay gray: colour maps on a 3-equal-channel image would only add noise."""
    if image.ndim == 3 and (image == image[..., :1]).all():
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        axis.imshow(image)
    axis.set_xticks([])
    axis.set_yticks([])


def _stretch(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats min-max to uint8 for display: optimised inputs stay near the gray start and look flat."""
    low, high = float(image.min()), float(image.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return ((image - low) * scale).round().astype(np.uint8)


def save_heatmap_figure(image: np.ndarray, heatmap: np.ndarray, path: str | Path, title: str,
                        heatmap_title: str, warning: str = "", origin: Mapping[str, str] | None = None,
                        scope_warning: str = "") -> Path:
    """Three panels (input as the model saw it | heatmap | overlay); `image` and `heatmap` share one grid.

    `warning` (e.g. "degenerate map: ...") is written in red across the heatmap and overlay panels and under the
    title, so a blank map never passes for "nothing relevant here". `scope_warning` (`hfxray.scope.warning_text`:
    the image is unlike the training data) is written in red under the title.
    """
    if image.shape[:2] != heatmap.shape:
        raise ValueError(f"heatmap {heatmap.shape} does not match image {image.shape[:2]}: they would misalign")
    figure = _new_figure(11.5, 4.3)
    axes = figure.subplots(1, 3)
    _show_image(axes[0], image)
    axes[0].set_title("input (as the model sees it)")
    shown = axes[1].imshow(heatmap, cmap=HEATMAP_CMAP, vmin=0, vmax=1)
    axes[1].set_title(heatmap_title)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    figure.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.02, label="relevance (0 = none, 1 = most)")
    _show_image(axes[2], image)
    if not warning:  # a degenerate map would only lay a uniform veil over the image
        axes[2].imshow(heatmap, cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=OVERLAY_ALPHA)
    axes[2].set_title("overlay")
    if scope_warning:
        import textwrap

        title = f"{title}\n" + textwrap.fill(scope_warning, width=120)
    if warning:
        for axis in axes[1:]:
            axis.text(0.5, 0.5, "DEGENERATE MAP\n(shows nothing)", transform=axis.transAxes, ha="center",
                      va="center", fontsize=14, fontweight="bold", color=WARNING_COLOR,
                      bbox=dict(facecolor="white", alpha=0.85, edgecolor=WARNING_COLOR))
        import textwrap

        title = f"{title}\n" + textwrap.fill(warning, width=120)  # the figure is ~120 characters wide
    suptitle = figure.suptitle(title, fontsize=13)
    if warning or scope_warning:
        suptitle.set_color(WARNING_COLOR)
    return _save(figure, path, origin)


def save_actmax_grid(results: Mapping[str, Sequence[ActMaxResult]], class_names: Sequence[str],
                     path: str | Path, origin: Mapping[str, str] | None = None) -> Path:
    """Rows = models, columns = classes (the study's Figures 2 and 3), each titled with the logit rise."""
    rows = list(results.items())
    figure = _new_figure(3.3 * len(class_names) + 0.6, 3.5 * len(rows) + 0.5)
    axes = np.atleast_2d(figure.subplots(len(rows), len(class_names), squeeze=False))
    for row, (model_name, row_results) in enumerate(rows):
        by_class = {result.target_class: result for result in row_results}
        for col, class_name in enumerate(class_names):
            axis = axes[row, col]
            result = by_class.get(col)
            if result is None:
                axis.set_axis_off()
                continue
            _show_image(axis, _stretch(result.image_float))
            start, end = result.start_logits[col], result.end_logits[col]
            axis.set_title(f"{class_name}\nlogit {start:+.2f} \u2192 {end:+.2f}", fontsize=11)
            if col == 0:
                axis.set_ylabel(model_name, fontsize=12)
    figure.suptitle("Activation maximization: inputs each model scores highest per class\n"
                    "(contrast stretched per image)", fontsize=12)
    return _save(figure, path, origin)
