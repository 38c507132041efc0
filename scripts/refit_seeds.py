"""The test figures of one recipe's refits with several training seeds, side by side, with their mean and sd.

    python scripts/refit_seeds.py --refit 42=MERGED_CV/today/refit --refit 1=SEED1_CV/today/refit ... --out seeds.json

Reads each refit folder's `test_results.json` (what `hfxray cv --refit` wrote) and keeps, per seed, the test
accuracy and AUROC with their 95 % intervals, each source's accuracy, and the source shortcut check's separation
among normal images with its interval and permutation p. The mean and sd over the seeds say how much the test
figures move with the training seed alone (same recipe, same images). Accuracy and AUROC do not depend on the
temperature (a refit without out-of-fold logits ships none); the ECE does, so it is not compared here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def seed_row(report: dict) -> dict:
    """The figures of one refit's test report (keys with or without the `test_` prefix)."""
    report = {key.removeprefix("test_"): value for key, value in report.items()}
    normal = {row["class"]: row for row in report["source_shortcut"]["by_class"]}.get("normal", {})
    return dict(n=report["n"], accuracy=report["accuracy"], accuracy_ci95=report["ci95"]["accuracy"],
                auroc=report["auroc"], auroc_ci95=report["ci95"]["auroc"],
                accuracy_by_source={name: part["accuracy"] for name, part in report["by_source"].items()},
                normal_separation=normal.get("separation"), normal_separation_ci95=normal.get("separation_ci95"),
                normal_permutation_p=normal.get("permutation_p"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refit", action="append", required=True, metavar="SEED=DIR",
                        help="a training seed and the refit folder it trained (repeat for each seed)")
    parser.add_argument("--out", required=True, help="write the table as JSON here")
    args = parser.parse_args(argv)
    seeds = {}
    for item in args.refit:
        seed, _, folder = item.partition("=")
        path = Path(folder) / "test_results.json"
        if not seed or not path.is_file():
            print(f"error: --refit {item!r}: expected SEED=DIR with DIR/test_results.json. To fix: name the refit "
                  "folder `hfxray cv --refit` wrote (OUT/VARIANT/refit).", file=sys.stderr)
            return 2
        seeds[seed] = seed_row(json.loads(path.read_text()))
    summary = {key: dict(mean=statistics.mean(r[key] for r in seeds.values()),
                         sd=statistics.stdev(r[key] for r in seeds.values()) if len(seeds) > 1 else None)
               for key in ("accuracy", "auroc", "normal_separation")}
    Path(args.out).write_text(json.dumps(dict(seeds=seeds, over_seeds=summary), indent=1) + "\n")
    for seed, row in seeds.items():
        print(f"seed {seed}: accuracy {row['accuracy']:.3f}, AUROC {row['auroc']:.3f}, "
              f"normal separation {row['normal_separation']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
