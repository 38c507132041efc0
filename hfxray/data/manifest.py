"""The prepared folder as later stages read it: `manifest.csv`, the class folders, the `datasets` ImageFolder.

Training, evaluation, the cache, cards and reports import this module (or `labels`), never the preparation code.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from ..errors import printable
from ..imaging import IMAGE_EXTENSIONS
from ..logs import get_logger, library_progress_bars_off
from ..outputs import read_csv_row
from .coronahack import CSV_NAME
from .labels import CLASS_NAMES, SPLITS
from .records import DataError

MANIFEST_NAME = "manifest.csv"

MANIFEST_COLUMNS = (
    "file", "label", "split", "patient_group", "status", "reason", "action",
    "source_file", "Dataset_type", "Label", "Label_1_Virus_category", "Label_2_Virus_category",
    "width", "height", "mode", "csv_row", "window",
    "source", "format", "finding", "view", "phash", "duplicate_of", "merged_with",
)


def read_manifest(data_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a prepared folder's manifest.csv (kept and skipped)."""
    with (Path(data_dir) / MANIFEST_NAME).open(newline="", encoding="utf-8") as handle:
        return [read_csv_row(row) for row in csv.DictReader(handle)]  # csv_row's quotes removed


def kept_counts(rows: list[dict[str, str]]) -> dict[str, Counter]:
    """split -> label -> kept images, from manifest rows (every split present, possibly empty)."""
    counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    for row in rows:
        if row["status"] == "kept":
            counts[row["split"]][row["label"]] += 1
    return counts


def check_prepared(data_dir: str | os.PathLike) -> Path:
    """Raise DataError unless `data_dir` looks like the output of `hfxray data prepare`."""
    data_dir = Path(data_dir)
    missing = [s for s in ("train", "test") if not (data_dir / s).is_dir()]
    if not data_dir.is_dir() or missing or not (data_dir / MANIFEST_NAME).is_file():
        if (data_dir / CSV_NAME).is_file():  # the raw download itself: prepare it into a new folder beside it
            target = data_dir.parent / f"{data_dir.name}-prepared"
            raise DataError(f"{data_dir} is the raw CoronaHack download, not a prepared ImageFolder. To fix: run "
                            f"`hfxray data prepare --source {data_dir} --out {target}` and pass {target}")
        raise DataError(
            f"{data_dir}: {'no such folder' if not data_dir.exists() else 'not a prepared ImageFolder'} (needs "
            f"train/, test/ and {MANIFEST_NAME}). To fix: run `hfxray data prepare --source SOURCE_DIR --out "
            f"{data_dir}`, or pass the --out folder of an earlier `hfxray data prepare`."
        )
    return data_dir


def _count_images(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return 0


def check_classes(data_dir: str | os.PathLike) -> dict[str, Counter]:
    """Raise DataError unless train and test (and validation, when it has images) hold both classes.

    A split with one class trains "fine" and then reports meaningless AUROC, sensitivity and temperature; refusing
    it here fails before any training time is spent. Returns split -> label -> images found on disk.
    """
    data_dir = Path(data_dir)
    counts = {split: Counter({label: _count_images(data_dir / split / label) for label in CLASS_NAMES})
              for split in SPLITS}
    problems = []
    for split, row in counts.items():
        if split == "validation" and not sum(row.values()):
            continue  # no validation split at all: reported by the trainer, which needs one
        missing = [label for label in CLASS_NAMES if not row[label]]
        if missing:
            problems.append(f"{split} has no {' and no '.join(missing)} image")
    if problems:
        raise DataError(f"{printable(str(data_dir))}: {'; '.join(problems)}; every split needs both classes for "
                        "training and its metrics. To fix: prepare from a source with normal and virus images in "
                        "TRAIN and TEST (and enough TRAIN patients for --val-fraction), then re-run `hfxray data "
                        "prepare`.")
    return counts


def prepared_counts(data_dir: str | os.PathLike) -> dict[str, Counter]:
    """`check_prepared` then `check_classes`: split -> label -> images on disk of a usable prepared folder, found
    without listing it through `datasets` (training and evaluation with a warm decode cache need no more)."""
    return check_classes(check_prepared(data_dir))


def load_imagefolder(data_dir: str | os.PathLike):
    """The prepared folder as a datasets DatasetDict (`image`, `label` with names normal/virus)."""
    counts = prepared_counts(data_dir)
    data_dir = Path(data_dir)
    from datasets import load_dataset

    # datasets 5.2 labels its bar for listing local files "Downloading data": nothing is downloaded, and a user
    # who was promised that their X-rays stay on this machine should not read that. One line says what happens.
    get_logger(__name__).info("Reading the prepared images in %s (%s)", printable(str(data_dir)),
                              ", ".join(f"{split} {sum(counts[split].values())}" for split in counts))
    with library_progress_bars_off():
        dataset = load_dataset("imagefolder", data_dir=str(data_dir))
    names = dataset["train"].features["label"].names
    if tuple(names) != CLASS_NAMES:
        raise DataError(f"{data_dir}: label folders are {names}, expected {list(CLASS_NAMES)}. To fix: re-run "
                        "`hfxray data prepare`.")
    return dataset
