"""CoronaHack metadata CSV + image folders -> binary (normal / virus) ImageFolder split by patient.

The study split images at random, so X-rays of one child ended up in train and test. Here TEST stays TEST and
the validation split is carved out of TRAIN by patient group (`patient_group`). Every source row ends up in
`manifest.csv`, kept or skipped with its reason, so that no data disappears silently.
"""

from __future__ import annotations

import csv
import os
import random
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .imaging import DEFAULT_MAX_PIXELS, ImageProblem, check_image, load_standard_image

CLASS_NAMES = ("normal", "virus")
SPLITS = ("train", "validation", "test")
CSV_NAME = "Chest_xray_Corona_Metadata.csv"
IMAGE_ROOT = Path("Coronahack-Chest-XRay-Dataset") / "Coronahack-Chest-XRay-Dataset"
MANIFEST_NAME = "manifest.csv"
TYPICAL_CROP = 224  # the full models' input size; smaller images are kept but reported
REQUIRED_COLUMNS = ("X_ray_image_name", "Label", "Dataset_type", "Label_1_Virus_category", "Label_2_Virus_category")
SOURCE_FOLDERS = {"TRAIN": "train", "TEST": "test"}
MANIFEST_COLUMNS = (
    "file", "label", "split", "patient_group", "status", "reason", "action",
    "source_file", "Dataset_type", "Label", "Label_1_Virus_category", "Label_2_Virus_category",
    "width", "height", "mode", "window",
)
# The Kaggle CSV spells the pneumonia label "Pnemonia"; accept the correct spelling too. Compared lower-case.
NORMAL_LABELS = {"normal"}
PNEUMONIA_LABELS = {"pnemonia", "pneumonia"}
LABEL_1_VALUES = {"": None, "virus": "virus", "bacteria": "bacteria", "stress-smoking": "stress-smoking"}

KERMANY_PERSON = re.compile(r"^person(\d+)_", re.IGNORECASE)
# IM-0115-0001.jpeg and NORMAL2-IM-0115-0001.jpeg are numbered by patient; the two series are grouped together.
KERMANY_IM = re.compile(r"^(?:NORMAL2-)?IM-(\d+)-", re.IGNORECASE)


class DataError(Exception):
    """The source cannot be used at all (missing or malformed CSV, nothing usable left)."""


def patient_group(file_name: str) -> str:
    """Patient key from a Kermany file name; any other file is its own group."""
    if match := KERMANY_PERSON.match(file_name):
        return f"person{int(match.group(1))}"
    if match := KERMANY_IM.match(file_name):
        return f"im{int(match.group(1)):04d}"
    return f"file:{file_name}"


def binary_label(label: str, label_1: str) -> tuple[str | None, str]:
    """Map the CSV's Label / Label_1_Virus_category to "normal", "virus" or None with the reason for exclusion."""
    label_key, label_1_key = label.strip().lower(), label_1.strip().lower()
    if label_1_key not in LABEL_1_VALUES:
        return None, f"unknown Label_1_Virus_category {label_1!r} (expected Virus, bacteria, Stress-Smoking or empty)"
    category = LABEL_1_VALUES[label_1_key]
    if label_key in NORMAL_LABELS:
        if category is not None:
            return None, f"inconsistent labels: Label=Normal with Label_1_Virus_category={label_1!r}"
        return "normal", ""
    if label_key not in PNEUMONIA_LABELS:
        return None, f"unknown Label {label!r} (expected Normal or Pnemonia)"
    if category == "virus":
        return "virus", ""
    if category is None:
        return None, "Label=Pnemonia without Label_1_Virus_category: cannot tell virus from bacteria"
    return None, f"excluded class: {category}"


@dataclass
class SourceRecord:
    """One CSV row (or unlisted file) on its way to the manifest."""

    source_file: str
    csv_fields: dict[str, str]
    label: str | None = None
    group: str = ""
    split: str = ""
    reason: str = ""
    width: int | None = None
    height: int | None = None
    mode: str = ""
    needs_conversion: bool = False
    window: str = ""  # DICOM sources: the display window that made the 8-bit PNG
    notes: list[str] = field(default_factory=list)

    @property
    def kept(self) -> bool:
        return self.label is not None and not self.reason


@dataclass
class PrepareSummary:
    out_dir: Path
    counts: dict[str, Counter]  # split -> label -> images
    skipped: Counter  # reason kind -> images
    hierarchy: Counter  # (Label, Label_1, Label_2) -> rows
    warnings: list[str]

    @property
    def kept_total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def read_metadata(csv_path: Path) -> list[dict[str, str]]:
    """Read the CSV, checking columns; raises DataError with what to do."""
    if not csv_path.is_file():
        raise DataError(
            f"{csv_path}: metadata CSV not found. To fix: point --source at the unzipped Kaggle CoronaHack folder "
            f"that holds {CSV_NAME} and {IMAGE_ROOT}/"
        )
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise DataError(
                    f"{csv_path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'}). "
                    "To fix: use the original Kaggle metadata CSV, whose header names these columns."
                )
            return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError as err:
        raise DataError(f"{csv_path}: not a UTF-8 text CSV ({err}). To fix: re-download the metadata CSV.") from None
    except csv.Error as err:
        raise DataError(f"{csv_path}: malformed CSV ({err}). To fix: re-download the metadata CSV.") from None


def _check_files(records: list[SourceRecord], image_root: Path, min_side: int, max_pixels: int, progress) -> None:
    for record in progress(records, desc="checking images", unit="img"):
        if not record.kept:
            continue
        folder = SOURCE_FOLDERS[record.csv_fields["Dataset_type"].upper()]
        try:
            check = check_image(image_root / folder / record.source_file, max_pixels=max_pixels)
        except ImageProblem as problem:
            record.reason = str(problem)
            continue
        record.width, record.height, record.mode = check.width, check.height, check.mode
        record.window = check.window
        record.needs_conversion = check.needs_conversion
        if min(check.width, check.height) < min_side:
            record.reason = f"too small: {check.width}x{check.height} px, under --min-side {min_side}"


def assign_validation(records: list[SourceRecord], val_fraction: float, seed: int) -> None:
    """Move whole patient groups from train to validation, ~val_fraction of each class, deterministically.

    Each group counts for the class most of its images have; classes are filled one after the other by taking
    shuffled groups while that brings the class's validation count closer to its target.
    """
    groups: dict[str, list[SourceRecord]] = defaultdict(list)
    for record in records:
        if record.kept and record.split == "train":
            groups[record.group].append(record)
    by_class: dict[str, list[str]] = defaultdict(list)
    for group, members in sorted(groups.items()):
        majority = Counter(r.label for r in members).most_common(1)[0][0]
        by_class[majority].append(group)
    rng = random.Random(seed)
    for label in sorted(by_class):
        candidates = by_class[label]
        rng.shuffle(candidates)
        target = val_fraction * sum(len(groups[g]) for g in candidates)
        taken = 0
        for group in candidates:
            size = len(groups[group])
            if abs(taken + size - target) < abs(taken - target):
                taken += size
                for record in groups[group]:
                    record.split = "validation"


def _patients_in_train_and_test(records: list[SourceRecord]) -> list[str]:
    splits_by_group: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.kept:
            splits_by_group[record.group].add("test" if record.split == "test" else "train")
    return sorted(g for g, s in splits_by_group.items() if len(s) > 1)


def _materialise(record: SourceRecord, image_root: Path, out_dir: Path, max_pixels: int) -> tuple[str, str]:
    """Place one kept image in the ImageFolder: hard link, copy, or convert. Returns (relative path, action)."""
    folder = SOURCE_FOLDERS[record.csv_fields["Dataset_type"].upper()]
    source = image_root / folder / record.source_file
    target_dir = out_dir / record.split / record.label
    if record.needs_conversion:
        target = target_dir / (Path(record.source_file).stem + ".png")
        image = load_standard_image(source, max_pixels=max_pixels)
        image.save(target, format="PNG")
        return str(target.relative_to(out_dir)), f"converted {record.mode}->{image.mode} PNG"
    target = target_dir / record.source_file
    try:
        os.link(source, target)
        return str(target.relative_to(out_dir)), "hard link"
    except OSError:
        shutil.copyfile(source, target)
        return str(target.relative_to(out_dir)), "copy"


def _skip_kind(reason: str) -> str:
    """Short bucket for the summary ("excluded class: bacteria", "corrupt or truncated image", ...)."""
    return reason.split(" (")[0].split(":")[0] if not reason.startswith("excluded class") else reason


def _print_tables(summary: PrepareSummary, echo) -> None:
    echo("Class hierarchy of the source CSV (as the study's Table 1):")
    echo(f"  {'Label':<10} {'Label_1_Virus_category':<24} {'Label_2_Virus_category':<24} {'count':>6}")
    for (label, label_1, label_2), count in sorted(summary.hierarchy.items()):
        echo(f"  {label or '-':<10} {label_1 or '-':<24} {label_2 or '-':<24} {count:>6}")
    echo("Binary classes per split (kept images):")
    echo(f"  {'split':<11} " + " ".join(f"{c:>7}" for c in CLASS_NAMES) + f" {'total':>7}")
    for split in SPLITS:
        row = summary.counts[split]
        echo(f"  {split:<11} " + " ".join(f"{row[c]:>7}" for c in CLASS_NAMES) + f" {sum(row.values()):>7}")
    skipped_total = sum(summary.skipped.values())
    echo(f"Kept {summary.kept_total} images; skipped {skipped_total}:")
    for reason, count in summary.skipped.most_common():
        echo(f"  {count:>5}  {reason}")


def _prepare_records(rows: list[dict[str, str]], csv_path: Path, image_root: Path, echo) -> list[SourceRecord]:
    """Labels, groups and duplicate handling for the CSV rows, plus files on disk that the CSV does not list."""
    records: list[SourceRecord] = []
    first_by_name: dict[str, SourceRecord] = {}
    for line_number, row in enumerate(rows, start=2):
        name = row["X_ray_image_name"]
        record = SourceRecord(source_file=name, csv_fields={k: row.get(k, "") for k in REQUIRED_COLUMNS})
        records.append(record)
        record.group = patient_group(name)
        dataset_type = row["Dataset_type"].upper()
        if not name:
            record.reason = f"{csv_path.name} line {line_number}: empty X_ray_image_name"
        elif dataset_type not in SOURCE_FOLDERS:
            record.reason = f"unknown Dataset_type {row['Dataset_type']!r} (expected TRAIN or TEST)"
        elif name in first_by_name:
            first = first_by_name[name]
            record.reason = f"duplicate: {name} listed twice in {csv_path.name} (first kept)"
            if (first.csv_fields["Label"], first.csv_fields["Label_1_Virus_category"]) != (
                row["Label"], row["Label_1_Virus_category"]):
                record.reason = f"duplicate: {name} listed twice in {csv_path.name} with conflicting labels"
                if first.kept:
                    first.reason = record.reason
        else:
            first_by_name[name] = record
            record.label, record.reason = binary_label(row["Label"], row["Label_1_Virus_category"])
            record.split = "test" if dataset_type == "TEST" else "train"
    for folder in SOURCE_FOLDERS.values():
        directory = image_root / folder
        if not directory.is_dir():
            echo(f"warning: {directory} is missing; rows of that split will be reported as missing files")
            continue
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.name not in first_by_name:
                records.append(SourceRecord(source_file=path.name, csv_fields={"Dataset_type": folder.upper()},
                                            group=patient_group(path.name), reason="not listed in the CSV"))
    return records


def prepare(
    source: str | os.PathLike,
    out: str | os.PathLike,
    val_fraction: float = 0.15,
    seed: int = 42,
    min_side: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    echo=print,
    progress=None,
) -> PrepareSummary:
    """Build OUT/{train,validation,test}/{normal,virus}/ and OUT/manifest.csv from a Kaggle CoronaHack folder.

    Written to a temporary sibling folder and renamed at the end, so an interrupted run never leaves a
    half-written OUT and a re-run replaces the previous output whole.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} is outside [0, 1). To fix: pass e.g. --val-fraction 0.15")
    if progress is None:
        from tqdm.auto import tqdm as progress
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DataError(f"{source}: source folder not found. To fix: pass the unzipped Kaggle CoronaHack folder.")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise DataError(f"{out}: exists, is not empty and holds no {MANIFEST_NAME}; refusing to replace it. "
                        "To fix: choose an empty or new --out folder.")
    csv_path = source / CSV_NAME
    image_root = source / IMAGE_ROOT
    records = _prepare_records(read_metadata(csv_path), csv_path, image_root, echo)
    _check_files(records, image_root, min_side, max_pixels, progress)

    warnings_list: list[str] = []
    shared = _patients_in_train_and_test(records)
    if shared:
        warnings_list.append(f"{len(shared)} patient group(s) appear in both TRAIN and TEST of the source "
                             f"(e.g. {', '.join(shared[:5])}); the source split leaks these patients")
    small = sum(1 for r in records if r.kept and min(r.width, r.height) < TYPICAL_CROP)
    if small:
        warnings_list.append(f"{small} kept image(s) are smaller than a {TYPICAL_CROP} px crop; the processors "
                             "upscale them (see `width`/`height` in the manifest)")
    assign_validation(records, val_fraction, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for split in SPLITS:
            for label in CLASS_NAMES:
                (staging / split / label).mkdir(parents=True)
        counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
        skipped: Counter = Counter()
        hierarchy: Counter = Counter()
        with (staging / MANIFEST_NAME).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            for record in progress(records, desc="writing ImageFolder", unit="img"):
                fields = record.csv_fields
                if "Label" in fields:
                    hierarchy[(fields["Label"], fields["Label_1_Virus_category"], fields["Label_2_Virus_category"])] += 1
                relative, action = "", ""
                if record.kept:
                    try:
                        relative, action = _materialise(record, image_root, staging, max_pixels)
                    except ImageProblem as problem:
                        record.reason = str(problem)
                if record.kept:
                    counts[record.split][record.label] += 1
                else:
                    skipped[_skip_kind(record.reason)] += 1
                writer.writerow({
                    "file": relative, "label": record.label or "", "split": record.split if record.kept else "",
                    "patient_group": record.group, "status": "kept" if record.kept else "skipped",
                    "reason": record.reason, "action": action, "source_file": record.source_file,
                    **{k: fields.get(k, "") for k in REQUIRED_COLUMNS if k != "X_ray_image_name"},
                    "width": record.width or "", "height": record.height or "", "mode": record.mode,
                    "window": record.window,
                })
        summary = PrepareSummary(out, counts, skipped, hierarchy, warnings_list)
        if summary.kept_total == 0:
            raise DataError(f"{csv_path}: no usable normal or virus image remains (skipped: "
                            f"{dict(skipped.most_common(3))}). To fix: check that images sit in {image_root}/{{train,test}}/")
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(retired / out.name)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

    _print_tables(summary, echo)
    for message in warnings_list:
        echo(f"warning: {message}")
    echo(f"ImageFolder written to {out} (manifest: {out / MANIFEST_NAME})")
    return summary


def read_manifest(data_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a prepared folder's manifest.csv (kept and skipped)."""
    with (Path(data_dir) / MANIFEST_NAME).open(newline="") as handle:
        return list(csv.DictReader(handle))


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
        raise DataError(
            f"{data_dir}: not a prepared ImageFolder (needs train/, test/ and {MANIFEST_NAME}). To fix: run "
            f"`hfxray data prepare --source KAGGLE_CORONAHACK_DIR --out {data_dir}`"
        )
    return data_dir


def load_imagefolder(data_dir: str | os.PathLike):
    """The prepared folder as a datasets DatasetDict (`image`, `label` with names normal/virus)."""
    from datasets import load_dataset

    data_dir = check_prepared(data_dir)
    dataset = load_dataset("imagefolder", data_dir=str(data_dir))
    names = dataset["train"].features["label"].names
    if tuple(names) != CLASS_NAMES:
        raise DataError(f"{data_dir}: label folders are {names}, expected {list(CLASS_NAMES)}. To fix: re-run "
                        "`hfxray data prepare`.")
    return dataset
