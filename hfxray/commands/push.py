"""`hfxray push RUN_DIR REPO_ID [--private] [--license ID] [--dry_run]`: model card + allow-listed upload
(hfxray.hub.push_run). The files are listed before anything is sent; `--dry_run` only lists them."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="--output_dir of a finished `hfxray train` run")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, owner/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private (no effect if it exists)")
    parser.add_argument("--license", default="other", dest="license_id",
                        help="Hub license id for the card (default: other; the training images' licenses are mixed)")
    parser.add_argument("--dry_run", action="store_true",
                        help="list the files that would be uploaded and stop (no Hub access, no card written)")


def _listing(run_dir, repo_id: str, files: list[str], verb: str) -> str:
    from ..hub import held_back

    return (f"{verb} {len(files)} files to https://huggingface.co/{repo_id}: {', '.join(files)} "
            f"({held_back(run_dir, files)} other files in {run_dir} stay local: checkpoints, logs, explanation maps)")


def run(args) -> int:
    from ..hub import HubError, planned_files, push_run

    if args.repo_id.count("/") != 1:
        raise HubError(f"REPO_ID {args.repo_id!r} must be owner/name. To fix: e.g. `hfxray push {args.run_dir} "
                       "your-user/xray-vit`")
    if args.dry_run:
        files = planned_files(args.run_dir)
        print(_listing(args.run_dir, args.repo_id, files, "would upload"))
        return 0
    files = push_run(args.run_dir, args.repo_id, private=args.private, license_id=args.license_id,
                     announce=lambda names: print(_listing(args.run_dir, args.repo_id, names, "uploading"),
                                                  flush=True))
    print(f"pushed {len(files)} files to https://huggingface.co/{args.repo_id}")
    return 0
