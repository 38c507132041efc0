"""ConvNeXt, the family added as one adapter (hfxray/families/convnext.py) and one recipe file
(configs/recipes/convnext-paper.yaml): it trains end to end on the real sample, its run folder reloads through
transformers' `pipeline` in a process that never imports hfxray, and Grad-CAM on its last stage gives maps that
locate something on real test images.

The trained model is the tiny preset at 128 px (4 x 4 cells at the last stage: at 64 px there would be 2 x 2),
3 epochs of the scratch recipe on 256 training images: measured test AUROC 0.77, 92 of 92 Grad-CAM maps "ok", the
largest cell at most 0.28 of a map's mass, mean Spearman 0.10 against re-initialised weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from hfxray.arguments import ConfigError, available_recipes, parse_args
from hfxray.families import ADAPTERS, adapter_for
from hfxray.models import create_model, get_spec, load_trained

pytestmark = pytest.mark.slow
IMAGE_SIZE = 128
STRIDE = 32  # ConvNeXt's last stage: a 4 px patchify stem, then three 2x downsamplings


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def convnext_run(prepared_dir, tmp_path_factory):
    from hfxray.workflow import main

    out = tmp_path_factory.mktemp("convnext") / "run"
    code = main(["--model", "convnext", "--preset", "tiny", "--recipe", "scratch", "--data-dir", str(prepared_dir),
                 "--output-dir", str(out), "--num_train_epochs", "3", "--max_train_samples", "256",
                 "--image_size", str(IMAGE_SIZE), "--resize_size", "144", "--report_to", "none",
                 "--disable_tqdm", "true"])
    assert code == 0, "training convnext failed"
    return out


@pytest.fixture(scope="module")
def test_images(prepared_dir):
    from hfxray.imaging import expand_paths

    return sorted(expand_paths([prepared_dir / "test"]))


def test_convnext_trains_end_to_end_and_its_card_names_the_family(convnext_run):
    results = json.loads((convnext_run / "test_results.json").read_text())
    assert results["test_n"] == 92
    assert results["test_auroc"] >= 0.6, f"not a trained model: test AUROC {results['test_auroc']:.2f}"
    config = json.loads((convnext_run / "config.json").read_text())
    assert config["model_type"] == "convnext" and config["architectures"] == ["ConvNextForImageClassification"]
    processor = json.loads((convnext_run / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])  # the family's, not [-1, 1]
    card = (convnext_run / "README.md").read_text()
    assert "ConvNextForImageClassification" in card and "- convnext" in card


def test_run_folder_reloads_through_pipeline_in_a_process_without_hfxray(convnext_run, test_images):
    files = [str(path) for path in test_images[:6]]
    code = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        f"classifier = pipeline('image-classification', model={str(convnext_run)!r}, device='cpu')\n"
        f"answers = classifier({files!r}, top_k=2)\n"
        "assert 'hfxray' not in sys.modules, 'hfxray was imported'\n"
        "print(json.dumps([{a['label']: a['score'] for a in answer} for answer in answers]))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # nothing on the path that could bring hfxray in
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                            cwd=convnext_run.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    from hfxray.imaging import load_rgb

    model, processor = load_trained(str(convnext_run))
    with torch.no_grad():
        pixels = torch.cat([processor(images=load_rgb(path), return_tensors="pt")["pixel_values"] for path in files])
        expected = model.eval()(pixel_values=pixels).logits.softmax(-1).numpy()
    got = np.array([[answer["normal"], answer["virus"]] for answer in answers])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """As tests/test_explain_real.py: a constant map carries no ranking (0)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel())[0])


def test_gradcam_on_the_last_stage_locates_something_on_real_test_images(convnext_run, test_images):
    from hfxray.explain import gradcam_with_status, load_model
    from hfxray.imaging import load_rgb

    model, processor = load_model(convnext_run)
    pixels = torch.cat([processor(images=load_rgb(path), return_tensors="pt")["pixel_values"] for path in test_images])
    trained = gradcam_with_status(model, pixels)
    assert trained.layer == "convnext.encoder.stages[-1]"
    assert trained.maps.shape == (92, IMAGE_SIZE, IMAGE_SIZE) and np.isfinite(trained.maps).all()
    ok = np.array([status == "ok" for status in trained.status])
    assert ok.mean() >= 0.95, f"{100 * ok.mean():.0f} % non-degenerate: {trained.status}"
    maps = trained.maps[ok]
    assert (np.ptp(maps.reshape(len(maps), -1), axis=1) > 0).all()  # none constant
    cells = IMAGE_SIZE // STRIDE
    mass = maps.reshape(len(maps), cells, STRIDE, cells, STRIDE).sum(axis=(2, 4)).reshape(len(maps), -1)
    largest = mass.max(axis=1) / mass.sum(axis=1)
    assert largest.max() < 0.5, f"a map with {largest.max():.2f} of its mass in one of {cells * cells} cells"
    torch.manual_seed(1)
    randomised = gradcam_with_status(type(model)(model.config).eval(), pixels, trained.classes)
    correlation = np.mean([_spearman(a, b) for a, b in zip(trained.maps, randomised.maps)])
    assert correlation < 0.5, f"maps survive re-initialising the weights (mean Spearman {correlation:.2f})"


def test_convnext_trains_with_its_own_paper_recipe_by_default(fake_prepared, tmp_path):
    assert available_recipes("convnext") == ["paper", "scratch"]
    _, _, recipe, _, training = parse_args(["--model", "convnext", "--data-dir", str(fake_prepared),
                                            "--output-dir", str(tmp_path / "run")])
    assert recipe.recipe == "paper" and (recipe.image_size, recipe.resize_size) == (224, 256)
    assert (training.optim, training.learning_rate, training.lr_scheduler_type) == ("adamw_torch", 5e-5, "cosine")
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps == 512
    with pytest.raises(ConfigError, match=r"--recipe paper\|scratch"):
        parse_args(["--model", "convnext", "--recipe", "seed", "--data-dir", str(fake_prepared),
                    "--output-dir", str(tmp_path / "run")])


def test_pretrained_weights_load_from_a_folder_with_a_fresh_two_class_head(tmp_path):
    """--preset full offline: a saved ConvNeXt with another head stands in for facebook/convnext-base-224-22k."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    assert get_spec("convnext").checkpoint == "facebook/convnext-base-224-22k"
    torch.manual_seed(0)
    pretrained = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                                               num_labels=5))
    pretrained.save_pretrained(tmp_path / "pretrained")
    model, processor, spec = create_model("convnext", "full", checkpoint=str(tmp_path / "pretrained"))
    assert spec.tag == "convnext.full" and adapter_for(model) is ADAPTERS["convnext"]
    assert model.classifier.out_features == 2 and model.config.id2label == {0: "normal", 1: "virus"}
    assert torch.equal(model.convnext.embeddings.patch_embeddings.weight,
                       pretrained.convnext.embeddings.patch_embeddings.weight)
    assert processor.crop_size == {"height": 224, "width": 224}
