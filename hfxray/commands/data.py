"""`hfxray data prepare --source KAGGLE_DIR --out PREPARED [--val-fraction 0.15] [--seed 42]`."""

from __future__ import annotations


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = actions.add_parser("prepare", help="CSV + images -> OUT/{train,validation,test}/{normal,virus}/")
    prepare.add_argument("--source", required=True, help="unzipped Kaggle CoronaHack folder (holds the metadata CSV)")
    prepare.add_argument("--out", required=True, help="output folder; replaced whole on success")
    prepare.add_argument("--val-fraction", type=float, default=0.15, help="share of TRAIN patients for validation")
    prepare.add_argument("--seed", type=int, default=42, help="seed of the patient-level validation split")
    prepare.add_argument("--min-side", type=int, default=64, help="skip images whose shorter side is below this")


def run(args) -> int:
    from ..data import prepare

    prepare(args.source, args.out, val_fraction=args.val_fraction, seed=args.seed, min_side=args.min_side)
    return 0
