"""`hfxray evaluate --model DIR --data-dir PREPARED [--split test] [--out FILE.json] [--json]`: a table of the
metrics with their 95 % CIs (the JSON on stdout with --json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="trained run folder (config.json, model.safetensors, ...)")
    parser.add_argument("--data-dir", required=True, help="prepared ImageFolder (hfxray data prepare)")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--out", default=None, help="JSON file (default: MODEL/SPLIT_evaluation.json); the "
                                                     "reliability diagram is written beside it")
    parser.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def run(args) -> int:
    from ..data import check_prepared
    from ..dataset_repo import resolve_data_dir
    from ..env import looks_local
    from ..evaluation import predictions_path, reliability_path, report_split, shortcut_message
    from ..outputs import check_output_file
    from . import UsageError, require_positive, require_seed
    from ..models import load_trained

    require_positive(n_resamples=args.n_resamples)
    require_seed(seed=args.seed)
    args.data_dir = resolve_data_dir(args.data_dir)  # a dataset repo of `hfxray data push`, read back
    check_prepared(args.data_dir)
    if not Path(args.model).is_dir() and (looks_local(args.model) or args.out is None):
        hub = "" if looks_local(args.model) else ", or --out FILE.json to evaluate it as a Hub id"
        raise UsageError(f"--model {args.model}: no such folder. To fix: pass the folder a training run wrote (its "
                         f"--output-dir, e.g. runs/quick-bit){hub}.")
    out = Path(args.out) if args.out else Path(args.model) / f"{args.split}_evaluation.json"
    data = [("the --data-dir", args.data_dir)]
    check_output_file(out, "--out" if args.out else "the default --out", data)
    check_output_file(reliability_path(out), "the reliability diagram", data)
    check_output_file(predictions_path(out), "the predictions file", data)
    model, processor = load_trained(args.model)
    report = report_split(model, processor, args.data_dir, args.split, out, args.n_resamples, args.seed)
    keys = ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "f1", "ece", "ece_noise_floor",
            "ece_calibrated_p", "ece_debiased", "folded_temperature", "ece_before_folding")
    summary = {k: report[k] for k in keys if report.get(k) is not None}
    if report["folded_temperature"] == 1.0:
        summary["calibration"] = "no temperature folded into this model: ECE is that of its plain softmax"
    else:
        summary["calibration"] = (f"T = {report['folded_temperature']:.4g} was folded into this model at training: "
                                  "ECE is the shipped model's; ece_before_folding is the same model with T = 1")
    shown = ("accuracy", "balanced_accuracy", "auroc", "ece")
    result = {"split": args.split, **summary, "chance": report.get("chance"),
              "ci95": {k: report["ci95"][k] for k in shown},
              "ci95_method": {k: report["ci95_method"][k] for k in shown}}
    if "by_source" in report:
        result["trained_on"] = report["sources"]["train"]
        result["by_source"] = {name: {"n": r["n"], "accuracy": r["accuracy"], "auroc": r["auroc"],
                                      "ci95": {k: r["ci95"][k] for k in ("accuracy", "auroc")}}
                               for name, r in report["by_source"].items()}
        result["source_shortcut"] = shortcut_message(report["source_shortcut"])
    if args.json:
        print(json.dumps({**result, "out": str(out)}, indent=1))
    else:
        print(table(args.model, args.split, report, out))
    if "source_shortcut" in report and report["source_shortcut"]["warning"]:
        print(shortcut_message(report["source_shortcut"]), file=sys.stderr)
    return 0


# (key, label) of the rows `hfxray evaluate` prints, in order.
ROWS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"),
        ("sensitivity", "sensitivity (virus found)"), ("specificity", "specificity (normal found)"),
        ("precision", "precision"), ("f1", "F1"), ("ece", "ECE (as shipped)"))


def table(model: str, split: str, report: dict, out: Path) -> str:
    """The readable result: metrics with 95 % CIs, the calibration, a verdict when at chance, where files went."""
    from ..evaluation import predictions_path, reliability_path
    from ..metrics import chance_sentence, ece_text

    def interval(pair) -> str:
        low, high = pair or (None, None)
        return "-" if low is None or high is None else f"{low:.3f}-{high:.3f}"

    intervals = report.get("ci95") or {}
    lines = [f"{model} on the {split} split: n = {report.get('n')} images ({report.get('n_positive')} virus); 95% CIs: "
             f"Wilson for proportions, a {report.get('bootstrap_unit', 'image')}-level bootstrap "
             f"({report.get('n_resamples')} resamples) for the others",
             "", f"  {'metric':<28}{'value':>7}   95% CI"]
    for key, label in ROWS:
        if key == "ece" and report.get(key) is not None:  # beside its noise floor; the CI is the debiased ECE's
            lines.append(f"  {label:<28}  " + ece_text(report[key], intervals.get(key), report.get("ece_noise_floor"),
                                                      report.get("ece_debiased")))
        elif report.get(key) is not None:
            lines.append(f"  {label:<28}{report[key]:>7.3f}   {interval(intervals.get(key))}")
    if report.get("ece_before_folding") is not None:
        lines.append(f"  {'ECE before folding (T = 1)':<28}{report['ece_before_folding']:>7.3f}   "
                     f"{interval(report.get('ece_before_folding_ci95'))}")
    temperature = report.get("folded_temperature", 1.0)
    lines += ["", "calibration: " + ("no temperature folded into this model; the ECE is that of its plain softmax"
                                     if temperature == 1.0 else
                                     f"T = {temperature:.3g} was folded in at training; the ECE is the shipped "
                                     "model's")]
    chance = chance_sentence(report, intervals)
    if chance:
        lines.append(chance)
    for name, result in (report.get("by_source") or {}).items():
        ci = result.get("ci95") or {}
        auroc = (f", AUROC {result['auroc']:.3f} ({interval(ci.get('auroc'))})" if result.get("auroc") is not None
                 else "")
        lines.append(f"source {name}: n = {result['n']}, accuracy {result['accuracy']:.3f} "
                     f"({interval(ci.get('accuracy'))}){auroc}")
    lines.append(f"written: {out}, {reliability_path(out).name}, {predictions_path(out).name}")
    return "\n".join(lines)
