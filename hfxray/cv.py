"""Model selection without the test split: patient-grouped k-fold cross-validation, then a refit on all of it.

Protocol (`hfxray cv`, README "Recipes"):
1. The pool is every kept image of the train and validation splits of a prepared folder; the test split is never
   read by the folds.
2. The pool is cut into k folds by scikit-learn's `StratifiedGroupKFold`: all images of one patient
   (`patient_group` in the manifest) fall in the same fold, and each fold keeps the class balance. With
   `repeats` > 1 the cut is redone with another shuffle (seed + repeat).
3. For each variant (a recipe plus flag overrides) and each fold, a model trains on the other folds through the
   same Trainer path as `hfxray train`, for the recipe's fixed length, and the held-out fold is predicted once by
   the final (or weight-averaged) model. The held-out fold never picks a checkpoint: per-epoch evaluation is off
   and `load_best_model_at_end` is forced false, since selecting on it would make the estimate optimistic.
4. Per variant: mean ± sd over folds of accuracy, AUROC and ECE, and the same metrics of the pooled out-of-fold
   predictions. Variants are compared with the first one, fold by fold (the same folds for all), with the
   Nadeau-Bengio corrected resampled t-test (folds share training images, so the plain paired t-test is too
   confident). The selection test (`hfxray.selection`): each candidate's paired gain in the rule's metric is
   tested one-sided against the `min_gain` fixed in the candidates file, p-values Holm-adjusted across the
   candidates; the paired patient bootstrap over the pooled out-of-fold predictions is reported beside it, and
   `cv_results.json` / `cv_table.md` state each candidate's decision.
5. The refit (as `GridSearchCV(refit=True)`): the chosen variant trains on the whole pool for the same fixed
   length; its temperature is decided by `hfxray.calibration.decide_temperature` on the pooled out-of-fold logits
   of the CV models (the refit model has no held-out images left; a variant without finished folds ships no
   temperature), with the held-out check's folds = the CV models, so T must transfer from some models to another;
   whether it transfers to the refit model itself is not checked, and `TRANSFER_NOTE` says so in the results. Then
   the test split is evaluated once.

Resumption: each variant/fold folder gets `fold_results.json` written last (atomically); a fold that has it is
not trained again. A refit folder with `refit_results.json` is never trained or evaluated again.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import CLASS_NAMES, POOL_SPLITS, DataError, read_manifest
from .errors import HfxrayError
from .logs import get_logger
from .outputs import check_output_folder

logger = get_logger(__name__)
FOLDS_FILE = "folds.json"
FOLD_RESULTS = "fold_results.json"
CV_RESULTS = "cv_results.json"
CV_TABLE = "cv_table.md"
REFIT_DIR = "refit"
REFIT_RESULTS = "refit_results.json"
SUMMARY_METRICS = ("accuracy", "auroc", "ece")
# Top-level keys of a candidates file that set the selection rule rather than name a variant.
RULE_KEYS = ("min_gain", "alpha", "metric")
RULE_METRICS = ("accuracy", "auroc")
# What the refit's temperature check shows, and what it cannot: stated in its calibration.json and refit_results.json.
TRANSFER_NOTE = ("checked across CV models: a T fitted on the held-out logits of the other fold models lowers the "
                 "held-out NLL of each fold model (summed), as the decision says. Not checked on the refit model "
                 "itself: it trained on every non-test image, so none is left to check it on, and a model trained "
                 "on more images may be more confident than the fold models the T came from.")
# Flags every fold and refit run gets last: no per-epoch evaluation, no checkpoint picked by evaluation data.
FORCED_FLAGS = ("--eval_strategy", "no", "--load_best_model_at_end", "false", "--overwrite_output_dir", "true")


class CVError(HfxrayError):
    """A cross-validation request that cannot run; the message says what to change."""


@dataclass(frozen=True)
class Variant:
    """A recipe variant: a folder-safe name and the flag overrides it appends to the base flags."""

    name: str
    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def flags(self) -> list[str]:
        return [token for key, value in self.overrides for token in (f"--{key}", value)]


# --- the pool and its folds ---------------------------------------------------------------------------------

def pool_rows(data_dir: str | os.PathLike) -> list[dict]:
    """Kept train + validation images of a prepared folder: file (relative), label (0/1), patient group."""
    rows = [row for row in read_manifest(data_dir) if row["status"] == "kept" and row["split"] in POOL_SPLITS]
    if not rows:
        raise DataError(f"{data_dir}: no kept train or validation images in the manifest. To fix: re-run "
                        "`hfxray data prepare`.")
    return [dict(file=row["file"], label=CLASS_NAMES.index(row["label"]), group=row["patient_group"] or row["file"])
            for row in sorted(rows, key=lambda r: r["file"])]


def make_folds(labels, groups, n_folds: int, repeats: int = 1, seed: int = 0) -> list[dict]:
    """[{repeat, fold, train: indices, evaluation: indices}]: StratifiedGroupKFold per repeat (seed + repeat)."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    if n_folds < 2 or repeats < 1:
        raise CVError(f"--folds {n_folds} --repeats {repeats}. To fix: use at least 2 folds and 1 repeat.")
    for cls in (0, 1):
        patients = len(set(groups[labels == cls]))
        if patients < n_folds:
            raise CVError(f"class {CLASS_NAMES[cls]} has {patients} patient(s) in train + validation, fewer than "
                          f"--folds {n_folds}: a fold would miss it. To fix: use --folds {max(patients, 2)} or "
                          "fewer.")
    folds = []
    for repeat in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed + repeat)
        for index, (train, evaluation) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            folds.append(dict(repeat=repeat, fold=index, train=sorted(int(i) for i in train),
                              evaluation=sorted(int(i) for i in evaluation)))
    return folds


def fold_plan(data_dir, out: Path, n_folds: int, repeats: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(pool rows, folds), written to OUT/folds.json; a resumed run must find the same folds there."""
    rows = pool_rows(data_dir)
    folds = make_folds([r["label"] for r in rows], [r["group"] for r in rows], n_folds, repeats, seed)
    plan = dict(n_folds=n_folds, repeats=repeats, seed=seed, files=[r["file"] for r in rows],
                folds=[dict(repeat=f["repeat"], fold=f["fold"], evaluation=f["evaluation"]) for f in folds])
    path = out / FOLDS_FILE
    if path.is_file():
        if json.loads(path.read_text()) != plan:
            raise CVError(f"{path} holds other folds (other data, --folds, --repeats or --fold-seed). To fix: use "
                          "a new --out, or the options of the earlier run.")
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(path, plan)
    return rows, folds


def _write_json(path: Path, value) -> None:
    """Write atomically: a half-written results file must never look like a finished fold."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(partial, path)


def pool_selector(data_dir, train_files: list[str], evaluation_files: list[str] | None):
    """`training.train(select_splits=...)`: positions of the given files among the pooled rows' image paths."""

    def select(row_files: list[str]):
        position = {name: i for i, name in enumerate(row_files)}
        missing = [f for f in [*train_files, *(evaluation_files or [])] if f not in position]
        if missing:
            raise DataError(f"{data_dir}: {len(missing)} manifest image(s) missing on disk (e.g. {missing[0]}). "
                            "To fix: re-run `hfxray data prepare`.")
        training = [position[f] for f in train_files]
        evaluation = [position[f] for f in evaluation_files] if evaluation_files else None
        return training, evaluation

    return select


# --- variants -----------------------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip().lstrip("-").replace("-", "_")
    if not sep or not key or not value.strip():
        raise CVError(f"--set {item!r}. To fix: write --set KEY=VALUE (a recipe field or TrainingArguments flag), "
                      "with comma-separated values for a grid.")
    return key, value.strip()


def variant_name(overrides) -> str:
    return _SAFE.sub("_", ",".join(f"{k}={v}" for k, v in overrides)) or "recipe"


def build_variants(sets: list[str] | None = None, variants_file: str | None = None) -> tuple[list[str], list[Variant]]:
    """(flags common to every variant, the variants), from `--set KEY=V` / `--set KEY=V1,V2` and a YAML file.

    A `--set` with one value applies to all variants; with several comma-separated values it is a grid axis
    (the grid is the product of the axes). The YAML maps variant names to {key: value}; with neither a grid nor
    a file there is one variant, the recipe itself (`recipe`). The first variant is the paired reference.
    """
    import yaml

    from .models import split_top_level

    common, axes = [], []
    for item in sets or []:
        key, value = _key_value(item)
        values = [v.strip() for v in split_top_level(value) if v.strip()]
        if len(values) == 1:
            common += [f"--{key}", values[0]]
        else:
            axes.append([(key, v) for v in values])
    variants = []
    if variants_file:
        try:
            loaded = yaml.safe_load(Path(variants_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise CVError(f"--variants {variants_file}: cannot read YAML ({err}). To fix: correct the file.") from None
        if isinstance(loaded, dict):
            loaded = {name: value for name, value in loaded.items() if name not in RULE_KEYS}
        if not isinstance(loaded, dict) or not all(isinstance(v, (dict, type(None))) for v in loaded.values()):
            raise CVError(f"--variants {variants_file}: expected a mapping of variant names to {{flag: value}} "
                          "mappings. To fix: write e.g. `wider: {num_train_epochs: 45}`.")
        for name, overrides in loaded.items():
            pairs = tuple((str(k).replace("-", "_"), _yaml_flag_value(v)) for k, v in (overrides or {}).items())
            variants.append(Variant(_SAFE.sub("_", str(name)), pairs))
    if axes:
        if variants:
            raise CVError("--variants and a --set grid both define variants. To fix: use one of them (put the grid "
                          "in the YAML).")
        variants = [Variant(variant_name(combo), tuple(combo)) for combo in itertools.product(*axes)]
    if not variants:
        variants = [Variant("recipe")]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise CVError(f"variant names repeat ({', '.join(names)}). To fix: give each variant its own name.")
    return common, variants


def selection_rule(variants_file: str | None = None) -> dict:
    """The selection rule fixed in the candidates file before the run: {metric, min_gain, alpha, fixed_in}.

    `min_gain: 0.01` (a gain in the metric's units), `alpha: 0.05` (family-wise, one-sided) and `metric: accuracy`
    (or auroc) sit at the top level beside the variants; missing keys take those defaults, and `fixed_in` says
    whether the file fixed the minimum gain.
    """
    import yaml

    loaded = {}
    if variants_file:
        try:
            loaded = yaml.safe_load(Path(variants_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise CVError(f"--variants {variants_file}: cannot read YAML ({err}). To fix: correct the file.") from None
    loaded = loaded if isinstance(loaded, dict) else {}
    rule = dict(metric=loaded.get("metric", "accuracy"), min_gain=loaded.get("min_gain", 0.0),
                alpha=loaded.get("alpha", 0.05),
                fixed_in=variants_file if "min_gain" in loaded else "default: no min_gain in a candidates file")
    if rule["metric"] not in RULE_METRICS:
        raise CVError(f"--variants {variants_file}: metric {rule['metric']!r}. To fix: use one of "
                      f"{', '.join(RULE_METRICS)}.")
    for key, low, high in (("min_gain", -1.0, 1.0), ("alpha", 0.0, 0.5)):
        value = rule[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
            raise CVError(f"--variants {variants_file}: {key} {value!r}. To fix: give a number in ({low:g}, "
                          f"{high:g}).")
        rule[key] = float(value)
    return rule


def _yaml_flag_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        raise CVError(f"variant value {value!r}: list values are not supported. To fix: use a scalar.")
    return str(value)


# --- one fold -----------------------------------------------------------------------------------------------

def _base_flags(model: str, preset: str, recipe: str, data_dir, common: list[str]) -> list[str]:
    return ["--model", model, "--preset", preset, "--recipe", recipe, "--data_dir", str(data_dir),
            "--report_to", "none", "--disable_tqdm", "true", *common]


def variant_configs(base_flags: list[str], variants: list[Variant], out: Path) -> dict:
    """Each variant's run configuration, parsed once (folds get copies with their own output folder); a variant
    whose flags or model are wrong is refused before any fold trains: a misspelt config field, or an input size the
    architecture cannot take, would otherwise stop the run only when that variant's turn comes, hours in."""
    from .models import create_model, get_spec

    configs = {}
    for variant in variants:
        configs[variant.name] = _parse(base_flags, variant, out / variant.name)
        model_args, recipe_args = configs[variant.name].model, configs[variant.name].recipe
        # A from-scratch model is built in a fraction of a second; a pretrained one is not downloaded here, and
        # create_model refuses its --config_overrides before loading anything.
        from_scratch = get_spec(model_args.model, model_args.preset, recipe_args.image_size).checkpoint is None
        if from_scratch or model_args.config_overrides:
            create_model(model_args.model, model_args.preset, image_size=recipe_args.image_size,
                         resize_size=recipe_args.resize_size, config_overrides=model_args.config_overrides,
                         resize_mode=recipe_args.resize_mode)
    return configs


def _parse(base_flags: list[str], variant: Variant, output_dir: Path):
    from .arguments import parse_config

    config = parse_config([*base_flags, *variant.flags, "--output_dir", str(output_dir), *FORCED_FLAGS])
    training_args = config.training
    # cv publishes nothing (a fold's model is not a result): a push would fail after the folds plan is written, and
    # a token would be recorded in every fold_results.json and cv_results.json with the flags.
    if training_args.push_to_hub or training_args.hub_token:
        given = "push_to_hub" if training_args.push_to_hub else "a Hub token (hub_token)"
        refit_dir = output_dir.parent.parent / "VARIANT" / REFIT_DIR
        raise CVError(f"variant {variant.name!r}: cv takes no {given}; it never pushes a model. To fix: drop it from "
                      f"--set, --variants and --config, and publish the refit with `hfxray push {refit_dir} REPO_ID`.")
    return config


def _predict(model, processor, data_dir, files: list[str], cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of the pooled images `files` (from the decode cache, the tensors `pipeline` makes)."""
    from .cache import pooled_split
    from .evaluation import predict_logits
    from .transforms import Geometry, XrayTensorDataset

    geometry = Geometry.from_processor(processor)
    pooled = pooled_split(data_dir, geometry.resize, cache_dir)
    images = pooled.select(pool_selector(data_dir, files, None)(pooled.files)[0])
    return predict_logits(model, XrayTensorDataset(images, images.labels, geometry), desc="predicting held-out fold"), \
        np.asarray(images.labels)


def _drop_checkpoints(run_dir: Path) -> None:
    """The fold's checkpoints (optimizer states) are not needed once its final model is saved."""
    from .training import _checkpoints

    for folder in _checkpoints(run_dir):
        shutil.rmtree(folder, ignore_errors=True)


def run_fold(config, flags: list[str], variant: Variant, fold: dict, rows: list[dict], data_dir,
             fold_dir: Path) -> dict:
    """Train on the fold's training part, predict its held-out part once; skipped when already finished.

    `config` is the variant's (`variant_configs`); `flags` what it was parsed from, recorded with the results."""
    done = fold_dir / FOLD_RESULTS
    if done.is_file():
        finished = json.loads(done.read_text())
        if finished.get("flags", flags) != flags:
            raise CVError(f"{fold_dir} was trained with other flags ({' '.join(finished['flags'])}). To fix: use a "
                          "new --out for other settings, or give this variant another name.")
        logger.info("cv: %s repeat %d fold %d already finished, not retrained", variant.name, fold["repeat"],
                    fold["fold"])
        return finished
    from .metrics import apply_temperature, binary_metrics
    from .training import train

    config = config.replace(training={"output_dir": str(fold_dir)})
    data_args = config.data
    train_files = [rows[i]["file"] for i in fold["train"]]
    evaluation_files = [rows[i]["file"] for i in fold["evaluation"]]
    if data_args.max_train_samples:  # quick experiments: the first N training images of the fold
        train_files = train_files[:data_args.max_train_samples]
    logger.info("cv: %s repeat %d fold %d: training on %d images, holding out %d", variant.name, fold["repeat"],
                fold["fold"], len(train_files), len(evaluation_files))
    started = time.perf_counter()
    # The held-out part is not given to the Trainer: it is predicted once, by the final model, below.
    trained = train(config, select_splits=pool_selector(data_dir, train_files, None))
    train_metrics = trained.metrics
    logits, labels = _predict(trained.model, trained.processor, data_dir, evaluation_files, data_args.cache_dir)
    expected = [rows[i]["label"] for i in fold["evaluation"]]
    if labels.tolist() != expected:
        raise DataError(f"{data_dir}: the image folders' labels differ from the manifest's. To fix: re-run "
                        "`hfxray data prepare`.")
    metrics = binary_metrics(labels, apply_temperature(logits, 1.0))
    result = dict(variant=variant.name, overrides=dict(variant.overrides), flags=flags, repeat=fold["repeat"],
                  fold=fold["fold"],
                  n_train=len(train_files), n_evaluation=len(evaluation_files),
                  train_runtime=train_metrics.get("train_runtime"), wall_seconds=time.perf_counter() - started,
                  metrics=metrics, files=evaluation_files, labels=labels.tolist(),
                  logits=np.round(logits, 6).tolist())
    _drop_checkpoints(fold_dir)
    _write_json(done, result)
    return result


# --- summaries ----------------------------------------------------------------------------------------------

def _mean_sd(values) -> dict:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(values):
        return dict(mean=None, sd=None, n=0)
    return dict(mean=float(values.mean()), sd=float(values.std(ddof=1)) if len(values) > 1 else None,
                n=int(len(values)))


def summarise_variant(results: list[dict]) -> dict:
    """Per-fold metrics, their mean ± sd, and the metrics of the pooled out-of-fold predictions (repeat 0)."""
    from .metrics import apply_temperature, binary_metrics

    per_fold = [dict(repeat=r["repeat"], fold=r["fold"], train_runtime=r["train_runtime"],
                     **{m: r["metrics"][m] for m in SUMMARY_METRICS}) for r in results]
    first = [r for r in results if r["repeat"] == 0]
    labels = np.concatenate([r["labels"] for r in first])
    logits = np.concatenate([np.asarray(r["logits"], dtype=float).reshape(-1, 2) for r in first])
    pooled = binary_metrics(labels, apply_temperature(logits, 1.0))
    return dict(folds=per_fold, **{m: _mean_sd(f[m] for f in per_fold) for m in SUMMARY_METRICS},
                train_runtime=_mean_sd(f["train_runtime"] for f in per_fold),
                pooled_out_of_fold={m: pooled[m] for m in SUMMARY_METRICS})


def paired_comparison(reference: list[dict], other: list[dict], n_train: float, n_evaluation: float) -> dict:
    """Fold-by-fold differences (other - reference) with the Nadeau-Bengio corrected resampled t-test.

    The plain paired t-test treats folds as independent; they share training images, so its variance is too
    small. The correction multiplies the variance of the differences by (1/J + n_eval/n_train) instead of 1/J
    (Nadeau & Bengio 2003; Bouckaert & Frank 2004), J = number of folds x repeats.
    """
    from scipy import stats

    by_key = {(r["repeat"], r["fold"]): r for r in reference}
    pairs = [(by_key[(o["repeat"], o["fold"])], o) for o in other if (o["repeat"], o["fold"]) in by_key]
    comparison = {}
    for metric in SUMMARY_METRICS:
        diffs = np.asarray([o["metrics"][metric] - r["metrics"][metric] for r, o in pairs
                            if o["metrics"][metric] is not None and r["metrics"][metric] is not None], dtype=float)
        j = len(diffs)
        entry = dict(n=j, mean_difference=float(diffs.mean()) if j else None,
                     sd_difference=float(diffs.std(ddof=1)) if j > 1 else None,
                     better_folds=int((diffs < 0).sum() if metric == "ece" else (diffs > 0).sum()),
                     reference_fold_sd=_mean_sd(r["metrics"][metric] for r, _ in pairs)["sd"])
        if j > 1 and diffs.std(ddof=1) > 0:
            t = diffs.mean() / math.sqrt((1 / j + n_evaluation / n_train) * diffs.var(ddof=1))
            entry.update(corrected_t=float(t), corrected_p=float(2 * stats.t.sf(abs(t), j - 1)))
        else:
            entry.update(corrected_t=None, corrected_p=None)
        comparison[metric] = entry
    return comparison


def summarise(variants: list[Variant], results: dict[str, list[dict]], meta: dict, rule: dict | None = None,
              groups_by_file: dict[str, str] | None = None) -> dict:
    summary = dict(meta, variants={v.name: dict(overrides=dict(v.overrides), **summarise_variant(results[v.name]))
                                   for v in variants if results.get(v.name)})
    reference = variants[0].name
    if results.get(reference):
        n_train = float(np.mean([r["n_train"] for r in results[reference]]))
        n_evaluation = float(np.mean([r["n_evaluation"] for r in results[reference]]))
        summary["reference"] = reference
        summary["paired_vs_reference"] = {v.name: paired_comparison(results[reference], results[v.name], n_train,
                                                                    n_evaluation)
                                          for v in variants[1:] if results.get(v.name)}
        candidates = {v.name: results[v.name] for v in variants[1:] if results.get(v.name)}
        if candidates:
            from .selection import select

            summary["selection"] = select(results[reference], candidates, rule or selection_rule(),
                                          groups_by_file or {}, n_train, n_evaluation)
    return summary


def _pm(entry: dict, digits: int = 3) -> str:
    if entry.get("mean") is None:
        return "–"
    if entry.get("sd") is None:
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['sd']:.{digits}f}"


def summary_markdown(summary: dict) -> list[str]:
    """The CV table and the paired comparison as Markdown lines, from `cv_results.json` (as the docs quote it)."""
    lines = [f"{summary['n_folds']}-fold patient-grouped CV x {summary['repeats']} repeat(s) on train + validation "
             f"({summary['n_pool']} images), {summary['model']} / {summary['preset']} / {summary['recipe']}",
             "",
             "| variant | folds | accuracy | AUROC | ECE | pooled OOF acc / AUROC / ECE | train s / fold |",
             "|---|---:|---|---|---|---|---:|"]
    for name, entry in summary["variants"].items():
        pooled = entry["pooled_out_of_fold"]
        runtime = entry["train_runtime"]["mean"]
        runtime = f"{runtime:.0f}" if runtime is not None else "–"
        lines.append(f"| {name} | {entry['accuracy']['n']} | {_pm(entry['accuracy'])} | {_pm(entry['auroc'])} | "
                     f"{_pm(entry['ece'])} | {pooled['accuracy']:.3f} / {pooled['auroc']:.3f} / "
                     f"{pooled['ece']:.3f} | {runtime} |")
    if summary.get("paired_vs_reference"):
        lines += ["", f"Paired against `{summary['reference']}` (difference over the same folds, mean ± sd; better "
                  "folds; corrected resampled t-test p):", "",
                  "| variant | Δ accuracy | Δ AUROC | Δ ECE |", "|---|---|---|---|"]
        for name, comparison in summary["paired_vs_reference"].items():
            cells = []
            for metric in SUMMARY_METRICS:
                c = comparison[metric]
                if c["mean_difference"] is None:
                    cells.append("–")
                    continue
                p = f", two-sided p {c['corrected_p']:.2f}" if c["corrected_p"] is not None else ""
                cells.append(f"{c['mean_difference']:+.3f} ± {c['sd_difference'] or 0:.3f} "
                             f"({c['better_folds']}/{c['n']}{p})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def table_markdown(summary: dict) -> str:
    """`cv_table.md`: `summary_markdown`, then the selection test's table when candidates were tested."""
    from .selection import selection_markdown  # scipy: loaded when a table is written, not on import

    selection = selection_markdown(summary["selection"]) if summary.get("selection") else []
    return "\n".join(summary_markdown(summary) + selection) + "\n"


# --- the whole run and the refit ----------------------------------------------------------------------------

def cross_validate(model: str, preset: str, recipe: str, data_dir, out, n_folds: int = 5, repeats: int = 1,
                   fold_seed: int = 0, sets: list[str] | None = None, variants_file: str | None = None,
                   train_missing: bool = True) -> dict:
    """Run (or resume) every variant x fold; writes OUT/cv_results.json and OUT/cv_table.md; returns the summary.

    With `train_missing` false nothing trains: the summary covers the folds already finished (the table's `folds`
    column says how many), e.g. to look at a long run while it goes on.
    """
    out = check_output_folder(out, "--out", [("the --data-dir", data_dir)])
    common, variants = build_variants(sets, variants_file)
    selection_rule(variants_file)  # a wrong rule stops the run before any fold trains
    base_flags = _base_flags(model, preset, recipe, data_dir, common)
    configs = variant_configs(base_flags, variants, out)
    rows, folds = fold_plan(data_dir, out, n_folds, repeats, fold_seed)
    results: dict[str, list[dict]] = {}
    for variant in variants:
        results[variant.name] = []
        for fold in folds:
            fold_dir = out / variant.name / f"repeat{fold['repeat']}-fold{fold['fold']}"
            if train_missing or (fold_dir / FOLD_RESULTS).is_file():
                results[variant.name].append(run_fold(configs[variant.name], [*base_flags, *variant.flags], variant,
                                                      fold, rows, data_dir, fold_dir))
    meta = dict(model=model, preset=preset, recipe=recipe, n_folds=n_folds, repeats=repeats, fold_seed=fold_seed,
                n_pool=len(rows), common_flags=common, test_split_used=False, refit_temperature=TRANSFER_NOTE,
                complete=all(len(r) == len(folds) for r in results.values()))
    summary = summarise(variants, results, meta, selection_rule(variants_file),
                        {r["file"]: r["group"] for r in rows})
    _write_json(out / CV_RESULTS, summary)
    (out / CV_TABLE).write_text(table_markdown(summary))
    return summary


def out_of_fold_logits(out, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The pooled out-of-fold logits, labels and fold (= CV model) of each, of a variant's finished folds (repeat 0);
    None when it has none."""
    folder = Path(out) / variant
    results = [json.loads(p.read_text()) for p in sorted(folder.glob(f"repeat0-fold*/{FOLD_RESULTS}"))]
    if not results:
        return None
    return (np.concatenate([np.asarray(r["logits"], dtype=float).reshape(-1, 2) for r in results]),
            np.concatenate([r["labels"] for r in results]),
            np.concatenate([[r["fold"]] * len(r["labels"]) for r in results]))


def refit_names(requested: str, variants: list[Variant]) -> list[str]:
    """The variants `--refit REQUESTED` trains: '' the first, 'all' every one, else the one named."""
    names = [v.name for v in variants]
    chosen = names if requested == "all" else [requested or names[0]]
    if not set(chosen) <= set(names):
        raise CVError(f"--refit {requested!r} is not a variant of this run ({', '.join(names)}). To fix: name one "
                      "of them, or 'all'.")
    return chosen


def refit(model: str, preset: str, recipe: str, data_dir, out, variant_name_: str, sets: list[str] | None = None,
          variants_file: str | None = None) -> dict:
    """Train the chosen variant on all of train + validation, calibrate from out-of-fold logits, test once."""
    from .calibration import TemperatureDecision, decide_temperature
    from .scope import fit_ood_or_say_why
    from .training import train
    from .workflow import evaluate_run, record_calibration

    out = check_output_folder(out, "--out", [("the --data-dir", data_dir)])
    common, variants = build_variants(sets, variants_file)
    names = refit_names(variant_name_, variants)
    if len(names) != 1:  # 'all' is the command's loop over this function, one variant per call
        raise CVError(f"refit trains one variant, not {variant_name_!r}. To fix: name one of {', '.join(names)}.")
    chosen = next(v for v in variants if v.name == names[0])
    run_dir = out / chosen.name / REFIT_DIR
    if (run_dir / REFIT_RESULTS).is_file():
        logger.info("refit: %s already trained and tested once; not repeated", run_dir)
        return json.loads((run_dir / REFIT_RESULTS).read_text())
    out_of_fold = out_of_fold_logits(out, chosen.name)
    config = _parse(_base_flags(model, preset, recipe, data_dir, common), chosen, run_dir)
    files = [r["file"] for r in pool_rows(data_dir)]
    trained = train(config, select_splits=pool_selector(data_dir, files, None))
    train_metrics = trained.metrics
    _drop_checkpoints(run_dir)
    fitted, processor = trained.model, trained.processor
    if out_of_fold is None:
        # Every non-test image trained the refit: without out-of-fold logits nothing held out is left to fit on.
        decision = TemperatureDecision(None, False, "no out-of-fold logits of this variant (no finished CV fold): "
                                       "no held-out data to fit a temperature on", 0)
    else:
        logits, labels, fold_of = out_of_fold
        # The check's folds are the CV models: T fitted on some models' held-out logits must lower the NLL of
        # another model's, the situation of the refit, whose T also comes from models other than itself.
        decision = decide_temperature(logits, labels, folds=fold_of)
    calibration = record_calibration(
        run_dir, fitted, decision, config.run.calibrate,
        fitted_on="pooled out-of-fold logits of the CV models (train + validation, repeat 0)"
        if out_of_fold is not None else None,
        transfer=TRANSFER_NOTE if out_of_fold is not None else None)
    report = evaluate_run(run_dir, data_dir, fitted, processor)
    # the out-of-distribution check describes what the refit trained on
    fit_ood_or_say_why(run_dir, data_dir, fitted, processor, splits=("train", "validation"))
    result = dict(variant=chosen.name, overrides=dict(chosen.overrides), n_train=len(files),
                  train_runtime=train_metrics.get("train_runtime"), calibration=calibration,
                  test={k: report[k] for k in ("accuracy", "auroc", "ece", "ece_noise_floor", "ece_debiased", "n",
                                               "folded_temperature")},
                  test_ci95={k: report["ci95"][k] for k in SUMMARY_METRICS},
                  test_ci95_method={k: report["ci95_method"][k] for k in SUMMARY_METRICS})
    _write_json(run_dir / REFIT_RESULTS, result)
    return result
