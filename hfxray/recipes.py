"""Optimizers and learning-rate schedules built from a recipe: small pure functions with their formulas.

`lr_multiplier` is the single source of truth for every schedule; the Trainer gets it through a LambdaLR
(optimizer step t uses base_lr * lr_multiplier(t)), and the tests compare the learning rate the Trainer really
applied at each step with these formulas.

Schedules (t = optimizer step from 0, T = total steps, E = steps per epoch, W = warm-up steps):
- `constant`:           1
- `exponential_epoch`:  gamma ** floor(t / E)            (the study's BiT run: lr x 0.9 each epoch; its report
                                                           called this "1/t", but it is exponential decay)
- `warmup_constant`:    t / W during warm-up, then 1      (the study's ViT / hybrid runs)
- `bit_hyperrule`:      t / W during warm-up, then 0.1 ** #{m in milestones : m < t}   (BiT's `get_lr`)
- `warmup_cosine`:      t / W during warm-up, then 0.5 * (1 + cos(pi * (t - W) / (T - W)))   (ViT fine-tuning)
- `onecycle`:           torch's OneCycleLR with cosine annealing: from 1/div up to 1 over the first
                        pct_start * T steps, then down to 1/(div * final_div) at T - 1   (the scratch recipe)
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "exponential_epoch", "warmup_constant", "bit_hyperrule", "warmup_cosine", "onecycle")
OPTIMIZERS = ("sgd", "adam", "adamw")
ONECYCLE_DIV = 25.0  # torch OneCycleLR defaults, kept so the scratch recipe matches a plain OneCycleLR loop
ONECYCLE_FINAL_DIV = 1e4


def _cosine_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * fraction))


def lr_multiplier(
    schedule: str,
    step: int,
    total_steps: int,
    steps_per_epoch: int = 1,
    warmup_steps: int = 0,
    gamma: float = 0.9,
    milestones: tuple[int, ...] = (),
    pct_start: float = 0.3,
) -> float:
    """Factor applied to the base learning rate at optimizer step `step` (formulas in the module docstring)."""
    if schedule == "constant":
        return 1.0
    if schedule == "exponential_epoch":
        return gamma ** (step // max(steps_per_epoch, 1))
    if schedule == "onecycle":
        up_end = float(pct_start * total_steps) - 1.0
        low = 1.0 / ONECYCLE_DIV
        if step <= up_end:
            return _cosine_anneal(low, 1.0, step / up_end if up_end > 0 else 1.0)
        return _cosine_anneal(1.0, low / ONECYCLE_FINAL_DIV, (step - up_end) / max(total_steps - 1 - up_end, 1e-12))
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}. To fix: choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "warmup_constant":
        return 1.0
    if schedule == "bit_hyperrule":
        return 0.1 ** sum(1 for milestone in milestones if milestone < step)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every trainable weight except biases (the study's "non-bias weights" rule)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if name.endswith("bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                    nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """SGD (optionally Nesterov), Adam or AdamW over `parameter_groups`."""
    groups = parameter_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}. To fix: choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, steps_per_epoch: int,
                    warmup_steps: int = 0, gamma: float = 0.9, milestones: tuple[int, ...] = (),
                    pct_start: float = 0.3) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `lr_multiplier`; validated here so a bad recipe fails before the first step."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}. To fix: choose one of {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        return lr_multiplier(schedule, step, total_steps, steps_per_epoch, warmup_steps, gamma, milestones, pct_start)

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
