"""Training arguments: typed dataclasses for HfArgumentParser, recipe and config YAML, validation.

Precedence: dataclass defaults < recipe (`configs/recipes/{family}-{recipe}.yaml`, found by name: the recipes are
the files there, and each family names its default) < `--config FILE.yaml`
< command-line flags. A recipe sets TrainingArguments fields wherever the Trainer has one (`optim`, `optim_args`,
`lr_scheduler_type`, `warmup_steps`, `label_smoothing_factor`, ...); hfxray's own fields are only what the Trainer
lacks (its extra schedules, augmentation, weight averaging). Everything is validated before any model or data
work starts.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .data import DataError, check_prepared
from .dataset_repo import resolve_data_dir
from .errors import HfxrayError, excerpt, printable
from .families import ADAPTERS, adapter_for_name, model_names
from .models import PRESETS, RESIZE_MODES
from .recipes import SCHEDULES, TRAINER_SCHEDULE
from .runs import RunConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
RECIPE_DIR = CONFIG_DIR / "recipes"
# Recipes that fine-tune pretrained weights. From random weights (--preset small/tiny) they learn nothing: bit.tiny
# with `paper` (SGD at 0.003 x 32/512 for 500 steps) ended at test AUROC 0.547, specificity 0.067.
FINE_TUNING_RECIPES = ("paper",)


class ConfigError(HfxrayError):
    """A bad flag or YAML value; the message says what to change."""


@dataclass
class ModelArguments:
    model: str = field(default="vit", metadata={"help": f"Model kind: {', '.join(model_names())}."})
    preset: str = field(default="full", metadata={
        "help": f"{', '.join(PRESETS)}: the family's pretrained weights from the Hub (docs/families.md), a small "
                "random model (from-scratch control), or a tiny random model (tests/demo)."})
    checkpoint: str | None = field(default=None, metadata={
        "help": "Local folder or Hub id replacing the registry's pretrained weights (full preset)."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Change a from-scratch model's architecture (small/tiny presets), as transformers' examples do: "
                "KEY=VALUE pairs of its config, comma-separated, values as JSON, e.g. "
                + "; ".join(f"{family.override_example} ({family.name})" for family in ADAPTERS.values()) + "."})


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
    recipe: str | None = field(default=None, metadata={
        "help": "Recipe name read from configs/recipes/ (<family>-<name>.yaml, else <name>.yaml), or a YAML file "
                "path. Default: the model family's ("
                + ", ".join(f"{family.name}: {family.default_recipe}" for family in ADAPTERS.values()) + ")."})
    schedule: str = field(default=TRAINER_SCHEDULE, metadata={
        "help": f"Learning-rate schedule: '{TRAINER_SCHEDULE}' uses the Trainer's --lr_scheduler_type and "
                f"--warmup_steps; {', '.join(SCHEDULES)} are hfxray's (formulas in hfxray/recipes.py). An explicit "
                "--lr_scheduler_type selects the Trainer's."})
    lr_decay_gamma: float = field(default=0.9, metadata={"help": "Per-epoch factor of exponential_epoch."})
    lr_milestones: list[int] = field(default_factory=list, metadata={
        "help": "Steps after which bit_hyperrule divides the learning rate by 10."})
    onecycle_pct_start: float = field(default=0.3, metadata={"help": "Fraction of steps rising, for onecycle."})
    image_size: int | None = field(default=None, metadata={
        "help": "Crop size fed to the model (default: the recipe's, at most 128 px for the random-init presets "
                "small and tiny)."})
    resize_size: int | None = field(default=None, metadata={
        "help": "Shortest edge before cropping (default: the recipe's; with --image_size, the recipe's resize:crop "
                "ratio applied to it)."})
    resize_mode: str = field(default="shortest_edge", metadata={
        "help": "How images are resized to --resize_size before the crop, in training and in the saved processor "
                "alike: shortest_edge keeps the aspect; square resizes every image to a square, aspect not kept "
                "(removes the geometry difference between sources stored squashed and not; docs/training.md)."})
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


# The largest batch (images per optimizer step) a recipe keeps at the small and tiny presets.
MAX_SMALL_BATCH = 32
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


# TrainingArguments fields that belong together: an explicit flag for one resets the recipe's values of the others
# (a recipe's SGD momentum means nothing to --optim adafactor; a recipe's warm-up ratio would otherwise survive an
# explicit --warmup_steps 0). See `_apply_explicit`.
COUPLED_FIELDS = {"optim": ("optim_args",), "lr_scheduler_type": ("lr_scheduler_kwargs",)}
# Reporting integrations and the package each needs (a missing one is refused before any work).
REPORT_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                   "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive", "swanlab": "swanlab",
                   "trackio": "trackio", "azure_ml": "azureml.core", "codecarbon": "codecarbon"}


def _dataclasses():
    from transformers import TrainingArguments

    return (ModelArguments, DataArguments, RecipeArguments, RunArguments, TrainingArguments)


def _parser_class():
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        """argparse's errors become ConfigError: one line, no 600-line usage dump."""

        def error(self, message: str):
            raise ConfigError(f"{printable(message)}. To fix: see `{self.prog} --help`.")  # one line, any value

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{"allow_abbrev": False, **kwargs})  # --learning_rat is refused, not guessed

    return Parser


def _given(argv: list[str]) -> dict:
    """The arguments the command line sets, by name and typed, as the run's own HfArgumentParser reads them (either
    spelling, `--name=value`, no abbreviations), and nothing else: what the early look-ups (config, model, recipe,
    preset) and the explicit-flag precedence read before the full parse."""
    import argparse

    parser = _parser_class()(_dataclasses(), add_help=False)  # --help is answered by `_help`
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # an argument not on the command line stays out of the namespace
    return vars(parser.parse_known_args(argv)[0])


def _recipe_prefix(model: str) -> str:
    """The prefix of a model's recipe files: its family's (the hybrid shares ViT's, bit_in1k BiT's)."""
    family = adapter_for_name(model)
    return family.recipes_prefix if family else model


def available_recipes(model: str) -> list[str]:
    """Recipe names `--recipe` accepts for `model`: its family's files, then the ones every family shares."""
    prefixes = {family.recipes_prefix for family in ADAPTERS.values()}
    stems = sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))
    own = [stem.partition("-")[2] for stem in stems if stem.startswith(f"{_recipe_prefix(model)}-")]
    shared = [stem for stem in stems if not any(stem.startswith(f"{prefix}-") for prefix in prefixes)]
    return own + [name for name in shared if name not in own]


def default_recipe(model: str) -> str:
    """The recipe a model trains with when --recipe is not given: its family's default."""
    family = adapter_for_name(model)
    if family is None:
        raise ConfigError(f"unknown model {model!r}. To fix: choose one of {', '.join(model_names())}")
    return family.default_recipe


def _refuse_unknown_flags(parser, argv: list[str]) -> None:
    """A flag no dataclass defines: one line, pointing a familiar transformers-example flag to hfxray's."""
    from .train_help import unknown_flag_message

    _, remaining = parser.parse_known_args(argv)
    unknown = [token for token in remaining if token.startswith("--")]
    if unknown:
        known = [option[2:] for action in parser._actions for option in action.option_strings
                 if option.startswith("--")]
        raise ConfigError(unknown_flag_message(unknown[0], known))


def _is_file(path: Path) -> bool:
    try:  # a name too long for the file system, or with a NUL byte, names no file rather than raising
        return path.is_file()
    except (OSError, ValueError):
        return False


def recipe_path(model: str, recipe: str) -> Path:
    """configs/recipes/{family}-{recipe}.yaml, else configs/recipes/{recipe}.yaml, else `recipe` as a path."""
    if recipe.endswith((".yaml", ".yml")):
        path = Path(recipe)
    else:
        path = RECIPE_DIR / f"{_recipe_prefix(model)}-{recipe}.yaml"
        if not _is_file(path):
            path = RECIPE_DIR / f"{recipe}.yaml"
    if not _is_file(path):
        raise ConfigError(f"recipe {recipe!r} for model {model!r}: {path} not found. To fix: use --recipe "
                          f"{'|'.join(available_recipes(model))} or the path of a recipe YAML")
    return path


def _field_types() -> dict[str, str]:
    """Argument name -> its annotation as text (`float`, `int | None`, `Optional[str]`, ...)."""
    types = {}
    for dataclass_type in _dataclasses():
        for item in fields(dataclass_type):
            if item.init:
                annotation = item.type
                types[item.name] = (annotation.__name__ if isinstance(annotation, type)
                                    else str(annotation).replace("typing.", ""))
    return types


def _check_value(path: Path, key: str, value, annotation: str):
    """A YAML value of the field's type (ints accepted for floats), or ConfigError naming the key."""
    optional = "None" in annotation or "Optional" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path}: {key} is null, but it needs a value. To fix: give {key} a value or delete it.")
    kinds = [("bool", bool), ("int", int), ("float", (int, float)), ("str", str)]
    base = annotation.replace("Optional[", "").replace(" | None", "").strip("]").strip()
    if base.startswith("list") or base.startswith("List"):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {key} must be a list, not {value!r}. To fix: write it as [a, b, ...].")
        return value
    for name, python_type in kinds:
        if base == name:
            if isinstance(value, bool) and name != "bool" or not isinstance(value, python_type):
                raise ConfigError(f"{path}: {key} must be a {name}, not {value!r}. To fix: write a single {name} "
                                  "value.")
            return float(value) if name == "float" else value
    return value  # unions, enums, dicts: TrainingArguments validates them itself


def _read_yaml(path: Path, known: dict[str, str]) -> dict:
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read YAML ({excerpt(err, 200)}). To fix: correct the "
                          "file.") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of argument names to values. To fix: write `name: value` "
                          "lines.")
    # Checked here, not by HfArgumentParser.parse_dict(allow_extra_keys=False): a YAML file is one layer of three
    # (recipe < --config < flags) merged before the one parse that builds the dataclasses, and parse_dict would
    # build them from this layer alone.
    unknown = sorted(set(map(str, values)) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}. To fix: use argument names as listed by "
                          "`scripts/train.py --help_all` (with underscores).")
    return {key: _check_value(path, key, value, known[key]) for key, value in values.items()}


def _hyperrule_values(data_dir: str | None, batch_size: int, cache_dir: str | None = None) -> dict:
    """BiT-HyperRule's data-dependent settings for the prepared folder (hfxray/recipes.py holds the rule)."""
    from statistics import median

    from .data import read_manifest
    from .recipes import bit_hyperrule_lr, bit_hyperrule_resolution, bit_hyperrule_steps

    if not data_dir:
        return {}  # validate() reports the missing --data_dir
    try:
        data_dir = resolve_data_dir(data_dir, cache_dir)
        rows = [row for row in read_manifest(data_dir) if row["status"] == "kept" and row["split"] == "train"]
    except (OSError, DataError, KeyError):
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


def _early(given: dict, names: tuple[str, ...], config_values: dict, recipe_values: dict) -> dict:
    """Values of `names` before the full parse: flag (`_given`), else --config, else recipe."""
    return {name: given[name] if given.get(name) is not None else config_values.get(name, recipe_values.get(name))
            for name in names}


def _help(argv: list[str], prog: str, everything: bool) -> None:
    """--help with the defaults of the model, recipe and preset on the command line (vit, seed, full if none)."""
    from .train_help import print_help

    try:
        early = _early(_given(argv), ("model", "recipe", "preset"), {}, {})
        model = early["model"] or ModelArguments.model
        recipe, preset = early["recipe"] or default_recipe(model), early["preset"] or ModelArguments.preset
        values = _read_yaml(recipe_path(model, recipe), _field_types())
        fit_recipe_to_preset(values, preset, set())
    except (HfxrayError, SystemExit):  # a wrong name here is reported by the run itself, not by --help
        model, preset, values = ModelArguments.model, ModelArguments.preset, {}
        recipe = default_recipe(model)
    note = (f"Defaults shown are those of --model {model} --recipe {recipe} --preset {preset} (add other values "
            "before --help to see theirs).\nPrecedence: recipe (configs/recipes/) < --config YAML < flags.")
    print_help(_parser_class(), _dataclasses(), prog, {**TRAINING_DEFAULTS, **values}, note, everything)


def parse_args(argv: list[str] | None = None, prog: str = "scripts/train.py"):
    """(model, data, recipe, run, training) arguments from flags, recipe YAML and --config YAML.

    Precedence: TRAINING_DEFAULTS < recipe < --config < flags. Then the recipe is fitted to the preset (a `full`
    recipe's resolution and batch are for pretrained models on accelerators) and explicit flags win over the
    recipe's coupled fields (`_apply_explicit`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    everything = "--help_all" in argv or "--help-all" in argv
    if everything or "-h" in argv or "--help" in argv:
        _help(argv, prog, everything=everything)
        raise SystemExit(0)
    known = _field_types()
    given = _given(argv)
    early = _early(given, ("config",), {}, {})
    config_values = _read_yaml(Path(early["config"]), known) if early["config"] else {}
    early = _early(given, ("model", "recipe", "preset"), config_values, {})
    model = early["model"] or ModelArguments.model
    if model not in model_names():  # before the recipe lookup, which would blame a recipe file
        raise ConfigError(f"--model {model}: unknown model. To fix: choose one of {', '.join(model_names())}.")
    recipe = early["recipe"] or default_recipe(model)
    recipe_values = _read_yaml(recipe_path(model, recipe), known)
    explicit = set(given) | set(config_values)
    if recipe_values.get("bit_hyperrule") or config_values.get("bit_hyperrule"):
        sizes = _early(given, ("data_dir", "cache_dir", "per_device_train_batch_size", "gradient_accumulation_steps"),
                       config_values, recipe_values)
        batch = int(sizes["per_device_train_batch_size"] or 1) * int(sizes["gradient_accumulation_steps"] or 1)
        recipe_values.update(_hyperrule_values(sizes["data_dir"], batch, sizes["cache_dir"]))
    notes = fit_recipe_to_preset(recipe_values, early["preset"] or ModelArguments.preset, explicit)
    _apply_explicit(recipe_values, explicit)
    parser = _parser_class()(_dataclasses(), prog=prog)
    parser.set_defaults(**{**TRAINING_DEFAULTS, "recipe": recipe, **recipe_values, **config_values})
    _refuse_unknown_flags(parser, argv)
    try:
        model_args, data_args, recipe_args, run_args, training_args = parser.parse_args_into_dataclasses(argv)
    except (ValueError, OverflowError) as err:  # TrainingArguments.__post_init__ checks (e.g. bf16 without a GPU,
        # an infinite step count): no traceback
        raise ConfigError(f"{' '.join(str(err).split())} (from transformers' TrainingArguments). To fix: change the "
                          "flag it names.") from None
    if {"image_size"} & explicit and not {"resize_size"} & explicit and recipe_values.get("image_size") \
            and recipe_values.get("resize_size") and recipe_args.image_size:
        # A crop chosen by flag keeps the recipe's resize:crop ratio: the recipe's resize alone would turn a
        # smaller crop into a zoom into the middle of the chest (64 px crops of a 144 px resize).
        recipe_args.resize_size = round(recipe_args.image_size * recipe_values["resize_size"]
                                        / recipe_values["image_size"])
        notes.append(f"resize {recipe_args.resize_size} px for the {recipe_args.image_size} px crop (the recipe's "
                     f"ratio, {recipe_values['resize_size']}:{recipe_values['image_size']})")
    validate(model_args, data_args, recipe_args, training_args, explicit)
    recipe_args.preset_notes = notes
    return model_args, data_args, recipe_args, run_args, training_args


def parse_config(argv: list[str] | None = None, prog: str = "scripts/train.py") -> RunConfig:
    """The run configuration from flags (and the recipe and --config YAML they name), parsed and validated."""
    return RunConfig(*parse_args(argv, prog=prog))


def build_config(**values) -> RunConfig:
    """A run configuration from argument names and Python values, resolved exactly as the same flags would be
    (recipe < --config < these values, then validated): `build_config(model="bit", preset="tiny", data_dir=d,
    output_dir=o, num_train_epochs=2)`."""
    return parse_config(_flags(values))


def _flags(values: dict) -> list[str]:
    """`{"max_steps": 2, "report_to": ["none"], "hflip": True}` -> `["--max_steps", "2", "--report_to", "none",
    "--hflip", "true"]`."""
    flags = []
    for name, value in values.items():
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        flags += [f"--{name}", *("true" if v is True else "false" if v is False else str(v) for v in items)]
    return flags



def fit_recipe_to_preset(recipe_values: dict, preset: str, explicit: set[str]) -> list[str]:
    """Fit a recipe's resolution and batch to a random-init preset, in place; returns what changed, in words.

    A recipe's resolution and batch are the published ones, for pretrained models on accelerators (`full`). The
    random-init presets keep the recipe's optimizer and schedule shape at no more than the small preset's native
    128 px (the study's resolution; the tiny preset's 64 px leaves the hybrid a 2 x 2 token grid, too coarse to
    explain) and at most 32 images per step, with the learning rate scaled linearly with the batch.
    """
    from .models import native_image_size

    if preset == "full" or preset not in PRESETS:
        return []
    notes = []
    size = min(recipe_values.get("image_size") or native_image_size(preset), native_image_size("small"))
    resize = round(size * 9 / 8)
    if "image_size" not in explicit and recipe_values.get("image_size") not in (None, size):
        notes.append(f"crop {size} px (recipe: {recipe_values['image_size']})")
        recipe_values["image_size"] = size
        if "resize_size" not in explicit:
            recipe_values["resize_size"] = resize
    batch = (recipe_values.get("per_device_train_batch_size") or TRAINING_DEFAULTS["per_device_train_batch_size"]) \
        * (recipe_values.get("gradient_accumulation_steps") or 1)
    if batch > MAX_SMALL_BATCH and not {"per_device_train_batch_size", "gradient_accumulation_steps"} & explicit:
        recipe_values.update(per_device_train_batch_size=MAX_SMALL_BATCH, gradient_accumulation_steps=1)
        note = f"batch {MAX_SMALL_BATCH} (recipe: {batch})"
        if "learning_rate" in recipe_values and "learning_rate" not in explicit:
            recipe_values["learning_rate"] *= MAX_SMALL_BATCH / batch
            note += f", learning rate {recipe_values['learning_rate']:.3g} (scaled with the batch)"
        notes.append(note)
    return notes


def _apply_explicit(recipe_values: dict, explicit: set[str]) -> None:
    """An explicit flag wins over the recipe's fields that belong to the same choice (in place)."""
    for name, coupled in COUPLED_FIELDS.items():
        if name in explicit:
            for other in coupled:
                if other not in explicit:
                    recipe_values.pop(other, None)
    if "lr_scheduler_type" in explicit and "schedule" not in explicit:
        recipe_values["schedule"] = TRAINER_SCHEDULE  # the user chose the Trainer's schedule
    if "warmup_steps" in explicit:
        recipe_values.pop("warmup_steps", None)


def _check_report_to(report_to) -> None:
    import importlib.util

    for name in report_to or []:
        package = REPORT_PACKAGES.get(name)
        if package and importlib.util.find_spec(package.split(".")[0]) is None:
            raise ConfigError(f"--report_to {name}: the {package} package is not installed. To fix: pip install "
                              f"{package.split('.')[0]}, or pass --report_to none (or tensorboard).")


# TrainingArguments counts and the smallest value that means what it says.
COUNT_MINIMUMS = {"per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
                  "gradient_accumulation_steps": 1, "eval_accumulation_steps": 1, "save_total_limit": 1,
                  "dataloader_num_workers": 0}
STEP_INTERVALS = ("logging_steps", "eval_steps", "save_steps")


def validate(model_args, data_args, recipe_args, training_args, explicit: set[str] = frozenset()) -> None:
    """Fail before any model or data work, with what to change."""
    from .models import ModelSpecError, get_spec

    try:
        get_spec(model_args.model, model_args.preset)
    except ModelSpecError as err:
        raise ConfigError(str(err)) from None
    if recipe_args.recipe in FINE_TUNING_RECIPES and model_args.preset != "full":
        raise ConfigError(f"--recipe {recipe_args.recipe} at --preset {model_args.preset}: the {recipe_args.recipe} "
                          "recipes fine-tune pretrained weights (SGD, learning rate 0.003-0.03 at batch 512) and "
                          "learn nothing from random weights (bit.tiny: test AUROC 0.547). To fix: use --recipe "
                          "scratch (or seed) with the small and tiny presets, or --preset full for the pretrained "
                          "model.")
    # NaN passes every `<` check below and infinity reaches int(): refuse both for every number at once.
    for arguments in (model_args, data_args, recipe_args, training_args):
        for item in fields(arguments):
            value = getattr(arguments, item.name, None)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{item.name} {value}: not a finite number. To fix: pass a number (the default "
                                  f"is {item.default}).")
    ranges = {"onecycle_pct_start": (recipe_args.onecycle_pct_start, 0 < recipe_args.onecycle_pct_start < 1,
                                     "between 0 and 1, e.g. 0.3"),
              "lr_decay_gamma": (recipe_args.lr_decay_gamma, recipe_args.lr_decay_gamma > 0,
                                 "a positive factor, e.g. 0.9"),
              "weight_decay": (training_args.weight_decay, training_args.weight_decay >= 0, "0 or more")}
    for name, (value, in_range, hint) in ranges.items():
        if not in_range:
            raise ConfigError(f"--{name} {value}. To fix: pass {hint}.")
    if recipe_args.average_last_epochs < 0:
        raise ConfigError(f"--average_last_epochs {recipe_args.average_last_epochs}. To fix: pass 0 (off) or the "
                          "number of last epochs to average.")
    if recipe_args.schedule not in (TRAINER_SCHEDULE, *SCHEDULES):
        raise ConfigError(f"--schedule {recipe_args.schedule!r}. To fix: use one of {TRAINER_SCHEDULE}, "
                          f"{', '.join(SCHEDULES)}")
    if {"schedule", "lr_scheduler_type"} <= explicit and recipe_args.schedule != TRAINER_SCHEDULE:
        raise ConfigError(f"--schedule {recipe_args.schedule} and --lr_scheduler_type both choose the schedule. "
                          "To fix: pass only one of them.")
    if "warmup_steps" in explicit and recipe_args.schedule in SCHEDULES and recipe_args.schedule != "bit_hyperrule":
        raise ConfigError(f"--warmup_steps does not apply to the {recipe_args.schedule} schedule of recipe "
                          f"{recipe_args.recipe!r}, which sets its own start. To fix: also pass --lr_scheduler_type "
                          "(e.g. cosine) to use the Trainer's schedule with a warm-up, or drop --warmup_steps.")
    if not 0.0 <= training_args.label_smoothing_factor < 1.0:
        raise ConfigError(f"--label_smoothing_factor {training_args.label_smoothing_factor} must lie in [0, 1). "
                          "To fix: pass a value such as 0.1.")
    # transformers 5.24 accepts these out of range and then reads them as something else (a max_steps of 0 or
    # -5 as "train by epochs") or fails inside torch or numpy once training starts (a negative seed or worker count).
    for name, minimum in COUNT_MINIMUMS.items():
        value = getattr(training_args, name)
        if value is not None and value < minimum:
            raise ConfigError(f"--{name} {value}. To fix: pass a whole number of at least {minimum}.")
    from .limits import SEED_MAX

    for name in ("seed", "data_seed"):
        value = getattr(training_args, name)
        if value is not None and not 0 <= value <= SEED_MAX:
            raise ConfigError(f"--{name} {value}. To fix: pass a whole number from 0 to {SEED_MAX}.")
    for name in STEP_INTERVALS:  # a number of steps, or a fraction of the run when below 1
        value = getattr(training_args, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name} {value}. To fix: pass a number of steps, or a fraction of the run "
                              "between 0 and 1.")
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise ConfigError(f"--max_steps {training_args.max_steps}: transformers would ignore it and train for "
                          "--num_train_epochs. To fix: pass a positive number of steps, or -1 to train by epochs.")
    if training_args.num_train_epochs < 0:
        raise ConfigError(f"--num_train_epochs {training_args.num_train_epochs}. To fix: pass a positive number.")
    if not training_args.learning_rate > 0:
        raise ConfigError(f"--learning_rate {training_args.learning_rate}. To fix: pass a positive number.")
    if training_args.max_steps <= 0 and not training_args.num_train_epochs > 0:
        raise ConfigError("neither --max_steps nor --num_train_epochs is positive. To fix: set one of them.")
    for name in ("image_size", "resize_size"):
        value = getattr(recipe_args, name)
        if value is not None and value < 16:
            raise ConfigError(f"--{name} {value}. To fix: pass at least 16 (pixels).")
    if recipe_args.resize_mode not in RESIZE_MODES:
        raise ConfigError(f"--resize_mode {printable(str(recipe_args.resize_mode))}. To fix: pass one of "
                          f"{', '.join(RESIZE_MODES)}.")
    if recipe_args.max_zoom < 1.0:
        raise ConfigError(f"--max_zoom {recipe_args.max_zoom} must be >= 1 (1 = no zoom). To fix: pass 1 or more.")
    if data_args.max_train_samples is not None and data_args.max_train_samples < 1:
        raise ConfigError(f"--max_train_samples {data_args.max_train_samples}. To fix: pass at least 1.")
    if data_args.data_dir is None:
        raise ConfigError("--data_dir is required. To fix: run `hfxray data prepare --source SOURCE_DIR --out "
                          "PREPARED` and pass --data_dir PREPARED")
    try:
        # A dataset repo of `hfxray data push` (folder or Hub id) is read back as a prepared folder: every later
        # step (training, calibration, evaluation, the card) then reads that folder's manifest and images.
        data_args.data_dir = resolve_data_dir(data_args.data_dir, data_args.cache_dir)
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
        raise ConfigError("load_best_model_at_end needs --eval_strategy equal to --save_strategy. To fix: set both "
                          "to epoch or both to steps.")
    _check_report_to(training_args.report_to)


def resolved_config(*argument_sets) -> dict:
    """All arguments as plain data (the Hub token masked by TrainingArguments.to_dict)."""
    resolved = {}
    for arguments in argument_sets:
        resolved.update(arguments.to_dict() if hasattr(arguments, "to_dict") else asdict(arguments))
    return resolved
