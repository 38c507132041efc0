"""The figures of docs/evidence.md, each written to a results file by one subcommand (fixed seeds: a rerun writes
the same file).

    python scripts/evidence_figures.py ece-coverage        # docs/results/evidence/ece_coverage.json
    python scripts/evidence_figures.py proportion-edges    # docs/results/evidence/proportion_edges.json
    python scripts/evidence_figures.py shortcut-null       # docs/results/evidence/shortcut_null.json
    python scripts/evidence_figures.py selection-power     # docs/results/evidence/selection_power.json
    python scripts/evidence_figures.py merged-pool --data-dir MERGED   # docs/results/merged-pool/pool.json

Each computes with the library's own functions (`hfxray.intervals`, `hfxray.evaluation.source_shortcut`,
`hfxray.selection.simulate_design`, `hfxray.duplicates`); `--out` writes elsewhere. `merged-pool` reads a folder
prepared by `hfxray data prepare --source CORONAHACK --source KERMANY --out MERGED` and writes counts only (no file
name: the manifest lists patients' files). scripts/results_tables.py renders the files into the doc's tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file from a checkout: the hfxray beside it, not another install

EVIDENCE = ROOT / "docs" / "results" / "evidence"
N_BINS = 15  # hfxray's ECE bins
# (n, sharpen) rows of the ECE coverage table: calibrated, over-confident (< 1), under-confident (> 1).
ECE_ROWS = [(n, s) for n in (92, 300) for s in (1.0, 0.5, 0.7, 1.5, 2.0)]
# (repeats, true gain, min_gain) rows of the power table; K = 5 folds on 1,750 images, simulate_design's defaults.
POWER_ROWS = [(2, 0.0, 0.0), (2, 0.015, 0.0), (2, 0.02, 0.0), (3, 0.015, 0.0), (3, 0.02, 0.0), (5, 0.015, 0.0),
              (5, 0.02, 0.0), (2, 0.015, 0.005)]
POWER_ALPHAS = (0.05, 0.025)  # family-wise alpha, and its worst case for each of two candidates under Holm
POWER_SIMULATIONS = 1000
POWER_SEED = 1


def ece_coverage(args) -> dict:
    from hfxray.intervals import simulate_ece_interval

    rows = [simulate_ece_interval(n, s, N_BINS, draws=args.draws, n_resamples=args.resamples, seed=args.seed)
            for n, s in ECE_ROWS]
    return dict(model="predicted p = sigmoid(d), d ~ N(0, 2.5); true p = sigmoid(sharpen * d)", rows=rows)


def proportion_edges(args) -> dict:
    """Wilson intervals where a percentile bootstrap has zero width (every resample of 12/12 is 12/12)."""
    from hfxray.intervals import proportion_interval

    rows = []
    for hits, n in ((12, 12), (0, 79)):
        outcome = np.r_[np.ones(hits), np.zeros(n - hits)]
        rows.append(dict(successes=hits, n=n, wilson=list(proportion_interval(outcome)["interval"])))
    return dict(rows=rows)


def shortcut_null(args) -> dict:
    """The shortcut check's permutation p on null data (no source effect) whose patients have 4 alike images each:
    resampling images against resampling patients."""
    from hfxray.evaluation import source_shortcut

    rng = np.random.default_rng(args.seed)
    sources = np.repeat(["a", "b"], 40)  # 10 patients of 4 images in each source
    groups = np.array([f"{s}:{i // 4}" for i, s in enumerate(sources)])
    labels = np.zeros(80, int)
    p = {"patients": [], "images": []}
    for _ in range(args.draws):
        scores = np.repeat(rng.normal(0, 1, 20), 4) + rng.normal(0, 0.2, 80)  # a large patient effect
        for key, by in (("patients", groups), ("images", None)):
            check = source_shortcut(scores, labels, sources, "held-out splits", groups=by)
            p[key].append(check["by_class"][0]["permutation_p"])
    return dict(draws=args.draws, seed=args.seed, patients_per_source=10, images_per_patient=4,
                **{f"{key}_p_below_0.05": float(np.mean(np.array(v) < 0.05)) for key, v in p.items()},
                **{f"{key}_mean_p": float(np.mean(v)) for key, v in p.items()})


def selection_power(args) -> dict:
    from hfxray.selection import simulate_design

    rows = []
    for repeats, gain, min_gain in POWER_ROWS:
        passes = {str(alpha): simulate_design(repeats=repeats, gain=gain, min_gain=min_gain, alpha=alpha,
                                              simulations=args.simulations, seed=args.seed) for alpha in POWER_ALPHAS}
        rows.append(dict(repeats=repeats, gain=gain, min_gain=min_gain, passes=passes))
    return dict(n_images=1750, n_folds=5, simulations=args.simulations, seed=args.seed, alphas=list(POWER_ALPHAS),
                rows=rows)


def merged_pool(args) -> dict:
    """Counts, image geometry and near-duplicate statistics of a prepared two-source folder (kept images)."""
    from hfxray.data.cohen_groups import TABLE
    from hfxray.data.manifest import read_manifest
    from hfxray.duplicates import MIN_CORRELATION, PHASH_THRESHOLD, close_pairs, correlation, fingerprint
    from hfxray.imaging import DEFAULT_MAX_PIXELS

    data = Path(args.data_dir)
    rows = read_manifest(data)
    kept = [r for r in rows if r["status"] == "kept"]
    skipped = Counter(r["reason"] for r in rows if r["status"] != "kept")
    sources = sorted({r["source"] for r in kept})
    splits = ("train", "validation", "test")
    counts = {s: {split: {label: sum(1 for r in kept if (r["source"], r["split"], r["label"]) == (s, split, label))
                          for label in ("normal", "virus")} for split in splits} for s in sources}
    group_splits = defaultdict(set)
    for r in kept:
        group_splits[r["patient_group"]].add(r["split"])
    with TABLE.open(newline="") as handle:
        cohen_names = {row["filename"] for row in csv.DictReader(handle)}

    def geometry(subset):
        sizes = np.array([(int(r["width"]), int(r["height"])) for r in subset])
        return dict(images=len(subset), longer_side_max=int(sizes.max()),
                    aspect_median=float(np.median(sizes[:, 0] / sizes[:, 1])),
                    shortest_side_median=float(np.median(sizes.min(axis=1))),
                    share_224_square=float(np.mean((sizes == 224).all(axis=1))),
                    share_rgb=float(np.mean([r["mode"] == "RGB" for r in subset])))

    prints = [fingerprint(data / r["file"], DEFAULT_MAX_PIXELS) for r in kept]
    pairs = defaultdict(list)
    for i, j in close_pairs([p.phash for p in prints], PHASH_THRESHOLD):
        a, b = kept[i]["source"], kept[j]["source"]
        pairs[a if a == b else "across"].append(correlation(prints[i].thumbnail, prints[j].thumbnail))
    every = sorted((c for v in pairs.values() for c in v), reverse=True)
    return dict(
        images=len(kept), by_source={s: sum(1 for r in kept if r["source"] == s) for s in sources},
        skipped={reason: n for reason, n in sorted(skipped.items())}, splits=counts,
        split_totals={split: sum(1 for r in kept if r["split"] == split) for split in splits},
        patient_groups=len(group_splits), groups_in_two_splits=sum(1 for v in group_splits.values() if len(v) > 1),
        cohen=dict(files_listed=sum(1 for r in rows if r["source_file"] in cohen_names),
                   patient_groups_kept=sum(1 for g in group_splits if "cohen-patient:" in g),
                   groups_in_two_splits=sum(1 for g, v in group_splits.items()
                                            if "cohen-patient:" in g and len(v) > 1)),
        geometry={s: {label: geometry([r for r in kept if (r["source"], r["label"]) == (s, label)])
                      for label in ("normal", "virus")} for s in sources},
        duplicates=dict(phash_threshold=PHASH_THRESHOLD, min_correlation=MIN_CORRELATION,
                        pairs={k: len(pairs.get(k, [])) for k in [*sources, "across"]},
                        max_correlation={k: max(pairs[k]) if pairs.get(k) else None for k in [*sources, "across"]},
                        top_correlations=every[:4], merged=sum(c >= MIN_CORRELATION for c in every)))


COMMANDS = {"ece-coverage": (ece_coverage, EVIDENCE / "ece_coverage.json"),
            "proportion-edges": (proportion_edges, EVIDENCE / "proportion_edges.json"),
            "shortcut-null": (shortcut_null, EVIDENCE / "shortcut_null.json"),
            "selection-power": (selection_power, EVIDENCE / "selection_power.json"),
            "merged-pool": (merged_pool, ROOT / "docs" / "results" / "merged-pool" / "pool.json")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (function, out) in COMMANDS.items():
        sub = commands.add_parser(name, help=(function.__doc__ or name).split("\n")[0])
        sub.add_argument("--out", default=str(out), help=f"the results file (default: {out.relative_to(ROOT)})")
        if name == "ece-coverage":
            sub.add_argument("--draws", type=int, default=200, help="simulated test splits per row")
            sub.add_argument("--resamples", type=int, default=400, help="bootstrap resamples per interval")
            sub.add_argument("--seed", type=int, default=7)
        elif name == "shortcut-null":
            sub.add_argument("--draws", type=int, default=200, help="simulated null data sets")
            sub.add_argument("--seed", type=int, default=11)
        elif name == "selection-power":
            sub.add_argument("--simulations", type=int, default=POWER_SIMULATIONS, help="simulated CV runs per row")
            sub.add_argument("--seed", type=int, default=POWER_SEED)
        elif name == "merged-pool":
            sub.add_argument("--data-dir", required=True, help="a folder prepared from two sources")
    args = parser.parse_args(argv)
    function, _ = COMMANDS[args.command]
    result = function(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
