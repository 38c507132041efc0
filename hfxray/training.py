"""Fine-tuning with the Hugging Face Trainer: the recipe's loss/optimizer/schedule, Trainer assembly, run files.

Each run folder gets args.yaml (the resolved arguments), TensorBoard events, checkpoints, the best model with its
processor, train_results.json and test_results.json.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import yaml

from .arguments import (ConfigError, DataArguments, ModelArguments, RecipeArguments, RunArguments, parse_args,
                        resolved_config)
from .data import DataError
from .hub import HubError, prepare_push_to_hub, push_run
from .models import ModelLoadError


def _recipe_trainer_class():
    from transformers import Trainer

    from .recipes import build_optimizer, build_scheduler

    class RecipeTrainer(Trainer):
        """The Trainer with its loss, optimizer and schedule taken from the recipe (via the documented hooks)."""

        def __init__(self, *args, recipe: RecipeArguments, **kwargs):
            from .losses import LabelSmoothingCrossEntropy

            self.recipe = recipe
            kwargs.setdefault("compute_loss_func", LabelSmoothingCrossEntropy(recipe.label_smoothing))
            super().__init__(*args, **kwargs)
            self._train_correct = self._train_seen = 0
            self._parameter_count = None

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

        def floating_point_ops(self, inputs: dict) -> int:
            """The Trainer's own estimate (6 x input elements x parameters), with the parameters counted once:
            counting walked every parameter at every step (0.7 ms of a 90 ms bit.small step, more of a tiny one)."""
            main_input = getattr(self.model, "main_input_name", "pixel_values")
            if main_input not in inputs or not hasattr(self.model, "num_parameters"):
                return 0  # as the Trainer does for models that are not PreTrainedModels
            if self._parameter_count is None:
                self._parameter_count = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs[main_input].numel() * self._parameter_count

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

        # transformers 5.x saves checkpoints with the 4.x parameter names (ViT: `vit.encoder.layer.*`) but
        # reloads them for --resume and load_best_model_at_end with a non-strict `load_state_dict`, which
        # silently keeps the current weights. Reload through `from_pretrained`, which maps the names, strictly.
        def _load_weights_from(self, folder: str, model=None) -> None:
            target = self.accelerator.unwrap_model(model if model is not None else self.model)
            reloaded = type(target).from_pretrained(folder, config=target.config)
            target.load_state_dict(reloaded.state_dict(), strict=True)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            self._load_weights_from(resume_from_checkpoint, model)

        def _load_best_model(self) -> None:
            self._load_weights_from(self.state.best_model_checkpoint)

    return RecipeTrainer


def _average_last_checkpoints(trainer, count: int) -> None:
    """Load into the model the mean of the weights of the last `count` checkpoints on disk (resume-safe)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folders = sorted(Path(trainer.args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"),
                     key=lambda path: int(path.name.split("-")[-1]))[-count:]
    if len(folders) < count:
        print(f"warning: --average_last_epochs {count}, but the run has only {len(folders)} epoch checkpoint(s): "
              f"averaging those", file=sys.stderr)
        count = len(folders)
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


def train(model_args: ModelArguments, data_args: DataArguments, recipe_args: RecipeArguments,
          run_args: RunArguments, training_args) -> dict:
    """Fine-tune one model and write the run folder; returns the test metrics."""
    import torch
    from transformers import set_seed

    from .data import load_imagefolder
    from .models import create_model
    from .transforms import Geometry, XrayTensorDataset, decode_split

    output_dir = training_args.output_dir
    resume_from = None
    if run_args.resume:
        resume_from = _last_checkpoint(output_dir)
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint-* folder in {output_dir}. To fix: drop --resume to start "
                              "a new run, or point --output_dir at the interrupted run.")
    elif _last_checkpoint(output_dir) and not run_args.overwrite_output_dir:
        raise ConfigError(f"{output_dir} already holds checkpoints. To fix: pass --resume to continue, or "
                          "--overwrite_output_dir to start over.")
    set_seed(training_args.seed)
    if training_args.use_cpu or not torch.cuda.is_available():
        from .cpu_memory import keep_freed_memory

        keep_freed_memory()
    # The model first: a checkpoint that cannot be loaded fails before any data work.
    model, processor, spec = create_model(model_args.model, model_args.preset, image_size=recipe_args.image_size,
                                          resize_size=recipe_args.resize_size, checkpoint=model_args.checkpoint)
    geometry = Geometry.from_processor(processor)
    dataset = load_imagefolder(data_args.data_dir)
    if "validation" not in dataset:
        raise DataError(f"{data_args.data_dir}: no validation split. To fix: prepare with --val-fraction > 0.")
    train_split = dataset["train"]
    if data_args.max_train_samples:
        train_split = train_split.select(range(min(data_args.max_train_samples, len(train_split))))
    splits = {}
    for name, split in (("train", train_split), ("validation", dataset["validation"]), ("test", dataset["test"])):
        images, labels = decode_split(split, geometry.resize, desc=f"decoding {name}")
        splits[name] = XrayTensorDataset(images, labels, geometry, train=name == "train",
                                         max_zoom=recipe_args.max_zoom, hflip=recipe_args.hflip,
                                         seed=training_args.seed)

    trainer = _recipe_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=processor,
        data_collator=splits["train"].collate,  # same geometry for every split: one collator normalises all
        compute_metrics=compute_eval_metrics,
        callbacks=[_epoch_callback(splits["train"])],
        recipe=recipe_args,
    )
    config = resolved_config(model_args, data_args, recipe_args, run_args, training_args)
    config.update(model_tag=spec.tag, pretrained_checkpoint=model_args.checkpoint or spec.checkpoint,
                  world_size=training_args.world_size, train_size=len(splits["train"]),
                  validation_size=len(splits["validation"]), test_size=len(splits["test"]))
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
    test_output = trainer.predict(splits["test"], metric_key_prefix="test")
    validation_output = trainer.predict(splits["validation"], metric_key_prefix="validation")
    test_metrics = dict(test_output.metrics)
    if trainer.is_world_process_zero():
        test_metrics.update(_full_test_report(test_output, validation_output, data_args.data_dir,
                                              dataset["test"], output_dir))
        if run_args.calibrate:
            from .predict import fold_temperature_into_head

            fold_temperature_into_head(trainer.model, test_metrics["test_temperature"])
    # The best model by the validation metric (load_best_model_at_end) or the averaged weights, calibrated.
    trainer.save_model()
    trainer.save_metrics("test", test_metrics)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return test_metrics


def _full_test_report(test_output, validation_output, data_dir, test_split, output_dir) -> dict:
    """CIs (patient bootstrap), ECE and validation-fitted temperature, as `test_*` keys + a reliability PNG."""
    from .evaluation import patient_groups, split_paths
    from .metrics import apply_temperature, evaluation_report, plot_reliability_diagram

    logits, labels = test_output.predictions, test_output.label_ids
    report = evaluation_report(labels, logits, groups=patient_groups(data_dir, split_paths(test_split)),
                               val_logits=validation_output.predictions, val_labels=validation_output.label_ids)
    plot_reliability_diagram(labels, apply_temperature(logits, 1.0), Path(output_dir) / "test_reliability.png",
                             "Reliability (test split)", probs_after=apply_temperature(logits, report["temperature"]))
    return {f"test_{key}": value for key, value in report.items() if f"test_{key}" not in test_output.metrics}


def _plain(value):
    """YAML-safe copy (enums and paths as strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(getattr(value, "value", value))


def main(argv: list[str] | None = None) -> int:
    """Entry point of scripts/train.py and `hfxray train`."""
    import warnings

    # The Trainer asks for pinned memory by default; on a CPU-only machine torch warns once per DataLoader.
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator.*")
    try:
        model_args, data_args, recipe_args, run_args, training_args = parse_args(argv)
        if training_args.output_dir in (None, "trainer_output"):
            raise ConfigError("--output_dir is required. To fix: pass --output_dir OUT")
        # Hub access is checked before any model or data work. The upload itself is hfxray's curated one
        # (model card, safetensors, processor, results): the Trainer's would add the pickled
        # training_args.bin and TensorBoard runs/ and replace the model card.
        hub_repo = prepare_push_to_hub(training_args)
        training_args.push_to_hub = False
        metrics = train(model_args, data_args, recipe_args, run_args, training_args)
        if hub_repo and training_args.process_index == 0:
            uploaded = push_run(training_args.output_dir, hub_repo, token=training_args.hub_token,
                                private=bool(training_args.hub_private_repo))
            print(f"pushed {len(uploaded)} files to https://huggingface.co/{hub_repo}")
    except (ConfigError, DataError, ModelLoadError, HubError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    return 0
