"""`hfxray cv`: patient-grouped, stratified folds on train + validation, resumption, the paired comparison, refit."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hfxray import cv
from hfxray.cv import CVError, build_variants, make_folds, paired_comparison, pool_rows
from hfxray.models import ModelSpecError


def _check_folds(labels, groups, folds, n_folds):
    labels, groups = np.asarray(labels), np.asarray(groups)
    assert len(folds) == n_folds
    held_out = np.concatenate([f["evaluation"] for f in folds])
    assert sorted(held_out.tolist()) == list(range(len(labels)))  # each image held out exactly once
    overall = labels.mean()
    for fold in folds:
        train, evaluation = set(fold["train"]), set(fold["evaluation"])
        assert not train & evaluation and len(train) + len(evaluation) == len(labels)
        # Grouping: no patient on both sides of any fold.
        assert not set(groups[list(train)]) & set(groups[list(evaluation)])
        # Stratification: each held-out fold keeps the class balance (within a few images of it).
        share = labels[list(evaluation)].mean()
        assert abs(share - overall) <= 0.08, (share, overall)


def test_folds_keep_patients_together_and_classes_balanced():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(120), rng.integers(1, 5, size=120))  # 1-4 X-rays per patient
    labels = (groups % 5 < 2).astype(int)  # one class per patient, 40 % virus
    folds = make_folds(labels, groups, 5, repeats=2, seed=3)
    _check_folds(labels, groups, [f for f in folds if f["repeat"] == 0], 5)
    _check_folds(labels, groups, [f for f in folds if f["repeat"] == 1], 5)
    assert folds[0]["evaluation"] != folds[5]["evaluation"]  # another shuffle per repeat
    assert make_folds(labels, groups, 5, seed=3) == folds[:5]  # deterministic


def test_folds_refuse_more_folds_than_patients_of_a_class():
    with pytest.raises(CVError, match="To fix: use --folds 2"):
        make_folds([0, 0, 1, 1], ["a", "b", "c", "c"], 3)


def test_folds_of_the_real_sample_never_touch_the_test_split(prepared_dir):
    rows = pool_rows(prepared_dir)
    assert rows and not any(r["file"].startswith("test/") for r in rows)
    labels, groups = [r["label"] for r in rows], [r["group"] for r in rows]
    _check_folds(labels, groups, make_folds(labels, groups, 5), 5)


def test_variants_from_set_grid_and_yaml(tmp_path):
    common, variants = build_variants(["num_train_epochs=2", "learning-rate=1e-3,2e-3"])
    assert common == ["--num_train_epochs", "2"]
    assert [v.name for v in variants] == ["learning_rate=1e-3", "learning_rate=2e-3"]
    assert variants[1].flags == ["--learning_rate", "2e-3"]
    assert build_variants([])[1][0].name == "recipe"
    # commas inside brackets belong to the value (a list), not to the grid
    common, variants = build_variants(["config_overrides=depths=[2,2,2,2]", "seed=1,2"])
    assert common == ["--config_overrides", "depths=[2,2,2,2]"] and len(variants) == 2
    _, variants = build_variants(["config_overrides=depths=[1,1,1,1],depths=[2,2,2,2]"])
    assert [v.flags[1] for v in variants] == ["depths=[1,1,1,1]", "depths=[2,2,2,2]"]
    path = tmp_path / "variants.yaml"
    path.write_text("today: {}\nlast epoch:\n  average_last_epochs: 0\n  hflip: true\n")
    _, variants = build_variants(None, str(path))
    assert [v.name for v in variants] == ["today", "last_epoch"]
    assert variants[1].flags == ["--average_last_epochs", "0", "--hflip", "true"]
    with pytest.raises(CVError, match="To fix"):
        build_variants(["learning_rate"])
    with pytest.raises(CVError, match="To fix"):
        build_variants(["learning_rate=1e-3,2e-3"], str(path))


def test_a_wrong_architecture_field_stops_the_run_before_any_fold_trains(fake_prepared, tmp_path, monkeypatch):
    import hfxray.training

    path = tmp_path / "variants.yaml"
    path.write_text('today: {}\ndeeper:\n  config_overrides: "depthz=[2,2,2,2]"\n')
    monkeypatch.setattr(hfxray.training, "train", lambda *a, **k: pytest.fail("a fold trained"))
    with pytest.raises(ModelSpecError, match="depthz.*To fix"):
        cv.cross_validate("bit", "small", "scratch", fake_prepared, tmp_path / "cv", n_folds=2,
                          variants_file=str(path))
    assert not (tmp_path / "cv" / "folds.json").exists()
    # The same for an input size the architecture cannot take, without any --config_overrides.
    path.write_text("today: {}\nlarger:\n  image_size: 150\n  resize_size: 160\n")
    with pytest.raises(ModelSpecError, match="cannot build hybrid.small for 150 px.*To fix"):
        cv.cross_validate("hybrid", "small", "scratch", fake_prepared, tmp_path / "cv", n_folds=2,
                          variants_file=str(path))
    assert not (tmp_path / "cv" / "folds.json").exists()


def test_a_misspelt_refit_variant_stops_the_run_before_any_fold_trains(fake_prepared, tmp_path, monkeypatch, capsys):
    import hfxray.training
    from hfxray.cli import main

    monkeypatch.setattr(hfxray.training, "train", lambda *a, **k: pytest.fail("a fold trained"))
    out = tmp_path / "cv"
    argv = ["cv", "--model", "bit", "--data-dir", str(fake_prepared), "--out", str(out), "--set", "seed=1,2"]
    assert main([*argv, "--refit", "seed=3"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --refit 'seed=3' is not a variant of this run (seed=1, seed=2)")
    assert "To fix" in error
    assert not out.exists()
    assert cv.refit_names("", build_variants(["seed=1,2"])[1]) == ["seed=1"]
    assert cv.refit_names("all", build_variants(["seed=1,2"])[1]) == ["seed=1", "seed=2"]
    # refit itself trains one variant: 'all' is the command's loop over it, never the first variant alone.
    with pytest.raises(CVError, match="refit trains one variant, not 'all'. To fix: name one of seed=1, seed=2"):
        cv.refit("bit", "small", "scratch", fake_prepared, out, "all", ["seed=1,2"])
    assert not out.exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "cv").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_variant_files_are_valid(path, fake_prepared, tmp_path):
    common, variants = build_variants(None, str(path))
    assert variants[0].name == "today" and not variants[0].flags  # the reference is the recipe as shipped
    assert len(variants) > 1
    cv.variant_configs(cv._base_flags("bit", "small", "scratch", fake_prepared, common), variants, tmp_path)


def test_paired_comparison_uses_the_same_folds():
    def results(accuracies):
        return [dict(repeat=0, fold=i, metrics=dict(accuracy=a, auroc=a, ece=1 - a)) for i, a in enumerate(accuracies)]

    comparison = paired_comparison(results([0.80, 0.90, 0.85]), results([0.84, 0.93, 0.90]), n_train=80,
                                   n_evaluation=40)
    accuracy = comparison["accuracy"]
    assert accuracy["mean_difference"] == pytest.approx(0.04) and accuracy["better_folds"] == 3
    assert comparison["ece"]["better_folds"] == 3  # lower ECE is better
    # The corrected t-statistic is smaller than the plain paired one (variance x (1/J + 40/80) instead of 1/J).
    plain_t = 0.04 / (accuracy["sd_difference"] / np.sqrt(3))
    assert 0 < accuracy["corrected_t"] < plain_t
    assert "exceeds_reference_fold_sd" not in accuracy  # the old rule compared a paired gain with a level's spread


def _fold_results(rng, correct_rate: float, n_per_fold: int = 300, repeats: int = 2, folds: int = 3):
    """Fold results as `run_fold` writes them: each repeat holds out every image once."""
    results = []
    files = [f"train/normal/img{i:03d}.png" for i in range(n_per_fold * folds)]
    for repeat in range(repeats):
        order = rng.permutation(len(files))
        for fold in range(folds):
            chosen = order[fold * n_per_fold:(fold + 1) * n_per_fold]
            labels = rng.integers(0, 2, n_per_fold)
            right = rng.random(n_per_fold) < correct_rate
            margin = np.where(right == (labels == 1), 2.0, -2.0)
            logits = np.stack([-margin / 2, margin / 2], axis=1)
            results.append(dict(repeat=repeat, fold=fold, files=[files[i] for i in chosen], labels=labels.tolist(),
                                logits=logits.tolist(), n_train=n_per_fold * (folds - 1), n_evaluation=n_per_fold,
                                train_runtime=1.0, metrics=dict(accuracy=float(right.mean()), auroc=0.9, ece=0.05)))
    return results


def test_selection_states_each_candidates_decision(tmp_path):
    path = tmp_path / "candidates.yaml"
    path.write_text("min_gain: 0.01\nalpha: 0.05\ntoday: {}\nbetter:\n  seed: 1\nsame:\n  seed: 2\n")
    _, variants = build_variants(None, str(path))
    assert [v.name for v in variants] == ["today", "better", "same"]  # the rule's keys are not variants
    rule = cv.selection_rule(str(path))
    assert rule["min_gain"] == 0.01 and rule["fixed_in"] == str(path) and rule["metric"] == "accuracy"
    assert cv.selection_rule(None)["fixed_in"].startswith("default")
    rng = np.random.default_rng(0)
    results = {"today": _fold_results(rng, 0.80), "better": _fold_results(rng, 0.97), "same": _fold_results(rng, 0.80)}
    meta = dict(model="bit", preset="tiny", recipe="scratch", n_folds=3, repeats=2, n_pool=900)
    summary = cv.summarise(variants, results, meta, rule, {})
    chosen = summary["selection"]
    assert chosen["candidates"]["better"]["passes"] and not chosen["candidates"]["same"]["passes"]
    assert chosen["chosen"] == "better" and chosen["candidates"]["better"]["patient_bootstrap"]["mean"] > 0.1
    assert chosen["candidates"]["same"]["p_holm"] >= chosen["candidates"]["same"]["corrected_t"]["p"]
    table = cv.table_markdown(summary)
    assert "Selection test (rule fixed in" in table and "| better |" in table and "does not pass |" in table
    assert "Outcome: better replaces the reference" in table
    json.dumps(summary, allow_nan=False)
    path.write_text("min_gain: lots\ntoday: {}\n")
    with pytest.raises(CVError, match="min_gain 'lots'. To fix"):
        cv.selection_rule(str(path))


@pytest.mark.slow
def test_cv_trains_each_fold_once_resumes_and_refits(prepared_dir, tmp_path, monkeypatch):
    import hfxray.training

    out = tmp_path / "cv"
    sets = ["num_train_epochs=1", "max_train_samples=32", "image_size=64", "resize_size=72",
            "average_last_epochs=0", "logging_steps=1"]
    args = dict(model="bit", preset="tiny", recipe="scratch", data_dir=prepared_dir, out=out, n_folds=2, sets=sets)
    calls = Counter()
    real_train = hfxray.training.train

    def counting_train(*a, **k):
        calls[a[0].training.output_dir] += 1
        return real_train(*a, **k)

    monkeypatch.setattr(hfxray.training, "train", counting_train)
    summary = cv.cross_validate(**args)
    assert len(calls) == 2 and set(calls.values()) == {1}
    entry = summary["variants"]["recipe"]
    assert entry["accuracy"]["n"] == 2 and 0 <= entry["auroc"]["mean"] <= 1 and summary["test_split_used"] is False
    assert (out / "cv_table.md").read_text().count("| recipe |") == 1
    plan = json.loads((out / cv.FOLDS_FILE).read_text())
    held_out = [set(plan["files"][i] for i in fold["evaluation"]) for fold in plan["folds"]]
    assert not held_out[0] & held_out[1] and len(held_out[0] | held_out[1]) == len(plan["files"])

    # Resumption: finished folds are not retrained; a fold without fold_results.json is.
    (out / "recipe" / "repeat0-fold1" / cv.FOLD_RESULTS).unlink()
    calls.clear()
    partial = cv.cross_validate(**args, train_missing=False)  # a look at the finished folds trains nothing
    assert not calls and partial["variants"]["recipe"]["accuracy"]["n"] == 1 and partial["complete"] is False
    again = cv.cross_validate(**args)
    assert list(calls) == [str(out / "recipe" / "repeat0-fold1")]
    assert again["variants"]["recipe"]["folds"][0] == entry["folds"][0]
    # Other settings in the same --out are refused rather than mixed.
    with pytest.raises(CVError, match="other flags"):
        cv.cross_validate(**{**args, "sets": [*sets[:-1], "logging_steps=2"]})
    with pytest.raises(CVError, match="other folds"):
        cv.cross_validate(**{**args, "n_folds": 3})

    # Refit: all of train + validation, no evaluation data during training, calibrated from out-of-fold logits,
    # the test split evaluated once.
    calls.clear()
    result = cv.refit("bit", "tiny", "scratch", prepared_dir, out, "recipe", sets)
    refit_dir = out / "recipe" / cv.REFIT_DIR
    trained = json.loads((refit_dir / "train_results.json").read_text())
    assert result["train_runtime"] == pytest.approx(trained["train_runtime"])
    calibration = json.loads((refit_dir / "calibration.json").read_text())
    assert "out-of-fold" in calibration["fitted_on"] and calibration["transfer"] == cv.TRANSFER_NOTE
    assert "Not checked on the refit model" in json.loads((out / cv.CV_RESULTS).read_text())["refit_temperature"]
    assert (refit_dir / "test_results.json").is_file() and result["test"]["n"] > 0
    # the out-of-distribution check describes what the refit trained on (hfxray.scope)
    assert json.loads((refit_dir / "ood.json").read_text())["fitted_on"] == ["train", "validation"]
    assert cv.refit("bit", "tiny", "scratch", prepared_dir, out, "recipe", sets) == result  # not repeated
    assert len(calls) == 1


def test_a_square_resize_variant_trains_and_predicts_its_folds_on_square_tensors(prepared_dir, tmp_path, monkeypatch):
    """`{resize_mode: square}` as a cv variant: its folds save a square processor and read the square cache
    entries (never the shortest-edge ones of another variant); a misspelt mode stops the run before any fold."""
    import hfxray.training

    variants = tmp_path / "variants.yaml"
    variants.write_text("square: {resize_mode: square}\nsquash: {resize_mode: squash}\n")
    monkeypatch.setattr(hfxray.training, "train", lambda *a, **k: pytest.fail("a fold trained"))
    args = dict(model="bit", preset="tiny", recipe="scratch", data_dir=prepared_dir, n_folds=2,
                sets=["num_train_epochs=1", "max_train_samples=32", "image_size=64", "resize_size=72",
                      "average_last_epochs=0", f"cache_dir={tmp_path / 'cache'}"])
    from hfxray.arguments import ConfigError

    with pytest.raises(ConfigError, match="--resize_mode squash. To fix"):
        cv.cross_validate(**args, out=tmp_path / "bad", variants_file=str(variants))
    monkeypatch.undo()
    variants.write_text("square: {resize_mode: square}\n")
    summary = cv.cross_validate(**args, out=tmp_path / "cv", variants_file=str(variants))
    assert summary["variants"]["square"]["accuracy"]["n"] == 2
    for fold in ("repeat0-fold0", "repeat0-fold1"):
        saved = json.loads((tmp_path / "cv" / "square" / fold / "preprocessor_config.json").read_text())
        assert saved["size"] == {"height": 72, "width": 72}
    entries = sorted(path.name.rsplit("-", 1)[0] for path in (tmp_path / "cache" / "hfxray-decoded").iterdir())
    assert entries == ["train-72x72px", "validation-72x72px"]
