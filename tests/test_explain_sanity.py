"""The randomisation checks themselves: every parameter is re-drawn, the statistic is |Spearman| (no cancelling),
an explanation that ignores the weights fails, and `hfxray explain --sanity` writes its report."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from PIL import Image

from hfxray.cli import main
from hfxray.explain.sanity import (SHARED_BAR, Similarity, abs_spearman, cascading_randomisation, randomised_copy,
                                   verdict)
from hfxray.families import adapter_for
from hfxray.models import create_model


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models only: one torch thread (see conftest)."""


@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_the_layers_top_down_hold_every_parameter_once_and_all_are_redrawn(kind):
    torch.manual_seed(0)
    model, _, _ = create_model(kind, "tiny")
    layers = adapter_for(model).layers_top_down(model)
    listed = [id(p) for _, items in layers for item in items
              for p in (item.parameters() if isinstance(item, torch.nn.Module) else [item])]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())
    assert "head" in layers[0][0] or layers[0][0] == "classifier"
    # Push every parameter away from its initial value, as training does; full randomisation must move it again.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)
    randomised = randomised_copy(model, seed=3)
    for (name, before), after in zip(model.named_parameters(), randomised.parameters()):
        assert not torch.equal(before, after), f"{kind}: {name} kept its trained value"
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), randomised_copy(model, 3, steps=0).parameters()))


def test_spearman_is_taken_in_absolute_value_before_the_mean():
    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    similarity = Similarity.of(np.stack([ramp, ramp]), np.stack([ramp, 1 - ramp]))
    assert similarity.spearman.tolist() == pytest.approx([1.0, 1.0])  # a signed mean would be 0
    assert abs_spearman(ramp, np.zeros((8, 8))) == 0.0
    assert similarity.ssim[0] == pytest.approx(1.0) and similarity.ssim[1] < 0


def _image_intensity(model, pixel_values):
    """A deliberately broken "explanation": the input's brightness, whatever the model."""
    gray = pixel_values.mean(dim=1).numpy()
    low, high = gray.min(axis=(1, 2), keepdims=True), gray.max(axis=(1, 2), keepdims=True)
    return (gray - low) / (high - low)


def _planted_map(trained):
    """A "map" that is a fixed pattern for the trained weights and noise for any other: depends on the weights."""
    reference = [p.detach().clone() for p in trained.parameters()]

    def explain(model, pixel_values):
        same = all(torch.equal(a, b) for a, b in zip(reference, model.parameters()))
        seed = 0 if same else int(1e6 * float(next(model.parameters()).detach().sum()))
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(len(pixel_values), 16, 16, generator=generator).numpy()

    return explain


def test_a_map_of_the_image_fails_and_a_map_of_the_weights_passes():
    torch.manual_seed(0)
    model, _, _ = create_model("bit", "tiny")
    pixels = torch.rand(6, 3, 64, 64) * 2 - 1
    steps = []
    broken = cascading_randomisation(model, pixels, _image_intensity, on_step=steps.append)
    assert broken.steps == [name for name, _ in adapter_for(model).layers_top_down(model)]
    assert steps[-1] == "random-vs-random baseline" and steps[:-1] == broken.steps
    assert broken.final.mean_spearman == pytest.approx(1.0) and broken.baseline.mean_spearman >= SHARED_BAR
    passed, line = verdict(broken.final, broken.baseline)
    assert not passed and "show the image" in line

    faithful = cascading_randomisation(model, pixels, _planted_map(model))
    assert faithful.final.mean_spearman < 0.2 and faithful.baseline.mean_spearman < 0.2
    assert verdict(faithful.final, faithful.baseline)[0]
    # and one that keeps the trained map after the weights are gone fails on the margin
    kept = Similarity(np.full(6, 0.8), np.full(6, 0.8))
    passed, line = verdict(kept, faithful.baseline)
    assert not passed and "do not depend on the weights" in line


def test_cli_sanity_writes_a_report_table_and_curve(tiny_models, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(5):
        Image.fromarray(rng.integers(0, 256, (80, 72), dtype=np.uint8)).save(images / f"{index}.png")
    out = tmp_path / "sanity"
    # the hybrid: the one family with both maps (ViT's Grad-CAM is not offered, so --sanity checks its rollout only)
    assert main(["explain", "--sanity", "--sanity-images", "3", "--model", str(tiny_models / "hybrid"), "--out",
                 str(out), str(images)]) == 0
    captured = capsys.readouterr()
    assert "sanity gradcam: re-initialising timm_model.head" in captured.err
    assert "sanity rollout: re-initialising timm_model.patch_embed" in captured.err
    assert "gradcam cascading:" in captured.out and "rollout cascading:" in captured.out
    summary = json.loads((out / "hybrid.sanity.json").read_text())
    assert len(summary["images"]) == 3 and set(summary["results"]) == {"gradcam", "rollout"}
    steps = summary["results"]["gradcam"]["steps"]
    assert [row["layer"] for row in steps] == ["timm_model.head", "timm_model.norm", "timm_model.blocks[1]",
                                                "timm_model.blocks[0]", "timm_model.patch_embed"]
    report = (out / "hybrid.sanity.md").read_text()
    assert report.startswith("# Explanation sanity report") and "random vs random (baseline)" in report
    assert "data randomisation: not run" in report
    with Image.open(out / "hybrid.sanity.png") as figure:
        assert figure.width > 400
    assert main(["explain", "--sanity", "--sanity-images", "2", "--model", str(tiny_models / "vit"), "--out",
                 str(out), str(images)]) == 0
    assert set(json.loads((out / "vit.sanity.json").read_text())["results"]) == {"rollout"}
    # the same model and a permuted-label "run" (here another random model of the kind): a rerun replaces its own
    assert main(["explain", "--sanity", "--sanity-images", "2", "--method", "gradcam", "--model",
                 str(tiny_models / "hybrid"), "--permuted-model", str(tiny_models / "hybrid"), "--out", str(out),
                 str(images)]) == 0
    summary = json.loads((out / "hybrid.sanity.json").read_text())
    assert summary["results"]["gradcam"]["data_randomisation"]["spearman"] == pytest.approx(1.0)
    assert not summary["results"]["gradcam"]["data_randomisation"]["passed"]  # the same weights: same maps


def test_cli_sanity_errors_are_one_line(tiny_models, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["explain", "--sanity", "--model", str(tiny_models / "bit"), "--out", out]) == 2
    assert "no images to check" in capsys.readouterr().err
    assert main(["explain", "--sanity", "--method", "rollout", "--model", str(tiny_models / "bit"), "--out", out,
                 str(tmp_path)]) == 2
    assert "rollout does not apply to bit" in capsys.readouterr().err
    assert main(["explain", "--sanity", "--model", str(tiny_models / "bit"), "--permuted-model",
                 str(tiny_models / "vit"), "--out", out, str(tmp_path)]) == 2
    assert "not the same kind of model" in capsys.readouterr().err
    assert main(["explain", "--model", str(tiny_models / "bit"), "--out", out, str(tmp_path)]) == 2
    assert "--method is required" in capsys.readouterr().err
