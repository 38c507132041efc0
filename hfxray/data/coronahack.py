"""The Kaggle CoronaHack layout: `Chest_xray_Corona_Metadata.csv` + `Coronahack-Chest-XRay-Dataset/.../{train,test}/`.

Every CSV row and every file in the two image folders becomes one record; labels come from `Label` and
`Label_1_Virus_category` (`binary_label`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import printable
from .cohen_groups import cohen_group
from .kermany import patient_group as kermany_group
from .records import SourceRecord, read_csv_rows, unsafe_name_reason

CSV_NAME = "Chest_xray_Corona_Metadata.csv"

IMAGE_ROOT = Path("Coronahack-Chest-XRay-Dataset") / "Coronahack-Chest-XRay-Dataset"

REQUIRED_COLUMNS = ("X_ray_image_name", "Label", "Dataset_type", "Label_1_Virus_category", "Label_2_Virus_category")

SOURCE_FOLDERS = {"TRAIN": "train", "TEST": "test"}

# The Kaggle CSV spells the pneumonia label "Pnemonia"; accept the correct spelling too. Compared lower-case.
NORMAL_LABELS = {"normal"}

PNEUMONIA_LABELS = {"pnemonia", "pneumonia"}

LABEL_1_VALUES = {"": None, "virus": "virus", "bacteria": "bacteria", "stress-smoking": "stress-smoking"}


def patient_group(file_name: str) -> str:
    """Patient key of a CoronaHack file: Kermany's patient number (its normal and pneumonia images are Kermany's),
    else the Cohen collection's patient or figure (its COVID-19, SARS, ARDS and Streptococcus images are the
    collection's, `cohen_group`); any other file is its own group."""
    group = kermany_group(file_name)
    return (cohen_group(file_name) or group) if group.startswith("file:") else group


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


def read_metadata(csv_path: Path) -> list[dict[str, str]]:
    """The Kaggle CoronaHack metadata CSV (see `read_csv_rows`)."""
    return read_csv_rows(csv_path, REQUIRED_COLUMNS,
                         f"the unzipped Kaggle CoronaHack folder that holds {CSV_NAME} and {IMAGE_ROOT}/",
                         "the original Kaggle metadata CSV")


def coronahack_records(rows: list[dict[str, str]], csv_path: Path, image_root: Path, echo) -> list[SourceRecord]:
    """Labels, groups and duplicate handling for the CSV rows, plus files on disk that the CSV does not list."""
    records: list[SourceRecord] = []
    first_by_name: dict[str, SourceRecord] = {}
    for line_number, row in enumerate(rows, start=2):
        name = row["X_ray_image_name"]
        record = SourceRecord(source_file=name, csv_fields={k: row.get(k, "") for k in REQUIRED_COLUMNS},
                              csv_row=line_number - 1)
        if row["Dataset_type"].upper() in SOURCE_FOLDERS:
            record.source_dir = image_root / SOURCE_FOLDERS[row["Dataset_type"].upper()]
        records.append(record)
        record.group = patient_group(name)
        dataset_type = row["Dataset_type"].upper()
        shown = printable(name)
        if not name:
            record.reason = f"{csv_path.name} line {line_number}: empty X_ray_image_name"
        elif unsafe := unsafe_name_reason(name):
            record.reason = unsafe
        elif dataset_type not in SOURCE_FOLDERS:
            record.reason = f"unknown Dataset_type {printable(row['Dataset_type'])!r} (expected TRAIN or TEST)"
        elif name in first_by_name:
            first = first_by_name[name]
            record.reason = f"duplicate: {shown} listed twice in {csv_path.name} (first kept)"
            if (first.csv_fields["Label"], first.csv_fields["Label_1_Virus_category"]) != (
                row["Label"], row["Label_1_Virus_category"]):
                record.reason = f"duplicate: {shown} listed twice in {csv_path.name} with conflicting labels"
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
            if path.name in first_by_name:
                continue
            if path.is_dir() and not path.is_symlink():
                reason = "a folder: images in sub-folders of the split folder are not read"
            else:  # files, and links (broken ones too): nothing on disk disappears without a line in the manifest
                reason = "not listed in the CSV"
            records.append(SourceRecord(source_file=path.name, csv_fields={"Dataset_type": folder.upper()},
                                        group=patient_group(path.name), reason=reason, source_dir=directory))
    return records
