"""`hfxray report RUN_DIR... --out DIR`: the study's tables and figures from run folders."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished training run folders")
    parser.add_argument("--out", required=True, help="folder for report.md and its PNG figures")


def run(args) -> int:
    from ..report import ReportError, write_report

    try:
        path = write_report(args.runs, args.out)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0
