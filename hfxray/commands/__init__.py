"""One module per `hfxray` subcommand: `add_arguments(parser)` and `run(args) -> int` (see hfxray/cli.py)."""
