"""Each recipe's learning rate, as actually applied by the Trainer at every optimizer step, against its formula.

The expected values are written out independently here (and, for one-cycle, taken from torch's OneCycleLR).
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from transformers import TrainerCallback

from hfxray import recipes
from hfxray.arguments import parse_args
from hfxray.training import _recipe_trainer_class

N_TRAIN = 40


class TinyClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.config = types.SimpleNamespace()  # the Trainer reads config.problem_type when smoothing labels

    def forward(self, pixel_values, labels=None):
        return {"logits": self.linear(pixel_values)}


class Samples(torch.utils.data.Dataset):
    def __len__(self):
        return N_TRAIN

    def __getitem__(self, index):
        return {"pixel_values": torch.full((4,), float(index % 3)), "labels": index % 2}


class RecordAppliedLr(TrainerCallback):
    """Learning rate in the optimizer right before each optimizer step."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def applied_lrs(model: str, recipe: str, fake_prepared, tmp_path, extra: list[str]) -> tuple[list[float], object]:
    lrs, _, training_args = run_recipe(model, recipe, fake_prepared, tmp_path, extra)
    return lrs, training_args


def run_recipe(model: str, recipe: str, fake_prepared, tmp_path, extra: list[str]):
    """(learning rates applied at each step, the trainer, its TrainingArguments) after a short real training."""
    _, _, recipe_args, _, training_args = parse_args([
        "--model", model, "--recipe", recipe, "--data_dir", str(fake_prepared), "--output_dir", str(tmp_path / "run"),
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none",
        "--logging_strategy", "no", "--use_cpu", "true", "--average_last_epochs", "0", *extra])
    recorder = RecordAppliedLr()
    trainer = _recipe_trainer_class()(model=TinyClassifier(), args=training_args, train_dataset=Samples(),
                                      callbacks=[recorder], recipe=recipe_args)
    trainer.train()
    return recorder.lrs, trainer, training_args


def test_seed_bit_exponential_decay_per_epoch(fake_prepared, tmp_path):
    lrs, args = applied_lrs("bit", "seed", fake_prepared, tmp_path, ["--num_train_epochs", "4"])
    steps_per_epoch = N_TRAIN // 4
    assert args.learning_rate == 0.1
    assert len(lrs) == 4 * steps_per_epoch
    assert lrs == pytest.approx([0.1 * 0.9 ** (t // steps_per_epoch) for t in range(len(lrs))])


def test_seed_vit_three_warmup_epochs_then_constant(fake_prepared, tmp_path):
    lrs, _ = applied_lrs("vit", "seed", fake_prepared, tmp_path, [])  # 10 epochs, warm-up 0.3 of the steps
    total = 10 * (N_TRAIN // 4)
    warmup = math.ceil(total * 0.3)  # as the Trainer counts a fractional --warmup_steps (3 epochs, rounded up)
    assert warmup in (30, 31)
    assert lrs == pytest.approx([0.01 * min(t / warmup, 1.0) for t in range(total)])


def test_paper_bit_hyperrule(fake_prepared, tmp_path):
    # The rule's values come from the data (test below); the fake folder has none, so they are given here.
    lrs, args = applied_lrs("bit", "paper", fake_prepared, tmp_path, [
        "--max_steps", "500", "--warmup_steps", "100", "--lr_milestones", "200", "300", "400",
        "--learning_rate", "0.003"])
    assert args.max_steps == 500 and len(lrs) == 500
    expected = []
    for t in range(500):
        if t < 100:
            expected.append(0.003 * t / 100)
        else:
            expected.append(0.003 * (1.0 if t <= 200 else 0.1 if t <= 300 else 0.01 if t <= 400 else 0.001))
    assert lrs == pytest.approx(expected)


def test_paper_vit_warmup_cosine(fake_prepared, tmp_path):
    lrs, _ = applied_lrs("hybrid", "paper", fake_prepared, tmp_path, ["--max_steps", "60", "--warmup_steps", "10"])
    expected = [0.03 * (t / 10 if t < 10 else 0.5 * (1 + math.cos(math.pi * (t - 10) / 50))) for t in range(60)]
    assert lrs == pytest.approx(expected)


def test_scratch_matches_torch_onecycle(fake_prepared, tmp_path):
    lrs, _ = applied_lrs("vit", "scratch", fake_prepared, tmp_path, ["--num_train_epochs", "3"])
    total = 3 * (N_TRAIN // 4)
    optimizer = torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), lr=1e-3)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=total, cycle_momentum=False)
    expected = []
    for _ in range(total):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_weight_decay_skips_biases_and_seed_sgd_is_nesterov(fake_prepared, tmp_path):
    _, trainer, _ = run_recipe("vit", "seed", fake_prepared, tmp_path, ["--num_train_epochs", "1"])
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    assert isinstance(optimizer, torch.optim.SGD)
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-4 and not_decayed["weight_decay"] == 0.0
    assert {id(p) for p in not_decayed["params"]} == {id(trainer.model.linear.bias)}
    assert decayed["nesterov"] is True and decayed["momentum"] == 0.9


def test_bit_hyperrule_heuristics():
    assert recipes.bit_hyperrule_steps(614) == (100, (200, 300, 400), 500)
    assert recipes.bit_hyperrule_steps(50_000)[2] == 10_000
    assert recipes.bit_hyperrule_resolution(512, 480) == (512, 480)
    assert recipes.bit_hyperrule_resolution(64, 64) == (160, 128)
    assert recipes.bit_hyperrule_lr(512) == pytest.approx(0.003)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown schedule"):
        recipes.lr_multiplier("1/t", 0, 10)


def test_bit_paper_recipe_is_derived_from_the_rule_and_the_data(prepared_dir, tmp_path):
    """bit-paper.yaml types none of the rule's numbers: they come from hfxray/recipes.py and the manifest."""
    base = ["--model", "bit", "--recipe", "paper", "--data-dir", str(prepared_dir), "--output-dir", str(tmp_path)]
    _, _, recipe, _, training = parse_args(base)
    assert (training.warmup_steps, tuple(recipe.lr_milestones), training.max_steps) == \
        recipes.bit_hyperrule_steps(443)  # the sample's training images
    assert (recipe.resize_size, recipe.image_size) == (512, 480)  # the sample's X-rays are larger than 96 px
    assert training.learning_rate == pytest.approx(recipes.bit_hyperrule_lr(64 * 8))
    _, _, _, _, halved = parse_args([*base, "--gradient_accumulation_steps", "4"])
    assert halved.learning_rate == pytest.approx(recipes.bit_hyperrule_lr(64 * 4))  # scales with the batch
    _, _, flagged, _, flagged_training = parse_args([*base, "--max_steps", "20", "--image_size", "128"])
    assert flagged_training.max_steps == 20 and flagged.image_size == 128  # explicit flags win


def test_onecycle_with_a_one_step_rise_is_refused_in_one_line():
    optimizer = torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), lr=1e-3)
    with pytest.raises(recipes.ScheduleError, match="To fix: change --onecycle_pct_start"):
        recipes.build_scheduler(optimizer, "onecycle", total_steps=4, steps_per_epoch=4, pct_start=0.25)


def test_torch_onecycle_still_divides_by_zero_for_a_one_step_rise():
    """The guard above exists for this torch behaviour; when torch fixes it, the guard can go."""
    optimizer = torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), lr=1e-3)
    with pytest.raises(ZeroDivisionError):
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=4, pct_start=0.25,
                                            cycle_momentum=False)
