"""Activation maximization on planted-signal models, and the explain CLI.

The planted-signal models (tiny presets at 64 px) are trained for seconds on gray noise where class 1 ("virus")
carries a bright square somewhere in the top-left quadrant and class 0 a bright bar of the same area there (both
classes share the pixel histogram); activation maximization must raise the logit it maximises, which a random model
does not let it do.

Whether the maps point at what a model uses is tests/test_explain_control.py's question, on real X-rays with
burnt-in marks; whether they depend on the weights is tests/test_explain_real.py's (cascading and data randomisation
on models trained on the real sample, against a random-vs-random baseline). The gray-noise versions of both that
stood here were removed once those checks ran on real X-rays.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from hfxray.cli import main
from hfxray.explain import NotApplicable, activation_maximization, rollout_map
from hfxray.models import create_model

from tiny_fit import fit

LEARNING_RATES = {"vit": 1e-3, "bit": 2e-3, "hybrid": 1e-3}
# kind -> (preset, input size, square side in px): activation maximization needs a trained model, not a large one.
PLANTED = {"vit": ("tiny", 64, 16), "hybrid": ("tiny", 64, 16), "bit": ("tiny", 64, 16)}





@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Every test here trains or explains tiny models: one torch thread (see conftest)."""


def planted(count: int, seed: int, size: int, square: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixel_values in [-1, 1], labels, (row, col) of each image's square or bar) on gray noise.

    Class 1 gets a `square` x `square` bright patch, class 0 a bright bar `square / 2` high and `2 * square` wide,
    both inside the top-left quadrant.
    """
    generator = torch.Generator().manual_seed(seed)
    gray = 0.5 + 0.1 * torch.randn(count, size, size, generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator)
    heights = torch.where(labels == 1, square, square // 2)[:, None]
    widths = torch.where(labels == 1, square, 2 * square)[:, None]
    rows = (torch.rand(count, 1, generator=generator) * (size // 2 - heights + 1)).long()
    cols = (torch.rand(count, 1, generator=generator) * (size // 2 - widths + 1)).long()
    axis = torch.arange(size)[None]
    patch = (((axis >= rows) & (axis < rows + heights))[:, :, None] & ((axis >= cols) & (axis < cols + widths))[:, None])
    gray = torch.where(patch, torch.tensor(0.95), gray).clamp(0, 1)
    return ((gray[:, None].expand(-1, 3, -1, -1) - 0.5) / 0.5).contiguous(), labels, torch.cat([rows, cols], 1)


@pytest.fixture(scope="module")
def trained():
    """kind -> (model, processor) trained on the planted task (cached, seconds each)."""
    cache: dict[str, tuple | str] = {}

    def get(kind: str):
        if kind not in cache:  # a model that fails to learn is cached as its message, not trained again per test
            preset, size, square = PLANTED[kind]
            images, labels, _ = planted(2048, seed=1, size=size, square=square)
            test_images, test_labels, _ = planted(256, seed=99, size=size, square=square)
            torch.manual_seed(0)
            model, processor, _ = create_model(kind, preset, image_size=size)

            def batches(generator, images=images, labels=labels):
                batch = torch.randint(0, len(images), (32,), generator=generator)
                return images[batch], labels[batch]

            fit(model, LEARNING_RATES[kind], 400, batches)
            with torch.no_grad():
                accuracy = (model(pixel_values=test_images).logits.argmax(-1) == test_labels).float().mean().item()
            cache[kind] = ((model, processor) if accuracy >= 0.95
                          else f"{kind} did not learn the planted signal (accuracy {accuracy:.2f})")
        if isinstance(cache[kind], str):
            raise AssertionError(cache[kind])
        return cache[kind]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_activation_maximization_raises_the_target_logit(trained, kind):
    # Target the class the gray start does NOT score as: the predicted one may already sit at its plateau.
    model, processor = trained(kind)
    before = [p.detach().clone() for p in model.parameters()]
    target = int(np.argmin(activation_maximization(model, processor, target_class=1, steps=1).start_logits))
    result = activation_maximization(model, processor, target_class=target, steps=200)
    assert result.rise >= 1.0, f"{kind}: logits {result.start_logits} -> {result.end_logits}"
    assert result.end_logits[target] > result.end_logits[1 - target]
    _, size, _ = PLANTED[kind]
    assert result.image.shape == (size, size, 3) and result.image.dtype == np.uint8
    assert -1.0 <= result.pixel_values.min() and result.pixel_values.max() <= 1.0  # (0 - 0.5)/0.5 .. (1 - 0.5)/0.5
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, model.parameters()))


def test_rollout_refuses_bit():
    model, _, _ = create_model("bit", "tiny")
    with pytest.raises(NotApplicable, match="gradcam"):
        rollout_map(model, torch.zeros(1, 3, 64, 64))


@pytest.fixture(scope="module")
def model_dirs(tiny_models):
    """Tiny random vit and bit folders saved like a training run (config, weights, preprocessor)."""
    return tiny_models


def test_cli_explains_good_images_and_reports_the_bad_one(model_dirs, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 70), dtype=np.uint8)).save(images / "gray.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / "nested" / "color.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "out"
    code = main(["explain", "--model", str(model_dirs / "vit"), "--method", "rollout", "--out", str(out),
                 str(images)])
    captured = capsys.readouterr()
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["color.vit.rollout.png", "gray.vit.rollout.png"]
    assert "broken.png: not an image" in captured.err
    assert "explained 2 of 3 images" in captured.out and "skipped 1 unreadable" in captured.out

    code = main(["explain", "--model", str(model_dirs / "bit"), "--method", "gradcam", "--out", str(out),
                 str(images / "gray.png")])
    assert code == 0 and (out / "gray.bit.gradcam.png").is_file()


def test_cli_errors_are_one_line_and_nonzero(model_dirs, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    out = str(tmp_path / "out")
    assert main(["explain", "--model", str(tmp_path / "missing"), "--method", "gradcam", "--out", out,
                 str(broken)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["explain", "--model", str(model_dirs / "bit"), "--method", "rollout", "--out", out,
                 str(broken)]) == 2
    assert "rollout does not apply to bit" in capsys.readouterr().err
    # ViT's Grad-CAM fails the planted-marker control: refused with the reason, before any image is read
    assert main(["explain", "--model", str(model_dirs / "vit"), "--method", "gradcam", "--out", out,
                 str(broken)]) == 2
    error = capsys.readouterr().err
    assert "gradcam is not offered for vit models" in error and "positive control" in error
    assert "To fix: use --method rollout or actmax" in error and len(error.strip().splitlines()) == 1
    assert main(["explain", "--model", str(model_dirs / "bit"), "--method", "gradcam", "--target-class", "bacteria",
                 "--out", out, str(broken)]) == 2
    assert "unknown class 'bacteria'" in capsys.readouterr().err
    assert main(["explain", "--model", str(model_dirs / "bit"), "--method", "gradcam", "--out", out,
                 str(broken)]) == 1
    assert "zero-byte file" in capsys.readouterr().err


def test_cli_actmax_grid_has_a_row_per_model(model_dirs, tmp_path):
    out = tmp_path / "out"
    assert main(["explain", "--model", str(model_dirs / "vit"), "--model", str(model_dirs / "bit"),
                 "--method", "actmax", "--steps", "3", "--out", str(out)]) == 0
    with Image.open(out / "vit+bit.actmax.png") as grid:
        assert grid.height > grid.width  # two rows of two classes, each about square


def test_a_method_is_either_offered_or_withheld_with_a_reason():
    """A family's `not_offered` names methods outside its explanations; ViT's Grad-CAM is one (it fails the
    planted-marker control), and no family may list a method as both."""
    from dataclasses import replace

    from hfxray.families import ADAPTERS

    assert "gradcam" in ADAPTERS["vit"].not_offered and "gradcam" not in ADAPTERS["vit"].explanations
    assert all("gradcam" in ADAPTERS[kind].explanations for kind in ("bit", "hybrid", "convnext"))
    with pytest.raises(ValueError, match="not_offered"):
        replace(ADAPTERS["vit"], explanations=("rollout", "gradcam", "actmax"))
    with pytest.raises(ValueError, match="not_offered"):
        replace(ADAPTERS["bit"], not_offered={"saliency": "not a method hfxray has"})
