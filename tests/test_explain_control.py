"""A positive control that can fail: real X-rays with a planted burnt-in marker, a model that learns it, and maps that
must find it (and must not find it where the model does not use it).

From the real sample's training split (validation split held out), each image as the models see it (128 px) gets a
label drawn at random, whatever its diagnosis, and a marker at a random place: "virus" images a 16 x 16 black box
holding a 12 x 12 white square, "normal" images an 8 x 32 black box holding a 6 x 24 white bar. The mark is then the
only thing that tells the classes apart, and both classes have the same brightness histogram (144 white and 112
black pixels): with a mark on one class only, GroupNorm (BiT, the hybrid's stem) lets a model read its presence from
image-wide statistics anywhere, and a faithful map of such a model need not point at it. Real films carry markers
on both classes too, and they are drawn as this one is: bright letters on a dark label box, visible on bone and
on air alike. (A plain white square, the first version of this control, vanishes on bright anatomy: the tiny
hybrid never learned it in 300 steps; with the box it does in about 150.)

Each family's preset (`SETUPS`) is trained for seconds. The statistic is the lift inside the marker's box (mass
share / area share; a uniform map scores 1, the ceiling is 64): a method passes when the maps of marked "virus"
images reach `BAR` for every marker model of its family and both negative controls stay below it: the same model on
the same images without marks (the box where the square would be), and a model trained on the real labels without
marks (the clean model) on the marked images. `BAR = 3`: three times the mass a map that looks nowhere in
particular puts there, and half of what a one-cell hit gives on the coarsest (4 x 4) grid. BiT has two marker
models (seeds 0 and 1): one seed's lift ranged from 2.2 to 3.2, and a control that passes on a lucky seed shows
nothing. A deliberately broken explanation, Grad-CAM at the first block, must fail; for BiT it is the clean model
that catches it (the first stage lights up any sharp box, learned or not).

Today the control fails for every family (FAILING below, strict): the tiny ViT does not learn the marker, the small
BiT's Grad-CAM reaches the bar for one marker model but not the other, and the tiny hybrid learns the marker while
its maps avoid it. docs/explanations.md gives the numbers. The synthetic planted-signal tests (tests/test_explain.py,
gray noise) stay until a family passes here.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from hfxray.explain import gradcam_map, rollout_map
from hfxray.explain.gradcam import GradCamTarget, _token_grid_reshape
from hfxray.explain.localisation import box_mask, lift
from hfxray.imaging import expand_paths, load_rgb
from hfxray.models import build_processor, create_model

from tiny_fit import fit

SIZE, SQUARE = 128, 16
BORDER = SQUARE // 8  # the dark box's margin around the white glyph (2 px)
BAR = 3.0
CLEAN_STEPS = 50
HELD_OUT = 24  # validation images explained


@dataclass(frozen=True)
class Setup:
    """How one family's marker model is trained: preset, AdamW learning rate, step cap (training stops early once
    the smoothed loss is below 0.05), and the seeds of the marker models a method must pass on (each of them)."""

    preset: str
    learning_rate: float
    steps: int
    seeds: tuple[int, ...] = (0,)


# Compared on training seeds 0-2 with their own held-out places (docs/explanations.md has every run). BiT: the tiny
# preset learns the marker but its 8-64 channels give flat maps (lift 1.0); the small one (1.5 M parameters) is the
# one tests/test_explain.py explains. The ViT learns no faster at 3e-3 with warm-up or at 3e-4, nor as its small
# preset. The hybrid's stem makes its steps the dearest (a 64-channel 7 x 7 convolution at 64 x 64); its small
# preset learned the marker later (210 steps at 3e-4) and its maps did no better (Grad-CAM 0.36, rollout 2.14).
SETUPS = {"bit": Setup("small", 2e-3, 300, seeds=(0, 1)), "vit": Setup("tiny", 1e-3, 300),
          "hybrid": Setup("tiny", 1e-3, 300)}
# Where the control fails, measured (strict: a change that makes one pass fails its test until this is updated,
# with the new lifts in docs/explanations.md). These are findings, not tolerances.
VIT_NOT_LEARNED = ("the tiny ViT does not learn the marker in 300 steps (held-out accuracy 0.50; the small ViT "
                   "neither)")
HYBRID_AVOIDS = ("the tiny hybrid learns the marker (held-out accuracy 1.00 after about 150 steps), and its maps "
                 "avoid it: lift {} in the square, 1.2 without the mark")
FAILING = {
    ("vit", "gradcam"): VIT_NOT_LEARNED,
    ("vit", "rollout"): VIT_NOT_LEARNED,
    ("hybrid", "gradcam"): HYBRID_AVOIDS.format("0.66 (Grad-CAM)"),
    ("hybrid", "rollout"): HYBRID_AVOIDS.format("0.80 (rollout)"),
    ("bit", "gradcam"): "small BiT learns the marker (accuracy 1.00 in under 50 steps), but its Grad-CAM lift in "
                        "the square is 3.21 for one marker model and 2.71 for the other (bar 3, on each)",
}
EXPLAINED = [pytest.param(kind, method, marks=[pytest.mark.xfail(strict=True, reason=FAILING[(kind, method)])]
                          if (kind, method) in FAILING else [])
             for kind, method in (("vit", "gradcam"), ("vit", "rollout"), ("bit", "gradcam"), ("hybrid", "gradcam"),
                                  ("hybrid", "rollout"))]
BROKEN = [pytest.param("vit", marks=pytest.mark.xfail(strict=True, reason=VIT_NOT_LEARNED)), "bit", "hybrid"]
LIFTS: dict[tuple[str, str], dict[str, float]] = {}  # printed at the end of the module, for docs/explanations.md

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Small and tiny models only: one torch thread (see conftest)."""


# Held-out accuracy on the marks of each marker model, and the families that did not learn them: with LIFTS, what
# the session writes to $HFXRAY_CONTROL_RESULTS (docs/explanations.md's table is rendered from that file).
ACCURACY: dict[str, list[float]] = {}
NOT_LEARNED: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for (kind, method), lifts in sorted(LIFTS.items()):
        print(f"\n{kind} {method}: " + ", ".join(f"{name} {value:.2f}" for name, value in lifts.items()))
    out = os.environ.get("HFXRAY_CONTROL_RESULTS")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(dict(
            bar=BAR, statistic="mean lift inside the marker's box over the held-out 'virus' images (uniform map: 1)",
            accuracy=ACCURACY, not_learned=NOT_LEARNED,
            lifts=[dict(kind=kind, method=method, lifts=lifts, passes=passes(lifts))
                   for (kind, method), lifts in sorted(LIFTS.items())]), indent=1) + "\n")


@pytest.fixture(scope="session")
def real_images(prepared_dir):
    """split -> (pixel values at 128 px, real labels): the sample's training split, and the first `HELD_OUT` images
    of its validation split (all the control explains)."""
    processor = build_processor(SIZE, SIZE * 9 // 8)
    found = {}
    for split, count in (("train", None), ("validation", HELD_OUT)):
        files = sorted(expand_paths([prepared_dir / split]))[:count]
        pixels = torch.cat([processor(images=load_rgb(path), return_tensors="pt")["pixel_values"] for path in files])
        found[split] = pixels, torch.tensor([int(path.parent.name == "virus") for path in files])
    return found


def stamp(images: torch.Tensor, labels: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Burn in the marks: a white glyph on a black box, a 16 x 16 box where the label is 1 and an 8 x 32 one where
    it is 0; each glyph has 144 white pixels and each box 112 black ones, so both classes share the histogram."""
    images = images.clone()
    white = (SQUARE - 2 * BORDER) ** 2
    bar_height = SQUARE // 2 - BORDER
    bar_width = white // bar_height
    for image, label, (row, col) in zip(images, labels.tolist(), corners.tolist()):
        if label == 1:
            height, width, glyph = SQUARE, SQUARE, (BORDER, BORDER, SQUARE - 2 * BORDER, SQUARE - 2 * BORDER)
        else:
            height, width = SQUARE // 2, SQUARE * 2
            glyph = ((height - bar_height) // 2, (width - bar_width) // 2, bar_height, bar_width)
        image[:, row:row + height, col:col + width] = -1.0  # black: the processor maps [0, 1] to [-1, 1]
        top, left, glyph_height, glyph_width = glyph
        image[:, row + top:row + top + glyph_height, col + left:col + left + glyph_width] = 1.0
    return images


def test_both_marks_share_their_histogram_and_differ_only_in_shape():
    marked = stamp(torch.zeros(2, 3, SIZE, SIZE), torch.tensor([1, 0]), torch.tensor([[5, 7], [5, 7]]))
    square, bar = marked[:, 0]
    for mark in (square, bar):
        assert (mark == 1).sum() == 144 and (mark == -1).sum() == 112  # same white glyph area, same black box area
    assert (square[5:5 + SQUARE, 7:7 + SQUARE] != 0).all() and (bar[5:5 + SQUARE // 2, 7:7 + 2 * SQUARE] != 0).all()


def corners(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, SIZE - 2 * SQUARE + 1, (count, 2), generator=generator)


def train(kind: str, images: torch.Tensor, real_labels: torch.Tensor, marked: bool, seed: int = 0,
          steps: int | None = None):
    """A model trained on marked images with random labels (`marked`), or on the real labels without marks."""
    setup = SETUPS[kind]
    torch.manual_seed(seed)
    model, _, _ = create_model(kind, setup.preset, image_size=SIZE)

    def batches(generator):
        batch = torch.randint(0, len(images), (32,), generator=generator)
        if marked:  # fresh labels and places every step: nothing but the mark can be learned
            labels = torch.randint(0, 2, (32,), generator=generator)
            return stamp(images[batch], labels, corners(32, generator)), labels
        return images[batch], real_labels[batch]

    return fit(model, setup.learning_rate, steps or setup.steps, batches, seed=seed)


@dataclass
class Controls:
    """One family's marker models (one per seed), held-out images marked as "virus" and the same unmarked, the
    square's box in each, and the clean model (trained on the real labels, on first use)."""

    models: list
    marked: torch.Tensor
    unmarked: torch.Tensor
    boxes: list
    make_clean: Callable[[], torch.nn.Module]
    _clean: torch.nn.Module | None = None

    @property
    def clean(self) -> torch.nn.Module:
        if self._clean is None:
            self._clean = self.make_clean()
        return self._clean


@pytest.fixture(scope="session")
def controls(real_images):
    """kind -> Controls. Each family is trained once per session, and a family that fails to learn the marker
    fails every test that asks for it with the same message, without training again."""
    cache: dict[str, Controls | str] = {}

    def build(kind: str) -> Controls | str:
        train_images, train_labels = real_images["train"]
        held_out, _ = real_images["validation"]
        boxes = corners(len(held_out), torch.Generator().manual_seed(99))
        virus = torch.ones(len(held_out), dtype=torch.long)
        marked, bars = stamp(held_out, virus, boxes), stamp(held_out, 1 - virus, boxes)
        models = []
        for seed in SETUPS[kind].seeds:
            model = train(kind, train_images, train_labels, marked=True, seed=seed)
            with torch.no_grad():
                on_squares = model(pixel_values=marked).logits.argmax(-1)
                on_bars = model(pixel_values=bars).logits.argmax(-1)
            accuracy = ((on_squares == 1).float().mean() + (on_bars == 0).float().mean()).item() / 2
            ACCURACY.setdefault(kind, []).append(accuracy)
            if accuracy < 0.95:
                NOT_LEARNED[kind] = f"{kind} (seed {seed}) did not learn the marker (held-out accuracy {accuracy:.2f})"
                return NOT_LEARNED[kind]
            models.append(model)
        return Controls(models, marked, held_out, [box_mask((SIZE, SIZE), *box, SQUARE, SQUARE)
                                                   for box in boxes.tolist()],
                        lambda: train(kind, train_images, train_labels, marked=False, steps=CLEAN_STEPS))

    def get(kind: str) -> Controls:
        if kind not in cache:
            cache[kind] = build(kind)
        if isinstance(cache[kind], str):
            raise AssertionError(cache[kind])
        return cache[kind]

    return get


def mean_lift(maps: np.ndarray, boxes) -> float:
    return float(np.mean([lift(heatmap, box) if heatmap.any() else 0.0 for heatmap, box in zip(maps, boxes)]))


def explain(method: str, model, images: torch.Tensor, target: GradCamTarget | None = None) -> np.ndarray:
    return gradcam_map(model, images, 1, target) if method == "gradcam" else rollout_map(model, images)


def control_lifts(method: str, found: Controls, target=None) -> dict[str, float]:
    """Mean lifts in the square: each marker model on the marked and on the unmarked images, then (only when every
    marker model reaches the bar, since the verdict cannot change otherwise) the clean model on the marked ones.

    `target(model)` gives the Grad-CAM layer to use in a model (None: its adapter's)."""
    lifts = {}
    for index, model in enumerate(found.models):
        layer = target(model) if target else None
        lifts[f"marker model {index}, marked"] = mean_lift(explain(method, model, found.marked, layer), found.boxes)
        lifts[f"marker model {index}, unmarked"] = mean_lift(explain(method, model, found.unmarked, layer),
                                                            found.boxes)
    if all(value >= BAR for name, value in lifts.items() if name.endswith(", marked")):
        layer = target(found.clean) if target else None
        lifts["clean model, marked"] = mean_lift(explain(method, found.clean, found.marked, layer), found.boxes)
    return lifts


def passes(lifts: dict[str, float]) -> bool:
    """Every marker model's maps of marked images at the bar, and every negative control below it."""
    found = {name: name.startswith("marker") and name.endswith(", marked") for name in lifts}
    marked = [lifts[name] for name, positive in found.items() if positive]
    negatives = [lifts[name] for name, positive in found.items() if not positive]
    return "clean model, marked" in lifts and min(marked) >= BAR and max(negatives) < BAR


@pytest.mark.parametrize(("kind", "method"), EXPLAINED)
def test_the_maps_find_the_marker_the_model_uses_and_only_then(controls, kind, method):
    lifts = control_lifts(method, controls(kind))
    LIFTS[(kind, method)] = lifts
    print(f"\n{kind} {method}: {lifts}", flush=True)
    assert passes(lifts), f"{kind} {method}: {lifts} (bar {BAR})"


def _wrong_layer(kind: str, model) -> GradCamTarget:
    """The first block (ViT: its patch embeddings, since the tiny ViT's Grad-CAM layer is its first block): features
    too early to know which bright thing decides the class."""
    if kind == "bit":
        return GradCamTarget(model.bit.encoder.stages[0], None, True, "bit.encoder.stages[0]")
    if kind == "vit":
        return GradCamTarget(model.vit.embeddings, _token_grid_reshape(1, model.config.patch_size), False,
                             "vit.embeddings")
    timm_model = model.timm_model
    return GradCamTarget(timm_model.blocks[0].norm1, _token_grid_reshape(timm_model.num_prefix_tokens), False,
                         "timm_model.blocks[0].norm1")


@pytest.mark.parametrize("kind", BROKEN)
def test_grad_cam_at_the_wrong_layer_fails_the_control(controls, kind):
    lifts = control_lifts("gradcam", controls(kind), lambda model: _wrong_layer(kind, model))
    LIFTS[(kind, "gradcam at the first block (broken)")] = lifts
    print(f"\n{kind} broken gradcam: {lifts}", flush=True)
    assert not passes(lifts), f"{kind}: the broken explanation passed: {lifts}"
