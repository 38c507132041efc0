"""scripts/oof_shortcut.py: the source shortcut check on a CV variant's pooled out-of-fold predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script("oof_shortcut")


def _cv_run(tmp_path: Path, source_shift: float) -> tuple[Path, Path]:
    """A prepared folder's manifest and a CV variant's 2 folds: 80 patients of 2 images each, two sources; among
    normal images the logits of source `b` are shifted by `source_shift`."""
    rng = np.random.default_rng(0)
    data, cv = tmp_path / "prepared", tmp_path / "cv"
    data.mkdir(parents=True)
    rows, folds = [], {0: [], 1: []}
    for patient in range(80):
        source, label = "ab"[patient % 2], (patient // 2) % 2
        for image in range(2):
            file = f"train/{['normal', 'virus'][label]}/p{patient}-{image}.png"
            rows.append(dict(file=file, label=["normal", "virus"][label], status="kept", source=source,
                             patient_group=f"p{patient}"))
            margin = (2.0 if label else -2.0) + rng.normal(0, 1) + (source_shift if source == "b" and not label else 0)
            folds[patient % 4 // 2].append((file, label, [0.0, margin]))
    with (data / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for fold, items in folds.items():
        folder = cv / "today" / f"repeat0-fold{fold}"
        folder.mkdir(parents=True)
        (folder / "fold_results.json").write_text(json.dumps(dict(
            files=[f for f, _, _ in items], labels=[y for _, y, _ in items], logits=[z for _, _, z in items])))
    return cv, data


def test_a_source_in_the_output_is_found_and_none_is_not(tmp_path):
    script = _script()
    for shift, low, high in ((3.0, 0.9, 1.0), (0.0, 0.5, 0.75)):
        cv, data = _cv_run(tmp_path / str(shift), shift)
        out = tmp_path / f"{shift}.json"
        assert script.main(["--cv-dir", str(cv), "--data-dir", str(data), "--variant", "today", "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["n_images"] == 160 and result["folds"] == 2
        normal = {r["class"]: r for r in result["source_shortcut"]["by_class"]}["normal"]
        assert low <= normal["separation"] <= high, (shift, normal)
        if shift:
            assert normal["permutation_p"] < 0.01
        else:
            assert normal["permutation_p"] > 0.05


def test_a_variant_without_folds_or_another_pool_is_one_line(tmp_path, capsys):
    script = _script()
    cv, data = _cv_run(tmp_path, 0.0)
    assert script.main(["--cv-dir", str(cv), "--data-dir", str(data), "--variant", "square"]) == 2
    assert "no finished fold" in capsys.readouterr().err
    (data / "manifest.csv").write_text("file,label,status,source,patient_group\n")
    assert script.main(["--cv-dir", str(cv), "--data-dir", str(data), "--variant", "today"]) == 2
    err = capsys.readouterr().err
    assert "not kept images" in err and err.count("\n") == 1
