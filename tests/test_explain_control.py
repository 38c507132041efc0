"""A positive control that can fail: real X-rays with a planted burnt-in marker, a model that learns it, and maps that
must find it (and must not find it where the model does not use it).

The marks. From the real sample's training split (validation split held out), each image as the models see it
(128 px) carries one of two marks and a label that says which, whatever its diagnosis: "virus" a 16 x 16 black box
holding a 12 x 12 white square, "normal" an 8 x 32 black box holding a 6 x 24 white bar. The mark is the only thing
that tells the classes apart, and both marks share the brightness histogram (144 white, 112 black pixels). They are
drawn as films carry theirs, bright letters on a dark label box, visible on bone and on air alike.

Where they sit: anywhere on the family's token grid (`Setup.grid`: 16 px for ViT, its patch size; 32 px for the
hybrid, its token stride; 16 px for BiT). The tiny ViT learns no mark placed at arbitrary pixels: its loss stayed at
0.69 for 600 steps (the small ViT at 8 px patches too), while on its patch grid it learns in under 100 steps; a mark
that straddles tokens is a different task for a transformer, not a harder test of its maps.

How GroupNorm models are trained. Normalised by whole-image statistics, a model with GroupNorm (BiT, the hybrid's
stem) can read the mark from anywhere: the two marks' pixel histograms are equal but their features' are not (a
square and a bar have different edge lengths). Trained plainly, the tiny hybrid did exactly that: with the bar's
statistics, every square image was called "normal"; no map need point at a mark read that way. So each marker
model's batch is 16 images, each with both marks at one place, and a GroupNorm model normalises each pair alike
(`group_norm_stats.paired_statistics`): the statistics no longer say which mark an image has, and the mark must be
read where it is. `test_the_group_norm_models_read_the_mark_where_it_is` checks that they do.

The statistic: the lift inside the mark's box (mass share / area share; a uniform map scores 1), over the held-out
images explained twice, once with the square for the class "virus" and once with the bar for "normal", averaged
over both marks: a model may read one mark and the other from its absence, which has no place (the tiny ViT's
rollout sits on the bars and less on the squares); the per-mark lifts are reported beside it. A method passes when
every marker model of its family (two seeds each: a control that passes on a lucky seed shows nothing) reaches
`BAR` and both negative controls stay below it: the same models on the same images without marks (the boxes where
the marks would be), and a model trained on the real labels without marks (the clean model) on the marked images.
`BAR = 3`: three times the mass a map that looks nowhere in particular puts there, and about half of what a
single-cell hit gives on the coarsest (4 x 4) grid. A deliberately broken explanation must fail: Grad-CAM at the
first block (for BiT the clean model catches it: its first stage lights up any sharp box, learned or not), and
rollout with its token grid transposed.

Every family is trained at its `small` preset (built for 128 px). Results (docs/explanations.md has the numbers):
BiT's Grad-CAM, the hybrid's Grad-CAM and rollout, and ViT's rollout pass; ViT's Grad-CAM fails (FAILING below,
strict), which is why hfxray does not offer it. With `HFXRAY_CONTROL_PRESET=tiny` the tiny hybrid's Grad-CAM fails
too (docs/explanations.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
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

from group_norm_stats import forward_with_statistics_of, has_group_norm, paired_statistics
from tiny_fit import fit

SIZE, SQUARE = 128, 16
BORDER = SQUARE // 8  # the dark box's margin around the white glyph (2 px)
BAR = 3.0
# The clean model: trained briefly on the real labels; what makes it a negative control is that it never saw a mark.
CLEAN_STEPS = 25
HELD_OUT = 16  # validation images explained, each once with each mark


@dataclass(frozen=True)
class Setup:
    """How one family's marker models are trained: preset, AdamW learning rate, step cap (training stops early once
    the smoothed loss is below 0.05), and the seeds of the marker models a method must pass on (each of them)."""

    preset: str
    learning_rate: float
    steps: int
    grid: int  # the marks' places, in px: the family's token grid (see the module docstring)
    seeds: tuple[int, ...] = (0, 1)


# Every family at its `small` preset, the presets built for 128 px (the tiny BiT learns the marks, but its 8-64
# channels give flat maps).
SETUPS = {"bit": Setup("small", 2e-3, 300, grid=16), "vit": Setup("small", 1e-3, 300, grid=16),
          "hybrid": Setup("small", 1e-3, 300, grid=32)}
if os.environ.get("HFXRAY_CONTROL_PRESET"):  # e.g. "tiny": every family at that preset (not the suite's setup)
    SETUPS = {kind: replace(setup, preset=os.environ["HFXRAY_CONTROL_PRESET"]) for kind, setup in SETUPS.items()}
# Where the control fails, measured (strict: a change that makes one pass fails its test until this is updated,
# with the new lifts in docs/explanations.md). These are findings, not tolerances.
FAILING = {
    ("vit", "gradcam"): "the small ViT learns the marks and rollout finds them, but its Grad-CAM at the token layer "
                        "does not: mean lift 4.25 for one marker model and 1.06 for the other, which reads the bar "
                        "(1.07 on it); hfxray does not offer it",
}
EXPLAINED = [pytest.param(kind, method, marks=[pytest.mark.xfail(strict=True, reason=FAILING[(kind, method)])]
                          if (kind, method) in FAILING else [])
             for kind, method in (("vit", "gradcam"), ("vit", "rollout"), ("bit", "gradcam"), ("hybrid", "gradcam"),
                                  ("hybrid", "rollout"))]
BROKEN = ["bit", "hybrid"]  # the families whose Grad-CAM is offered (and passes)
LIFTS: dict[tuple[str, str], dict[str, float]] = {}  # printed at the end of the module, for docs/explanations.md
MARKS: dict[tuple[str, str], dict[str, list[float]]] = {}  # the same, per mark: [square, bar]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Small and tiny models only: one torch thread (see conftest)."""


# Held-out accuracy on the marks of each marker model, the families that did not learn them, and how often the
# GroupNorm families' decisions survive swapping the two marks' statistics: with LIFTS, what the session writes to
# $HFXRAY_CONTROL_RESULTS (docs/explanations.md's table is rendered from that file).
ACCURACY: dict[str, list[float]] = {}
NOT_LEARNED: dict[str, str] = {}
SWAPPED: dict[str, list[float]] = {}
# Share of the held-out images without a mark that each marker model calls "virus": near 1, the model reads the bar
# and calls everything else "virus" (so a "virus" map has no mark to find); near 0, the other way round.
UNMARKED_VIRUS: dict[str, list[float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for (kind, method), lifts in sorted(LIFTS.items()):
        print(f"\n{kind} {method}: " + ", ".join(f"{name} {value:.2f}" for name, value in lifts.items()))
    out = os.environ.get("HFXRAY_CONTROL_RESULTS")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(dict(
            bar=BAR, statistic="mean lift inside the mark's box over the held-out images, each explained once with "
                               "the square (class virus) and once with the bar (class normal) (uniform map: 1)",
            accuracy=ACCURACY, not_learned=NOT_LEARNED, statistics_swapped=SWAPPED, unmarked_virus=UNMARKED_VIRUS,
            lifts=[dict(kind=kind, method=method, lifts=lifts, marks=MARKS.get((kind, method), {}),
                        passes=passes(lifts))
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


def corners(count: int, generator: torch.Generator, grid: int) -> torch.Tensor:
    """Top-left corners on a `grid` (px), where the widest mark (32 px) still fits."""
    return torch.randint(0, (SIZE - 2 * SQUARE) // grid + 1, (count, 2), generator=generator) * grid


@pytest.mark.parametrize("grid", [16, 32])
def test_marks_sit_on_the_grid_anywhere_they_fit(grid):
    places = corners(2000, torch.Generator().manual_seed(0), grid)
    assert set(places.unique().tolist()) == set(range(0, SIZE - 2 * SQUARE + 1, grid))


def train(kind: str, images: torch.Tensor, real_labels: torch.Tensor, marked: bool, seed: int = 0,
          steps: int | None = None):
    """A model trained on marked images with random labels (`marked`), or on the real labels without marks.

    A marker model's batch is 16 training images, each at a fresh place with both marks (32 inputs): nothing but the
    mark tells them apart. A model with GroupNorm (BiT, the hybrid's stem) is trained with each pair normalised alike
    (`group_norm_stats.paired_statistics`), so that it cannot read the mark from image-wide statistics and must read
    it where it is."""
    setup = SETUPS[kind]
    torch.manual_seed(seed)
    model, _, _ = create_model(kind, setup.preset, image_size=SIZE)

    def batches(generator):
        if not marked:
            batch = torch.randint(0, len(images), (32,), generator=generator)
            return images[batch], real_labels[batch]
        batch = torch.randint(0, len(images), (16,), generator=generator).repeat_interleave(2)
        labels = torch.tensor([1, 0]).repeat(16)
        return stamp(images[batch], labels, corners(16, generator, setup.grid).repeat_interleave(2, dim=0)), labels

    def paired(model, inputs):
        with paired_statistics(model):
            return model(pixel_values=inputs).logits

    forward = paired if marked and has_group_norm(model) else None
    return fit(model, setup.learning_rate, steps or setup.steps, batches, seed=seed, forward=forward)


@dataclass
class Controls:
    """One family's marker models (one per seed), the held-out images with the square ("virus"), with the bar
    ("normal") at the same places, and without marks, the two marks' boxes, and the clean model (trained on the
    real labels, on first use)."""

    models: list
    squares: torch.Tensor
    bars: torch.Tensor
    unmarked: torch.Tensor
    square_boxes: list
    bar_boxes: list
    make_clean: Callable[[], torch.nn.Module]
    _clean: torch.nn.Module | None = None

    @property
    def clean(self) -> torch.nn.Module:
        if self._clean is None:
            self._clean = self.make_clean()
        return self._clean


def predicted(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def marks_accuracy(on_squares: torch.Tensor, on_bars: torch.Tensor) -> float:
    """Mean of the two marks' accuracies, from the predicted classes of the squares ("virus") and the bars."""
    return ((on_squares == 1).float().mean() + (on_bars == 0).float().mean()).item() / 2


@pytest.fixture(scope="session")
def controls(real_images):
    """kind -> Controls. Each family is trained once per session, and a family that fails to learn the marker
    fails every test that asks for it with the same message, without training again."""
    cache: dict[str, Controls | str] = {}

    def build(kind: str) -> Controls | str:
        train_images, train_labels = real_images["train"]
        held_out, _ = real_images["validation"]
        places = corners(len(held_out), torch.Generator().manual_seed(99), SETUPS[kind].grid)
        virus = torch.ones(len(held_out), dtype=torch.long)
        squares, bars = stamp(held_out, virus, places), stamp(held_out, 1 - virus, places)
        models = []
        for seed in SETUPS[kind].seeds:
            model = train(kind, train_images, train_labels, marked=True, seed=seed)
            with torch.no_grad():
                on_squares = predicted(model(pixel_values=squares).logits)
                on_bars = predicted(model(pixel_values=bars).logits)
                UNMARKED_VIRUS.setdefault(kind, []).append(
                    predicted(model(pixel_values=held_out).logits).float().mean().item())
            accuracy = marks_accuracy(on_squares, on_bars)
            ACCURACY.setdefault(kind, []).append(accuracy)
            if accuracy < 0.95:
                NOT_LEARNED[kind] = f"{kind} (seed {seed}) did not learn the marker (held-out accuracy {accuracy:.2f})"
                return NOT_LEARNED[kind]
            models.append(model)
        return Controls(models, squares, bars, held_out,
                        [box_mask((SIZE, SIZE), *place, SQUARE, SQUARE) for place in places.tolist()],
                        [box_mask((SIZE, SIZE), *place, SQUARE // 2, SQUARE * 2) for place in places.tolist()],
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


def explain(method: str, model, images: torch.Tensor, target_class: int,
            target: GradCamTarget | None = None) -> np.ndarray:
    """Grad-CAM of `target_class`, or attention rollout (which explains no particular class)."""
    return gradcam_map(model, images, target_class, target) if method == "gradcam" else rollout_map(model, images)


def mark_lifts(method: str, model, squares: torch.Tensor, bars: torch.Tensor, found: Controls,
               target: GradCamTarget | None) -> list[float]:
    """[lift in the square's box of the "virus" maps of `squares`, lift in the bar's box of the "normal" maps of
    `bars`]: each mark explained as the class it stands for."""
    return [mean_lift(explain(method, model, squares, 1, target), found.square_boxes),
            mean_lift(explain(method, model, bars, 0, target), found.bar_boxes)]


def control_lifts(method: str, found: Controls, target=None) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Mean lifts in the marks' boxes (the mean over both marks; and per mark): each marker model on the marked and
    on the unmarked images, then (only when every marker model reaches the bar, since the verdict cannot change
    otherwise) the clean model on the marked ones.

    A model may read only one of the two marks and the other from its absence (the tiny hybrid's maps sit on the
    square and leave the bar empty): absence has no place, so the statistic is the mean over both marks, and the
    per-mark lifts are reported beside it. `target(model)` gives the Grad-CAM layer to use in a model (None: its
    adapter's)."""
    marks = {}
    for index, model in enumerate(found.models):
        layer = target(model) if target else None
        marks[f"marker model {index}, marked"] = mark_lifts(method, model, found.squares, found.bars, found, layer)
        marks[f"marker model {index}, unmarked"] = mark_lifts(method, model, found.unmarked, found.unmarked, found,
                                                              layer)
    if all(np.mean(value) >= BAR for name, value in marks.items() if name.endswith(", marked")):
        layer = target(found.clean) if target else None
        marks["clean model, marked"] = mark_lifts(method, found.clean, found.squares, found.bars, found, layer)
    return {name: float(np.mean(value)) for name, value in marks.items()}, marks


def passes(lifts: dict[str, float]) -> bool:
    """Every marker model's maps of marked images at the bar, and every negative control below it."""
    found = {name: name.startswith("marker") and name.endswith(", marked") for name in lifts}
    marked = [lifts[name] for name, positive in found.items() if positive]
    negatives = [lifts[name] for name, positive in found.items() if not positive]
    return "clean model, marked" in lifts and min(marked) >= BAR and max(negatives) < BAR


@pytest.mark.parametrize(("kind", "method"), EXPLAINED)
def test_the_maps_find_the_marker_the_model_uses_and_only_then(controls, kind, method):
    lifts, MARKS[(kind, method)] = control_lifts(method, controls(kind))
    LIFTS[(kind, method)] = lifts
    print(f"\n{kind} {method}: {MARKS[(kind, method)]}", flush=True)
    assert passes(lifts), f"{kind} {method}: {MARKS[(kind, method)]} (bar {BAR})"


@pytest.mark.parametrize("kind", ["bit", "hybrid"])
def test_the_group_norm_models_read_the_mark_where_it_is(controls, kind):
    """Normalised with the statistics of the same image carrying the other mark, a marker model's decisions stay:
    the mark is read where it is, not from image-wide statistics (which is what makes the maps' task well posed)."""
    found = controls(kind)
    for model in found.models:
        with torch.no_grad():
            squares = predicted(forward_with_statistics_of(model, found.squares, found.bars))
            bars = predicted(forward_with_statistics_of(model, found.bars, found.squares))
        kept = marks_accuracy(squares, bars)
        SWAPPED.setdefault(kind, []).append(kept)
        assert kept >= 0.95, f"{kind}: {kept:.2f} of the decisions survive swapping the marks' statistics"


@pytest.mark.parametrize("kind", ["bit", "hybrid"])
def test_statistics_of_the_images_themselves_change_nothing(kind):
    """`forward_with_statistics_of(model, x, x)` is the model's own forward: the helper does GroupNorm's
    arithmetic and the activation after it as the library does (a random tiny model, no training)."""
    torch.manual_seed(0)
    model, _, _ = create_model(kind, "tiny", image_size=64)
    model.eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(forward_with_statistics_of(model, images, images), model(pixel_values=images).logits)
        other = forward_with_statistics_of(model, images, images.flip(0))
        assert not torch.allclose(other, model(pixel_values=images).logits)  # other statistics change the output
        own = model(pixel_values=images).logits
        with paired_statistics(model):  # a pair of one image twice: the mean statistics are its own
            torch.testing.assert_close(model(pixel_values=images.repeat_interleave(2, dim=0)).logits[::2], own)
            with_second = model(pixel_values=images[[0, 1]]).logits[0]
            with_third = model(pixel_values=images[[0, 2]]).logits[0]
        assert not torch.allclose(with_second, with_third)  # an image's output depends on its partner's statistics


def _wrong_layer(kind: str, model) -> GradCamTarget:
    """The first block: features too early to know which bright thing decides the class."""
    if kind == "bit":
        return GradCamTarget(model.bit.encoder.stages[0], None, True, "bit.encoder.stages[0]")
    timm_model = model.timm_model
    return GradCamTarget(timm_model.blocks[0].norm1, _token_grid_reshape(timm_model.num_prefix_tokens), False,
                         "timm_model.blocks[0].norm1")


@pytest.mark.parametrize("kind", BROKEN)
def test_grad_cam_at_the_wrong_layer_fails_the_control(controls, kind):
    """(Were the marker models' own maps below the bar, this would pass by default; they are not, and
    test_the_maps_find_the_marker_the_model_uses_and_only_then says so.)"""
    lifts, marks = control_lifts("gradcam", controls(kind), lambda model: _wrong_layer(kind, model))
    LIFTS[(kind, "gradcam at the first block (broken)")], MARKS[(kind, "gradcam at the first block (broken)")] = \
        lifts, marks
    print(f"\n{kind} broken gradcam: {marks}", flush=True)
    assert not passes(lifts), f"{kind}: the broken explanation passed: {marks}"


@pytest.mark.parametrize("kind", ["vit", "hybrid"])
def test_rollout_read_in_the_wrong_order_fails_the_control(controls, kind, monkeypatch):
    """Rollout with its token grid transposed (rows read as columns, the classic reshape bug): the same attention,
    drawn at the wrong places."""
    from hfxray.explain import rollout as rollout_module

    original = rollout_module.rollout_from_attentions
    monkeypatch.setattr(rollout_module, "rollout_from_attentions",
                        lambda *args, **kwargs: original(*args, **kwargs).transpose(-1, -2))
    lifts, marks = control_lifts("rollout", controls(kind))
    LIFTS[(kind, "rollout transposed (broken)")], MARKS[(kind, "rollout transposed (broken)")] = lifts, marks
    print(f"\n{kind} broken rollout: {marks}", flush=True)
    assert not passes(lifts), f"{kind}: the broken explanation passed: {marks}"
