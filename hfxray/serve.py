"""`hfxray serve`: a Gradio page where a researcher drops an X-ray (PNG, JPEG or DICOM) and sees, for each model,
its answer, why (a heatmap), and how good the model was on its test split.

    from hfxray.serve import load_served_model, build_app
    app = build_app([load_served_model("runs/bit-small")])
    app.launch()                                    # what `hfxray serve --model runs/bit-small` does

The page calls the same public functions as the command line: `hfxray.imaging.load_rgb` opens the file (so a bad
file gets the same one-line reason as in `hfxray predict`), the run's `pipeline("image-classification")` from
`hfxray.predict.load_classifier` gives the calibrated probabilities, and `hfxray.explain`'s `gradcam_map` /
`rollout_map` give the heatmap. `analyze` is that whole request without the web layer, for notebooks and the
benchmark.

For a clinician reading the page: the input is shown with the area the models analyse drawn on it (the centre
crop of the processor: a wide film loses its sides), each heatmap has its colour scale, the training population and
its limits (the "Limitations" of the run's model card) stand beside the disclaimer with the whole card in an
accordion, methods are named in plain words, and an image outside what the models were trained on is said to be
so (`hfxray.scope`: its DICOM header, or the run's out-of-distribution check).

Safety: models load once at start-up; one analysis runs at a time (Grad-CAM hooks into the shared model, so two
at once would mix their gradients) and further requests wait in Gradio's queue; uploads are capped in size and
deleted when their analysis ends, and the images derived from them reach the page inline, never as files
(`hfxray.serve_files`); bad files become a message in the page; the server listens on 127.0.0.1 and is never
shared unless asked.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

# Before gradio is imported anywhere: a research page on patient images must not report usage to anyone.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .errors import HfxrayError, printable  # noqa: E402
from .imaging import DEFAULT_MAX_PIXELS, ImageProblem, load_rgb, out_of_scope  # noqa: E402
from .serve_content import (analysed_area_text, analysed_box, image_html, mark_analysed_area,  # noqa: E402
                            ood_markdown, population_markdown, read_card, scope_markdown, with_colour_scale)

logger = logging.getLogger(__name__)

DISCLAIMER = ("**Research tool, not a medical device.** The answers below are not validated for diagnosis and must "
              "not guide the care of a patient. Who the models were trained on, and what that leaves out, is beside "
              "this note.")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 25  # MiB; a chest radiograph is at most ~20 MiB even as uncompressed 16-bit DICOM
# Plain words for the methods (hfxray explain's figures name them technically: attention rollout, Grad-CAM).
EXPLANATION_TITLE = {"rollout": "where the model's attention went (all classes)",
                     "gradcam": "areas that raised the score of its answer"}
# Display images go to the page as JPEG: PNG encoding took longer than a small model's whole analysis.
DISPLAY_SIDE = 384  # overlays are enlarged to this many pixels so a 64 px tiny-model input is still readable
NUM_EXAMPLES = 4
QUEUE_SIZE = 32  # requests waiting for the models; more are refused with Gradio's "queue full"


class ServeError(HfxrayError):
    """The app cannot start (a model folder that does not load, a bad option); the message says what to change."""


@dataclass
class ServedModel:
    """One run folder, loaded once: its pipeline (probabilities), its kind and its test metrics."""

    name: str
    run_dir: Path
    classifier: Any  # transformers ImageClassificationPipeline
    family: str
    test_results: dict = field(default_factory=dict)
    ood_check: Any = None  # hfxray.scope.OodCheck, None when the run has none ("not checked")
    card: str = ""  # the run's model card (README.md) without its metadata header; "" when it has none

    @property
    def model(self):
        return self.classifier.model

    @property
    def processor(self):
        return self.classifier.image_processor

    @property
    def method(self) -> str:
        """The explanation the family's adapter shows first (hfxray.families)."""
        from .families import ADAPTERS

        return ADAPTERS[self.family].explanation


@dataclass
class ModelAnswer:
    """What one model says about one image."""

    name: str
    label: str
    probabilities: dict[str, float]  # every class, calibrated (temperature folded into the head at training)
    method: str
    heatmap: np.ndarray  # (H, W) in [0, 1], on the model's input grid
    model_input: np.ndarray  # (H, W, 3) uint8: the pixels the heatmap refers to (after resize and crop)
    ood: Any = None  # hfxray.scope.OodResult: the run's out-of-distribution check on this image

    def overlay(self, side: int = DISPLAY_SIDE) -> Image.Image:
        """The input with the heatmap blended on top, in the colours of `hfxray explain`'s figures."""
        from matplotlib import colormaps

        from .explain.figures import HEATMAP_CMAP, OVERLAY_ALPHA

        colours = colormaps[HEATMAP_CMAP](np.clip(self.heatmap, 0.0, 1.0))[..., :3] * 255.0
        blended = (1 - OVERLAY_ALPHA) * self.model_input.astype(np.float64) + OVERLAY_ALPHA * colours
        image = Image.fromarray(np.round(blended).astype(np.uint8), mode="RGB")
        scale = side / max(image.size)
        return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)


def read_test_results(run_dir: str | os.PathLike) -> dict:
    """The run's test_results.json, or {} when the run was never evaluated or the file is unreadable."""
    path = Path(run_dir) / "test_results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return results if isinstance(results, dict) else {}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def metrics_markdown(results: dict) -> str:
    """One line: test accuracy, AUROC and ECE (of the model as shipped, whose probabilities the page shows) with
    their 95 % CIs."""
    if not results:
        return "_No test_results.json in this run folder: the model was not evaluated on a test split._"
    intervals = results.get("test_ci95") or {}
    parts = []
    for key, name in (("accuracy", "accuracy"), ("auroc", "AUROC"), ("ece", "ECE")):
        value = _number(results.get(f"test_{key}"))
        interval = intervals.get(key) if isinstance(intervals, dict) else None
        if value is None:
            parts.append(f"{name} n/a")
            continue
        text = f"{name} {value:.3f}"
        floor, debiased = _number(results.get("test_ece_noise_floor")), _number(results.get("test_ece_debiased"))
        if key == "ece" and floor is not None and debiased is not None:
            text += f" (noise floor {floor:.3f}; debiased {debiased:.3f}"
            if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(_number(v) is not None
                                                                                   for v in interval):
                text += f", 95 % CI {interval[0]:.3f}–{interval[1]:.3f}"
            parts.append(text + ")")
            continue
        if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(_number(v) is not None for v in interval):
            text += f" (95 % CI {interval[0]:.3f}–{interval[1]:.3f})"
        parts.append(text)
    samples = results.get("test_samples") or results.get("test_n")
    return "Test split" + (f" ({samples} images)" if samples else "") + ": " + " · ".join(parts)


def load_served_model(run_dir: str | os.PathLike, device: str | None = None) -> ServedModel:
    """Load a run folder (or Hub id) once; raises ServeError with what to change."""
    from .families import model_family
    from .predict import PredictError, load_classifier

    try:
        classifier = load_classifier(str(run_dir), device=device)
    except PredictError as err:
        raise ServeError(str(err)) from None
    classifier.model.eval()
    try:
        family = model_family(classifier.model)
    except HfxrayError as err:
        raise ServeError(f"{run_dir}: {err}") from None  # UnsupportedModelError says what to use instead
    path = Path(run_dir)
    from .scope import load_check

    ood_check, why_not = load_check(path)
    if ood_check is None:
        logger.warning("%s: out-of-distribution check: not checked (%s)", path.name or run_dir, why_not)
    return ServedModel(name=path.name or str(run_dir), run_dir=path, classifier=classifier, family=family,
                       test_results=read_test_results(path), ood_check=ood_check, card=read_card(path))


def _model_input(pixel_values, processor) -> np.ndarray:
    """Normalised (3, H, W) back to uint8 (H, W, 3): what the model saw after resizing and cropping."""
    from .explain.actmax import input_spec

    _, mean, std = input_spec(processor)
    image = pixel_values.detach().float().cpu().numpy() * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None,
                                                                                                          None]
    return np.round(np.clip(image, 0.0, 1.0).transpose(1, 2, 0) * 255.0).astype(np.uint8)


def answer(served: ServedModel, image: Image.Image) -> ModelAnswer:
    """One model's label, probabilities and heatmap for an already opened RGB image."""
    import torch

    from .explain import gradcam_map, rollout_map
    from .scope import capture_features, judge_images, stacked

    model = served.model
    labels = model.config.id2label
    # The same pipeline call as `hfxray predict`, so the page and the command line agree to the last digit (and
    # the OOD check reads the features of that very forward pass).
    with capture_features(model) as captured:
        scores = served.classifier(image, top_k=len(labels))
    ood = judge_images(served.ood_check, stacked(captured), 1)[0]
    probabilities = {entry["label"]: float(entry["score"]) for entry in scores}
    label = scores[0]["label"]
    pixel_values = served.processor(images=image, return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(device=model.device, dtype=next(model.parameters()).dtype)
    if served.method == "gradcam":
        predicted = {name: int(index) for index, name in labels.items()}[label]
        heatmap = gradcam_map(model, pixel_values, predicted)[0]
    else:
        with torch.no_grad():
            heatmap = rollout_map(model, pixel_values)[0]
    return ModelAnswer(name=served.name, label=label, probabilities=probabilities, method=served.method,
                       heatmap=np.asarray(heatmap, dtype=np.float64), model_input=_model_input(pixel_values[0],
                                                                                              served.processor),
                       ood=ood)


def check_upload(path: str | os.PathLike, max_bytes: int) -> None:
    """Refuse an oversize file before decoding it (Gradio also caps uploads; this covers every other way in)."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        raise ImageProblem("file not found") from None
    if size > max_bytes:
        raise ImageProblem(f"file too large: {size / 2**20:.1f} MiB, the limit is {max_bytes / 2**20:g} MiB")


def analyze(models: Sequence[ServedModel], path: str | os.PathLike, max_bytes: int | None = None,
            max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, list[ModelAnswer]]:
    """(the decoded image, one answer per model) for a file; ImageProblem with the reason when it is unusable."""
    if max_bytes is not None:
        check_upload(path, max_bytes)
    image = load_rgb(path, max_pixels=max_pixels)
    return image, [answer(served, image) for served in models]


def find_examples(sample_dir: str | os.PathLike | None, count: int = NUM_EXAMPLES) -> list[Path]:
    """A few test-split images of the CoronaHack sample, alternating normal and virus; [] when it is absent."""
    if sample_dir is None:
        return []
    from .data.coronahack import CSV_NAME, IMAGE_ROOT, binary_label

    sample_dir = Path(sample_dir)
    try:
        with (sample_dir / CSV_NAME).open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    by_label: dict[str, list[Path]] = {"normal": [], "virus": []}
    for row in rows:
        if (row.get("Dataset_type") or "").upper() != "TEST":
            continue
        label, _ = binary_label(row.get("Label") or "", row.get("Label_1_Virus_category") or "")
        path = sample_dir / IMAGE_ROOT / "test" / (row.get("X_ray_image_name") or "")
        if label in by_label and path.is_file():
            by_label[label].append(path)
    picked = []
    for pair in zip(by_label["normal"], by_label["virus"]):
        picked += pair
    return picked[:count]


def _thumbnail(image: Image.Image, side: int = 2 * DISPLAY_SIDE) -> Image.Image:
    """A display copy: encoding a full-size radiograph for the page would cost more than the analysis itself."""
    if max(image.size) <= side:
        return image
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)


def _percent(probability: float) -> str:
    return f"{100 * probability:.1f} %"


PREVIEW_CAPTION = "decoded input (dashed: the area the models analyse)"


def overlay_caption(served: ServedModel) -> str:
    return f"{served.name}: {EXPLANATION_TITLE[served.method]}"


def answer_markdown(result: ModelAnswer) -> str:
    probabilities = ", ".join(f"p({name}) = {value:.4f}" for name, value in result.probabilities.items())
    line = f"**Prediction: {result.label}** ({_percent(result.probabilities[result.label])}) — {probabilities}"
    return line + "\n\n" + ood_markdown(result.ood)


def build_app(models: Sequence[ServedModel], examples: Sequence[str | os.PathLike] = (),
              max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS, files=None):
    """The Gradio Blocks page for already loaded models (queue and upload cap included; call `.launch()`).

    `files`: the process's `hfxray.serve_files.PrivateFolder` (what `hfxray serve` passes): each request then
    deletes its upload when its analysis ends, and uploads never analysed are swept (`serve_files.ORPHAN_SECONDS`).
    No output is a file: the preview and the overlays go to the page inline (`serve_content.image_html`), the
    rest is text, and both inputs reach `run` unprocessed (`preprocess=False`), as the file that was uploaded.
    """
    import gradio as gr

    from .calibration import folded_temperature

    if not models:
        raise ServeError("no model to serve. To fix: pass --model RUN_FOLDER at least once")
    max_bytes = int(max_upload_mb * 2**20)  # Gradio's "25mb" is 25 MiB too
    title = "hfxray: chest X-ray classifiers, normal vs viral pneumonia"

    def empty(message: str) -> list:
        return [message, None] + [None, None, ""] * len(models) + [None]

    def run(upload: dict | None) -> list:
        # The upload as Gradio stored it, checked to be one of its uploads (or an example's copy) but not
        # preprocessed: gr.File(type="filepath") would leave an empty temporary file in the folder per request
        # (gradio 6.31), and gr.Image would save a second, converted copy (16-bit grayscale clipped to 8-bit RGB).
        path = (upload or {}).get("path")
        if files is None:
            return analyze_request(path)
        files.sweep()
        try:
            return analyze_request(path)
        finally:
            files.discard(path)  # the upload is decoded and nothing derived from it is a file: it goes now

    def analyze_request(path: str | None) -> list:
        if not path:
            return empty("Drop an X-ray above (PNG, JPEG or DICOM), paste one, or pick an example.")
        try:
            image, answers = analyze(models, path, max_bytes=max_bytes, max_pixels=max_pixels)
        except ImageProblem as problem:
            return empty(f"**Cannot read this file:** {problem}. To fix: upload a chest X-ray as PNG, JPEG or a "
                         "single-frame grayscale DICOM.")
        except Exception as err:  # never a stack trace in the page, never a dead server: log it, say it
            logger.exception("analysis failed for %s", path)
            return empty(f"**Analysis failed** ({type(err).__name__}). To fix: try another image; the server log "
                         "has the details.")
        boxes = [analysed_box(served.processor, image.width, image.height) for served in models]
        status = "\n\n".join(part for part in (
            scope_markdown(image, answers),
            f"Analysed **{Path(path).name}** ({image.width}×{image.height} px) with {len(answers)} model(s). "
            + analysed_area_text(image.width, image.height, boxes)) if part)
        outputs: list = [status, image_html(mark_analysed_area(_thumbnail(image), image.width, boxes),
                                            PREVIEW_CAPTION, f"{Path(path).name} as decoded, the analysed area "
                                            "dashed")]
        raw = []
        for served, result in zip(models, answers):
            outputs += [result.probabilities,
                        image_html(with_colour_scale(result.overlay(), result.method), overlay_caption(served),
                                   f"{result.name}: heatmap over the analysed area, with its colour scale"),
                        answer_markdown(result)]
            raw.append({"model": result.name, "label": result.label, "probabilities": result.probabilities,
                        "explanation": result.method, "out_of_scope": out_of_scope(image),
                        "ood": result.ood.status if result.ood else "not checked",
                        "ood_score": result.ood.score if result.ood else None})
        return outputs + [raw]

    # System fonts only: the page must work, and leak nothing, on a hospital network without internet access.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    sweep = None
    if files is not None:  # Gradio's own sweep runs while no request comes; `run` sweeps at each request too
        from .serve_files import ORPHAN_SECONDS, SWEEP_EVERY_SECONDS

        sweep = (SWEEP_EVERY_SECONDS, ORPHAN_SECONDS)
    with gr.Blocks(title="hfxray serve", analytics_enabled=False, delete_cache=sweep) as app:
        app.hfxray_theme = theme  # applied at launch (Gradio 6 takes themes there)
        gr.Markdown(f"# {title}")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                gr.Markdown(DISCLAIMER, elem_id="disclaimer")
            with gr.Column(scale=3):
                gr.Markdown(population_markdown(models), elem_id="population")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="X-ray file: PNG, JPEG or DICOM", type="filepath", elem_id="upload")
                paste = gr.Image(label="…or paste / drop an image", type="filepath", sources=["clipboard", "upload"],
                                 format="png", elem_id="paste")
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload],
                                label="Examples from the sample's test split")
            with gr.Column(scale=1):
                status = gr.Markdown("Drop an X-ray (PNG, JPEG or DICOM), paste one, or pick an example.",
                                     elem_id="status")
                preview = gr.HTML(label=PREVIEW_CAPTION, container=True, padding=True, elem_id="preview")
        per_model: list = []
        with gr.Row():
            for index, served in enumerate(models):
                with gr.Column(elem_id=f"model-{index}"):
                    kind = "" if served.name == served.family else f"  ·  {served.family}"
                    gr.Markdown(f"### {served.name}{kind}  ·  {EXPLANATION_TITLE[served.method]}")
                    scaled = folded_temperature(served.model) != 1.0
                    label = gr.Label(num_top_classes=2, elem_id=f"label-{index}",
                                     label=f"{served.name}: {'temperature-scaled ' if scaled else ''}probabilities")
                    overlay = gr.HTML(label=overlay_caption(served), container=True, padding=True,
                                      elem_id=f"heatmap-{index}")
                    line = gr.Markdown(elem_id=f"answer-{index}")
                    gr.Markdown(metrics_markdown(served.test_results), elem_id=f"metrics-{index}")
                    with gr.Accordion(f"Model card of {served.name}: training data, recipe, evaluation, limits",
                                      open=False, elem_id=f"card-{index}"):
                        gr.Markdown(served.card or "_This run folder has no model card (README.md)._")
                    per_model += [label, overlay, line]
        with gr.Accordion("Raw answer (JSON, full precision)", open=False):
            raw = gr.JSON(elem_id="raw")
        outputs = [status, preview, *per_model, raw]
        # One analysis at a time across both inputs (concurrency_id): the models are shared, Grad-CAM is not
        # re-entrant; the queue keeps the others waiting with their position shown.
        common = dict(outputs=outputs, concurrency_limit=1, concurrency_id="models", trigger_mode="always_last",
                      preprocess=False)
        upload.change(run, inputs=upload, api_name="analyze", **common)
        paste.change(run, inputs=paste, api_name="analyze_pasted", **common)
    if files is not None:
        # What Gradio wrote while the page was built stays: the examples' copies (each click analyses one), its
        # hash seed. gradio 6.31 does not mark the copies `keep_in_cache`, and they keep the originals' old mtime.
        files.keep_present()
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    app.hfxray_max_file_size = f"{max_upload_mb:g}mb"
    return app


def check_port(host: str, port: int) -> None:
    """Refuse a port another program listens on, in one line, before the models load."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as err:
        raise ServeError(f"cannot listen on {host}:{port} ({err.strerror or err}). To fix: stop the program that "
                         "uses it or pass another --port.") from None


def launch(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, share: bool = False,
           prevent_thread_lock: bool = False, quiet: bool = False):
    """Start the server with the app's safety settings (upload cap, no share link unless asked, no SSR)."""
    try:
        return _launch(app, host, port, share, prevent_thread_lock, quiet)
    except OSError as err:  # the port was taken between the check and the start
        raise ServeError(f"cannot listen on {host}:{port} ({printable(str(err)).splitlines()[0][:200]}). To fix: "
                         "stop the program that uses it or pass another --port.") from None


def _launch(app, host, port, share, prevent_thread_lock, quiet):
    return app.launch(server_name=host, server_port=port, share=share, max_file_size=app.hfxray_max_file_size,
                      show_error=False, ssr_mode=False, theme=app.hfxray_theme, prevent_thread_lock=prevent_thread_lock,
                      quiet=quiet, footer_links=["api"], enable_monitoring=False, mcp_server=False, pwa=False)
