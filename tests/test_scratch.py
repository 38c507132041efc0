"""From-scratch control (`--preset small --recipe scratch`) on the real sample: every kind learns, and the refit of
bit's recipe (all of train + validation, the recipe's fixed length) trains within 5 minutes and is clearly better
than chance. The recipe itself was chosen by cross-validation (`hfxray cv`, README "Recipes"), not by these tests:
no bar here is tuned on the test split."""

from __future__ import annotations

import json

import pytest

from hfxray.models import create_model
from hfxray.arguments import build_config
from hfxray.workflow import execute


def _train(prepared_dir, out, kind, **extra):
    execute(build_config(model=kind, preset="small", recipe="scratch", data_dir=prepared_dir, output_dir=out,
                            disable_tqdm=True, report_to="none", **extra))
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
    test, _ = _train(prepared_dir, tmp_path / kind, kind, num_train_epochs=5)
    print(f"{kind} small/scratch 5 epochs: accuracy {test['test_accuracy']:.3f}, AUROC {test['test_auroc']:.3f}")
    assert test["test_auroc"] >= 0.70 and test["test_accuracy"] >= 0.60


@pytest.mark.slow
def test_refit_of_the_bit_recipe_trains_within_five_minutes_and_beats_chance_clearly(prepared_dir, tmp_path):
    from hfxray.arguments import parse_config
    from hfxray.cv import FORCED_FLAGS, pool_rows, pool_selector
    from hfxray.training import train
    from hfxray.workflow import evaluate_run

    out = tmp_path / "bit-refit"
    config = parse_config(["--model", "bit", "--preset", "small", "--recipe", "scratch", "--data-dir",
                           str(prepared_dir), "--output-dir", str(out), "--disable_tqdm", "true", "--report_to", "none",
                           *FORCED_FLAGS])
    files = [row["file"] for row in pool_rows(prepared_dir)]
    trained = train(config, select_splits=pool_selector(prepared_dir, files, None))
    metrics = trained.metrics
    test = evaluate_run(out, prepared_dir, trained.model, trained.processor, n_resamples=200)
    print(f"bit small/scratch refit on {len(files)} images: accuracy {test['accuracy']:.3f}, AUROC "
          f"{test['auroc']:.3f}, {metrics['train_runtime']:.0f} s")
    assert metrics["train_runtime"] <= 300
    # Chance is 0.5; the bar is far below every measured seed (README), so it checks learning, not tuning.
    assert test["auroc"] >= 0.90 and test["accuracy"] >= 0.80
