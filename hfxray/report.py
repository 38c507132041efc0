"""The study's comparison report (tables, figures, a generated paragraph) from run folders' own files only.

Reads per run: args.yaml (resolved config), test_results.json (metrics, CIs, calibration), TensorBoard events
under runs/ (training curves) and the prepared folder's manifest.csv (named in args.yaml) for Table 1.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from .data import CLASS_NAMES, SPLITS, kept_counts, read_manifest
from .errors import HfxrayError
from .outputs import check_output_folder

HYPERPARAMETERS = (
    ("model_tag", "model"), ("recipe", "recipe"), ("pretrained_checkpoint", "weights"), ("optim", "optimizer"),
    ("learning_rate", "lr"), ("schedule", "schedule"), ("num_train_epochs", "epochs"), ("max_steps", "max steps"),
    ("per_device_train_batch_size", "batch/device"), ("gradient_accumulation_steps", "accumulation"),
    ("weight_decay", "weight decay"), ("label_smoothing_factor", "label smoothing"), ("resize_size", "resize px"),
    ("image_size", "crop px"), ("world_size", "processes"),
)


class ReportError(HfxrayError):
    """A run folder lacks a file the report needs; the message names it."""


@dataclass
class Run:
    name: str
    path: Path
    args: dict
    test: dict
    curves: dict[str, list[tuple[int, float]]]


def _events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalar series of every TensorBoard event file under run_dir/runs (later files extend earlier ones)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for event_file in sorted((run_dir / "runs").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                series.setdefault(tag, {})[event.step] = event.value
    return {tag: sorted(points.items()) for tag, points in series.items()}


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such folder. To fix: pass the --output_dir of a finished training run.")
    missing = [n for n in ("args.yaml", "test_results.json") if not (run_dir / n).is_file()]
    if missing:
        raise ReportError(f"{run_dir}: missing {', '.join(missing)}. To fix: pass folders written by "
                          "scripts/train.py (a finished run).")
    args = yaml.safe_load((run_dir / "args.yaml").read_text())
    test = json.loads((run_dir / "test_results.json").read_text())
    name = f"{args.get('model_tag', run_dir.name)} / {args.get('recipe', '?')}"
    return Run(name=name, path=run_dir, args=args, test=test, curves=_events(run_dir))


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("—" if value is None else str(value))


def _hyperparameter(args: dict, key: str) -> str:
    value = args.get(key)
    if key == "pretrained_checkpoint" and not value:
        return "random init"
    steps_set = (args.get("max_steps") or -1) > 0
    if key == "num_train_epochs" and steps_set:
        return "—"  # the Trainer ignores num_train_epochs when max_steps is set
    if key == "max_steps" and not steps_set:
        return "—"
    if key == "resize_size":
        # A square resize squashes the film (aspect not kept): two runs alike in every other column see other pixels.
        size = value or args.get("image_size")
        if size is None:
            return "—"
        return f"{size} × {size} (square)" if args.get("resize_mode") == "square" else f"{size} (shortest edge)"
    if key == "schedule":
        from .hub import schedule_text

        return schedule_text(args)
    return f"{value:g}" if isinstance(value, float) else ("—" if value is None else str(value))


def table1(data_dir: Path) -> str:
    rows = read_manifest(data_dir)
    hierarchy = Counter((r["Label"], r["Label_1_Virus_category"], r["Label_2_Virus_category"]) for r in rows
                        if r["Label"])
    split_counts = kept_counts(rows)
    first = _table(["Label", "Label_1_Virus_category", "Label_2_Virus_category", "images"],
                   [[a or "—", b or "—", c or "—", n] for (a, b, c), n in sorted(hierarchy.items())])
    second = _table(["split", *CLASS_NAMES, "total"],
                    [[s, *(split_counts[s][c] for c in CLASS_NAMES), sum(split_counts[s].values())] for s in SPLITS])
    skipped = Counter(r["reason"] for r in rows if r["status"] == "skipped")
    skipped_text = "; ".join(f"{n} × {reason}" for reason, n in skipped.most_common()) or "none"
    text = f"{first}\n\nBinary classes per split (patient-level validation split):\n\n{second}\n\nSkipped: {skipped_text}."
    names = sorted({r.get("source", "") for r in rows} - {""})
    if len(names) > 1:
        per_source = Counter((r["source"], r["split"], r["label"]) for r in rows if r["status"] == "kept")
        shared = sum(1 for r in rows if r.get("duplicate_of"))
        table = _table(["source", *(f"{s} normal/virus" for s in SPLITS)],
                       [[name, *(f"{per_source[(name, s, 'normal')]}/{per_source[(name, s, 'virus')]}" for s in SPLITS)]
                        for name in names])
        text += f"\n\nKept images per source:\n\n{table}\n\nImages found in two sources (kept once): {shared}."
    return text


def _metric_with_ci(run: Run, metric: str) -> tuple[float | None, list | None]:
    return run.test.get(f"test_{metric}"), (run.test.get("test_ci95") or {}).get(metric)


def _with_ci(run: Run, metric: str) -> str:
    value, ci = _metric_with_ci(run, metric)
    if value is None:
        return "—"
    return f"{_fmt(value)} ({_fmt(ci[0])}–{_fmt(ci[1])})" if ci and None not in ci else _fmt(value)


def _verdict(run: Run) -> str:
    """"**at chance**" (or below) by `metrics.chance_verdict`, the one rule; else "above chance"."""
    from .metrics import chance_verdict

    verdict = chance_verdict(run.test.get("test_ci95"))
    return f"**{verdict}**" if verdict else "above chance"


def figure1(runs: list[Run], path: Path) -> Path:
    """Test accuracy and AUROC per run with 95 % bootstrap CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(runs) + 2), 4.2))
    width = 0.38
    for offset, metric, color in ((-width / 2, "accuracy", "#4C72B0"), (width / 2, "auroc", "#DD8452")):
        values, lows, highs = [], [], []
        for run in runs:
            value, ci = _metric_with_ci(run, metric)
            values.append(value or 0.0)
            lows.append((value or 0.0) - (ci[0] if ci and ci[0] is not None else value or 0.0))
            highs.append((ci[1] if ci and ci[1] is not None else value or 0.0) - (value or 0.0))
        positions = [i + offset for i in range(len(runs))]
        ax.bar(positions, values, width, color=color, label=metric.upper() if metric == "auroc" else "accuracy")
        ax.errorbar(positions, values, yerr=[lows, highs], fmt="none", ecolor="black", capsize=4, lw=1)
    ax.axhline(0.5, color="gray", ls="--", lw=1, label="chance")
    ax.set_xticks(range(len(runs)), [run.name for run in runs], rotation=15, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test split (95 % CI)")
    ax.set_title("Figure 1 — test accuracy and AUROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figure2(runs: list[Run], path: Path) -> Path:
    """Training loss, training accuracy and validation accuracy per run, from the TensorBoard events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("train/loss", "training loss"), ("train/train_accuracy", "training accuracy"),
              ("eval/accuracy", "validation accuracy"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (tag, title) in zip(axes, panels):
        for run in runs:
            points = run.curves.get(tag, [])
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=run.name)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(title.split()[-1])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Figure 2 — training curves (TensorBoard events)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def comparison_paragraph(runs: list[Run], n_resamples: int = 1000) -> str:
    """Each pair of runs compared on the same test images (a paired patient-level bootstrap of the difference in
    AUROC and accuracy), in the order given; no ranking from each run's own intervals, which overlap even when
    the paired difference is clear. Runs at chance are named first."""
    from .evaluation import read_predictions_csv
    from .metrics import chance_verdict, paired_difference

    text = []
    for run in runs:
        verdict = chance_verdict(run.test.get("test_ci95"))
        if verdict:
            text.append(f"- **{run.name} is {verdict}** (AUROC {_with_ci(run, 'auroc')}, balanced accuracy "
                        f"{_with_ci(run, 'balanced_accuracy')}): its figures, its ECE included, describe a model "
                        "that does not tell normal from virus.")
    predictions = {}
    for run in runs:
        path = run.path / "test_predictions.csv"
        predictions[run.name] = read_predictions_csv(path) if path.is_file() else None
    for index, first in enumerate(runs):
        for second in runs[index + 1:]:
            a, b = predictions[first.name], predictions[second.name]
            if a is None or b is None:
                missing = first.name if a is None else second.name
                text.append(f"- {first.name} vs {second.name}: not compared ({missing} has no test_predictions.csv; "
                            "re-run its training to write it).")
                continue
            if set(a) != set(b):
                text.append(f"- {first.name} vs {second.name}: not compared (they were tested on different images).")
                continue
            files = sorted(a)
            labels = [a[f][1] for f in files]
            difference = paired_difference(labels, [a[f][2] for f in files], [b[f][2] for f in files],
                                           groups=[a[f][0] for f in files], n_resamples=n_resamples)
            parts = []
            for metric, label in (("auroc", "AUROC"), ("accuracy", "accuracy")):
                value, low, high = difference[metric]
                if value is None:
                    continue
                if low > 0 or high < 0:
                    verdict = f"{first.name if low > 0 else second.name} is ahead"
                else:
                    verdict = "the test split cannot separate them"
                parts.append(f"{label} {value:+.3f} (95 % CI {low:+.3f} to {high:+.3f}): {verdict}")
            text.append(f"- {first.name} minus {second.name}: " + "; ".join(parts) + ".")
    if len(runs) == 1:
        return "\n".join([*text, "One run: nothing to compare."])
    unit = runs[0].test.get("test_bootstrap_unit", "image")
    text.append(f"\nDifferences are paired: each bootstrap resample ({unit}-level, {n_resamples} resamples) draws the "
                f"same {unit}s of the {runs[0].test.get('test_n')} test images for both models.")
    return "\n".join(text)


def external_validation_section(runs: list[Run]) -> str:
    """"Trained on X, tested on Y", the metrics per test source (patient bootstrap CIs) and the source shortcut
    check, for runs whose data merged several sources; "" when none did."""
    from .evaluation import shortcut_message

    with_sources = [run for run in runs if run.test.get("test_by_source")]
    if not with_sources:
        return ""

    def listed(counts: dict | None) -> str:
        return ", ".join(f"{name} ({n})" for name, n in (counts or {}).items()) or "—"

    protocol = _table(["run", "trained on (images)", "validated on", "tested on"],
                      [[run.name, listed((run.test.get("test_sources") or {}).get("train")),
                        listed((run.test.get("test_sources") or {}).get("validation")),
                        listed((run.test.get("test_sources") or {}).get("test"))] for run in with_sources])
    rows = []
    for run in with_sources:
        for source, report in run.test["test_by_source"].items():
            ci = report.get("ci95") or {}
            rows.append([run.name, source, f"{report.get('n')} ({report.get('n_positive')})",
                         *(f"{_fmt(report.get(m))} ({_fmt((ci.get(m) or [None])[0])}–{_fmt((ci.get(m) or [None, None])[1])})"
                           for m in ("accuracy", "auroc")),
                         _fmt(report.get("sensitivity")), _fmt(report.get("specificity"))])
    metrics = _table(["run", "test source", "n (virus)", "accuracy (95% CI)", "AUROC (95% CI)", "sensitivity",
                      "specificity"], rows)
    checks = "\n".join(f"- {run.name}: {shortcut_message(run.test['test_source_shortcut'])}." for run in with_sources
                       if run.test.get("test_source_shortcut"))
    return f"""## External validation — per source

{protocol}

{metrics}

Source shortcut check (AUROC of the model's p(virus) at telling two sources apart among images of one class; 0.5
means the sources look alike to the model, a value near 1 means its output carries the source):

{checks}
"""


def calibration_section(runs: list[Run], out_dir: Path) -> str:
    import shutil

    from .metrics import ece_text
    from .metrics import chance_verdict

    rows, images = [], []
    for index, run in enumerate(runs):
        ece_ci = (run.test.get("test_ci95") or {}).get("ece") or [None, None]
        folded = run.test.get("test_folded_temperature") or 1.0
        verdict = chance_verdict(run.test.get("test_ci95"))
        chance = f" — **{verdict}**: the ECE of probabilities that decide nothing" if verdict else ""
        rows.append([run.name, ece_text(run.test.get("test_ece"), ece_ci, run.test.get("test_ece_noise_floor"),
                                        run.test.get("test_ece_debiased")) + chance,
                     _fmt(folded, 2) if folded != 1.0 else "none", _fmt(run.test.get("test_ece_before_folding")),
                     run.args.get("label_smoothing_factor")])
        diagram = run.path / "test_reliability.png"
        if diagram.is_file():
            target = out_dir / f"reliability_{index}_{run.path.name}.png"
            shutil.copyfile(diagram, target)
            images.append(f"![{run.name}]({target.name})")
    table = _table(["run", "ECE as shipped (noise floor; debiased, 95% CI)", "folded temperature", "ECE before folding",
                    "label smoothing"], rows)
    return table + "\n\n" + "\n".join(images)


def write_report(run_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Write out_dir/report.md and its PNG figures; returns the Markdown path."""
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise ReportError("no run folder given. To fix: hfxray report RUN_DIR [RUN_DIR ...] --out DIR")
    out_dir = check_output_folder(out_dir, "--out", recursive=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dirs = sorted({str(r.args.get("data_dir")) for r in runs if r.args.get("data_dir")})
    data_dir = next((Path(d) for d in data_dirs if (Path(d) / "manifest.csv").is_file()), None)
    table_1 = table1(data_dir) if data_dir else "_The prepared folder named in args.yaml was not found._"
    hyper_rows = [[run.name, *(_hyperparameter(run.args, key) for key, _ in HYPERPARAMETERS[1:])] for run in runs]
    table_2 = _table(["run", *(label for _, label in HYPERPARAMETERS[1:])], hyper_rows)
    metric_rows = [[run.name, *(_with_ci(run, m) for m in
                                ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "f1")),
                    run.test.get("test_n"), _verdict(run)] for run in runs]
    metrics_table = _table(["run", "accuracy", "balanced acc.", "AUROC", "sensitivity", "specificity", "F1", "n",
                            "verdict"], metric_rows)
    figure1(runs, out_dir / "figure1_test_metrics.png")
    figure2(runs, out_dir / "figure2_training_curves.png")
    markdown = f"""# hfxray comparison report

Runs: {", ".join(f"`{r.path}`" for r in runs)}. Everything below is read from these folders.

## Table 1 — data (source classes and the binary task)

{table_1}

## Table 2 — hyperparameters as run (from each run's args.yaml)

{table_2}

## Table 3 — test metrics (virus = positive class; 95 % CIs)

{metrics_table}

![Figure 1](figure1_test_metrics.png)

## Figure 2 — training curves

![Figure 2](figure2_training_curves.png)

{external_validation_section(runs)}
## Table 4 — calibration (as shipped, 95 % CIs) and reliability diagrams

{calibration_section(runs, out_dir)}

## Comparison

{comparison_paragraph(runs)}
"""
    path = out_dir / "report.md"
    path.write_text(markdown)
    return path
