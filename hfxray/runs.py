"""A training run as Python data: its configuration (`RunConfig`), what training hands on (`TrainedRun`), and the
names of the files in its folder (`RunFolder`).

`RunConfig` is built once, from flags and YAML (`arguments.parse_config`, or `arguments.build_config` from Python
values), and is what `training.train`,
`workflow.run` and cross-validation take; a variant of it is `config.replace(...)`, never a re-parsed flag list.
`train` returns the model it trained, so calibration, evaluation and the card work on what the run holds in
memory rather than on a copy re-read from disk.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RunConfig:
    """The five argument sets of one run (hfxray.arguments), resolved and validated.

    Frozen: a change is a new config (`replace`), so a config handed to a fold cannot alter another's. It unpacks
    into its five parts in order (`model, data, recipe, run, training = config`).
    """

    model: object  # arguments.ModelArguments
    data: object  # arguments.DataArguments
    recipe: object  # arguments.RecipeArguments
    run: object  # arguments.RunArguments
    training: object  # transformers.TrainingArguments

    def __iter__(self):
        return iter((self.model, self.data, self.recipe, self.run, self.training))

    def replace(self, **changes: dict) -> RunConfig:
        """A copy with fields of the argument sets changed: `config.replace(training={"output_dir": d, "seed": 1})`.

        Each argument set is copied (dataclasses.replace), so the original config is untouched; TrainingArguments
        re-runs its own checks on the copy.
        """
        parts = {}
        for name in ("model", "data", "recipe", "run", "training"):
            current = getattr(self, name)
            parts[name] = dataclasses.replace(current, **changes[name]) if changes.get(name) else current
        unknown = set(changes) - set(parts)
        if unknown:
            raise TypeError(f"RunConfig has no argument set {sorted(unknown)}")
        return RunConfig(**parts)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.training.output_dir)


@dataclass
class TrainedRun:
    """What `training.train` hands on: the trained model (as saved), its processor, the training metrics, and the
    resolved arguments written to args.yaml (`args`), so later steps need not read the run folder back."""

    model: object
    processor: object
    metrics: dict
    folder: RunFolder
    args: dict = field(default_factory=dict)


def reliability_path(results: Path) -> Path:
    """The reliability diagram written beside a report's JSON (`test_results.json` -> `test_reliability.png`)."""
    results = Path(results)
    return results.with_name(results.stem.removesuffix("_results") + "_reliability.png")


def predictions_path(results: Path) -> Path:
    """Each image's prediction, beside a report's JSON (`test_results.json` -> `test_predictions.csv`): what a
    paired comparison of two models on the same images needs (`hfxray report`)."""
    results = Path(results)
    return results.with_name(results.stem.removesuffix("_results") + "_predictions.csv")


class RunFolder:
    """The files of a run folder, named once. A run folder is a complete Hub model repo."""

    # Written by training and the steps after it (`hfxray.workflow`).
    ARGS = "args.yaml"  # the resolved arguments
    CONFIG = "config.json"
    WEIGHTS = "model.safetensors"
    PROCESSOR = "preprocessor_config.json"
    CALIBRATION = "calibration.json"
    TRAIN_RESULTS = "train_results.json"
    TEST_RESULTS = "test_results.json"
    TEST_RELIABILITY = "test_reliability.png"
    CARD = "README.md"
    # What a finished run leaves beside its checkpoints (TensorBoard's runs/ keeps one folder per run), the
    # Trainer's own files included; each results JSON also has its reliability diagram beside it.
    RESULTS = (ARGS, CONFIG, WEIGHTS, PROCESSOR, CALIBRATION, TRAIN_RESULTS, TEST_RESULTS, CARD, "all_results.json",
               "eval_results.json", "trainer_state.json", "training_args.bin")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def args(self) -> Path:
        return self.path / self.ARGS

    @property
    def calibration(self) -> Path:
        return self.path / self.CALIBRATION

    @property
    def train_results(self) -> Path:
        return self.path / self.TRAIN_RESULTS

    @property
    def test_results(self) -> Path:
        return self.path / self.TEST_RESULTS

    @property
    def test_reliability(self) -> Path:
        return self.path / self.TEST_RELIABILITY

    @property
    def card(self) -> Path:
        return self.path / self.CARD

    def earlier_results(self) -> list[Path]:
        """An earlier run's result files here (what --overwrite_output_dir removes, so that a new run that fails
        leaves none that look like its own): RESULTS, `hfxray evaluate`'s default outputs (`SPLIT_evaluation.json`)
        and the reliability diagram and predictions beside each results JSON. Links are never followed or listed."""
        if not self.path.is_dir():
            return []
        results = [self.test_results, *self.path.glob("*_evaluation.json")]
        candidates = [self.path / name for name in self.RESULTS] + results + [reliability_path(p) for p in results] \
            + [predictions_path(p) for p in results]
        return [path for path in dict.fromkeys(candidates) if path.is_file() and not path.is_symlink()]
