"""Per-finding breakdown of an external validation: how often the model calls virus, for each source and finding.

    python scripts/external_findings.py --model RUN --data-dir PREPARED [--out findings.json]

Reads the image predictions that `hfxray evaluate --split validation` and `--split test` (or the end of training)
wrote beside their reports (`RUN/validation_predictions.csv`, `RUN/test_predictions.csv`) and the prepared folder's
manifest (`source`, `finding`, `patient_group` of each image). For every (split, source, finding) it reports the
images, patients, and the share of images called virus (p(virus) >= 0.5, the reports' threshold): the sensitivity
for a viral finding, 1 - specificity for a normal one, with a 95 % Wilson interval whose n is shrunk by the
patients' design effect (`hfxray.intervals.proportion_interval`). Findings are grouped as the manifest names them,
except that "COVID-19, ARDS" counts as COVID-19.

Why: an external test split of an adult collection (Cohen) holds few normal images, so its AUROC and specificity
are loose; the share of viral images called virus, per finding (COVID-19, SARS, other viruses) and beside the
training source's own (paediatric) viral images, is the figure that says what transfers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

THRESHOLD = 0.5  # virus iff p(virus) >= 0.5, as hfxray.metrics predicts


def finding_group(finding: str) -> str:
    """The finding as reported: COVID-19 with ARDS counts as COVID-19; CoronaHack's labels are read as findings."""
    if finding.startswith("COVID-19") or finding.endswith("COVID-19"):
        return "COVID-19"
    if finding == "Pnemonia / Virus":  # CoronaHack's (sic) label of its paediatric viral pneumonias
        return "viral pneumonia (paediatric)"
    if finding in ("Normal", "No Finding"):
        return "normal"
    return finding


def breakdown(predictions: dict[str, dict[str, tuple[str, int, float]]], manifest: list[dict]) -> list[dict]:
    """One row per (split, source, finding group): images, patients, called virus, share with its interval."""
    import numpy as np

    from hfxray.intervals import proportion_interval

    by_file = {row["file"]: row for row in manifest if row["status"] == "kept"}
    cells: dict[tuple, list] = defaultdict(list)
    for split, rows in predictions.items():
        for file, (group, label, p_virus) in rows.items():
            entry = by_file[file]
            key = (split, entry.get("source", ""), entry["label"], finding_group(entry.get("finding", "")))
            cells[key].append((group, p_virus >= THRESHOLD))
    out = []
    for (split, source, label, finding), items in sorted(cells.items()):
        groups = np.array([g for g, _ in items])
        hits = np.array([h for _, h in items], dtype=float)
        interval = proportion_interval(hits, groups)
        out.append({"split": split, "source": source, "label": label, "finding": finding, "images": len(items),
                    "patients": len(set(groups.tolist())), "called_virus": int(hits.sum()),
                    "share_called_virus": float(hits.mean()),
                    "share_ci95": [float(v) for v in interval["interval"]],
                    "design_effect": float(interval["design_effect"])})
    return out


def main(argv: list[str] | None = None) -> int:
    from hfxray.data import read_manifest
    from hfxray.evaluation import read_predictions_csv

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run folder holding SPLIT_predictions.csv")
    parser.add_argument("--data-dir", required=True, help="the prepared folder the run was evaluated on")
    parser.add_argument("--splits", nargs="+", default=["validation", "test"])
    parser.add_argument("--out", help="JSON file (default: MODEL/findings.json)")
    args = parser.parse_args(argv)
    model = Path(args.model)
    predictions = {}
    for split in args.splits:
        path = model / f"{split}_predictions.csv"
        if not path.exists():
            print(f"error: {path} is missing. To fix: run `hfxray evaluate --model {model} --data-dir "
                  f"{args.data_dir} --split {split}` first.", file=sys.stderr)
            return 2
        predictions[split] = read_predictions_csv(path)
    rows = breakdown(predictions, read_manifest(args.data_dir))
    out = Path(args.out) if args.out else model / "findings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threshold": THRESHOLD, "measure": "share of images called virus "
                               "(sensitivity for viral findings, 1 - specificity for normal images), 95 % Wilson "
                               "interval with the patients' design effect", "rows": rows}, indent=2))
    for row in rows:
        low, high = row["share_ci95"]
        print(f"{row['split']:<10} {row['source']:<11} {row['finding']:<29} {row['called_virus']:>3}/{row['images']:<3}"
              f" called virus = {row['share_called_virus']:.3f} (95% CI {low:.2f}-{high:.2f}; "
              f"{row['patients']} patients)")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
