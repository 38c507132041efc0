"""`hfxray data prepare --source DIR [--source DIR ...] [--format auto|coronahack|cohen|kermany ...]
[--test-source NAME] --out PREPARED [--val-fraction 0.15] [--test-fraction 0.15] [--seed 42]`;
`hfxray data cache [--data-dir PREPARED] [--cache-dir DIR] [--clear]`."""

from __future__ import annotations


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = actions.add_parser("prepare", help="CSV + images -> OUT/{train,validation,test}/{normal,virus}/",
                                 example="hfxray data prepare --source ~/data/coronahack "
                                         "--out ~/data/coronahack-prepared",
                                 description="Write a binary ImageFolder split by patient, with a manifest of every "
                                             "kept and skipped image.")
    prepare.add_argument("--source", required=True, action="append", metavar="DIR",
                         help="source folder: Kaggle CoronaHack, Cohen collection or Kermany chest_xray; repeat to "
                              "merge several sources into one patient-level set")
    prepare.add_argument("--format", action="append", default=None, metavar="FORMAT",
                         choices=["auto", "coronahack", "cohen", "kermany"],
                         help="layout of each --source, in the same order, or one for all (default: auto, detected)")
    prepare.add_argument("--test-source", default=None, metavar="NAME",
                         help="hold this source out entirely as the test split (external validation); NAME is the "
                              "format, or the folder name when two sources share a format")
    prepare.add_argument("--test-fraction", type=float, default=0.15,
                         help="share of patients carved into test for a source without its own test split (Cohen)")
    prepare.add_argument("--out", required=True, help="output folder outside --source; an earlier output of this "
                         "command is replaced whole on success, any other non-empty folder is refused")
    prepare.add_argument("--val-fraction", type=float, default=0.15, help="share of TRAIN patients for validation")
    prepare.add_argument("--seed", type=int, default=42, help="seed of the patient-level validation split")
    prepare.add_argument("--min-side", type=int, default=64, help="skip images whose shorter side is below this")
    cache = actions.add_parser("cache", help="show (or --clear) the decoded images cached for training",
                               example="hfxray data cache --data-dir ~/data/coronahack-prepared",
                               description="Show (or --clear) the decoded images cached for training.")
    cache.add_argument("--data-dir", help="only the entries of this prepared folder (default: all)")
    cache.add_argument("--cache-dir", help="the cache's parent folder (default: HF_DATASETS_CACHE)")
    cache.add_argument("--clear", action="store_true", help="delete the entries shown")


def run(args) -> int:
    from ..data import DataError, prepare
    from ..errors import printable

    if args.action == "cache":
        from ..cache import describe

        describe(args.cache_dir, args.data_dir, clear=args.clear)
        return 0
    try:
        prepare(args.source, args.out, val_fraction=args.val_fraction, seed=args.seed, min_side=args.min_side,
                formats=args.format, test_source=args.test_source, test_fraction=args.test_fraction)
    except OSError as err:  # no permission, disk full, ...: still one line, never a traceback
        where = printable(str(err.filename)) if err.filename else printable(str(args.out))
        raise DataError(f"{where}: {err.strerror or err}. To fix: check that --source is readable and that --out's "
                        "folder is writable and has space.") from None
    return 0
