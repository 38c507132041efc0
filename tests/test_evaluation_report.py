"""`hfxray evaluate` and `hfxray report` on tiny runs trained on the real sample, checked independently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, roc_auc_score

from hfxray.cli import main as cli_main
from hfxray.data import read_manifest
from hfxray.evaluation import read_predictions_csv
from hfxray.metrics import chance_verdict, paired_difference
from hfxray.report import _hyperparameter, comparison_paragraph, load_run


def _independent_test_predictions(run_dir: Path, prepared_dir: Path):
    """Logits from the saved processor on each test file, without any hfxray code path."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(run_dir).eval()
    processor = AutoImageProcessor.from_pretrained(run_dir)
    rows = [r for r in read_manifest(prepared_dir) if r["status"] == "kept" and r["split"] == "test"]
    labels = np.array([0 if r["label"] == "normal" else 1 for r in rows])
    images = [Image.open(prepared_dir / r["file"]).convert("RGB") for r in rows]
    with torch.no_grad():
        logits = model(**processor(images, return_tensors="pt")).logits.numpy()
    return labels, logits


def test_evaluate_matches_an_independent_computation(tiny_runs, prepared_dir, tmp_path, capsys):
    run = tiny_runs["vit"]
    out = tmp_path / "eval.json"
    assert cli_main(["evaluate", "--model", str(run), "--data-dir", str(prepared_dir), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    labels, logits = _independent_test_predictions(run, prepared_dir)
    probs = torch.softmax(torch.tensor(logits), -1)[:, 1].numpy()
    assert report["n"] == len(labels) == 92 and report["n_positive"] == int(labels.sum())
    # The cached evaluation path equals the processor to one gray level (tests/test_transforms.py).
    assert abs(report["accuracy"] - accuracy_score(labels, probs >= 0.5)) <= 2 / 92
    assert report["auroc"] == pytest.approx(roc_auc_score(labels, probs), abs=0.02)
    low, high = report["ci95"]["accuracy"]
    assert low <= report["accuracy"] <= high and report["bootstrap_unit"] == "patient"
    assert {"ece", "folded_temperature"} <= set(report)
    diagram = tmp_path / report["reliability_diagram"]
    assert np.asarray(Image.open(diagram).convert("L")).std() > 10
    # training's test_results.json carries the same fields and agrees on the point estimates
    trained = json.loads((run / "test_results.json").read_text())
    assert trained["test_accuracy"] == pytest.approx(report["accuracy"])
    assert trained["test_auroc"] == pytest.approx(report["auroc"])
    assert trained["test_ci95"]["accuracy"] == pytest.approx(report["ci95"]["accuracy"])
    # One ECE everywhere: the shipped model's, in training's results, `evaluate` and the model card.
    assert trained["test_ece"] == pytest.approx(report["ece"])
    assert trained["test_ci95"]["ece"] == pytest.approx(report["ci95"]["ece"])
    card = (run / "README.md").read_text()
    assert f"{report['ece']:.4f}" in card
    calibration = json.loads((run / "calibration.json").read_text())
    config = json.loads((run / "config.json").read_text())
    if calibration["fold"]:
        assert config["folded_temperature"] == pytest.approx(calibration["temperature"])
        assert report["folded_temperature"] == pytest.approx(calibration["temperature"])
        assert "ece_before_folding" in report
    else:
        assert "folded_temperature" not in config and report["folded_temperature"] == 1.0
        assert "ece_before_folding" not in report
    assert calibration["reason"] in card
    # what a person reads: a table with the CIs, and the chance verdict of the one rule, here and on the card
    table = capsys.readouterr().out
    assert not table.lstrip().startswith("{")
    low, high = report["ci95"]["auroc"]
    assert re.search(rf"^  AUROC +{report['auroc']:.3f}   {low:.3f}-{high:.3f}$", table, re.M), table
    verdict = chance_verdict(report["ci95"])
    assert report["chance"] == trained["test_chance"] == verdict
    assert (verdict or "").upper() + ":" in table if verdict else "CHANCE" not in table
    assert (f"This model is {verdict} on its test split" in card) == bool(verdict)
    assert cli_main(["evaluate", "--model", str(run), "--data-dir", str(prepared_dir), "--out", str(out),
                     "--json"]) == 0
    machine = json.loads(capsys.readouterr().out)
    assert machine["auroc"] == pytest.approx(report["auroc"]) and machine["ci95"]["auroc"] == [low, high]


def test_report_tables_figures_and_curves_from_real_event_files(tiny_runs, prepared_dir, tmp_path):
    out = tmp_path / "report"
    assert cli_main(["report", str(tiny_runs["vit"]), str(tiny_runs["bit"]), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "| Pnemonia | bacteria | — | 105 |" in markdown or "| Pnemonia | bacteria | — | 100 |" in markdown
    assert "| test | 45 | 47 | 92 |" in markdown
    assert "| vit.tiny / scratch | scratch | random init | adamw_torch | 0.001 | onecycle (hfxray/recipes.py) | 2 |" \
        in markdown
    for png in ("figure1_test_metrics.png", "figure2_training_curves.png"):
        pixels = np.asarray(Image.open(out / png).convert("L"))
        assert pixels.std() > 10, f"{png} looks blank"
    assert len(list(out.glob("reliability_*.png"))) == 2

    run = load_run(tiny_runs["vit"])
    log_history = json.loads((tiny_runs["vit"] / "trainer_state.json").read_text())["log_history"]
    expected_eval = [(e["step"], e["eval_accuracy"]) for e in log_history if "eval_accuracy" in e]
    assert [(s, pytest.approx(v, abs=1e-6)) for s, v in run.curves["eval/accuracy"]] == expected_eval
    assert len(run.curves["train/train_accuracy"]) >= 2 and len(run.curves["train/loss"]) >= 2

    numbers = [int(n) for n in re.findall(r"^## Figure (\d+)|!\[Figure (\d+)\]", markdown, re.M) for n in n if n]
    assert sorted(set(numbers)) == list(range(1, max(numbers) + 1)) and numbers == sorted(numbers)
    tables = [int(n) for n in re.findall(r"^## Table (\d+)", markdown, re.M)]
    assert tables == list(range(1, len(tables) + 1))

    runs = [load_run(tiny_runs["vit"]), load_run(tiny_runs["bit"])]
    # Table 3 gives each metric with its CI and the verdict of the one chance rule
    for run in runs:
        auroc, (low, high) = run.test["test_auroc"], run.test["test_ci95"]["auroc"]
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {run.name} |") and "–" in line)
        assert f"{auroc:.3f} ({low:.3f}–{high:.3f})" in row
        verdict = chance_verdict(run.test["test_ci95"])
        assert (f"**{verdict}**" if verdict else "above chance") in row
    # the comparison is paired, on the same test images: no ranking from each run's own intervals
    paragraph = comparison_paragraph(runs)
    assert "highest" not in paragraph and f"{runs[0].name} minus {runs[1].name}: AUROC" in paragraph
    a, b = (read_predictions_csv(run.path / "test_predictions.csv") for run in runs)
    files = sorted(a)
    assert files == sorted(b) and len(files) == runs[0].test["test_n"]
    difference = paired_difference([a[f][1] for f in files], [a[f][2] for f in files], [b[f][2] for f in files],
                                   groups=[a[f][0] for f in files])
    value, low, high = difference["auroc"]
    assert value == pytest.approx(runs[0].test["test_auroc"] - runs[1].test["test_auroc"], abs=2e-5)
    assert f"AUROC {value:+.3f} (95 % CI {low:+.3f} to {high:+.3f})" in paragraph
    assert "paired" in markdown


def test_report_names_a_missing_file(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "args.yaml" in capsys.readouterr().err


def test_report_names_a_folder_that_does_not_exist(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "runs" / "bit-seed"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bit-seed: no such folder" in err and "missing" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, cell", [
    ({"resize_size": 144, "image_size": 128}, "144 (shortest edge)"),  # runs from before resize_mode existed
    ({"resize_size": 144, "image_size": 128, "resize_mode": "shortest_edge"}, "144 (shortest edge)"),
    ({"resize_size": 144, "image_size": 128, "resize_mode": "square"}, "144 × 144 (square)"),
    ({"resize_size": None, "image_size": 128, "resize_mode": "square"}, "128 × 128 (square)"),
])
def test_hyperparameter_table_tells_a_square_resize_from_a_shortest_edge_one(args, cell):
    assert _hyperparameter(args, "resize_size") == cell


@pytest.mark.parametrize("max_steps, epochs_cell, steps_cell", [(500, "—", "500"), (-1, "3", "—"), (0, "3", "—")])
def test_hyperparameter_table_shows_the_length_the_trainer_used(max_steps, epochs_cell, steps_cell):
    # The Trainer ignores num_train_epochs when max_steps > 0: the table must not show an unused epoch count.
    args = {"num_train_epochs": 3.0, "max_steps": max_steps}
    assert _hyperparameter(args, "num_train_epochs") == epochs_cell
    assert _hyperparameter(args, "max_steps") == steps_cell
