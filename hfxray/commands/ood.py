"""`hfxray ood --model RUN --data-dir PREPARED [--split train ...]`: fit (or refit) a run's out-of-distribution check.

Training runs fit it at their end; this command gives one to a run trained before the check existed, or refits it.
It writes RUN/ood.json and RUN/ood.safetensors (`hfxray.scope`), read by predict, explain and serve.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="RUN", help="trained run folder (written into)")
    parser.add_argument("--data-dir", required=True, help="the prepared ImageFolder the run was trained on")
    parser.add_argument("--split", action="append", choices=["train", "validation"], default=None,
                        help="split(s) the model was trained on (default: train; repeat for a cv refit, which "
                             "trained on train and validation)")


def run(args) -> int:
    from pathlib import Path

    from ..data import check_prepared
    from ..dataset_repo import resolve_data_dir
    from ..models import load_trained
    from ..scope import OOD_JSON, fit_ood_run
    from . import UsageError

    args.data_dir = resolve_data_dir(args.data_dir)  # a dataset repo from `hfxray data push`, as train reads it
    check_prepared(args.data_dir)
    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model} is not a local run folder. To fix: pass the folder `hfxray train` "
                         "wrote (the check is saved into it)")
    model, processor = load_trained(args.model)
    splits = args.split or ["train"]
    check = fit_ood_run(args.model, args.data_dir, model, processor, splits=splits)
    validation = check.info.get("validation_flagged")
    checked = (f"; flags {validation['flagged']} of {validation['n']} validation images (about 1 % expected)"
               if validation else "")
    print(f"out-of-distribution check fitted on {' + '.join(splits)} ({check.info['n_images']} images), threshold "
          f"{check.threshold:.3f}{checked} -> {Path(args.model) / OOD_JSON}")
    return 0
