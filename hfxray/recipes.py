"""Learning-rate schedules the Trainer does not have, and BiT-HyperRule: small pure functions with their formulas.

The optimizer, its arguments, warm-up, label smoothing and the Trainer's own schedules (`constant_with_warmup`,
`cosine`, ...) are TrainingArguments fields (`optim`, `optim_args`, `warmup_steps`, `label_smoothing_factor`,
`lr_scheduler_type`): recipes set those fields, and an explicit flag wins. hfxray adds only the schedules below
(`--schedule`), used when the user has not chosen a `--lr_scheduler_type`; `lr_multiplier` is their single source
of truth, given to the Trainer through a LambdaLR (optimizer step t uses base_lr * lr_multiplier(t)); `onecycle` is
torch's own OneCycleLR.

Schedules (t = optimizer step from 0, T = total steps, E = steps per epoch, W = warm-up steps):
- `exponential_epoch`:  gamma ** floor(t / E)            (the study's BiT run: lr x 0.9 each epoch; its report
                                                           called this "1/t", but it is exponential decay)
- `bit_hyperrule`:      t / W during warm-up, then 0.1 ** #{m in milestones : m < t}   (BiT's `get_lr`)
- `onecycle`:           torch's OneCycleLR with cosine annealing: from 1/div up to 1 over the first
                        pct_start * T steps, then down to 1/(div * final_div) at T - 1   (the scratch recipe)
Only `bit_hyperrule` has a warm-up; the other two define their own start.
"""

from __future__ import annotations

import torch

from .errors import HfxrayError

TRAINER_SCHEDULE = "trainer"  # --schedule value meaning: the Trainer's --lr_scheduler_type
SCHEDULES = ("exponential_epoch", "bit_hyperrule", "onecycle")
WARMUP_SCHEDULES = ("bit_hyperrule",)
ONECYCLE_DIV = 25.0  # torch OneCycleLR defaults, kept so the scratch recipe matches a plain OneCycleLR loop
ONECYCLE_FINAL_DIV = 1e4


class ScheduleError(HfxrayError, ValueError):
    """A schedule that cannot be built for this run's step count."""


def lr_multiplier(
    schedule: str,
    step: int,
    total_steps: int,
    steps_per_epoch: int = 1,
    warmup_steps: int = 0,
    gamma: float = 0.9,
    milestones: tuple[int, ...] = (),
) -> float:
    """Factor applied to the base learning rate at optimizer step `step` by the LambdaLR schedules (formulas in
    the module docstring; `onecycle` is torch's OneCycleLR, see `build_scheduler`)."""
    if schedule == "exponential_epoch":
        return gamma ** (step // max(steps_per_epoch, 1))
    if schedule == "bit_hyperrule":
        if step < warmup_steps:
            return step / warmup_steps
        return 0.1 ** sum(1 for milestone in milestones if milestone < step)
    raise ScheduleError(f"unknown schedule {schedule!r}. To fix: choose one of {', '.join(SCHEDULES)}")


def _onecycle(optimizer: torch.optim.Optimizer, total_steps: int, pct_start: float):
    # torch 2.14's OneCycleLR divides by zero when its rising phase ends exactly at step 0 (pct_start * T == 1).
    if float(pct_start * total_steps) - 1.0 == 0.0:
        raise ScheduleError(f"--onecycle_pct_start {pct_start} of {total_steps} steps is a rising phase of one step, "
                            "which torch's OneCycleLR cannot build. To fix: change --onecycle_pct_start or the "
                            "number of steps.")
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=max(total_steps, 1),
        pct_start=pct_start, anneal_strategy="cos", cycle_momentum=False, div_factor=ONECYCLE_DIV,
        final_div_factor=ONECYCLE_FINAL_DIV)


def decay_parameter_names(model: torch.nn.Module) -> list[str]:
    """Weight decay on every trainable weight except biases (the study's "non-bias weights" rule)."""
    return [name for name, parameter in model.named_parameters()
            if parameter.requires_grad and not name.endswith("bias")]


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, steps_per_epoch: int,
                    warmup_steps: int = 0, gamma: float = 0.9, milestones: tuple[int, ...] = (),
                    pct_start: float = 0.3) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's OneCycleLR, or a LambdaLR over `lr_multiplier`; validated here so a bad recipe fails before the first
    step."""
    if schedule not in SCHEDULES:
        raise ScheduleError(f"unknown schedule {schedule!r}. To fix: choose one of {', '.join(SCHEDULES)}")
    if schedule == "onecycle":
        return _onecycle(optimizer, total_steps, pct_start)

    def factor(step: int) -> float:
        return lr_multiplier(schedule, step, total_steps, steps_per_epoch, warmup_steps, gamma, milestones)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- BiT-HyperRule heuristics (Kolesnikov et al. 2020, big_transfer/bit_hyperrule.py) -------------------------

def bit_hyperrule_steps(dataset_size: int) -> tuple[int, tuple[int, ...], int]:
    """(warm-up steps, decay milestones, total steps) by dataset size: <20k -> 500, <500k -> 10k, else 20k."""
    if dataset_size < 20_000:
        return 100, (200, 300, 400), 500
    if dataset_size < 500_000:
        return 500, (3000, 6000, 9000), 10_000
    return 500, (6000, 12_000, 18_000), 20_000


def bit_hyperrule_resolution(width: int, height: int) -> tuple[int, int]:
    """(resize, crop): images up to 96 x 96 px -> 160 / 128, larger -> 512 / 480."""
    return (160, 128) if width * height <= 96 * 96 else (512, 480)


def bit_hyperrule_lr(batch_size: int, base_lr: float = 0.003) -> float:
    """BiT's 0.003 is for a batch of 512; it scales linearly with the batch."""
    return base_lr * batch_size / 512
