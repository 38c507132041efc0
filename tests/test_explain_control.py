"""A positive control that can fail: real X-rays with a planted burnt-in marker, a model that learns it, and maps that
must find it (and must not find it where the model does not use it).

From the real sample's training split (validation split held out), each image as the models see it (128 px) gets a
label drawn at random, whatever its diagnosis: "virus" images carry a 16 x 16 white square and "normal" images a
white 8 x 32 bar of the same area, each at a random place. The mark is then the only thing that tells the classes
apart, and both classes have the same brightness histogram: with a square on one class only, GroupNorm (BiT, the
hybrid's stem) lets a model read the mark's presence from image-wide statistics anywhere, and a faithful map of such
a model need not point at it. Real films carry markers on both classes too (side letters, hospital stamps).

Each family's tiny preset is trained for seconds. The statistic is the lift inside the square (mass share / area
share; a uniform map scores 1, the ceiling is 64): a method passes when the marker model's maps of marked "virus"
images reach `BAR` and both negative controls stay below it: the same model on the same images without marks (the
box where the square would be), and a model trained on the real labels without marks (the clean model) on the
marked images. `BAR = 3`: three times the mass a map that looks nowhere in particular puts there, more than the
negative controls reach (below 1.6), and half of what a one-cell hit gives on the coarsest (4 x 4) grid.
A deliberately broken explanation, Grad-CAM at the wrong layer, must fail.

Today the control fails where it matters (FAILING below, strict): in 300 steps only BiT learns the marker, and its
Grad-CAM puts 1.69 times the square's area share there, under the bar. docs/explanations.md gives the numbers.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from hfxray.explain import gradcam_map, rollout_map
from hfxray.explain.gradcam import GradCamTarget, _token_grid_reshape
from hfxray.explain.localisation import box_mask, lift
from hfxray.imaging import expand_paths, load_rgb
from hfxray.models import build_processor, create_model

SIZE, SQUARE = 128, 16
BAR = 3.0
STEPS = 300
LEARNING_RATES = {"vit": 1e-3, "bit": 2e-3, "hybrid": 1e-3}
# Where the control fails today, measured (strict: a change that makes one pass fails its test until this is
# updated, with the new lifts in docs/explanations.md). These are findings, not tolerances.
VIT_NOT_LEARNED = "the tiny ViT does not learn the marker in 300 steps (held-out accuracy 0.50)"
HYBRID_NOT_LEARNED = "the tiny hybrid does not learn the marker in 300 steps (held-out accuracy 0.50)"
FAILING = {
    ("vit", "gradcam"): VIT_NOT_LEARNED,
    ("vit", "rollout"): VIT_NOT_LEARNED,
    ("hybrid", "gradcam"): HYBRID_NOT_LEARNED,
    ("hybrid", "rollout"): HYBRID_NOT_LEARNED,
    ("bit", "gradcam"): "tiny BiT learns the marker, but its Grad-CAM lift in the square is 1.69 (bar 3; unmarked "
                        "1.21, clean model 0.43)",
}
EXPLAINED = [pytest.param(kind, method, marks=[pytest.mark.xfail(strict=True, reason=FAILING[(kind, method)])]
                          if (kind, method) in FAILING else [])
             for kind, method in (("vit", "gradcam"), ("vit", "rollout"), ("bit", "gradcam"), ("hybrid", "gradcam"),
                                  ("hybrid", "rollout"))]
BROKEN = [pytest.param("vit", marks=pytest.mark.xfail(strict=True, reason=VIT_NOT_LEARNED)), "bit",
          pytest.param("hybrid", marks=pytest.mark.xfail(strict=True, reason=HYBRID_NOT_LEARNED))]
LIFTS: dict[tuple[str, str], dict[str, float]] = {}  # printed at the end of the module, for docs/explanations.md

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models only: one torch thread (see conftest)."""


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for (kind, method), lifts in sorted(LIFTS.items()):
        print(f"\n{kind} {method}: " + ", ".join(f"{name} {value:.2f}" for name, value in lifts.items()))


@pytest.fixture(scope="session")
def real_images(prepared_dir):
    """split -> (pixel values at 128 px, real labels) of the sample's training and validation splits."""
    processor = build_processor(SIZE, SIZE * 9 // 8)
    found = {}
    for split in ("train", "validation"):
        files = sorted(expand_paths([prepared_dir / split]))
        pixels = torch.cat([processor(images=load_rgb(path), return_tensors="pt")["pixel_values"] for path in files])
        found[split] = pixels, torch.tensor([int(path.parent.name == "virus") for path in files])
    return found


def stamp(images: torch.Tensor, labels: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Burn in the marks: a white square where the label is 1, a white bar of the same area where it is 0."""
    images = images.clone()
    for image, label, (row, col) in zip(images, labels.tolist(), corners.tolist()):
        height, width = (SQUARE, SQUARE) if label == 1 else (SQUARE // 2, SQUARE * 2)
        image[:, row:row + height, col:col + width] = 1.0  # white: the processor maps [0, 1] to [-1, 1]
    return images


def corners(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, SIZE - 2 * SQUARE + 1, (count, 2), generator=generator)


def train(kind: str, images: torch.Tensor, real_labels: torch.Tensor, marked: bool, steps: int = STEPS):
    """A tiny model trained on marked images with random labels (`marked`), or on the real labels without marks."""
    torch.manual_seed(0)
    model, _, _ = create_model(kind, "tiny", image_size=SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATES[kind])
    generator, smoothed = torch.Generator().manual_seed(0), 0.7
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(images), (32,), generator=generator)
        if marked:  # fresh labels and places every step: nothing but the mark can be learned
            labels = torch.randint(0, 2, (32,), generator=generator)
            inputs = stamp(images[batch], labels, corners(32, generator))
        else:
            labels, inputs = real_labels[batch], images[batch]
        loss = torch.nn.functional.cross_entropy(model(pixel_values=inputs).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        smoothed = 0.9 * smoothed + 0.1 * loss.item()
        if smoothed < 0.05:
            break
    model.eval().zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="session")
def controls(real_images):
    """kind -> (marker model, clean model, held-out images marked as virus, the same unmarked, their boxes)."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            train_images, train_labels = real_images["train"]
            held_out, _ = real_images["validation"]
            held_out = held_out[:24]
            boxes = corners(len(held_out), torch.Generator().manual_seed(99))
            virus = torch.ones(len(held_out), dtype=torch.long)
            marked = stamp(held_out, virus, boxes)
            model = train(kind, train_images, train_labels, marked=True)
            with torch.no_grad():
                on_marks = model(pixel_values=stamp(held_out, 1 - virus, boxes)).logits.argmax(-1)
                on_squares = model(pixel_values=marked).logits.argmax(-1)
            accuracy = ((on_squares == 1).float().mean() + (on_marks == 0).float().mean()).item() / 2
            assert accuracy >= 0.95, f"{kind} did not learn the marker (held-out accuracy {accuracy:.2f})"
            clean = train(kind, train_images, train_labels, marked=False, steps=STEPS // 3)
            cache[kind] = model, clean, marked, held_out, [box_mask((SIZE, SIZE), *box, SQUARE, SQUARE)
                                                           for box in boxes.tolist()]
        return cache[kind]

    return get


def mean_lift(maps: np.ndarray, boxes) -> float:
    return float(np.mean([lift(heatmap, box) if heatmap.any() else 0.0 for heatmap, box in zip(maps, boxes)]))


def explain(method: str, model, images: torch.Tensor, target: GradCamTarget | None = None) -> np.ndarray:
    return gradcam_map(model, images, 1, target) if method == "gradcam" else rollout_map(model, images)


def control_lifts(kind: str, method: str, controls, target=None, clean_target=None) -> dict[str, float]:
    model, clean, marked, unmarked, boxes = controls(kind)
    return {"marker model, marked": mean_lift(explain(method, model, marked, target), boxes),
            "marker model, unmarked": mean_lift(explain(method, model, unmarked, target), boxes),
            "clean model, marked": mean_lift(explain(method, clean, marked, clean_target or target), boxes)}


def passes(lifts: dict[str, float]) -> bool:
    return (lifts["marker model, marked"] >= BAR and lifts["marker model, unmarked"] < BAR
            and lifts["clean model, marked"] < BAR)


@pytest.mark.parametrize(("kind", "method"), EXPLAINED)
def test_the_maps_find_the_marker_the_model_uses_and_only_then(controls, kind, method):
    lifts = control_lifts(kind, method, controls)
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
    model, clean, *_ = controls(kind)
    lifts = control_lifts(kind, "gradcam", controls, _wrong_layer(kind, model), _wrong_layer(kind, clean))
    LIFTS[(kind, "gradcam at the first block (broken)")] = lifts
    print(f"\n{kind} broken gradcam: {lifts}", flush=True)
    assert not passes(lifts), f"{kind}: the broken explanation passed: {lifts}"
