"""Training arguments: typed dataclasses for HfArgumentParser, recipe and config YAML, validation.

Precedence: dataclass defaults < recipe (`configs/recipes/{model}-{recipe}.yaml`) < `--config FILE.yaml`
< command-line flags. Everything is validated before any model or data work starts.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .data import DataError, check_prepared
from .errors import HfxrayError
from .models import MODEL_NAMES, PRESETS
from .recipes import OPTIMIZERS, SCHEDULES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
RECIPES = ("seed", "paper", "scratch")
# Models that share recipe files: the hybrid is fine-tuned as ViT is (the study and ViT's paper did so).
RECIPE_FAMILY = {"bit_in1k": "bit", "hybrid": "vit"}


class ConfigError(HfxrayError):
    """A bad flag or YAML value; the message says what to change."""


@dataclass
class ModelArguments:
    model: str = field(default="vit", metadata={"help": f"Model kind: {', '.join(MODEL_NAMES)}."})
    preset: str = field(default="full", metadata={
        "help": f"{', '.join(PRESETS)}: pretrained ImageNet-21k weights, a small random model (from-scratch "
                "control), or a tiny random model (tests/demo)."})
    checkpoint: str | None = field(default=None, metadata={
        "help": "Local folder or Hub id replacing the registry's pretrained weights (full preset)."})


@dataclass
class DataArguments:
    data_dir: str | None = field(default=None, metadata={
        "help": "Prepared ImageFolder from `hfxray data prepare` (train/, validation/, test/, manifest.csv)."})
    max_train_samples: int | None = field(default=None, metadata={
        "help": "Use only the first N training images (quick experiments and tests)."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "Where decoded images are cached (default: the datasets cache, HF_DATASETS_CACHE); see "
                "`hfxray data cache`."})


@dataclass
class RecipeArguments:
    recipe: str = field(default="seed", metadata={
        "help": f"Recipe name ({', '.join(RECIPES)}) read from configs/recipes/, or a YAML file path."})
    optimizer: str = field(default="sgd", metadata={"help": f"One of {', '.join(OPTIMIZERS)}."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum for SGD."})
    schedule: str = field(default="warmup_constant", metadata={
        "help": f"Learning-rate schedule: {', '.join(SCHEDULES)} (formulas in hfxray/recipes.py)."})
    warmup_epochs: float = field(default=0.0, metadata={
        "help": "Warm-up length in epochs; used when --warmup_steps is 0."})
    lr_decay_gamma: float = field(default=0.9, metadata={"help": "Per-epoch factor of exponential_epoch."})
    lr_milestones: list[int] = field(default_factory=list, metadata={
        "help": "Steps after which bit_hyperrule divides the learning rate by 10."})
    onecycle_pct_start: float = field(default=0.3, metadata={"help": "Fraction of steps rising, for onecycle."})
    label_smoothing: float = field(default=0.0, metadata={"help": "alpha of the label-smoothing loss (0: plain CE)."})
    image_size: int | None = field(default=None, metadata={
        "help": "Crop size fed to the model (default: the preset's: 224 full, 128 small, 64 tiny)."})
    resize_size: int | None = field(default=None, metadata={
        "help": "Shortest edge before cropping (default: the crop size)."})
    max_zoom: float = field(default=1.0, metadata={"help": "Training augmentation: random zoom in [1, max_zoom]."})
    hflip: bool = field(default=False, metadata={"help": "Training augmentation: random horizontal flips."})
    bit_hyperrule: bool = field(default=False, metadata={
        "help": "Derive the schedule length, warm-up, decay steps, resolution and learning rate from the prepared "
                "data with BiT-HyperRule (hfxray/recipes.py); explicit flags still win."})
    average_last_epochs: int = field(default=0, metadata={
        "help": "Final model = the average of the last N epoch checkpoints' weights (stochastic weight averaging "
                "over the end of the schedule); 0 or 1 keeps the usual final/best model."})


@dataclass
class RunArguments:
    config: str | None = field(default=None, metadata={"help": "YAML file whose keys stand in for flags."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in --output_dir."})
    calibrate: bool = field(default=True, metadata={
        "help": "Fold the temperature fitted on the validation split into the saved head, so `pipeline` "
                "probabilities are calibrated (accuracy and AUROC do not change)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start over in an --output_dir that already holds checkpoints."})


# Trainer settings that differ from transformers' defaults for this project; recipes and flags override them.
TRAINING_DEFAULTS = dict(
    eval_strategy="epoch",
    save_strategy="epoch",
    logging_strategy="steps",
    logging_steps=10,
    load_best_model_at_end=True,
    metric_for_best_model="accuracy",
    greater_is_better=True,
    save_total_limit=2,
    report_to=["tensorboard"],
    remove_unused_columns=False,
    dataloader_num_workers=0,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
)


def _dataclasses():
    from transformers import TrainingArguments

    return (ModelArguments, DataArguments, RecipeArguments, RunArguments, TrainingArguments)


def _normalise_flags(argv: list[str]) -> list[str]:
    """Accept `--output-dir` as well as `--output_dir` (transformers only knows the underscore spelling)."""
    normalised = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + sep + value
        normalised.append(token)
    return normalised


def recipe_path(model: str, recipe: str) -> Path:
    """configs/recipes/{model}-{recipe}.yaml, else configs/recipes/{recipe}.yaml, else `recipe` as a path."""
    if recipe.endswith((".yaml", ".yml")):
        path = Path(recipe)
    else:
        path = CONFIG_DIR / "recipes" / f"{RECIPE_FAMILY.get(model, model)}-{recipe}.yaml"
        if not path.is_file():
            path = CONFIG_DIR / "recipes" / f"{recipe}.yaml"
    if not path.is_file():
        raise ConfigError(f"recipe {recipe!r} for model {model!r}: {path} not found. To fix: use --recipe "
                          f"{'|'.join(RECIPES)} or the path of a recipe YAML")
    return path


def _read_yaml(path: Path, known: set[str]) -> dict:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read YAML ({err}). To fix: correct the file.") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of argument names to values.")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}. To fix: use argument names as listed by "
                          "`scripts/train.py --help` (with underscores).")
    return values


def _hyperrule_values(data_dir: str | None, batch_size: int) -> dict:
    """BiT-HyperRule's data-dependent settings for the prepared folder (hfxray/recipes.py holds the rule)."""
    from statistics import median

    from .data import read_manifest
    from .recipes import bit_hyperrule_lr, bit_hyperrule_resolution, bit_hyperrule_steps

    if not data_dir:
        return {}  # validate() reports the missing --data_dir
    try:
        rows = [row for row in read_manifest(data_dir) if row["status"] == "kept" and row["split"] == "train"]
    except (OSError, DataError):
        return {}  # validate() reports the unprepared folder
    sizes = [(int(row["width"]), int(row["height"])) for row in rows
             if str(row.get("width", "")).isdigit() and str(row.get("height", "")).isdigit()]
    warmup, milestones, steps = bit_hyperrule_steps(len(rows))
    values = dict(warmup_steps=warmup, lr_milestones=list(milestones), max_steps=steps,
                  learning_rate=bit_hyperrule_lr(batch_size))
    if sizes:
        resize, crop = bit_hyperrule_resolution(median(w for w, _ in sizes), median(h for _, h in sizes))
        values.update(resize_size=resize, image_size=crop)
    return values


def parse_args(argv: list[str] | None = None):
    """(model, data, recipe, run, training) arguments from flags, recipe YAML and --config YAML."""
    import argparse

    from transformers import HfArgumentParser

    argv = _normalise_flags(list(sys.argv[1:] if argv is None else argv))
    parser = HfArgumentParser(_dataclasses())
    known = {f.name for dc in _dataclasses() for f in fields(dc) if f.init}
    pre = argparse.ArgumentParser(add_help=False)
    for name in ("config", "model", "recipe"):
        pre.add_argument(f"--{name}")
    early, _ = pre.parse_known_args(argv)
    config_values = _read_yaml(Path(early.config), known) if early.config else {}
    model = early.model or config_values.get("model", ModelArguments.model)
    recipe = early.recipe or config_values.get("recipe", RecipeArguments.recipe)
    recipe_values = _read_yaml(recipe_path(model, recipe), known)
    if recipe_values.get("bit_hyperrule") or config_values.get("bit_hyperrule"):
        pre.add_argument("--data_dir")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            pre.add_argument(f"--{name}", type=int)
        data_dir = pre.parse_known_args(argv)[0].data_dir or config_values.get("data_dir")
        batch = ((pre.parse_known_args(argv)[0].per_device_train_batch_size
                  or config_values.get("per_device_train_batch_size")
                  or recipe_values.get("per_device_train_batch_size") or 1)
                 * (pre.parse_known_args(argv)[0].gradient_accumulation_steps
                    or config_values.get("gradient_accumulation_steps")
                    or recipe_values.get("gradient_accumulation_steps") or 1))
        recipe_values.update(_hyperrule_values(data_dir, batch))
    parser.set_defaults(**{**TRAINING_DEFAULTS, **recipe_values, **config_values})
    try:
        model_args, data_args, recipe_args, run_args, training_args = parser.parse_args_into_dataclasses(argv)
    except ValueError as err:  # TrainingArguments.__post_init__ checks (e.g. bf16 without a GPU): no traceback
        raise ConfigError(f"{str(err).strip()} (from transformers' TrainingArguments). To fix: change the flag "
                          "it names.") from None
    validate(model_args, data_args, recipe_args, training_args)
    return model_args, data_args, recipe_args, run_args, training_args


def validate(model_args, data_args, recipe_args, training_args) -> None:
    """Fail before any model or data work, with what to change."""
    if model_args.model not in MODEL_NAMES:
        raise ConfigError(f"--model {model_args.model!r} is unknown. To fix: use one of {', '.join(MODEL_NAMES)}")
    if model_args.preset not in PRESETS:
        raise ConfigError(f"--preset {model_args.preset!r} is unknown. To fix: use one of {', '.join(PRESETS)}")
    if recipe_args.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {recipe_args.optimizer!r}. To fix: use one of {', '.join(OPTIMIZERS)}")
    if recipe_args.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule {recipe_args.schedule!r}. To fix: use one of {', '.join(SCHEDULES)}")
    if not 0.0 <= recipe_args.label_smoothing < 1.0:
        raise ConfigError(f"--label_smoothing {recipe_args.label_smoothing} must lie in [0, 1).")
    if recipe_args.max_zoom < 1.0:
        raise ConfigError(f"--max_zoom {recipe_args.max_zoom} must be >= 1 (1 = no zoom).")
    if data_args.data_dir is None:
        raise ConfigError("--data_dir is required. To fix: run `hfxray data prepare --source KAGGLE_DIR --out "
                          "PREPARED` and pass --data_dir PREPARED")
    try:
        check_prepared(data_args.data_dir)
    except DataError as err:
        raise ConfigError(str(err)) from None
    if recipe_args.resize_size and recipe_args.image_size and recipe_args.resize_size < recipe_args.image_size:
        raise ConfigError(f"--resize_size {recipe_args.resize_size} is smaller than --image_size "
                          f"{recipe_args.image_size}. To fix: resize to at least the crop size.")
    if recipe_args.average_last_epochs > 1:
        if training_args.load_best_model_at_end or training_args.save_strategy != "epoch":
            raise ConfigError("--average_last_epochs averages the last epoch checkpoints. To fix: also pass "
                              "--load_best_model_at_end false --save_strategy epoch")
        limit = training_args.save_total_limit
        if limit is not None and limit <= recipe_args.average_last_epochs:
            raise ConfigError(f"--save_total_limit {limit} would delete checkpoints that "
                              f"--average_last_epochs {recipe_args.average_last_epochs} needs. To fix: raise it "
                              f"above {recipe_args.average_last_epochs}")
    if training_args.eval_strategy != training_args.save_strategy and training_args.load_best_model_at_end:
        raise ConfigError("load_best_model_at_end needs --eval_strategy equal to --save_strategy.")


def resolved_config(*argument_sets) -> dict:
    """All arguments as plain data (the Hub token masked by TrainingArguments.to_dict)."""
    resolved = {}
    for arguments in argument_sets:
        resolved.update(arguments.to_dict() if hasattr(arguments, "to_dict") else asdict(arguments))
    return resolved
