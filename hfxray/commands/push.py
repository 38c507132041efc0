"""`hfxray push RUN_DIR REPO_ID [--private] [--license ID]`: model card + curated upload (hfxray.hub.push_run)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="--output_dir of a finished `hfxray train` run")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, owner/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private (no effect if it exists)")
    parser.add_argument("--license", default="other", dest="license_id",
                        help="Hub license id for the card (default: other; the training images' licenses are mixed)")


def run(args) -> int:
    from ..hub import HubError, push_run

    if args.repo_id.count("/") != 1:
        raise HubError(f"REPO_ID {args.repo_id!r} must be owner/name. To fix: e.g. `hfxray push {args.run_dir} "
                       "your-user/xray-vit`")
    files = push_run(args.run_dir, args.repo_id, private=args.private, license_id=args.license_id)
    print(f"pushed {len(files)} files to https://huggingface.co/{args.repo_id}: {', '.join(files)}")
    return 0
