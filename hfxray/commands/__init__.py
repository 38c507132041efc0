"""One module per `hfxray` subcommand: `add_arguments(parser)` and `run(args) -> int` (see hfxray/cli.py)."""

from ..errors import HfxrayError
from ..limits import SEED_MAX


class UsageError(HfxrayError):
    """A command-line value out of its range; the message names the flag."""


def require_positive(**flags: int) -> None:
    """`require_positive(steps=args.steps)`: one line naming the first flag below 1."""
    for name, value in flags.items():
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}. To fix: pass a whole number of at least 1.")


def require_seed(**flags: int) -> None:
    """`require_seed(fold_seed=args.fold_seed)`: one line naming the first seed numpy would refuse mid-run."""
    for name, value in flags.items():
        if not 0 <= value <= SEED_MAX:
            raise UsageError(f"--{name.replace('_', '-')} {value}. To fix: pass a whole number from 0 to {SEED_MAX}.")
