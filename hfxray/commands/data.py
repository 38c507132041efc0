"""`hfxray data prepare --source DIR [--source DIR ...] [--format auto|coronahack|cohen|kermany ...]
[--test-source NAME] --out PREPARED [--val-fraction 0.15] [--test-fraction 0.15] [--seed 42]`;
`hfxray data cache [--data-dir PREPARED] [--cache-dir DIR] [--clear]`;
`hfxray data push --data-dir PREPARED --repo-id OWNER/NAME [--local DIR] [--private] [--cohen-metadata CSV]`."""

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
    push = actions.add_parser("push", help="the prepared set as a Hugging Face dataset repo (Parquet + card)")
    push.add_argument("--data-dir", required=True, help="the --out folder of `hfxray data prepare`")
    push.add_argument("--repo-id", required=True, metavar="OWNER/NAME", help="the Hub dataset repo (created if "
                      "missing); named in the card also with --local")
    push.add_argument("--local", metavar="DIR", help="write the repo into this folder instead of uploading (new, "
                      "empty, or an earlier --local output, which is replaced)")
    push.add_argument("--private", action="store_true", help="create the Hub repo private (no effect if it exists)")
    push.add_argument("--cohen-metadata", metavar="CSV", help="the Cohen collection's metadata.csv: each Cohen "
                      "image's licence is read from it (without it, those images are flagged 'not stated')")


def run(args) -> int:
    from ..data import DataError, prepare
    from ..errors import printable

    if args.action == "cache":
        from ..cache import describe

        describe(args.cache_dir, args.data_dir, clear=args.clear)
        return 0
    if args.action == "push":
        return _push(args)
    try:
        prepare(args.source, args.out, val_fraction=args.val_fraction, seed=args.seed, min_side=args.min_side,
                formats=args.format, test_source=args.test_source, test_fraction=args.test_fraction)
    except OSError as err:  # no permission, disk full, ...: still one line, never a traceback
        where = printable(str(err.filename)) if err.filename else printable(str(args.out))
        raise DataError(f"{where}: {err.strerror or err}. To fix: check that --source is readable and that --out's "
                        "folder is writable and has space.") from None
    return 0


def _push(args) -> int:
    from ..dataset_repo import push_dataset, write_local
    from ..errors import printable

    if args.local:
        marker = write_local(args.data_dir, args.local, args.repo_id, args.cohen_metadata)
        where = printable(str(args.local))
    else:
        marker = push_dataset(args.data_dir, args.repo_id, private=args.private, cohen_metadata=args.cohen_metadata)
        where = f"https://huggingface.co/datasets/{args.repo_id}"
    counts = ", ".join(f"{split} {sum(marker['counts'][split].values())}" for split in marker["splits"])
    unstated = marker["licenses"].get("not stated", 0)
    print(f"dataset repo {args.repo_id} written to {where}: {counts}"
          + (f"; {unstated} image(s) flagged with no licence stated" if unstated else ""))
    return 0
