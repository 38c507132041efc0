"""`hfxray demo [--out DIR]`: the whole path offline in a few minutes (real sample when present)."""

from __future__ import annotations

import tempfile
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    parser.add_argument("--source", default=None, help="Kaggle-layout folder (default: the real sample if found, "
                                                       "else a generated set)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs per model")


def run(args) -> int:
    import os

    from . import require_positive

    require_positive(epochs=args.epochs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..demo import run_demo

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hfxray-demo-"))
    run_demo(out, Path(args.source) if args.source else None, epochs=args.epochs)
    return 0
