"""`hfxray train ...`: the same as `scripts/train.py` (HfArgumentParser flags, recipes, YAML configs)."""


def run_argv(argv: list[str]) -> int:
    from ..workflow import main

    return main(argv, prog="hfxray train")
