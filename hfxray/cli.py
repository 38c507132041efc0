"""Fine-tune and explain chest X-ray classifiers (normal vs virus) with the Hugging Face stack.

Each subcommand lives in its own module (`hfxray/commands/`), which exposes `add_arguments(parser)` and
`run(args) -> int` and imports torch only inside `run`, so `hfxray --help` answers at once.
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
# One example per command: the first thing `hfxray --help` and `hfxray COMMAND --help` show.
EXAMPLES = {
    "data": "hfxray data prepare --source ~/data/coronahack --out ~/data/coronahack-prepared",
    "train": "hfxray train --model bit --preset tiny --recipe scratch --data-dir ~/data/coronahack-prepared "
             "--output-dir runs/quick-bit",
    "evaluate": "hfxray evaluate --model runs/quick-bit --data-dir ~/data/coronahack-prepared",
    "report": "hfxray report runs/vit-seed runs/bit-paper --out report/",
    "explain": "hfxray explain --model runs/quick-bit --method gradcam --out maps/ "
               "~/data/coronahack-prepared/test/virus",
    "predict": "hfxray predict --model runs/quick-bit ~/data/coronahack-prepared/test --out predictions.csv",
    "push": "hfxray push runs/quick-bit your-name/hfxray-bit",
    "demo": "hfxray demo --out /tmp/hfxray-demo",
    "serve": "hfxray serve --model runs/quick-bit",
    "ood": "hfxray ood --model runs/quick-bit --data-dir ~/data/coronahack-prepared",
    "cv": "hfxray cv --model bit --preset small --recipe scratch --data-dir ~/data/coronahack-prepared --folds 5 "
          "--out cv/bit",
}


class Parser(argparse.ArgumentParser):
    """No abbreviated flags (`--fold` is refused, not read as `--folds`); a usage mistake is one `error:` line."""

    def __init__(self, *args, example: str | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})
        self.example = example

    def format_help(self) -> str:
        """The example first, then argparse's usage and flags."""
        return (f"example:\n  {self.example}\n\n" if self.example else "") + super().format_help()

    def error(self, message: str):
        from .commands import UsageError

        # argparse quotes what was given; a value with a newline or control character must not break the line
        raise UsageError(f"{self.prog}: {printable(message)}. To fix: see `{self.prog} --help`.")




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
    except KeyboardInterrupt as err:
        # Ctrl+C, or SIGTERM / SIGHUP in `serve` (hfxray.serve_files raises this for them), before the command
        # finished, e.g. while models load: one line and the shell's 128 + SIGINT status, not a traceback.
        print(f"interrupted{f' ({printable(str(err))})' if str(err) else ''}", file=sys.stderr)
        return 130


def _dispatch(argv: list[str]) -> int:
    examples = "\n".join(f"  {EXAMPLES[name]}" for name in COMMANDS)
    parser = Parser(prog="hfxray", description=__doc__.splitlines()[0],
                    epilog=f"examples (a quick start in this order: data, train, evaluate, explain, serve):\n"
                           f"{examples}\n\n`hfxray COMMAND --help` for a command's flags; -q / --quiet before the "
                           "command: warnings, errors and results only.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        parser.parse_args(argv)  # one error line naming the choices
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    if name == "train":  # HfArgumentParser owns the train flags
        return module.run_argv(argv[1:])
    command_parser = Parser(prog=f"hfxray {name}", description=COMMANDS[name][1], example=EXAMPLES[name])
    module.add_arguments(command_parser)
    return module.run(command_parser.parse_args(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
