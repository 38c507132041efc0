"""`hfxray report RUN_DIR... --out DIR`: the study's tables and figures from run folders."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished training run folders")
    parser.add_argument("--out", required=True, help="folder for report.md and its PNG figures")


def run(args) -> int:
    from ..report import write_report

    path = write_report(args.runs, args.out)
    print(f"report written to {path}")
    return 0
