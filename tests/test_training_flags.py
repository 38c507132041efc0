"""Every TrainingArguments field a recipe sets: an explicit flag changes what the Trainer does, or is refused.

The fields are read from the recipe files themselves, so a recipe that starts setting a new field fails here until
the field has a check below.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainingArguments

from hfxray.arguments import CONFIG_DIR, ConfigError, parse_args
from test_recipes import N_TRAIN, run_recipe

TRAINER_FIELDS = {item.name for item in fields(TrainingArguments)}
RECIPE_FILES = sorted((CONFIG_DIR / "recipes").glob("*.yaml"))


def recipes_setting(name: str) -> list[tuple[str, str]]:
    """(model, recipe) pairs whose recipe file sets `name`."""
    found = []
    for path in RECIPE_FILES:
        if name in (yaml.safe_load(path.read_text()) or {}):
            family, _, recipe = path.stem.partition("-")
            found.append(("vit", path.stem) if not recipe else (family, recipe))
    return found


def _optimizer(trainer):
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)


def _loss_of(trainer) -> float:
    batch = {"pixel_values": torch.ones(4, 4), "labels": torch.tensor([0, 0, 0, 1])}  # unbalanced: smoothing shows
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


# field -> (explicit flag values, check(trainer, lrs, args) that the Trainer really does it)
CHECKS = {
    "optim": (["--optim", "adafactor"],
              lambda t, lrs, a: type(_optimizer(t)).__name__ == "Adafactor"),
    "optim_args": (["--optim_args", "momentum=0.5"],
                   lambda t, lrs, a: _optimizer(t).param_groups[0]["momentum"] == 0.5),
    "learning_rate": (["--learning_rate", "0.0123"],
                      # the peak of torch's OneCycleLR (it starts at max_lr / div), else the base of the LambdaLR
                      lambda t, lrs, a: _optimizer(t).param_groups[0].get(
                          "max_lr", _optimizer(t).param_groups[0]["initial_lr"]) == pytest.approx(0.0123)),
    "weight_decay": (["--weight_decay", "0.25"],
                     lambda t, lrs, a: _optimizer(t).param_groups[0]["weight_decay"] == 0.25),
    "lr_scheduler_type": (["--lr_scheduler_type", "linear", "--warmup_steps", "0"],
                          lambda t, lrs, a: lrs[0] == pytest.approx(a.learning_rate) and lrs[-1] < lrs[0]),
    "warmup_steps": (["--warmup_steps", "0"], lambda t, lrs, a: lrs[0] == pytest.approx(a.learning_rate)),
    "num_train_epochs": (["--num_train_epochs", "2", "--max_steps", "-1"],
                         lambda t, lrs, a: len(lrs) == 2 * N_TRAIN // a.per_device_train_batch_size),
    "max_steps": (["--max_steps", "7"], lambda t, lrs, a: len(lrs) == 7),
    "per_device_train_batch_size": (["--per_device_train_batch_size", "8", "--max_steps", "-1",
                                     "--num_train_epochs", "1"], lambda t, lrs, a: len(lrs) == N_TRAIN // 8),
    "gradient_accumulation_steps": (["--gradient_accumulation_steps", "2", "--max_steps", "-1",
                                     "--num_train_epochs", "1"], lambda t, lrs, a: len(lrs) == N_TRAIN // 8),
    "label_smoothing_factor": (["--label_smoothing_factor", "0.3"],
                               lambda t, lrs, a: t.compute_loss_func.alpha == 0.3),
    "max_grad_norm": (["--max_grad_norm", "0.5"], lambda t, lrs, a: a.max_grad_norm == 0.5),
    "eval_strategy": (["--eval_strategy", "no", "--load_best_model_at_end", "false"],
                      lambda t, lrs, a: a.eval_strategy == "no"),
    "save_strategy": (["--save_strategy", "no", "--load_best_model_at_end", "false"],
                      lambda t, lrs, a: a.save_strategy == "no"),
    "eval_steps": (["--eval_steps", "3"], lambda t, lrs, a: a.eval_steps == 3),
    "save_steps": (["--save_steps", "3"], lambda t, lrs, a: a.save_steps == 3),
    "load_best_model_at_end": (["--load_best_model_at_end", "false"],
                               lambda t, lrs, a: a.load_best_model_at_end is False),
    "save_total_limit": (["--save_total_limit", "9"], lambda t, lrs, a: a.save_total_limit == 9),
    "metric_for_best_model": (["--metric_for_best_model", "eval_loss"],
                              lambda t, lrs, a: a.metric_for_best_model == "eval_loss"),
}
# Fields the Trainer reads straight from its TrainingArguments: checked on the parsed arguments, with no Trainer run.
PARSED_ONLY = {"max_grad_norm", "eval_strategy", "save_strategy", "eval_steps", "save_steps", "load_best_model_at_end",
               "save_total_limit", "metric_for_best_model"}
# Explicit flags a recipe cannot honour: refused with the recipe field to change.
REFUSED = {("vit", "scratch", "warmup_steps"): ["--warmup_steps", "5"],
           ("bit", "seed", "warmup_steps"): ["--warmup_steps", "5"]}
RECIPE_TRAINER_FIELDS = sorted({key for path in RECIPE_FILES for key in (yaml.safe_load(path.read_text()) or {})}
                               & TRAINER_FIELDS)


def test_every_trainer_field_a_recipe_sets_has_a_check():
    assert set(RECIPE_TRAINER_FIELDS) <= set(CHECKS), set(RECIPE_TRAINER_FIELDS) - set(CHECKS)


# A short run of each: few steps, nothing saved (except where the field under test is the saving itself).
QUICK = ["--max_steps", "5", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
         "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
         "--average_last_epochs", "0"]


@pytest.mark.parametrize("name", RECIPE_TRAINER_FIELDS)
def test_an_explicit_flag_wins_over_every_recipe_that_sets_it(name, fake_prepared, tmp_path):
    flags, does_it = CHECKS[name]
    for model, recipe in recipes_setting(name):
        if (model, recipe, name) in REFUSED:
            continue
        if name in PARSED_ONLY:
            *_, args = parse_args(["--model", model, "--recipe", recipe, "--data_dir", str(fake_prepared),
                                   "--output_dir", str(tmp_path / f"{model}-{recipe}"), *QUICK, *flags])
            lrs = trainer = None
        else:
            lrs, trainer, args = run_recipe(model, recipe, fake_prepared, tmp_path / f"{model}-{recipe}",
                                            [*QUICK, *flags])
        assert does_it(trainer, lrs, args), f"{model}/{recipe}: {' '.join(flags)} was not honoured"


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_flag_the_recipe_cannot_honour_is_refused_naming_the_field(case, fake_prepared, tmp_path):
    model, recipe, name = case
    with pytest.raises(ConfigError, match=r"--warmup_steps.*To fix: .*--lr_scheduler_type"):
        parse_args(["--model", model, "--recipe", recipe, "--data_dir", str(fake_prepared), "--output_dir",
                    str(tmp_path), *REFUSED[case]])


def test_the_issue_examples(fake_prepared, tmp_path):
    """--optim adafactor trains with Adafactor; cosine without warm-up starts at the full rate; smoothing 0.3."""
    _, trainer, _ = run_recipe("vit", "seed", fake_prepared, tmp_path / "a", [*QUICK, "--optim", "adafactor"])
    assert type(_optimizer(trainer)).__name__ == "Adafactor"
    lrs, _, _ = run_recipe("vit", "seed", fake_prepared, tmp_path / "b",
                           [*QUICK, "--lr_scheduler_type", "cosine", "--warmup_steps", "0"])
    assert lrs[:2] == pytest.approx([0.01, 0.01 * 0.5 * (1 + math.cos(math.pi / 5))])
    _, plain, _ = run_recipe("vit", "seed", fake_prepared, tmp_path / "c", [*QUICK, "--label_smoothing_factor", "0"])
    _, smooth, _ = run_recipe("vit", "seed", fake_prepared, tmp_path / "d",
                              [*QUICK, "--label_smoothing_factor", "0.3"])
    smooth.model.load_state_dict(plain.model.state_dict())
    assert _loss_of(smooth) != pytest.approx(_loss_of(plain))  # the loss itself changes


def test_recipes_no_longer_offer_duplicate_flags(fake_prepared, tmp_path):
    for duplicate in ("--optimizer", "--warmup_epochs", "--label_smoothing", "--momentum", "--nesterov"):
        with pytest.raises(ConfigError):
            parse_args(["--data_dir", str(fake_prepared), "--output_dir", str(tmp_path), duplicate, "1"])


def test_recipes_fit_small_presets_and_say_so(fake_prepared, tmp_path):
    base = ["--data_dir", str(fake_prepared), "--output_dir", str(tmp_path)]
    recipe_file = tmp_path / "recipe.yaml"  # a recipe written for a pretrained model on accelerators
    recipe_file.write_text("per_device_train_batch_size: 64\ngradient_accumulation_steps: 8\nlearning_rate: 0.016\n"
                           "image_size: 384\n")
    _, _, recipe, _, args = parse_args(["--model", "vit", "--recipe", str(recipe_file), "--preset", "tiny", *base])
    assert (recipe.image_size, args.per_device_train_batch_size * args.gradient_accumulation_steps) == (128, 32)
    assert args.learning_rate == pytest.approx(0.016 * 32 / 512)
    assert any("batch 32 (recipe: 512)" in note for note in recipe.preset_notes)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_fine_tuning_recipes_are_refused_on_random_weights_in_one_line(fake_prepared, tmp_path, preset):
    base = ["--data_dir", str(fake_prepared), "--output_dir", str(tmp_path)]
    for model in ("vit", "bit", "hybrid"):
        with pytest.raises(ConfigError) as refused:
            parse_args(["--model", model, "--recipe", "paper", "--preset", preset, *base])
        message = str(refused.value)
        assert "\n" not in message and "--recipe paper" in message and "To fix: use --recipe scratch" in message
    _, _, full, _, full_args = parse_args(["--model", "vit", "--recipe", "paper", *base])
    assert (full.image_size, full_args.per_device_train_batch_size * full_args.gradient_accumulation_steps) == \
        (384, 512) and not full.preset_notes


def test_wrong_types_and_values_are_one_line_errors(fake_prepared, tmp_path):
    base = ["--data_dir", str(fake_prepared), "--output_dir", str(tmp_path)]
    for bad in (["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size", "2.5"],
                ["--model", "bit_in1k", "--preset", "tiny"], ["--report_to", "wandb"]):
        if bad[-1] == "wandb" and _installed("wandb"):
            continue  # only a missing integration is refused
        with pytest.raises(ConfigError, match="To fix"):
            parse_args([*base, *bad])
    for value in ("[0.1]", "null", "'x'"):
        config = Path(tmp_path) / "run.yaml"
        config.write_text(f"learning_rate: {value}\n")
        with pytest.raises(ConfigError, match="learning_rate.*To fix"):
            parse_args([*base, "--config", str(config)])


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


FLOAT_FLAGS = ["max_zoom", "onecycle_pct_start", "lr_decay_gamma", "learning_rate", "weight_decay", "num_train_epochs",
               "max_grad_norm", "label_smoothing_factor", "adam_beta1", "adam_epsilon"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOAT_FLAGS)
def test_a_number_that_is_not_finite_is_refused_naming_its_flag(name, value, fake_prepared, tmp_path):
    with pytest.raises(ConfigError, match=rf"--{name} .*To fix"):
        parse_args(["--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--data_dir", str(fake_prepared),
                    "--output_dir", str(tmp_path), f"--{name}={value}"])


@pytest.mark.parametrize("flag", [("--onecycle_pct_start", "2"), ("--onecycle_pct_start", "0"),
                                  ("--lr_decay_gamma", "0"), ("--weight_decay", "-0.1"),
                                  ("--average_last_epochs", "-1"), ("--max_steps", "-5"), ("--max_steps", "0"),
                                  ("--num_train_epochs", "-3"), ("--seed", "-1"), ("--data_seed", "-2"),
                                  ("--dataloader_num_workers", "-1"), ("--save_total_limit", "0"),
                                  ("--eval_accumulation_steps", "0"), ("--logging_steps", "-5"),
                                  ("--save_steps", "-3"), ("--save_steps", "0"), ("--eval_steps", "-1"),
                                  ("--per_device_eval_batch_size", "0"), ("--gradient_accumulation_steps", "0")])
def test_a_number_out_of_its_range_is_refused(flag, fake_prepared, tmp_path):
    with pytest.raises(ConfigError, match=rf"{flag[0]} .*To fix"):
        parse_args(["--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--data_dir", str(fake_prepared),
                    "--output_dir", str(tmp_path), *flag])


CV = ["cv", "--model", "bit", "--preset", "tiny", "--data-dir", "d", "--out", "o"]


@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "--model", "m", "--data-dir", "d", "--n-resamples", "0"], "at least 1"),
    (["explain", "--model", "m", "--method", "actmax", "--out", "o", "--steps", "-1"], "at least 1"),
    (["demo", "--epochs", "0"], "at least 1"),
    ([*CV, "--fold-seed", "-3"], "from 0 to 4294967295"),  # numpy would refuse these mid-run
    ([*CV, "--fold-seed", str(2**32)], "from 0 to 4294967295"),
    (["evaluate", "--model", "m", "--data-dir", "d", "--seed", "-1"], "from 0 to 4294967295")])
def test_a_count_or_seed_out_of_range_is_one_line(argv, expected, tmp_path, monkeypatch, capsys):
    from hfxray.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --") and expected in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, crop, resize", [(["--image_size", "64"], 64, 72),
                                                 (["--image_size", "96", "--resize_size", "100"], 96, 100),
                                                 ([], 128, 144)])
def test_an_explicit_crop_keeps_the_recipes_resize_ratio(flags, crop, resize, fake_prepared, tmp_path):
    # scratch.yaml: 128 px crops of a 144 px resize; its resize alone would make 64 px crops a 2.25x zoom
    _, _, recipe_args, _, _ = parse_args(["--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--data_dir",
                                          str(fake_prepared), "--output_dir", str(tmp_path), *flags])
    assert (recipe_args.image_size, recipe_args.resize_size) == (crop, resize)


def test_resize_mode_comes_from_flag_config_or_recipe_and_other_values_are_one_line(fake_prepared, tmp_path):
    base = ["--model", "bit", "--preset", "tiny", "--data_dir", str(fake_prepared), "--output_dir", str(tmp_path)]
    assert parse_args([*base, "--recipe", "scratch"])[2].resize_mode == "shortest_edge"  # the default
    assert parse_args([*base, "--recipe", "scratch", "--resize_mode", "square"])[2].resize_mode == "square"
    config = tmp_path / "run.yaml"
    config.write_text("resize_mode: square\n")
    assert parse_args([*base, "--recipe", "scratch", "--config", str(config)])[2].resize_mode == "square"
    recipe = tmp_path / "square-scratch.yaml"
    recipe.write_text((CONFIG_DIR / "recipes" / "scratch.yaml").read_text() + "\nresize_mode: square\n")
    assert parse_args([*base, "--recipe", str(recipe)])[2].resize_mode == "square"
    assert parse_args([*base, "--recipe", str(recipe), "--resize_mode", "shortest_edge"])[2].resize_mode \
        == "shortest_edge"  # a flag wins over the recipe
    for bad in ("squash", "Square", ""):
        with pytest.raises(ConfigError, match=r"^--resize_mode .*To fix: pass one of shortest_edge, square\.$"):
            parse_args([*base, "--recipe", "scratch", "--resize_mode", bad])
    config.write_text("resize_mode: 224\n")
    with pytest.raises(ConfigError, match="resize_mode must be a str.*To fix"):
        parse_args([*base, "--recipe", "scratch", "--config", str(config)])


# Integer TrainingArguments fields that may stay unchecked, and why; every other one must refuse -5.
UNCHECKED_COUNTS = {"local_rank": "set by the launcher, -1 means no distributed run",
                    "ddp_timeout": "a multi-node setting of torch.distributed, not a count of hfxray's",
                    "ddp_bucket_cap_mb": "a multi-node setting of torch.distributed, not a count of hfxray's",
                    "eval_delay": "a negative delay is no delay"}


def _integer_fields() -> list[str]:
    names = []
    for item in fields(TrainingArguments):
        text = str(item.type)
        if type(item.default) is int or (item.default is None and "int" in text and not any(
                other in text for other in ("str", "float", "dict", "list"))):
            names.append(item.name)
    return names


def test_every_integer_trainer_field_refuses_a_negative_value_or_says_why_not(fake_prepared, tmp_path):
    """transformers 5.24 accepts most counts out of range and then reads them as something else; the fields are
    listed from TrainingArguments itself, so a new one shows up here rather than as a silently misread flag."""
    base = ["--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--data_dir", str(fake_prepared),
            "--output_dir", str(tmp_path / "run")]
    accepted = []
    for name in _integer_fields():
        try:
            parse_args([*base, f"--{name}", "-5"])
        except ConfigError as err:
            assert name in str(err) and "To fix" in str(err)
        else:
            accepted.append(name)
    assert len(_integer_fields()) > 15 and "max_steps" in _integer_fields()
    assert sorted(accepted) == sorted(UNCHECKED_COUNTS)


@pytest.mark.parametrize("name", ["seed", "data_seed"])
def test_a_seed_beyond_32_bits_is_refused(name, fake_prepared, tmp_path):
    with pytest.raises(ConfigError, match=rf"--{name} 4294967296\. To fix: pass a whole number from 0 to 4294967295"):
        parse_args(["--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--data_dir", str(fake_prepared),
                    "--output_dir", str(tmp_path), f"--{name}", str(2**32)])


@pytest.mark.parametrize("flag", [("--max_steps", "-1"), ("--seed", "0"), ("--dataloader_num_workers", "0"),
                                  ("--logging_steps", "0.5"), ("--save_total_limit", "9")])
def test_the_edge_of_each_range_is_accepted(flag, fake_prepared, tmp_path):
    parse_args(["--model", "bit", "--preset", "tiny", "--recipe", "scratch", "--data_dir", str(fake_prepared),
                "--output_dir", str(tmp_path), *flag])


@pytest.mark.parametrize("spelling", [["--learning-rate", "0.5"], ["--learning_rate=0.5"], ["--learning-rate=0.5"]])
def test_either_spelling_of_an_explicit_flag_wins_over_the_recipe(spelling, fake_prepared, tmp_path):
    """Dashes or underscores, `=` or a separate value: the one HfArgumentParser that parses the run decides what
    the command line set, so precedence cannot disagree with the value parsed."""
    *_, training = parse_args(["--model", "vit", "--recipe", "seed", "--data-dir", str(fake_prepared),
                               "--output-dir", str(tmp_path), *spelling])
    assert training.learning_rate == 0.5
