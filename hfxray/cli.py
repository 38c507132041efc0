"""`hfxray data|train|evaluate|report|explain|predict|push|demo|serve|cv`: a thin dispatcher with lazy imports.

Each subcommand lives in its own module, which exposes `add_arguments(parser)` and `run(args) -> int`; the
modules import torch/transformers only inside `run`, so `hfxray --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import HfxrayError, printable
from .logs import configure

# subcommand -> (module, one-line help)
COMMANDS = {
    "data": ("hfxray.commands.data", "prepare the Kaggle CoronaHack download as a binary ImageFolder"),
    "train": ("hfxray.commands.train", "fine-tune a model (same flags as scripts/train.py)"),
    "evaluate": ("hfxray.commands.evaluate", "metrics with confidence intervals and calibration for a model"),
    "report": ("hfxray.commands.report", "the study's tables and figures from run folders"),
    "explain": ("hfxray.commands.explain", "Grad-CAM, attention rollout and activation maximization"),
    "predict": ("hfxray.commands.predict", "batch prediction on files and folders"),
    "push": ("hfxray.commands.push", "upload a trained run folder to the Hugging Face Hub"),
    "demo": ("hfxray.commands.demo", "the whole path offline on the sample data, in minutes"),
    "serve": ("hfxray.commands.serve", "a web page (Gradio) that shows each model's answer and explanation"),
    "cv": ("hfxray.commands.cv", "patient-grouped cross-validation on train + validation, and the refit"),
    "ood": ("hfxray.commands.ood", "fit a run's out-of-distribution check on its training split (older runs)"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; any HfxrayError becomes one `error: ...` line and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = False
    while argv and argv[0] in ("-q", "--quiet"):
        quiet, argv = True, argv[1:]
    configure("WARNING" if quiet else "INFO", quiet=quiet)
    try:
        return _dispatch(argv)
    except HfxrayError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2


def _dispatch(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hfxray", description=__doc__.splitlines()[0],
                                     epilog="-q / --quiet before the command: warnings and errors only.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    if name == "train":  # HfArgumentParser owns the train flags
        return module.run_argv(argv[1:])
    command_parser = argparse.ArgumentParser(prog=f"hfxray {name}", description=COMMANDS[name][1])
    module.add_arguments(command_parser)
    return module.run(command_parser.parse_args(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
