"""What the serve page says beside each answer, for a clinician: the area the models analyse drawn on the input,
the heatmap's colour scale, the training population and its limits (from the run's model card), and whether the
image is out of scope (`hfxray.scope`). Pure functions of images, processors and run files; `hfxray.serve` lays
them out.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .imaging import out_of_scope
from .scope import NOT_CHECKED, OodResult

COLOUR_SCALE_LABEL = {"rollout": "share of the model's attention", "gradcam": "weight towards the answer"}
ANALYSED_AREA_COLOUR = (255, 196, 0)  # amber: visible on a gray radiograph, not a heatmap colour


def ood_markdown(ood: OodResult | None) -> str:
    """The out-of-distribution line under a model's answer: a warning when flagged, "not checked" said plainly."""
    if ood is None or ood.status == NOT_CHECKED:
        return ("Similarity to the training images: **not checked** (this run has no out-of-distribution check; "
                "`hfxray ood` fits one).")
    if ood.flagged:
        return f"⚠️ **This image is {ood.text()}**: the answer above may mean nothing."
    return f"Similarity to the training images: {ood.text()}."


def analysed_box(processor, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in the input image's pixels of the area the model sees: the processor resizes
    (shortest edge, or to a fixed height x width), then takes the centre crop; anything outside is never seen."""
    size = dict(getattr(processor, "size", None) or {})
    if size.get("shortest_edge"):
        scale = size["shortest_edge"] / min(width, height)
        resized_w, resized_h = width * scale, height * scale
    elif size.get("height") and size.get("width"):
        resized_w, resized_h = float(size["width"]), float(size["height"])
    else:
        resized_w, resized_h = float(width), float(height)
    crop_w, crop_h = resized_w, resized_h
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        crop_w, crop_h = min(processor.crop_size["width"], resized_w), min(processor.crop_size["height"], resized_h)
    to_x, to_y = width / resized_w, height / resized_h
    left, top = (resized_w - crop_w) / 2 * to_x, (resized_h - crop_h) / 2 * to_y
    return left, top, left + crop_w * to_x, top + crop_h * to_y


def mark_analysed_area(shown: Image.Image, original_width: int,
                       boxes: Sequence[tuple[float, float, float, float]]) -> Image.Image:
    """`shown` (a display copy of an input `original_width` pixels wide) with each analysed area drawn on it as a
    dashed amber rectangle."""
    from PIL import ImageDraw

    shown = shown.convert("RGB") if shown.mode != "RGB" else shown.copy()
    scale = shown.width / original_width
    draw = ImageDraw.Draw(shown)
    line = max(2, round(max(shown.size) / 200))
    for left, top, right, bottom in sorted(set(boxes)):
        x0, y0 = left * scale, top * scale
        x1, y1 = min(right * scale, shown.width - 1), min(bottom * scale, shown.height - 1)
        dash = 4 * line
        for start in np.arange(x0, x1, 2 * dash):  # dashed: the film under the line stays readable
            end = min(start + dash, x1)
            draw.line([(start, y0), (end, y0)], fill=ANALYSED_AREA_COLOUR, width=line)
            draw.line([(start, y1), (end, y1)], fill=ANALYSED_AREA_COLOUR, width=line)
        for start in np.arange(y0, y1, 2 * dash):
            end = min(start + dash, y1)
            draw.line([(x0, start), (x0, end)], fill=ANALYSED_AREA_COLOUR, width=line)
            draw.line([(x1, start), (x1, end)], fill=ANALYSED_AREA_COLOUR, width=line)
    return shown


def analysed_area_text(width: int, height: int, boxes: Sequence[tuple[float, float, float, float]]) -> str:
    """One sentence on what the rectangle means, with how much of the film the models do not see."""
    left, top, right, bottom = max(set(boxes), key=lambda box: (box[2] - box[0]) * (box[3] - box[1]))
    seen = (right - left) * (bottom - top) / (width * height)
    if seen > 0.995:
        return "The models see the whole image (resized)."
    # Where the crop cuts most: the sides of a wide film resized by its shortest edge, the top and bottom of a tall
    # one, an even margin when every image is first squashed to a square (`resize_mode: square`).
    sides, ends = 1 - (right - left) / width, 1 - (bottom - top) / height
    where = ("often the lateral lung edges of a wide film" if sides > 2 * ends else "the top and bottom of a tall film"
             if ends > 2 * sides else "a margin along every edge of the film")
    return (f"The dashed amber rectangle is the area the models analyse (a centre crop): the {100 * (1 - seen):.0f} % "
            f"of the image outside it, {where}, is not seen.")


def with_colour_scale(overlay: Image.Image, method: str) -> Image.Image:
    """The heatmap overlay with its colour scale beside it (the colours of `hfxray explain`'s figures)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from .explain.figures import HEATMAP_CMAP

    dpi, bar = 100, 96  # bar: pixels to the right of the image for the scale and its words
    width, height = overlay.width + bar, overlay.height
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axis = figure.add_axes((0, 0, overlay.width / width, 1))
    axis.imshow(np.asarray(overlay))
    axis.set_axis_off()
    scale_axis = figure.add_axes((overlay.width / width + 0.03, 0.08, 0.045, 0.84))
    colourbar = figure.colorbar(ScalarMappable(Normalize(0, 1), colormaps[HEATMAP_CMAP]), cax=scale_axis)
    colourbar.set_ticks([0, 1], labels=["none", "most"])
    colourbar.ax.tick_params(labelsize=9)
    colourbar.set_label(COLOUR_SCALE_LABEL[method], fontsize=9)
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy(), mode="RGB")


def image_html(image: Image.Image, caption: str, alt: str, quality: int = 90) -> str:
    """The image as an HTML figure whose pixels travel inside the page's answer (a `data:` JPEG URI), with its
    caption above it.

    Derived images of a patient's X-ray are never written to disk this way: a `gr.Image` output is saved by Gradio
    into its cache after the handler returns and fetched by URL, so it outlives the request as a file.
    """
    buffer = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buffer, format="JPEG", quality=quality)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure style="margin:0"><figcaption style="font-size:var(--block-label-text-size, 0.8rem);'
            f'margin-bottom:4px">{html.escape(caption, quote=False)}</figcaption>'
            f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(alt)}" width="{image.width}" '
            f'height="{image.height}" style="display:block;margin:0 auto;max-width:100%;height:auto"></figure>')


def read_card(run_dir: str | os.PathLike) -> str:
    """The run's model card (README.md) without the Hub metadata header and figure links; "" when absent."""
    try:
        text = (Path(run_dir) / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        text = text[end + 4:] if end != -1 else text
    # Figures are files of the run folder the page does not serve; their links would show as broken images.
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("![")).strip()


def card_section(card: str, title: str) -> str:
    """The body of one `## title` section of a card ("" when it has none)."""
    body, inside = [], False
    for line in card.splitlines():
        if line.startswith("## "):
            inside = line[3:].strip().lower() == title.lower()
            continue
        if inside:
            body.append(line)
    return "\n".join(body).strip()


def _bullets(section: str) -> list[str]:
    """A Markdown list's items (each with its continuation lines)."""
    items: list[str] = []
    for line in section.splitlines():
        if line.startswith("- ") or not items:
            items.append(line)
        else:
            items[-1] += "\n" + line
    return [item for item in items if item.strip()]


def population_markdown(models: Sequence) -> str:
    """Who the models were trained on and the limits that follow: the "Limitations" of each run's model card, the
    items the cards share once, then each model's own (its test-set size); said plainly when a run has no card."""
    lists = {served.name: _bullets(card_section(served.card, "Limitations")) for served in models}
    present = [items for items in lists.values() if items]
    shared = [item for item in present[0] if all(item in items for items in present)] if present else []
    parts = ["**Who the models were trained on, and their limits** (from the model cards):", "\n".join(shared)]
    for name, items in lists.items():
        own = [item for item in items if item not in shared]
        if not items:
            parts.append(f"*{name}*: no model card (README.md) in its run folder: who it was trained on is unknown; "
                         "treat its answers as unvalidated.")
        elif own and len(lists) > 1:
            parts.append(f"*{name}*:\n\n" + "\n".join(own))
        elif own:
            parts[1] = "\n".join(items)
    return "\n\n".join(part for part in parts if part)


def scope_markdown(image: Image.Image, answers: Sequence) -> str:
    """A warning when the file's header or any model's OOD check says the image is out of scope ("" otherwise)."""
    reasons = [out_of_scope(image)] if out_of_scope(image) else []
    flagged = [result.name for result in answers if result.ood is not None and result.ood.flagged]
    if flagged:
        reasons.append(f"unlike the images {', '.join(flagged)} {'was' if len(flagged) == 1 else 'were'} trained on")
    if not reasons:
        return ""
    return ("⚠️ **Out of scope: " + "; ".join(reasons) + ".** The models were trained on frontal chest X-rays; "
            "their answers for this image may mean nothing.")
