"""The source shortcut check on a CV variant's out-of-fold predictions: does a model's p(virus) carry the source?

    python scripts/oof_shortcut.py --cv-dir CV_OUT --data-dir PREPARED --variant NAME [--out shortcut.json]

Reads the finished folds of repeat 0 of `NAME` in `hfxray cv`'s `--out` folder (each fold's held-out files,
labels and logits in `fold_results.json`) and the prepared folder's manifest (`source`, `patient_group`), and runs
`hfxray.evaluation.source_shortcut` on the pooled out-of-fold p(virus): among images of one class, how well it
tells the sources apart, with a patient bootstrap interval and a permutation p-value. Each image is predicted by
a model that never trained on it, and every train + validation image is predicted once, so the check uses the
whole pool without reading the test split. Two variants of one CV run (the same folds) are compared image for
image: the question is whether a preprocessing change (`--resize_mode square`) takes the source out of the output.

The JSON holds `source_shortcut` in the shape of a test report's, so `scripts/results_tables.py`'s `shortcut` view
renders it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def pooled_predictions(cv_dir: Path, variant: str) -> tuple[list[tuple[str, int, float]], int]:
    """(file, label, p(virus)) of every held-out image of the variant's finished repeat-0 folds, and the folds read."""
    from hfxray.cv import FOLD_RESULTS
    from hfxray.metrics import apply_temperature

    rows, paths = [], sorted((cv_dir / variant).glob(f"repeat0-fold*/{FOLD_RESULTS}"))
    for path in paths:
        result = json.loads(path.read_text())
        probs = apply_temperature(result["logits"], 1.0)
        rows += [(file, int(label), float(p)) for file, label, p in zip(result["files"], result["labels"], probs)]
    return rows, len(paths)


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from hfxray.data import read_manifest
    from hfxray.evaluation import source_shortcut

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv-dir", required=True, help="the --out folder of `hfxray cv`")
    parser.add_argument("--data-dir", required=True, help="the prepared folder the CV ran on")
    parser.add_argument("--variant", required=True, help="the variant whose out-of-fold predictions are checked")
    parser.add_argument("--out", default=None, help="write the check as JSON here")
    args = parser.parse_args(argv)
    cv_dir, data = Path(args.cv_dir), Path(args.data_dir)
    predictions, folds = pooled_predictions(cv_dir, args.variant)
    if not predictions:
        print(f"error: {cv_dir / args.variant} holds no finished fold of repeat 0. To fix: name a variant of that "
              "CV run whose folds have finished.", file=sys.stderr)
        return 2
    manifest = {row["file"]: row for row in read_manifest(data) if row["status"] == "kept"}
    missing = [file for file, _, _ in predictions if file not in manifest]
    if missing:
        print(f"error: {len(missing)} predicted file(s) are not kept images of {data / 'manifest.csv'} (first: "
              f"{missing[0]}). To fix: pass the --data-dir the CV ran on.", file=sys.stderr)
        return 2
    files = [file for file, _, _ in predictions]
    check = source_shortcut(np.array([p for _, _, p in predictions]), np.array([y for _, y, _ in predictions]),
                            np.array([manifest[f]["source"] for f in files]),
                            f"out-of-fold predictions of {len(files)} train + validation images",
                            groups=np.array([manifest[f]["patient_group"] for f in files]))
    result = dict(variant=args.variant, folds=folds, n_images=len(files), source_shortcut=check)
    for row in check["by_class"]:
        low, high = row["separation_ci95"]
        print(f"{args.variant}: {row['class']} {' vs '.join(row['sources'])}: separation {row['separation']:.3f} "
              f"({low:.3f}-{high:.3f}), permutation p {row['permutation_p']:.3g}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
