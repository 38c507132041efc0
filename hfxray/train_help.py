"""What the training entry point says to a person: `--help` (an example first, one default per flag, the value the
recipe resolves to) and the one line that answers a flag it does not know (a familiar one from transformers'
examples points to hfxray's, a misspelt one to the closest)."""

from __future__ import annotations

import argparse
import difflib
from dataclasses import fields

# transformers' image-classification example flags -> what hfxray calls them.
FAMILIAR_FLAGS = {
    "model_name_or_path": "--checkpoint FOLDER_OR_HUB_ID (with --model for the kind)",
    "train_dir": "--data-dir PREPARED (a folder written by `hfxray data prepare`)",
    "validation_dir": "--data-dir PREPARED (its validation/ split is carved by patient)",
    "dataset_name": "--data-dir PREPARED (run `hfxray data prepare --source DOWNLOAD --out PREPARED` first)",
    "dataset_config_name": "--data-dir PREPARED",
    "image_column_name": "--data-dir PREPARED (images are read from its class folders)",
    "label_column_name": "--data-dir PREPARED (labels are its class folders)",
    "train_val_split": "--data-dir PREPARED (`hfxray data prepare --val-fraction` sets the split, by patient)",
    "max_eval_samples": "--max_train_samples (evaluation always uses the whole split)",
    "ignore_mismatched_sizes": "nothing: the 2-class head is always new",
}

# Shown by --help besides hfxray's own arguments; --help_all lists every TrainingArguments field.
COMMON_TRAINER_FLAGS = ("output_dir", "num_train_epochs", "max_steps", "learning_rate", "weight_decay", "optim",
                        "optim_args", "lr_scheduler_type", "warmup_steps", "label_smoothing_factor",
                        "per_device_train_batch_size", "gradient_accumulation_steps", "max_grad_norm", "seed",
                        "bf16", "use_cpu", "report_to", "push_to_hub", "hub_model_id", "log_level")


def example_lines(prog: str) -> str:
    return (f"example:\n  {prog} --model vit --data-dir ~/data/coronahack-prepared --output-dir runs/vit-seed\n"
            f"  {prog} --model bit --preset tiny --recipe scratch --data-dir ~/data/coronahack-prepared "
            "--output-dir runs/bit-tiny   # CPU, minutes\n")


def unknown_flag_message(flag: str, known: list[str]) -> str:
    """One line for a flag no parser knows: the hfxray flag a familiar one maps to, else the closest spelling."""
    name = flag[2:].partition("=")[0] if flag.startswith("--") else flag
    if name in FAMILIAR_FLAGS:
        return (f"--{name} is a flag of transformers' examples, not of hfxray. To fix: use "
                f"{FAMILIAR_FLAGS[name]}.")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"use --{close[0]}" if close else "use a flag that --help lists"
    return f"unknown flag --{name}. To fix: {hint} (flags are not abbreviated)."


def print_help(parser_class, dataclasses, prog: str, resolved: dict, note: str, everything: bool = False) -> None:
    """`--help`: hfxray's arguments and the common Trainer flags; `--help_all`: every TrainingArguments field.

    Each flag shows one default: the value the recipe resolves to (`resolved`, for the model, recipe and preset
    on the command line) where there is one, else the field's own.
    """
    from transformers import TrainingArguments


    usage = f"{prog} [--model KIND] [--preset P] [--recipe R] --data-dir PREPARED --output-dir OUT [FLAGS]"
    parser = parser_class(dataclasses if everything else dataclasses[:4], prog=prog, allow_abbrev=False, usage=usage,
                          formatter_class=_Formatter, description=note,
                          epilog=None if everything else "--help_all lists every TrainingArguments flag.")
    if not everything:
        group = parser.add_argument_group("common TrainingArguments flags (all of them: --help_all)")
        for item in fields(TrainingArguments):
            if item.name in COMMON_TRAINER_FLAGS:
                text = " ".join(str(item.metadata.get("help", "")).split())
                text = text.split(". ")[0].split(" (default")[0][:150].rstrip(".")
                group.add_argument(f"--{item.name}", help=text.replace("%", "%%") + ".", default=item.default)
    for action in parser._actions:
        if action.dest in resolved:
            action.default = resolved[action.dest]
        if any(option.startswith("--no_") for option in action.option_strings):
            name = action.dest
            action.help = f"Turn --{name} off (the same as --{name} false)."
            action.default = argparse.SUPPRESS
    print(example_lines(prog))
    parser.print_help()


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Examples keep their lines; each flag shows its default once."""
