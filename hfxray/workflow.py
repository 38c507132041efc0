"""`scripts/train.py` / `hfxray train`: train -> calibrate -> evaluate -> model card -> optional push.

Each step is a function a reader can call alone on a run folder; `run` only chains them. The Hub token is read
once, before training, and kept out of the TrainingArguments so that nothing the Trainer writes can hold it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import HfxrayError, printable
from .logs import configure, get_logger

logger = get_logger(__name__)
CALIBRATION_FILE = "calibration.json"


def calibrate_run(run_dir: str | Path, data_dir: str | Path, enabled: bool = True, model=None, processor=None,
                  cache_dir: str | None = None):
    """Fit a temperature on the validation split and fold it into the saved model when the rule allows.

    Writes `calibration.json` (the decision and its reason) and, when folding, the model again. Returns the
    `TemperatureDecision`.
    """
    from .calibration import TemperatureDecision, decide_temperature, fold_temperature, folded_temperature
    from .evaluation import split_logits
    from .models import load_trained

    run_dir = Path(run_dir)
    if model is None:
        model, processor = load_trained(str(run_dir))
    if not enabled:
        decision = TemperatureDecision(None, False, "turned off (--calibrate false)", 0)
    elif folded_temperature(model) != 1.0:
        decision = TemperatureDecision(None, False, "a temperature is already folded into this model", 0)
    else:
        logits, labels, _ = split_logits(model, processor, data_dir, "validation", cache_dir=cache_dir)
        decision = decide_temperature(logits, labels)
        if decision.fold:
            fold_temperature(model, decision.temperature)
            model.save_pretrained(run_dir)
    (run_dir / CALIBRATION_FILE).write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    logger.info("calibration: %s%s", f"T = {decision.temperature:.3g} folded; " if decision.fold else
                "no temperature folded; ", decision.reason)
    return decision


def evaluate_run(run_dir: str | Path, data_dir: str | Path, model=None, processor=None, n_resamples: int = 1000,
                 cache_dir: str | None = None) -> dict:
    """The test report of the saved model (as it ships): `test_results.json` and `test_reliability.png`."""
    from .evaluation import report_split
    from .models import load_trained

    run_dir = Path(run_dir)
    if model is None:
        model, processor = load_trained(str(run_dir))
    return report_split(model, processor, data_dir, "test", out=run_dir / "test_results.json",
                        n_resamples=n_resamples, title="Reliability (test split)", prefix="test",
                        cache_dir=cache_dir)


def run(model_args, data_args, recipe_args, run_args, training_args, hub_repo: str | None = None,
        hub_token: str | None = None) -> dict:
    """Train, then (main process only) calibrate, evaluate, write the model card and push; returns test metrics."""
    from .families import model_family
    from .hub import push_run, write_model_card
    from .models import load_trained
    from .training import train

    train(model_args, data_args, recipe_args, run_args, training_args)
    if training_args.process_index != 0:
        return {}
    run_dir = Path(training_args.output_dir)
    model, processor = load_trained(str(run_dir))
    decision = calibrate_run(run_dir, data_args.data_dir, run_args.calibrate, model, processor, data_args.cache_dir)
    report = evaluate_run(run_dir, data_args.data_dir, model, processor, cache_dir=data_args.cache_dir)
    write_model_card(run_dir, repo_id=hub_repo)
    if hub_repo:
        uploaded = push_run(run_dir, hub_repo, token=hub_token, private=bool(training_args.hub_private_repo))
        logger.info("pushed %d files to https://huggingface.co/%s", len(uploaded), hub_repo)
    return dict(report, family=model_family(model), calibration=decision)


def summary(run_dir: str | Path, data_dir: str | Path, report: dict, decision=None) -> str:
    """The readable end of a run: where everything is, the test metrics with CIs, and the next commands."""
    import shlex

    from .metrics import chance_sentence

    run, data = Path(run_dir), Path(data_dir)
    quoted, data_quoted = shlex.quote(str(run)), shlex.quote(str(data))
    intervals = report.get("ci95") or {}

    def with_ci(name: str, label: str) -> str:
        value, (low, high) = report.get(name), intervals.get(name) or (None, None)
        if value is None:
            return f"{label} n/a"
        return f"{label} {value:.3f}" + (f" ({low:.3f}-{high:.3f})" if low is not None and high is not None else "")

    calibration = (f"T = {decision.temperature:.3g} folded into the head" if decision and decision.fold
                   else "no temperature folded") + (f": {decision.reason}" if decision else "")
    method = "rollout" if report.get("family") == "vit" else "gradcam"
    lines = [
        f"Run finished: {run}",
        f"  model card      {run / 'README.md'}",
        f"  model           {run} (config.json, model.safetensors, preprocessor_config.json)",
        f"  test results    {run / 'test_results.json'}, {run / 'test_reliability.png'}",
        f"  test split      n = {report.get('n')}; {with_ci('accuracy', 'accuracy')}; {with_ci('auroc', 'AUROC')}; "
        f"{with_ci('ece', 'ECE')} (95% CIs, {report.get('bootstrap_unit', 'image')}-level bootstrap)",
        f"  calibration     {calibration}",
        *([f"  {chance}"] if (chance := chance_sentence(report, intervals)) else []),
        "  next:",
        f"    hfxray evaluate --model {quoted} --data-dir {data_quoted}",
        f"    hfxray explain --model {quoted} --method {method} --out {shlex.quote(str(run / 'maps'))} "
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

    processes = max(int(os.environ.get(name, "1") or 1) for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
    if processes > 1 and not torch.cuda.is_available() and "ACCELERATE_USE_CPU" not in os.environ:
        os.environ["ACCELERATE_USE_CPU"] = "true"


def main(argv: list[str] | None = None, prog: str = "scripts/train.py") -> int:
    """Entry point of scripts/train.py and `hfxray train`: one `error:` line and exit 2 for any HfxrayError.

    Under `hfxray -q` (train, demo) it keeps to warnings, errors and the final summary.
    """
    from .arguments import ConfigError, parse_args
    from .compat import check_versions
    from .hub import prepare_push_to_hub
    from .outputs import check_run_folder

    configure()
    connect_cpu_processes()
    try:
        check_versions()
        model_args, data_args, recipe_args, run_args, training_args = parse_args(argv, prog=prog)
        # hfxray's own messages at INFO on the main process unless --log_level says otherwise; replicas warn only.
        passive = training_args.log_level == "passive" and training_args.should_log
        configure("INFO" if passive else training_args.get_process_log_level())
        if training_args.output_dir in (None, "trainer_output"):
            raise ConfigError("--output_dir is required. To fix: pass --output_dir OUT")
        check_run_folder(training_args.output_dir, data_args.data_dir, model_args.checkpoint)
        # Hub access is checked before any model or data work. The upload itself is hfxray's curated one (model
        # card, safetensors, processor, results): the Trainer's would add TensorBoard runs/ and replace the card.
        hub_repo = prepare_push_to_hub(training_args)
        hub_token = training_args.hub_token
        training_args.push_to_hub = False
        training_args.hub_token = None  # never pickled into training_args.bin or checkpoints
        report = run(model_args, data_args, recipe_args, run_args, training_args, hub_repo, hub_token)
    except HfxrayError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    finally:
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if report:
        print(summary(training_args.output_dir, data_args.data_dir, report, report.get("calibration")))
    return 0
