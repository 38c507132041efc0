"""scripts/external_findings.py: the share of images called virus per source and finding, by patient."""

import csv
import json
from pathlib import Path

from repo_scripts import load_script


ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script("external_findings")


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_findings_breakdown_counts_called_virus_per_finding(tmp_path):
    script = _script()
    data, run = tmp_path / "prepared", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    manifest = [  # file, label, split, patient_group, status, source, finding
        ["test/virus/c1.png", "virus", "test", "cohen:1", "kept", "cohen", "COVID-19"],
        ["test/virus/c2.png", "virus", "test", "cohen:1", "kept", "cohen", "COVID-19, ARDS"],
        ["test/virus/c3.png", "virus", "test", "cohen:2", "kept", "cohen", "COVID-19"],
        ["test/virus/s1.png", "virus", "test", "cohen:3", "kept", "cohen", "SARS"],
        ["test/normal/n1.png", "normal", "test", "cohen:4", "kept", "cohen", "No Finding"],
        ["validation/virus/k1.jpeg", "virus", "validation", "coronahack:k1", "kept", "coronahack", "Pnemonia / Virus"],
        ["validation/normal/k2.jpeg", "normal", "validation", "coronahack:k2", "kept", "coronahack", "Normal"],
    ]
    _write(data / "manifest.csv", ["file", "label", "split", "patient_group", "status", "source", "finding"],
           manifest)
    p_virus = {"c1": 0.9, "c2": 0.2, "c3": 0.5, "s1": 0.1, "n1": 0.7, "k1": 0.8, "k2": 0.3}
    for split in ("validation", "test"):
        _write(run / f"{split}_predictions.csv", ["file", "patient_group", "label", "p_virus"],
               [[row[0], row[3], int(row[1] == "virus"), p_virus[Path(row[0]).stem]]
                for row in manifest if row[2] == split])
    assert script.main(["--model", str(run), "--data-dir", str(data)]) == 0
    rows = {(r["split"], r["finding"]): r for r in json.loads((run / "findings.json").read_text())["rows"]}
    covid = rows[("test", "COVID-19")]  # "COVID-19, ARDS" counts as COVID-19; 0.5 is called virus
    assert (covid["images"], covid["patients"], covid["called_virus"]) == (3, 2, 2)
    low, high = covid["share_ci95"]
    assert 0 < low < 2 / 3 < high < 1
    assert rows[("test", "SARS")]["called_virus"] == 0 and rows[("test", "normal")]["called_virus"] == 1
    assert rows[("validation", "viral pneumonia (paediatric)")]["share_called_virus"] == 1.0


def test_findings_needs_the_predictions(tmp_path, capsys):
    script = _script()
    (tmp_path / "prepared").mkdir()
    assert script.main(["--model", str(tmp_path), "--data-dir", str(tmp_path / "prepared")]) == 2
    assert "To fix: run `hfxray evaluate" in capsys.readouterr().err
