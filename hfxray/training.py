"""Fine-tuning with the Hugging Face Trainer: the recipe's loss/optimizer/schedule, Trainer assembly, the saved model.

`train(config)` stops at the saved model and returns it (`runs.TrainedRun`); `hfxray.workflow` chains it with
calibration, evaluation, the model card and the optional push.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import yaml

from .arguments import ConfigError, RecipeArguments, resolved_config
from .data import DataError
from .env import launched_processes
from .errors import excerpt, printable
from .logs import get_logger, library_progress_bars_off, quiet
from .outputs import write_atomic
from .runs import RunConfig, RunFolder, TrainedRun

logger = get_logger(__name__)
# The Trainer's pickled TrainingArguments (transformers.trainer.TRAINING_ARGS_NAME).
TRAINING_ARGS_NAME = "training_args.bin"


def _recipe_trainer_class():
    from transformers import Trainer

    from .compat import CountParametersOnce, StrictCheckpointReload
    from .recipes import TRAINER_SCHEDULE, build_scheduler, decay_parameter_names

    class RecipeTrainer(StrictCheckpointReload, CountParametersOnce, Trainer):
        """The Trainer with the study's loss, its weight-decay rule and hfxray's extra schedules (documented hooks).

        The optimizer is the Trainer's own (`--optim`, `--optim_args`); so is the schedule unless the recipe names
        one of hfxray's (`--schedule`).
        """

        def __init__(self, *args, recipe: RecipeArguments, **kwargs):
            from .losses import LabelSmoothingCrossEntropy

            self.recipe = recipe
            # The study's loss, smoothed by --label_smoothing_factor (the Trainer's own smoother is then unused).
            kwargs.setdefault("compute_loss_func", LabelSmoothingCrossEntropy(kwargs["args"].label_smoothing_factor))
            super().__init__(*args, **kwargs)
            self._train_correct = self._train_seen = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """The usual loss, plus a running training accuracy (logged as `train_accuracy`, this process)."""
            labels = inputs.get("labels")
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if model.training and labels is not None:
                logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
                self._train_correct += int((logits.argmax(-1) == labels).sum())
                self._train_seen += int(labels.numel())
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict, *args, **kwargs) -> None:
            if "loss" in logs and self._train_seen:
                logs["train_accuracy"] = self._train_correct / self._train_seen
                self._train_correct = self._train_seen = 0
            super().log(logs, *args, **kwargs)

        def get_decay_parameter_names(self, model) -> list[str]:
            return decay_parameter_names(model)  # the study's rule: every weight but the biases

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            r, a = self.recipe, self.args
            if r.schedule == TRAINER_SCHEDULE:
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                epochs = math.ceil(a.num_train_epochs) if a.max_steps <= 0 else 0
                steps_per_epoch = math.ceil(num_training_steps / epochs) if epochs else num_training_steps
                self.lr_scheduler = build_scheduler(optimizer or self.optimizer, r.schedule, num_training_steps,
                                                    steps_per_epoch, a.get_warmup_steps(num_training_steps),
                                                    r.lr_decay_gamma, tuple(r.lr_milestones), r.onecycle_pct_start)
            return self.lr_scheduler

    return RecipeTrainer


def _checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's checkpoint-N folders (those the Trainer wrote: they hold trainer_state.json), oldest first."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = [p for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
             if p.is_dir() and p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda path: int(path.name.split("-")[-1]))


def _average_last_checkpoints(trainer, count: int) -> None:
    """Load into the model the mean of the weights of this run's last `count` checkpoints (resume-safe)."""
    # Only checkpoints of this run's schedule: none past its last step.
    folders = [p for p in _checkpoints(trainer.args.output_dir)
               if int(p.name.split("-")[-1]) <= trainer.state.global_step][-count:]
    if len(folders) < count:
        logger.warning("--average_last_epochs %d, but the run has only %d epoch checkpoint(s): averaging those",
                       count, len(folders))
        count = len(folders)
    if not folders:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    total = None
    for folder in folders:
        weights = type(model).from_pretrained(folder, config=model.config).state_dict()
        total = weights if total is None else {name: total[name] + weights[name] for name in total}
    model.load_state_dict({name: value / count for name, value in total.items()}, strict=True)


def _plan(trainer, spec, recipe_args, train_size: int) -> str:
    """One paragraph: what this run will do (printed before the first step)."""
    import torch

    args = trainer.args
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    steps_per_epoch = max(1, math.ceil(train_size / (args.per_device_train_batch_size * args.world_size))
                          // args.gradient_accumulation_steps)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    device = str(args.device) + (f" ({torch.get_num_threads()} threads)" if args.device.type == "cpu" else "")
    fitted = f" fitted to --preset {spec.preset}: " + "; ".join(recipe_args.preset_notes) \
        if getattr(recipe_args, "preset_notes", None) else ""
    return (f"plan: {spec.tag}, recipe {recipe_args.recipe}{fitted}; {steps} optimizer steps of {per_step} images "
            f"({train_size} training images), {spec.image_size} px crops, {args.world_size} process(es) on "
            f"{device}")


def _eta_callback(max_cpu_seconds: float = 3600.0):
    """Warn once, a few steps in, when a CPU run will take longer than `max_cpu_seconds`."""
    import time

    from transformers import TrainerCallback

    class EtaWarning(TrainerCallback):
        measure_after = 5

        def __init__(self):
            self.started = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.started = time.perf_counter()
            elif self.started and state.global_step == 1 + self.measure_after:
                per_step = (time.perf_counter() - self.started) / self.measure_after
                remaining = per_step * (state.max_steps - state.global_step)
                if args.device.type == "cpu" and remaining > max_cpu_seconds:
                    logger.warning("warning: this CPU run needs about %.1f h more (%.1f s a step, %d steps). To "
                                   "finish sooner: --preset small or tiny, fewer --max_steps/--num_train_epochs, "
                                   "or a GPU.", remaining / 3600, per_step, state.max_steps - state.global_step)

    return EtaWarning()


# How a logged key reads in a progress line (the Trainer's keys; eval_ keys are read without their prefix).
LOG_NAMES = {"loss": "loss", "train_accuracy": "accuracy", "learning_rate": "learning rate", "grad_norm": "grad norm",
             "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auroc": "AUROC",
             "sensitivity": "sensitivity", "specificity": "specificity", "ece": "ECE"}


def format_log(logs: dict, step: int, max_steps: int) -> str:
    """One readable line for a Trainer log entry (the Trainer prints a dict of quoted strings)."""
    def number(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) and abs(value) < 1e-3 and value else (
            f"{value:.3f}" if isinstance(value, float) else str(value))

    epoch = logs.get("epoch")
    where = f"step {step}/{max_steps}" + (f" (epoch {epoch:.2f})" if isinstance(epoch, (int, float)) else "")
    if "train_runtime" in logs:
        return (f"training done: {logs['train_runtime']:.0f} s, {logs.get('train_steps_per_second', 0):.2f} "
                f"steps/s, mean loss {number(logs.get('train_loss'))}")
    if any(key.startswith("eval_") for key in logs):
        values = {key[5:]: value for key, value in logs.items() if key.startswith("eval_")}
        shown = ", ".join(f"{LOG_NAMES[key]} {number(values[key])}" for key in LOG_NAMES if key in values
                          and key not in ("train_accuracy", "learning_rate", "grad_norm"))
        return f"validation at {where}: {shown}" + (f" ({values['n']} images)" if "n" in values else "")
    shown = ", ".join(f"{LOG_NAMES.get(key, key)} {number(value)}" for key, value in logs.items()
                      if key not in ("epoch", "total_flos"))
    return f"{where}: {shown}"


def _readable_logs(trainer) -> None:
    """The Trainer's progress bar (or, without one, its printer) writes `format_log` lines instead of dicts."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class ReadableProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                # progress goes to stderr (the Trainer writes its dicts to stdout, among a command's results)
                self.training_bar.write(format_log(logs, state.global_step, state.max_steps), file=sys.stderr)

    class ReadablePrinter(PrinterCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_local_process_zero and logs:
                logger.info(format_log(logs, state.global_step, state.max_steps))

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ReadableProgress())
    if trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(ReadablePrinter())


def _epoch_callback(dataset):
    from transformers import TrainerCallback

    class EpochToDataset(TrainerCallback):
        """Tell the training dataset which epoch starts (also right after --resume, mid-epoch)."""

        def on_epoch_begin(self, args, state, control, **kwargs):
            dataset.set_epoch(math.floor(state.epoch + 1e-9))

    return EpochToDataset()


def compute_eval_metrics(eval_prediction) -> dict:
    """Trainer `compute_metrics`: accuracy, AUROC, sensitivity... of the virus class (hfxray.metrics)."""
    import numpy as np

    from .metrics import binary_metrics

    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted[:, 1] / shifted.sum(axis=1)
    metrics = binary_metrics(labels, probs)
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}


def check_processes_connected(training_args) -> None:
    """Refuse to run when a launcher started several processes that do not form one distributed job.

    `accelerate launch --multi_gpu --num_processes 2` on a machine without GPUs (and without a CPU config) starts
    two independent trainings over the whole data, both writing the same folder.
    """
    launched = launched_processes()
    if launched > 1 and training_args.world_size == 1:
        raise ConfigError(f"the launcher started {launched} processes, but they are not connected (each sees "
                          "world size 1 and would train alone on all the data). To fix: launch with "
                          "`accelerate launch --config_file configs/accelerate/cpu-2proc.yaml --num_cpu_threads_per_process N` "
                          "on CPUs (N: cores per process), or "
                          "configs/accelerate/multi-gpu.yaml on a machine with that many GPUs.")


def _last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def _start_over(training_args, resume: bool, overwrite: bool) -> str | None:
    """The checkpoint to resume from, after refusing or clearing an earlier run's checkpoints."""
    output_dir = training_args.output_dir
    if resume:
        resume_from = _last_checkpoint(output_dir)
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint-* folder in {output_dir}. To fix: drop --resume to start "
                              "a new run, or point --output_dir at the interrupted run.")
        return resume_from
    earlier = _checkpoints(output_dir) if os.path.isdir(output_dir) else []
    if earlier and not overwrite:
        raise ConfigError(f"{output_dir} already holds checkpoints. To fix: pass --resume to continue, or "
                          "--overwrite_output_dir to start over.")
    # Starting over: an earlier run's checkpoints would otherwise be averaged or resumed into this one. Every
    # process has checked them above; one deletes them while the others wait.
    with training_args.main_process_first(desc="clearing the earlier run's checkpoints"):
        if training_args.process_index == 0:
            for folder in earlier:
                shutil.rmtree(folder)
            # and its results, which a new run that fails would otherwise seem to have written
            for path in RunFolder(output_dir).earlier_results() if overwrite else ():
                path.unlink()
    return None


def check_resumable(checkpoint: str | os.PathLike, model) -> None:
    """Refuse, before any data work, a checkpoint the Trainer would fail on deep inside: a damaged trainer state or
    weights file, or weights of another model (other --model, --preset or --config_overrides than the run's)."""
    import json

    from safetensors import SafetensorError, safe_open

    folder = Path(checkpoint)
    shown = printable(str(folder))
    again = ("To fix: resume from an earlier checkpoint (delete this one), or start over with "
             "--overwrite_output_dir.")
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume: {shown}/trainer_state.json cannot be read ({type(err).__name__}: "
                          f"{excerpt(err, 120)}). {again}") from None
    weights = folder / "model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as handle:
            saved = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (OSError, SafetensorError) as err:
        raise ConfigError(f"--resume: {printable(str(weights))} cannot be read ({type(err).__name__}: "
                          f"{excerpt(err, 120)}). {again}") from None
    # transformers 5 saves some models under their earlier key names (ViT: attention.attention.query, in memory
    # q_proj), so the tensors are compared by shape, not by name: another kind, preset or width changes the shapes.
    expected = sorted(tuple(value.shape) for key, value in model.state_dict().items()
                      if not key.endswith("num_batches_tracked"))
    found = sorted(shape for key, shape in saved.items() if not key.endswith("num_batches_tracked"))
    if expected != found:
        count = sum(math.prod(shape) for shape in found)
        raise ConfigError(f"--resume: {shown} holds the weights of another model ({len(found)} tensors, {count:,} "
                          f"values; this run's model has {len(expected)}, {sum(math.prod(s) for s in expected):,}). "
                          "To fix: resume with the run's own --model, --preset and --config_overrides (its "
                          "args.yaml), or start over with --overwrite_output_dir.")


def train(config: RunConfig, select_splits=None) -> TrainedRun:
    """Fine-tune one model and save it with its processor in --output_dir; returns the model as saved, its processor
    and the training metrics.

    The run folder gets args.yaml (the resolved arguments), TensorBoard events, checkpoints, the final model
    (the best by the validation metric with load_best_model_at_end, or the averaged weights) and
    train_results.json. Calibration, evaluation and the model card are later steps (`hfxray.workflow`).
    `select_splits` (cross-validation folds and the refit, `hfxray.cv`) maps the image paths of the pooled train +
    validation rows to the (training, evaluation) row positions used instead of the train and validation splits;
    evaluation may be None.
    """
    import torch
    from transformers import set_seed

    from .logs import hide_weight_loading_bars

    hide_weight_loading_bars()  # a random-init model loads nothing, but checkpoints are written and reloaded

    from .cache import decoded_split, pooled_split
    from .data import prepared_counts
    from .models import create_model
    from .transforms import Geometry, XrayTensorDataset

    model_args, data_args, recipe_args, run_args, training_args = config

    check_processes_connected(training_args)
    output_dir = training_args.output_dir
    resume_from = _start_over(training_args, run_args.resume, run_args.overwrite_output_dir)
    set_seed(training_args.seed)
    if training_args.use_cpu or not torch.cuda.is_available():
        from .cpu_memory import keep_freed_memory

        keep_freed_memory()
    # The model first: a checkpoint that cannot be loaded fails before any data work.
    model, processor, spec = create_model(model_args.model, model_args.preset, image_size=recipe_args.image_size,
                                          resize_size=recipe_args.resize_size, checkpoint=model_args.checkpoint,
                                          config_overrides=model_args.config_overrides,
                                          resize_mode=recipe_args.resize_mode)
    if resume_from is not None:
        check_resumable(resume_from, model)
    geometry = Geometry.from_processor(processor)
    data_dir = Path(data_args.data_dir)
    counts = prepared_counts(data_dir)
    if select_splits is None and not sum(counts["validation"].values()):
        raise DataError(f"{data_args.data_dir}: no validation split. To fix: prepare with --val-fraction > 0.")

    def first_on_rank_0(name):
        # Decoded once into a cache that later runs, folds and the other ranks reuse; rank 0 builds it.
        return training_args.main_process_first(desc=f"decode cache ({name})")

    if select_splits is None:
        parts = {}
        for name in ("train", "validation"):
            with first_on_rank_0(name):
                parts[name] = decoded_split(data_dir, name, geometry.resize, cache_dir=data_args.cache_dir)
    else:  # cross-validation folds and the refit: rows of train + validation pooled
        pooled = pooled_split(data_dir, geometry.resize, data_args.cache_dir, counts, guard=first_on_rank_0)
        train_rows, evaluation_rows = select_splits(pooled.files)
        parts = {"train": pooled.select(train_rows)}
        if evaluation_rows is not None:
            parts["validation"] = pooled.select(evaluation_rows)
    if data_args.max_train_samples:
        parts["train"] = parts["train"].select(range(min(data_args.max_train_samples, len(parts["train"]))))
    splits = {name: (images, images.labels) for name, images in parts.items()}
    for name, (images, labels) in splits.items():
        splits[name] = XrayTensorDataset(images, labels, geometry, train=name == "train",
                                         max_zoom=recipe_args.max_zoom, hflip=recipe_args.hflip,
                                         seed=training_args.seed)

    trainer = _recipe_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits.get("validation"),
        processing_class=processor,
        data_collator=splits["train"].collate,  # same geometry for every split: one collator normalises all
        compute_metrics=compute_eval_metrics,
        callbacks=[_epoch_callback(splits["train"]), _eta_callback()],
        recipe=recipe_args,
    )
    if quiet():
        # `hfxray -q train`: warnings and errors only. The Trainer prints each logging step's dict (or draws its
        # bars); the metrics still reach TensorBoard and trainer_state.json.
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    else:
        _readable_logs(trainer)
    resolved = resolved_config(model_args, data_args, recipe_args, run_args, training_args)
    resolved.update(model_tag=spec.tag, pretrained_checkpoint=model_args.checkpoint or spec.checkpoint,
                  world_size=training_args.world_size, train_size=len(splits["train"]),
                  validation_size=len(splits.get("validation", ())), test_size=sum(counts["test"].values()))
    resolved = _plain(resolved)
    if trainer.is_world_process_zero():
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(RunFolder(output_dir).args, yaml.safe_dump(resolved, sort_keys=True))

    if trainer.is_world_process_zero():
        logger.info(_plan(trainer, spec, recipe_args, len(splits["train"])))
    # --disable_tqdm reaches only the Trainer's bars; transformers 5.x's save_pretrained draws a "Writing model
    # shards" bar at every checkpoint, one per epoch in a run that asked for none.
    with library_progress_bars_off(training_args.disable_tqdm):
        train_result = trainer.train(resume_from_checkpoint=resume_from)
        if recipe_args.average_last_epochs > 1:
            _average_last_checkpoints(trainer, recipe_args.average_last_epochs)
        train_metrics = dict(train_result.metrics, world_size=training_args.world_size,
                             global_step=trainer.state.global_step)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        trainer.save_model()
    if trainer.is_world_process_zero():
        # The Trainer pickles its arguments beside the model; args.yaml is the run's readable record, and a
        # pickle is not something a model folder should ask anyone to load.
        (Path(output_dir) / TRAINING_ARGS_NAME).unlink(missing_ok=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return TrainedRun(trainer.model, processor, train_metrics, RunFolder(output_dir), args=resolved)


def _plain(value):
    """YAML-safe copy (enums and paths as strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))
