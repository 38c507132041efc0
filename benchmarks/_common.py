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


def step_clock_class(warm: int):
    """A TrainerCallback class timing from the end of step `warm` to the end of training (`.elapsed`): one-off
    costs of the first steps and of the Trainer's setup stay out of a steady-state measurement."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warm:
                self.start = time.perf_counter()
            if state.global_step == state.max_steps:
                self.elapsed = time.perf_counter() - self.start

    return StepClock
