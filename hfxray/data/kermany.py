"""Kermany's `chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/` layout, and its file names' patient numbers.

The cause (virus or bacteria) of a pneumonia is in its file name; `val/` is folded into train (validation is
carved by patient later). CoronaHack's normal and pneumonia images are Kermany's files: its reader asks
`patient_group` first.
"""

from __future__ import annotations

import re
from pathlib import Path

from .records import DataError, SourceRecord, unsafe_name_reason
from ..errors import printable

KERMANY_PERSON = re.compile(r"^person(\d+)_", re.IGNORECASE)

# IM-0115-0001.jpeg and NORMAL2-IM-0115-0001.jpeg are numbered by patient; the two series are grouped together.
KERMANY_IM = re.compile(r"^(?:NORMAL2-)?IM-(\d+)-", re.IGNORECASE)

KERMANY_SPLITS = {"train": "train", "val": "train", "test": "test"}  # source folder -> split (val folded in)

KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")

KERMANY_CAUSE = re.compile(r"_(virus|bacteria)_", re.IGNORECASE)


def patient_group(file_name: str) -> str:
    """Patient key from a Kermany file name; any other file is its own group."""
    if match := KERMANY_PERSON.match(file_name):
        return f"person{int(match.group(1))}"
    if match := KERMANY_IM.match(file_name):
        return f"im{int(match.group(1)):04d}"
    return f"file:{file_name}"


def kermany_root(path: Path) -> Path | None:
    """The folder holding train/ and test/ (the download nests it as chest_xray/), or None."""
    for candidate in (path, path / "chest_xray"):
        if all((candidate / split / cls).is_dir() for split in ("train", "test") for cls in KERMANY_CLASSES):
            return candidate
    return None


def kermany_label(class_folder: str, name: str) -> tuple[str | None, str]:
    """("normal" | "virus" | None, reason): the class from the folder, virus vs bacteria from the file name."""
    cause = match.group(1).lower() if (match := KERMANY_CAUSE.search(name)) else None
    if class_folder == "NORMAL":
        if cause:
            return None, f"inconsistent: file name says {cause} in the NORMAL folder"
        return "normal", ""
    if cause == "virus":
        return "virus", ""
    if cause == "bacteria":
        return None, "excluded class: bacteria"
    return None, "PNEUMONIA file name without _virus_ or _bacteria_: cannot tell virus from bacteria"


def read_kermany(path: Path, echo) -> list[SourceRecord]:
    root = kermany_root(path)
    if root is None:
        raise DataError(f"{printable(str(path))}: no train/ and test/ folders with NORMAL/ and PNEUMONIA/ inside. "
                        "To fix: point --source at Kermany's chest_xray folder.")
    records: list[SourceRecord] = []
    for folder, split in KERMANY_SPLITS.items():
        split_dir = root / folder
        if not split_dir.is_dir():
            if folder != "val":
                echo(f"warning: {printable(str(split_dir))} is missing")
            continue
        for entry in sorted(split_dir.iterdir()):
            fields = {"Dataset_type": folder.upper()}
            if entry.name in KERMANY_CLASSES and entry.is_dir() and not entry.is_symlink():
                records += _kermany_class(entry, split, fields)
            elif entry.is_dir() and not entry.is_symlink():
                records.append(SourceRecord(source_file=entry.name, csv_fields=fields, source_dir=split_dir,
                                            group=f"file:{entry.name}", reason="unknown class folder (expected "
                                            "NORMAL or PNEUMONIA); its files are not read"))
            else:
                records.append(SourceRecord(source_file=entry.name, csv_fields=fields, source_dir=split_dir,
                                            group=f"file:{entry.name}", reason="not in a NORMAL or PNEUMONIA folder"))
    return records


def _kermany_class(class_dir: Path, split: str, fields: dict[str, str]) -> list[SourceRecord]:
    records = []
    for path in sorted(class_dir.iterdir()):
        name = path.name
        record = SourceRecord(source_file=name, csv_fields=dict(fields), source_dir=class_dir,
                              group=patient_group(name), finding=class_dir.name)
        records.append(record)
        if unsafe := unsafe_name_reason(name):
            record.reason = unsafe
        elif path.is_dir() and not path.is_symlink():
            record.reason = "a folder: images in sub-folders of a class folder are not read"
        else:
            record.label, record.reason = kermany_label(class_dir.name, name)
            if match := KERMANY_CAUSE.search(name):
                record.finding = f"{class_dir.name} / {match.group(1).lower()}"
            record.split = split
    return records
