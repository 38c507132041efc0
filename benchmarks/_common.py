"""Helpers shared by the benchmark scripts: timing with repeats and medians, the real sample, a prepared copy."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent


def require_sample() -> Path:
    from hfxray.env import expected_sample_dir, sample_dir

    found = sample_dir()
    if found is None:
        sys.exit(f"the real sample is needed at {expected_sample_dir()} (or set HFXRAY_SAMPLE_DIR)")
    return found


def prepared_sample() -> Path:
    """The sample prepared once into a temp dir (quietly)."""
    from hfxray.data import prepare

    out = Path(tempfile.mkdtemp(prefix="hfxray-bench-")) / "prepared"
    prepare(require_sample(), out, echo=lambda *_: None, progress=lambda items, **_: items)
    return out


def median_time(function, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `function()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions: dict, repeats: int = 5) -> dict[str, float]:
    """Median times of several functions run alternately (A B A B ...), so machine noise hits both alike.

    A function that returns a number reports its own duration (to leave its set-up out of the timing)."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            reported = function()
            times[name].append(reported if isinstance(reported, float) else time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def steady_trainer_seconds(model, dataset, recipe, steps: int, batch: int, warm: int, **training_args) -> float:
    """Seconds from the end of step `warm` to the end of training, for hfxray's Trainer on a copy of `model` over
    `dataset` (its own collate): one-off costs of the first steps and of the Trainer's setup stay out of a
    steady-state measurement. `training_args` add to the CPU TrainingArguments below."""
    import copy

    from transformers import TrainerCallback, TrainingArguments

    from hfxray.training import _recipe_trainer_class

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warm:
                self.start = time.perf_counter()
            if state.global_step == state.max_steps:
                self.elapsed = time.perf_counter() - self.start

    arguments = TrainingArguments(
        output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
        optim="adamw_torch", label_smoothing_factor=0.1, report_to="none", save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False, **training_args)
    trainer = _recipe_trainer_class()(model=copy.deepcopy(model), args=arguments, train_dataset=dataset,
                                      data_collator=dataset.collate, recipe=recipe)
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    return clock.elapsed
