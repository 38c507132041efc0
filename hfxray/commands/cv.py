"""`hfxray cv --model KIND --preset P --recipe R --data-dir PREPARED --folds 5 --out DIR [--set K=V[,V2]] [--refit]`.

Patient-grouped, class-stratified k-fold cross-validation on train + validation (the test split is never read),
resumable fold by fold; `--refit` then trains the chosen variant on all of train + validation and evaluates the test
split once. The protocol is in `hfxray/cv.py` and the README ("Recipes").
"""

from __future__ import annotations

import json
from pathlib import Path

from ..families import ADAPTERS  # the registry imports no torch: --help stays fast


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help=f"model kind ({', '.join(ADAPTERS)})")
    parser.add_argument("--preset", default="small", help="full, small or tiny (default: small)")
    parser.add_argument("--recipe", default="scratch", help="recipe name or YAML path (default: scratch)")
    parser.add_argument("--data-dir", required=True, help="prepared ImageFolder (hfxray data prepare)")
    parser.add_argument("--out", required=True, help="folder for folds.json, one folder per variant/fold, "
                                                     "cv_results.json and cv_table.md")
    parser.add_argument("--folds", type=int, default=5, help="k of the k-fold split (default: 5)")
    parser.add_argument("--repeats", type=int, default=1, help="repeat the k-fold split with other shuffles")
    parser.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment (default: 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE[,VALUE2...]",
                        help="override a recipe field or TrainingArguments flag for every variant; several "
                             "comma-separated values make a grid axis (the first grid point is the reference); commas "
                             "inside [...] stay in the value. A value with several comma-separated fields (e.g. "
                             "config_overrides 'a=1,b=2') would be a grid: put it in a --variants YAML")
    parser.add_argument("--variants", default=None, metavar="FILE.yaml",
                        help="variants to compare: a mapping of names to {flag: value} (the first is the reference); "
                             "top-level min_gain, alpha and metric fix the selection test's rule before the run "
                             "(defaults 0, 0.05, accuracy)")
    parser.add_argument("--summarise-only", action="store_true",
                        help="train no fold: summarise the folds already finished in --out (with --refit, refit "
                             "all the same; a variant without finished folds then ships no temperature)")
    parser.add_argument("--refit", nargs="?", const="", default=None, metavar="VARIANT",
                        help="after CV, train VARIANT (default: the only or first variant; 'all': every variant) on "
                             "train + validation for its fixed length, calibrate it from the out-of-fold logits, "
                             "and evaluate the test split once")


def run(args) -> int:
    from ..cv import build_variants, cross_validate, refit, refit_names
    from ..dataset_repo import resolve_data_dir
    from . import require_seed

    require_seed(fold_seed=args.fold_seed)
    args.data_dir = resolve_data_dir(args.data_dir)  # a dataset repo of `hfxray data push`, read back
    # The variant to refit is named before the folds train, so a misspelt name fails now, not after them.
    names = [] if args.refit is None else refit_names(args.refit, build_variants(args.set, args.variants)[1])
    cross_validate(args.model, args.preset, args.recipe, args.data_dir, args.out, args.folds, args.repeats,
                   args.fold_seed, args.set, args.variants, train_missing=not args.summarise_only)
    print(Path(args.out, "cv_table.md").read_text())
    for name in names:
        result = refit(args.model, args.preset, args.recipe, args.data_dir, args.out, name, args.set, args.variants)
        print(json.dumps({"refit": name, "train_runtime": result["train_runtime"], "test": result["test"],
                          "test_ci95": result["test_ci95"], "temperature_folded": result["calibration"]["folded"]}))
    return 0
