"""`scripts/train.py` / `hfxray train`: train -> calibrate -> evaluate -> OOD check -> model card -> optional push.

Each step is a function a reader can call alone on a run folder; `run` only chains them, handing each the model
training returned (no reload from disk). The Hub token is read once, before training, and kept out of the
TrainingArguments so that nothing the Trainer writes can hold it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import HfxrayError, printable
from .logs import configure, get_logger
from .outputs import write_atomic
from .runs import RunConfig, RunFolder

logger = get_logger(__name__)
CALIBRATION_FILE = RunFolder.CALIBRATION


def calibrate_run(run_dir: str | Path, data_dir: str | Path, enabled: bool = True, model=None, processor=None,
                  cache_dir: str | None = None):
    """Fit a temperature on the validation split and fold it into the saved model when the rule allows.

    Writes `calibration.json` (the decision and its reason) and, when folding, the model again. Returns the
    `TemperatureDecision` and the record written.
    """
    from .calibration import TemperatureDecision, decide_temperature, folded_temperature
    from .evaluation import patient_groups, split_logits
    from .models import load_trained

    if model is None:
        model, processor = load_trained(str(run_dir))
    if not enabled:
        decision = TemperatureDecision(None, False, "turned off (--calibrate false)", 0)
    elif folded_temperature(model) != 1.0:
        decision = TemperatureDecision(None, False, "a temperature is already folded into this model", 0)
    else:
        logits, labels, files = split_logits(model, processor, data_dir, "validation", cache_dir=cache_dir)
        decision = decide_temperature(logits, labels, groups=patient_groups(data_dir, files))
    return decision, record_calibration(run_dir, model, decision)


def record_calibration(run_dir: str | Path, model, decision, enabled: bool = True, **details) -> dict:
    """The one calibration step of training and of the CV refit: fold the decided temperature into `model` and
    save it (when the rule and `enabled` allow), and write `calibration.json` with the decision and `details`."""
    from .calibration import fold_temperature

    folded = bool(decision.fold and enabled)
    if folded:
        fold_temperature(model, decision.temperature)
        model.save_pretrained(run_dir)
    record = dict(decision.to_dict(), folded=folded, **details)
    write_atomic(RunFolder(run_dir).calibration, json.dumps(record, indent=2) + "\n")
    logger.info("calibration: %s%s", f"T = {decision.temperature:.3g} folded; " if folded else
                "no temperature folded; ", decision.reason)
    return record


def evaluate_run(run_dir: str | Path, data_dir: str | Path, model=None, processor=None, n_resamples: int = 1000,
                 cache_dir: str | None = None) -> dict:
    """The test report of the saved model (as it ships): `test_results.json` and `test_reliability.png`."""
    from .evaluation import report_split
    from .models import load_trained

    run_dir = Path(run_dir)
    if model is None:
        model, processor = load_trained(str(run_dir))
    return report_split(model, processor, data_dir, "test", out=RunFolder(run_dir).test_results,
                        n_resamples=n_resamples, title="Reliability (test split)", prefix="test",
                        cache_dir=cache_dir)


def run(config: RunConfig, hub_repo: str | None = None, hub_token: str | None = None) -> dict:
    """Train, then (main process only) calibrate, evaluate, write the model card and push; returns test metrics."""
    from .families import model_family
    from .evaluation import prefixed
    from .hub import CardFacts, push_run, write_model_card
    from .scope import fit_ood_or_say_why
    from .training import train

    trained = train(config)
    if config.training.process_index != 0:
        return {}
    data_args, training_args = config.data, config.training
    run_dir, model, processor = trained.folder.path, trained.model, trained.processor
    decision, calibration = calibrate_run(run_dir, data_args.data_dir, config.run.calibrate, model, processor,
                                          data_args.cache_dir)
    report = evaluate_run(run_dir, data_args.data_dir, model, processor, cache_dir=data_args.cache_dir)
    fit_ood_or_say_why(run_dir, data_args.data_dir, model, processor, cache_dir=data_args.cache_dir)
    # The card states what this process holds, in the JSON types its files were written with: nothing read back.
    facts = CardFacts(args=trained.args, config=json.loads(model.config.to_json_string(use_diff=False)),
                      processor=json.loads(processor.to_json_string()),
                      train_results=trained.metrics, test_results=prefixed(report, "test"), calibration=calibration)
    write_model_card(run_dir, repo_id=hub_repo, facts=facts)
    if hub_repo:
        uploaded = push_run(run_dir, hub_repo, token=hub_token, private=bool(training_args.hub_private_repo))
        logger.info("pushed %d files to https://huggingface.co/%s", len(uploaded), hub_repo)
    return dict(report, family=model_family(model), calibration=decision)


def summary(run_dir: str | Path, data_dir: str | Path, report: dict, decision=None) -> str:
    """The readable end of a run: where everything is, the test metrics with CIs, and the next commands."""
    import shlex

    from .families import ADAPTERS
    from .metrics import ece_text
    from .metrics import chance_sentence

    run, data = Path(run_dir), Path(data_dir)
    quoted, data_quoted = shlex.quote(str(run)), shlex.quote(str(data))
    intervals = report.get("ci95") or {}

    def with_ci(name: str, label: str) -> str:
        value, (low, high) = report.get(name), intervals.get(name) or (None, None)
        if value is None:
            return f"{label} n/a"
        if name == "ece":
            return f"{label} {ece_text(value, (low, high), report.get('ece_noise_floor'), report.get('ece_debiased'))}"
        return f"{label} {value:.3f}" + (f" ({low:.3f}-{high:.3f})" if low is not None and high is not None else "")

    calibration = (f"T = {decision.temperature:.3g} folded into the head" if decision and decision.fold
                   else "no temperature folded") + (f": {decision.reason}" if decision else "")
    family = ADAPTERS.get(report.get("family"))
    method = family.explanation if family else "gradcam"
    # Maps show patients' X-rays: suggest a folder beside the run, never in it (what `push` publishes)
    maps = shlex.quote(str(run.parent / f"{run.name}-maps"))
    lines = [
        f"Run finished: {run}",
        f"  model card      {run / 'README.md'}",
        f"  model           {run} (config.json, model.safetensors, preprocessor_config.json)",
        f"  test results    {run / 'test_results.json'}, {run / 'test_reliability.png'}",
        f"  test split      n = {report.get('n')}; {with_ci('accuracy', 'accuracy')}; {with_ci('auroc', 'AUROC')}; "
        f"{with_ci('ece', 'ECE')} (95% CIs, {report.get('bootstrap_unit', 'image')}-level; Wilson for proportions)",
        f"  calibration     {calibration}",
        *([f"  {chance}"] if (chance := chance_sentence(report, intervals)) else []),
        "  next:",
        f"    hfxray evaluate --model {quoted} --data-dir {data_quoted}",
        f"    hfxray explain --model {quoted} --method {method} --out {maps} "
        f"{shlex.quote(str(data / 'test'))}",
        f"    hfxray predict --model {quoted} {shlex.quote(str(data / 'test'))} --out predictions.csv",
        f"    hfxray serve --model {quoted}",
        f"    hfxray push {quoted} YOUR_NAME/{run.resolve().name}",
    ]
    return "\n".join(lines)


def connect_cpu_processes() -> None:
    """Several processes on a machine without a GPU train as one gloo job on the CPU.

    accelerate's multi-process launcher exports ACCELERATE_USE_CPU only for its single-process path; without it,
    processes launched on a CPU-only machine would each train alone on all the data.
    """
    import os

    import torch

    from .env import launched_processes

    if launched_processes() > 1 and not torch.cuda.is_available() and "ACCELERATE_USE_CPU" not in os.environ:
        os.environ["ACCELERATE_USE_CPU"] = "true"


def execute(config: RunConfig) -> dict:
    """A whole run from a config (what `hfxray train` does after parsing): the output folder and Hub access checked
    first, then `run`; returns the test report ({} on processes other than the main one)."""
    from .arguments import ConfigError
    from .compat import check_versions
    from .hub import prepare_push_to_hub
    from .outputs import check_run_folder

    check_versions()
    training_args = config.training
    if training_args.output_dir in (None, "trainer_output"):
        raise ConfigError("--output_dir is required. To fix: pass --output_dir OUT")
    check_run_folder(training_args.output_dir, config.data.data_dir, config.model.checkpoint)
    # Hub access is checked before any model or data work. The upload itself is hfxray's curated one (model
    # card, safetensors, processor, results): the Trainer's would add TensorBoard runs/ and replace the card.
    hub_repo = prepare_push_to_hub(training_args)
    hub_token = training_args.hub_token
    training_args.push_to_hub = False
    training_args.hub_token = None  # never pickled into training_args.bin or checkpoints
    try:
        return run(config, hub_repo, hub_token)
    finally:
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None, prog: str = "scripts/train.py") -> int:
    """Entry point of scripts/train.py and `hfxray train`: one `error:` line and exit 2 for any HfxrayError.

    Under `hfxray -q` (train, demo) it keeps to warnings, errors and the final summary.
    """
    configure()
    connect_cpu_processes()
    try:
        from .arguments import parse_config

        config = parse_config(argv, prog=prog)
        # hfxray's own messages at INFO on the main process unless --log_level says otherwise; replicas warn only.
        training_args = config.training
        passive = training_args.log_level == "passive" and training_args.should_log
        configure("INFO" if passive else training_args.get_process_log_level())
        report = execute(config)
    except HfxrayError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    if report:
        print(summary(config.training.output_dir, config.data.data_dir, report, report.get("calibration")))
    return 0
