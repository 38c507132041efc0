"""Fine-tuning with the Hugging Face Trainer: the recipe's loss/optimizer/schedule, Trainer assembly, the saved model.

`train` stops at the saved model; `hfxray.workflow` chains it with calibration, evaluation, the model card and
the optional push.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import yaml

from .arguments import ConfigError, DataArguments, ModelArguments, RecipeArguments, RunArguments, resolved_config
from .data import DataError
from .logs import get_logger

logger = get_logger(__name__)
# The Trainer's pickled TrainingArguments (transformers.trainer.TRAINING_ARGS_NAME).
TRAINING_ARGS_NAME = "training_args.bin"


def _recipe_trainer_class():
    from transformers import Trainer

    from .compat import CountParametersOnce, StrictCheckpointReload
    from .recipes import build_optimizer, build_scheduler

    class RecipeTrainer(StrictCheckpointReload, CountParametersOnce, Trainer):
        """The Trainer with its loss, optimizer and schedule taken from the recipe (via the documented hooks)."""

        def __init__(self, *args, recipe: RecipeArguments, **kwargs):
            from .losses import LabelSmoothingCrossEntropy

            self.recipe = recipe
            kwargs.setdefault("compute_loss_func", LabelSmoothingCrossEntropy(recipe.label_smoothing))
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

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                r, a = self.recipe, self.args
                self.optimizer = build_optimizer(model or self.model, r.optimizer, a.learning_rate,
                                                 weight_decay=a.weight_decay, momentum=r.momentum,
                                                 nesterov=r.nesterov, betas=(a.adam_beta1, a.adam_beta2))
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                r, a = self.recipe, self.args
                epochs = math.ceil(a.num_train_epochs) if a.max_steps <= 0 else 0
                steps_per_epoch = math.ceil(num_training_steps / epochs) if epochs else num_training_steps
                warmup = int(a.warmup_steps) or round(r.warmup_epochs * steps_per_epoch)
                self.lr_scheduler = build_scheduler(optimizer or self.optimizer, r.schedule, num_training_steps,
                                                    steps_per_epoch, warmup, r.lr_decay_gamma,
                                                    tuple(r.lr_milestones), r.onecycle_pct_start)
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


def _last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def _start_over(output_dir: str, resume: bool, overwrite: bool) -> str | None:
    """The checkpoint to resume from, after refusing or clearing an earlier run's checkpoints."""
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
    # Starting over: an earlier run's checkpoints would otherwise be averaged or resumed into this one.
    for folder in earlier:
        shutil.rmtree(folder)
    return None


def train(model_args: ModelArguments, data_args: DataArguments, recipe_args: RecipeArguments,
          run_args: RunArguments, training_args, select_splits=None) -> dict:
    """Fine-tune one model and save it with its processor in --output_dir; returns the training metrics.

    The run folder gets args.yaml (the resolved arguments), TensorBoard events, checkpoints, the final model
    (the best by the validation metric with load_best_model_at_end, or the averaged weights) and
    train_results.json. Calibration, evaluation and the model card are later steps (`hfxray.workflow`).
    `select_splits` (cross-validation folds and the refit, `hfxray.cv`) maps the loaded DatasetDict to the
    (training, evaluation) datasets used instead of the train and validation splits; evaluation may be None.
    """
    import torch
    from transformers import set_seed

    from .data import load_imagefolder
    from .models import create_model
    from .transforms import Geometry, XrayTensorDataset, decode_split

    output_dir = training_args.output_dir
    resume_from = _start_over(output_dir, run_args.resume, run_args.overwrite_output_dir)
    set_seed(training_args.seed)
    if training_args.use_cpu or not torch.cuda.is_available():
        from .cpu_memory import keep_freed_memory

        keep_freed_memory()
    # The model first: a checkpoint that cannot be loaded fails before any data work.
    model, processor, spec = create_model(model_args.model, model_args.preset, image_size=recipe_args.image_size,
                                          resize_size=recipe_args.resize_size, checkpoint=model_args.checkpoint)
    geometry = Geometry.from_processor(processor)
    dataset = load_imagefolder(data_args.data_dir)
    if select_splits is not None:
        train_split, evaluation_split = select_splits(dataset)
    elif "validation" not in dataset:
        raise DataError(f"{data_args.data_dir}: no validation split. To fix: prepare with --val-fraction > 0.")
    else:
        train_split, evaluation_split = dataset["train"], dataset["validation"]
    if data_args.max_train_samples:
        train_split = train_split.select(range(min(data_args.max_train_samples, len(train_split))))
    splits = {}
    for name, split in (("train", train_split), ("validation", evaluation_split)):
        if split is None:
            continue
        images, labels = decode_split(split, geometry.resize, desc=f"decoding {name}")
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
        callbacks=[_epoch_callback(splits["train"])],
        recipe=recipe_args,
    )
    config = resolved_config(model_args, data_args, recipe_args, run_args, training_args)
    config.update(model_tag=spec.tag, pretrained_checkpoint=model_args.checkpoint or spec.checkpoint,
                  world_size=training_args.world_size, train_size=len(splits["train"]),
                  validation_size=len(splits.get("validation", ())), test_size=len(dataset["test"]))
    if trainer.is_world_process_zero():
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "args.yaml").write_text(yaml.safe_dump(_plain(config), sort_keys=True))

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
    return train_metrics


def _plain(value):
    """YAML-safe copy (enums and paths as strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))
