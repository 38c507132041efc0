"""Evaluate a model on a prepared split: one entry (`report_split`) for the end of training and `hfxray evaluate`.

The report describes the model as it ships: metrics with patient-level bootstrap CIs, and the ECE of the saved
model's own probabilities. When a temperature was folded into the head (`hfxray.calibration`), the logits
before folding are the shipped logits times T, so the ECE before folding is reported beside it, with its CI,
from the same forward pass.

When the prepared set merges several sources (`hfxray data prepare --source A --source B`), the report adds the
metrics of each source (`by_source`, with patient bootstrap CIs), the sources each split was drawn from
(`sources`: "trained on X, tested on Y"), and the *source shortcut check* (`source_shortcut`): among held-out
images of one class, how well the model's p(virus) tells two sources apart (AUROC, read both ways). A model that
learnt the source rather than the disease separates them; `SHORTCUT_WARNING` or more is flagged.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np

from .data import CLASS_NAMES, SPLITS, DataError, prepared_counts, read_manifest
from .logs import get_logger, progress_bar_disable
from .outputs import csv_cell, read_csv_row
from .runs import predictions_path, reliability_path

SHORTCUT_WARNING = 0.8  # separation (AUROC read both ways) from which the source shortcut check warns
SHORTCUT_MIN_IMAGES = 5  # images a source needs in a class to enter the check
SHORTCUT_RESAMPLES = 2000  # bootstrap resamples and permutations of the shortcut check (fixed seed)
logger = get_logger(__name__)


def patient_groups(data_dir: str | Path, paths: list[str]) -> list[str]:
    """Patient group of each image path, from the prepared folder's manifest."""
    return manifest_values(data_dir, paths, "patient_group", default="file:")


def manifest_values(data_dir: str | Path, paths: list[str], column: str, default: str = "") -> list[str]:
    """One manifest column for each image path (`default` + the path where the manifest lacks it)."""
    data_dir = Path(data_dir).resolve()
    by_file = {row["file"]: row.get(column, "") for row in read_manifest(data_dir) if row["status"] == "kept"}
    values = []
    for path in paths:
        relative = str(Path(path).resolve().relative_to(data_dir)) if Path(path).is_absolute() else path
        values.append(by_file.get(relative) or (f"{default}{relative}" if default else ""))
    return values


def split_sources(data_dir: str | Path) -> dict[str, dict[str, int]]:
    """split -> source -> kept images, from the manifest (empty sources when it names none)."""
    counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    for row in read_manifest(data_dir):
        if row["status"] == "kept" and row.get("source"):
            counts[row["split"]][row["source"]] += 1
    return {split: dict(sorted(c.items())) for split, c in counts.items()}


def _aurocs(scores: np.ndarray, second: np.ndarray) -> np.ndarray:
    """AUROC of each row of `scores` at telling `second` (True) from the rest (Mann-Whitney, ties 1/2)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=-1)
    n_second, n_first = second.sum(), (~second).sum()
    return ((ranks * second).sum(axis=-1) - n_second * (n_second + 1) / 2) / (n_second * n_first)


def _separation_interval(low: float, high: float) -> list[float]:
    """The separation max(A, 1 - A) over an AUROC interval [low, high]."""
    if low >= 0.5:
        return [low, high]
    if high <= 0.5:
        return [1 - high, 1 - low]
    return [0.5, max(high, 1 - low)]


def _weighted_aurocs(scores: np.ndarray, second: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC at telling `second` from the rest for each row of image `weights` (a patient drawn k times weighs k)."""
    first_scores, second_scores = scores[~second], scores[second]
    wins = (second_scores[None, :] > first_scores[:, None]) + 0.5 * (second_scores[None, :] == first_scores[:, None])
    first_weights, second_weights = weights[:, ~second], weights[:, second]
    return (np.einsum("ri,ij,rj->r", first_weights, wins, second_weights)
            / (first_weights.sum(axis=1) * second_weights.sum(axis=1)))


def _shortcut_uncertainty(scores: np.ndarray, second: np.ndarray, separation: float, groups: np.ndarray | None = None,
                          seed: int = 0) -> dict:
    """95 % interval of the separation and its permutation p-value, both by patient when `groups` is given.

    The bootstrap resamples patients (else images) within each source; the permutation shuffles the sources among
    patients (else images), so that a patient's images stay together: several images of one patient are not
    independent evidence of a source.
    """
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    groups = np.arange(len(scores)) if groups is None else np.asarray(groups)
    _, group_of = np.unique(groups, return_inverse=True)
    # a patient group lies in one source (groups are prefixed by their source); its source is read off any image
    group_second = np.zeros(group_of.max() + 1, bool)
    group_second[group_of] = second
    weights = np.zeros((SHORTCUT_RESAMPLES, len(scores)))
    for side in (False, True):
        members = np.flatnonzero(group_second == side)
        drawn = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=SHORTCUT_RESAMPLES)
        times = np.zeros((SHORTCUT_RESAMPLES, len(group_second)))
        times[:, members] = drawn
        weights += times[:, group_of] * (second == side)
    low, high = np.quantile(_weighted_aurocs(scores, second, weights), [0.025, 0.975])
    # The ranks do not change under a permutation of the sources: one matrix product gives every permuted AUROC.
    shuffled = np.stack([rng.permutation(group_second) for _ in range(SHORTCUT_RESAMPLES)])[:, group_of]
    n_second = shuffled.sum(axis=1)
    n_first = len(scores) - n_second
    permuted = (shuffled @ rankdata(scores) - n_second * (n_second + 1) / 2) / (n_second * n_first)
    null = np.maximum(permuted, 1 - permuted)
    return {"separation_ci95": _separation_interval(float(low), float(high)),
            "permutation_p": float((1 + (null >= separation - 1e-12).sum()) / (1 + len(null))),
            "resampled": "patients" if len(np.unique(group_of)) < len(scores) else "images"}


def source_shortcut(probs_virus, labels, sources, images: str, groups=None) -> dict:
    """How well p(virus) separates two sources among images of one class (AUROC, and max(AUROC, 1 - AUROC)).

    Images of one class should look alike to the classifier whatever their source; a separation near 1 means the
    model's output carries the source (hospital, age group, scanner, burnt-in marks), i.e. a shortcut. Each
    separation comes with a 95 % bootstrap interval (patients, with `groups`, else images, resampled within each
    source) and a permutation p-value (sources shuffled among the class's patients, else images; H0: the output
    does not depend on the source).
    """
    from sklearn.metrics import roc_auc_score

    probs, labels, sources = np.asarray(probs_virus), np.asarray(labels), np.asarray(sources)
    groups = np.arange(len(probs)) if groups is None else np.asarray(groups)
    rows = []
    for index, name in enumerate(CLASS_NAMES):
        in_class = labels == index
        counts = Counter(sources[in_class].tolist())
        present = sorted(s for s, n in counts.items() if n >= SHORTCUT_MIN_IMAGES)
        for first, second in combinations(present, 2):
            chosen = in_class & np.isin(sources, [first, second])
            auroc = float(roc_auc_score(sources[chosen] == second, probs[chosen]))
            rows.append({"class": name, "sources": [first, second], "n": [counts[first], counts[second]],
                         "auroc": auroc, "separation": max(auroc, 1.0 - auroc),
                         **_shortcut_uncertainty(probs[chosen], sources[chosen] == second, max(auroc, 1.0 - auroc),
                                                 groups[chosen])})
    worst = max((row["separation"] for row in rows), default=None)
    return {"measure": "AUROC of p(virus) at telling two sources apart among images of one class "
                       "(separation = max(AUROC, 1 - AUROC); 0.5 = indistinguishable)",
            "images": images, "by_class": rows, "max_separation": worst, "warning_threshold": SHORTCUT_WARNING,
            "warning": worst is not None and worst >= SHORTCUT_WARNING}


def shortcut_message(check: dict) -> str:
    """One sentence on the source shortcut check, for the console and the model card."""
    if check.get("max_separation") is None:
        return ("source shortcut check: no class has images of two sources (at least "
                f"{SHORTCUT_MIN_IMAGES} each) among the {check.get('images')}; not measured")
    worst = max(check["by_class"], key=lambda row: row["separation"])
    text = (f"source shortcut check: among {worst['class']} images ({check['images']}), the model's p(virus) tells "
            f"{worst['sources'][0]} from {worst['sources'][1]} with separation {worst['separation']:.2f}")
    if worst.get("separation_ci95"):  # results written before the interval existed have none
        low, high = worst["separation_ci95"]
        text += f" (95% CI {low:.2f}-{high:.2f}, permutation p = {worst['permutation_p']:.3g}; 0.5 = cannot tell)"
        if not check["warning"] and high >= SHORTCUT_WARNING:
            text += f"; the interval reaches {SHORTCUT_WARNING}, so a shortcut is not ruled out"
    else:
        text += " (0.5 = cannot tell)"
    if check["warning"]:
        text = ("WARNING: " + text + f", at or above {SHORTCUT_WARNING}: the model's output carries the source; "
                "its accuracy may come from where an image was taken rather than from the disease")
    return text


def predict_logits(model, dataset, batch_size: int = 64, desc: str = "predicting") -> np.ndarray:
    """Logits [n, 2] of `model` on an XrayTensorDataset (evaluation transform), batched, no gradients."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, len(dataset), batch_size), desc=desc, unit="batch",
                          disable=progress_bar_disable()):
            crops = [dataset.crop(i) for i in range(start, min(start + batch_size, len(dataset)))]
            batch = dataset.normalise(torch.stack(crops))
            chunks.append(model(pixel_values=batch.to(device)).logits.float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 2))


def split_logits(model, processor, data_dir, split: str, cache_dir=None, counts=None
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(logits, labels, image paths relative to the prepared folder) of `model` on one split, in one row order
    (images from the decode cache, `hfxray.cache`). `counts` is `prepared_counts`'s answer when the caller has it.

    The split is found from the image folders, as training finds it: `datasets` lists the folder only when the
    cache has no entry for it (a changed folder), not on every evaluation.
    """
    from .cache import decoded_split
    from .transforms import Geometry, XrayTensorDataset

    counts = counts if counts is not None else prepared_counts(data_dir)
    present = [name for name in SPLITS if sum(counts[name].values())]
    if split not in present:
        raise DataError(f"{data_dir}: no {split!r} split (has {', '.join(present)}). To fix: choose --split "
                        "train, validation or test, or prepare with --val-fraction > 0.")
    geometry = Geometry.from_processor(processor)
    images = decoded_split(data_dir, split, geometry.resize, cache_dir=cache_dir)
    logits = predict_logits(model, XrayTensorDataset(images, images.labels, geometry), desc=f"predicting {split}")
    return logits, np.asarray(images.labels), images.files


def write_predictions_csv(path: Path, files, groups, labels, probs_virus) -> None:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "patient_group", "label", "p_virus"])
        # repr keeps every digit: rounded probabilities of a near-constant model tie, and ties change the AUROC
        writer.writerows(zip(map(csv_cell, files), map(csv_cell, groups), (int(label) for label in labels),
                             (repr(float(p)) for p in probs_virus)))


def read_predictions_csv(path: Path) -> dict[str, tuple[str, int, float]]:
    """{file: (patient group, label, p(virus))} from `write_predictions_csv`."""
    import csv

    with path.open(newline="") as handle:
        rows = [read_csv_row(row) for row in csv.DictReader(handle)]  # csv_cell's quotes removed
    return {row["file"]: (row["patient_group"], int(row["label"]), float(row["p_virus"])) for row in rows}


def report_split(model, processor, data_dir, split: str = "test", out: str | Path | None = None,
                 n_resamples: int = 1000, seed: int = 0, title: str | None = None, prefix: str = "",
                 cache_dir: str | None = None) -> dict:
    """Full report of `model` as it ships on `split`; writes JSON + reliability diagram when `out` is given.

    With `prefix` ("test"), the JSON's keys are prefixed as the Trainer names split metrics (`test_accuracy`).
    """
    from .calibration import folded_temperature, unfolded_logits
    from .metrics import apply_temperature, evaluation_report, plot_reliability_diagram

    counts = prepared_counts(data_dir)
    logits, labels, files = split_logits(model, processor, data_dir, split, cache_dir=cache_dir, counts=counts)
    groups = patient_groups(data_dir, files)
    report = evaluation_report(labels, logits, groups=groups, n_resamples=n_resamples, seed=seed)
    sources_by_split = split_sources(data_dir)
    if len({s for counts in sources_by_split.values() for s in counts}) > 1:
        report.update(_per_source(model, processor, data_dir, counts, split, logits, labels, files, groups,
                                  sources_by_split, n_resamples, seed, cache_dir))
    temperature = folded_temperature(model)
    report.update(split=split, folded_temperature=temperature)
    before = None
    if temperature != 1.0:
        before = evaluation_report(labels, unfolded_logits(logits, temperature), groups=groups,
                                   n_resamples=n_resamples, seed=seed)
        report.update(ece_before_folding=before["ece"], ece_before_folding_ci95=before["ci95"]["ece"],
                      ece_before_folding_noise_floor=before["ece_noise_floor"],
                      ece_before_folding_debiased=before["ece_debiased"])
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        diagram = reliability_path(out)
        shipped = apply_temperature(logits, 1.0)
        if before is None:
            plot_reliability_diagram(labels, shipped, diagram, title or f"Reliability ({split} split, as shipped: "
                                     "no temperature folded)")
        else:
            plot_reliability_diagram(labels, apply_temperature(unfolded_logits(logits, temperature), 1.0), diagram,
                                     title or f"Reliability ({split} split)", probs_after=shipped,
                                     panel_titles=("Before folding (T = 1)", f"As shipped (T = {temperature:.3g} "
                                                                             "folded)"))
        report["reliability_diagram"] = diagram.name
        write_predictions_csv(predictions_path(out), files, groups, labels, shipped)
        report["predictions"] = predictions_path(out).name
        out.write_text(json.dumps(prefixed(report, prefix) if prefix else report, indent=2))
    return report


def _per_source(model, processor, data_dir, counts, split, logits, labels, files, groups, sources_by_split,
                n_resamples, seed, cache_dir=None) -> dict:
    """by_source metrics, the split's sources, and the source shortcut check on held-out images."""
    from .metrics import apply_temperature, evaluation_report

    sources = np.asarray(manifest_values(data_dir, files, "source"))
    groups = np.asarray(groups)
    by_source = {}
    for name in sorted(set(sources.tolist())):
        chosen = sources == name
        by_source[name] = evaluation_report(labels[chosen], logits[chosen], groups=groups[chosen],
                                            n_resamples=n_resamples, seed=seed)
    probs, check_labels, check_sources, images = apply_temperature(logits, 1.0), labels, sources, f"{split} split"
    check_groups = groups
    others = [s for s in ("validation", "test") if s != split and sum(counts[s].values())]
    if split in ("validation", "test") and others and len(set(sources.tolist())) < len(
            {s for counts in sources_by_split.values() for s in counts}):
        # one source per split (--test-source): compare the held-out splits together, never the training images
        other = others[0]
        more_logits, more_labels, more_files = split_logits(model, processor, data_dir, other, cache_dir=cache_dir,
                                                            counts=counts)
        more_sources = np.asarray(manifest_values(data_dir, more_files, "source"))
        probs = np.concatenate([probs, apply_temperature(more_logits, 1.0)])
        check_labels = np.concatenate([labels, more_labels])
        check_sources = np.concatenate([sources, more_sources])
        check_groups = np.concatenate([groups, np.asarray(patient_groups(data_dir, more_files))])
        images = f"held-out {' and '.join(sorted([split, other], key=SPLITS.index))} splits"
    check = source_shortcut(probs, check_labels, check_sources, images, groups=check_groups)
    (logger.warning if check["warning"] else logger.info)(shortcut_message(check))
    return {"by_source": by_source, "sources": sources_by_split, "source_shortcut": check}


def prefixed(report: dict, prefix: str) -> dict:
    """`{prefix}_{key}` for every key, as the Trainer names split metrics (`test_accuracy`, ...)."""
    return {f"{prefix}_{key}": value for key, value in report.items()}
