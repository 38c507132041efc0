"""Readers of the source layouts `hfxray data prepare` accepts, one per format, each returning `SourceRecord`s.

- `coronahack`: the Kaggle CoronaHack download (`Chest_xray_Corona_Metadata.csv` + image folders).
- `cohen`: the Cohen *COVID-19 image data collection* (`metadata.csv` + `images/`); the class comes from the
  `finding` column through `COHEN_FINDINGS`, only frontal X-rays are kept, patients are `patientid`.
- `kermany`: Kermany's `chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/` folders; the cause (virus or bacteria)
  of a pneumonia is in its file name; `val/` is folded into train (validation is carved by patient later).

Every row of a metadata file and every entry of an image folder becomes one record: kept, or skipped with its
reason, so that nothing disappears silently. Names read from a CSV or a folder are untrusted and checked as in
`hfxray.data`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .data import (CSV_NAME, IMAGE_ROOT, SOURCE_FOLDERS, DataError, SourceRecord, _prepare_records, patient_group,
                   read_csv_rows, read_metadata, unsafe_name_reason)
from .errors import printable

FORMATS = ("coronahack", "cohen", "kermany")

COHEN_CSV = "metadata.csv"
COHEN_IMAGES = "images"
COHEN_REQUIRED = ("patientid", "finding", "view", "modality", "filename")
COHEN_FIELDS = ("patientid", "finding", "view", "modality", "folder")
FRONTAL_VIEWS = {"pa", "ap", "ap supine"}  # compared lower-case; laterals (L) and CT slices are excluded

# What each part of a Cohen `finding` means. A finding is split on "," and "/" (the collection wrote
# "COVID-19, ARDS" in 2020 and "Pneumonia/Viral/COVID-19" later); its parts decide the class:
#   only "normal" parts                                   -> normal
#   at least one "viral" part, the others viral/unspecified/syndrome -> virus
#   anything else (bacterial, fungal, non-infectious, no cause, pending, viral mixed with another cause)
#                                                         -> excluded, counted by finding
# A part not in this table is "unknown": the row is excluded and counted under that finding.
COHEN_FINDINGS = {
    "no finding": "normal",
    "covid-19": "viral", "covid19": "viral", "sars": "viral", "mers": "viral", "mers-cov": "viral",
    "influenza": "viral", "varicella": "viral", "herpes": "viral", "herpes simplex": "viral", "viral": "viral",
    "bacterial": "bacterial", "streptococcus": "bacterial", "klebsiella": "bacterial", "legionella": "bacterial",
    "staphylococcus": "bacterial", "mrsa": "bacterial", "e.coli": "bacterial", "chlamydophila": "bacterial",
    "mycoplasma": "bacterial", "mycoplasma bacterial pneumonia": "bacterial", "nocardia": "bacterial",
    "tuberculosis": "bacterial",
    "fungal": "fungal", "pneumocystis": "fungal", "aspergillosis": "fungal", "candida": "fungal",
    "lipoid": "non-infectious",
    "ards": "syndrome",  # acute respiratory distress: a consequence, not a cause
    "pneumonia": "unspecified",
    "todo": "pending", "unknown": "pending",
}
KIND_NOTES = {
    "bacterial": "bacterial", "fungal": "fungal", "non-infectious": "non-infectious",
    "syndrome": "no cause stated", "unspecified": "no cause stated", "pending": "not yet recorded",
}

KERMANY_SPLITS = {"train": "train", "val": "train", "test": "test"}  # source folder -> split (val folded in)
KERMANY_CLASSES = ("NORMAL", "PNEUMONIA")
KERMANY_CAUSE = re.compile(r"_(virus|bacteria)_", re.IGNORECASE)


@dataclass(frozen=True)
class SourceSpec:
    """One `--source`: its folder, its format, and its name in the manifest's `source` column."""

    path: Path
    format: str
    name: str


def detect_format(path: Path) -> str:
    """The format of a source folder, from the files that define each layout."""
    if (path / CSV_NAME).is_file():
        return "coronahack"
    if (path / COHEN_CSV).is_file():
        return "cohen"
    if _kermany_root(path) is not None:
        return "kermany"
    raise DataError(f"{printable(str(path))}: not a known layout (no {CSV_NAME}, no {COHEN_CSV}, no "
                    "train/ and test/ with NORMAL/ and PNEUMONIA/ folders). To fix: pass the unzipped Kaggle "
                    "CoronaHack folder, the Cohen collection's folder or Kermany's chest_xray folder, or name the "
                    "layout with --format coronahack|cohen|kermany.")


def resolve_sources(paths: list[str | Path], formats: list[str] | None = None) -> list[SourceSpec]:
    """SourceSpecs for the `--source` folders: `formats` has one entry per source, or one for all, or none
    (auto). Names are the format, or the folder name where two sources share a format."""
    paths = [Path(p) for p in paths]
    formats = list(formats or ["auto"])
    if len(formats) == 1:
        formats *= len(paths)
    if len(formats) != len(paths):
        raise DataError(f"{len(paths)} --source folder(s) but {len(formats)} --format value(s). To fix: pass one "
                        "--format per --source, in the same order, or a single one for all.")
    resolved = []
    for path, fmt in zip(paths, formats):
        if fmt not in (*FORMATS, "auto"):
            raise DataError(f"--format {printable(fmt)!r} is not a known layout. To fix: use one of auto, "
                            f"{', '.join(FORMATS)}.")
        if not path.is_dir():
            raise DataError(f"{printable(str(path))}: source folder not found. To fix: pass the unzipped folder "
                            "of a CoronaHack, Cohen or Kermany download.")
        resolved.append((path, detect_format(path) if fmt == "auto" else fmt))
    specs, taken = [], set()
    for path, fmt in resolved:
        shared = sum(1 for _, other in resolved if other == fmt) > 1
        base = (path.resolve().name or fmt) if shared else fmt
        name, number = base, 1
        while name in taken:
            number += 1
            name = f"{base}-{number}"
        taken.add(name)
        specs.append(SourceSpec(path, fmt, name))
    return specs


def read_folders(spec: SourceSpec) -> list[Path]:
    """The folders a reader takes images from (never written to; `prepare` checks --out against them)."""
    if spec.format == "coronahack":
        return [spec.path / IMAGE_ROOT / folder for folder in SOURCE_FOLDERS.values()]
    if spec.format == "cohen":
        return [spec.path / COHEN_IMAGES]
    root = _kermany_root(spec.path) or spec.path
    return [root / split for split in KERMANY_SPLITS]


def read_source(spec: SourceSpec, echo) -> list[SourceRecord]:
    """Records of one source (labels, patient groups, source split or none, reasons for skipping)."""
    if spec.format == "coronahack":
        csv_path = spec.path / CSV_NAME
        records = _prepare_records(read_metadata(csv_path), csv_path, spec.path / IMAGE_ROOT, echo)
        for record in records:
            fields = record.csv_fields
            record.finding = " / ".join(fields[k] for k in ("Label", "Label_1_Virus_category",
                                                            "Label_2_Virus_category") if fields.get(k))
    elif spec.format == "cohen":
        records = read_cohen(spec.path, echo)
    else:
        records = read_kermany(spec.path, echo)
    for record in records:
        record.source, record.source_format = spec.name, spec.format
    return records


# --- Cohen ------------------------------------------------------------------------------------------------------

def cohen_label(finding: str) -> tuple[str | None, str]:
    """("normal" | "virus" | None, reason) for a Cohen `finding` (see COHEN_FINDINGS)."""
    parts = [part.strip() for part in re.split(r"[,/]", finding) if part.strip()]
    shown = printable(finding)
    if not parts:
        return None, "empty finding"
    kinds = {COHEN_FINDINGS.get(part.lower(), "unknown") for part in parts}
    if "unknown" in kinds:
        unknown = next(part for part in parts if part.lower() not in COHEN_FINDINGS)
        return None, f"unknown finding: {printable(unknown)} (not in hfxray.sources.COHEN_FINDINGS)"
    if kinds == {"normal"}:
        return "normal", ""
    if "normal" in kinds:
        return None, f"inconsistent finding: {shown} (No Finding with a disease)"
    if "viral" in kinds and kinds <= {"viral", "unspecified", "syndrome"}:
        return "virus", ""
    if "viral" in kinds:
        return None, f"excluded finding: {shown} (viral with another cause)"
    kind = next(k for k in ("bacterial", "fungal", "non-infectious", "pending", "syndrome", "unspecified")
                if k in kinds)
    return None, f"excluded finding: {shown} ({KIND_NOTES[kind]})"


def read_cohen_metadata(csv_path: Path) -> list[dict[str, str]]:
    """The Cohen collection's metadata CSV (see `hfxray.data.read_csv_rows`)."""
    return read_csv_rows(csv_path, COHEN_REQUIRED,
                         f"the Cohen collection's folder that holds {COHEN_CSV} and {COHEN_IMAGES}/",
                         f"the collection's own {COHEN_CSV}")


def read_cohen(root: Path, echo) -> list[SourceRecord]:
    csv_path, image_dir = root / COHEN_CSV, root / COHEN_IMAGES
    rows = read_cohen_metadata(csv_path)
    records: list[SourceRecord] = []
    first_by_name: dict[str, SourceRecord] = {}
    for row_number, row in enumerate(rows, start=1):
        name = row["filename"]
        patient = row["patientid"]
        record = SourceRecord(source_file=name, csv_fields={k: row.get(k, "") for k in COHEN_FIELDS},
                              csv_row=row_number, source_dir=image_dir, finding=row["finding"],
                              view=" ".join(v for v in (row["modality"], row["view"]) if v))
        record.group = f"patient:{patient}" if patient else f"file:{name}"
        records.append(record)
        label, label_reason = cohen_label(row["finding"])
        folder = row.get("folder", COHEN_IMAGES) or COHEN_IMAGES
        if not name:
            record.reason = f"{COHEN_CSV} row {row_number}: empty filename"
        elif unsafe := unsafe_name_reason(name):
            record.reason = unsafe
        elif name in first_by_name:
            first = first_by_name[name]
            if first.label != label:
                record.reason = (f"duplicate: {printable(name)} listed twice in {COHEN_CSV} with conflicting "
                                 "findings")
                if first.kept:
                    first.reason = record.reason
            elif first.group != record.group:
                record.reason = (f"duplicate: {printable(name)} listed twice in {COHEN_CSV}, under patients "
                                 f"{printable(first.csv_fields['patientid'])} and {printable(patient)} (kept once; "
                                 "the two patients form one group)")
                first.also_groups.append(record.group)
            else:
                record.reason = f"duplicate: {printable(name)} listed twice in {COHEN_CSV} (first kept)"
        elif row["modality"].lower() != "x-ray":
            first_by_name[name] = record
            record.reason = f"excluded modality: {printable(row['modality']) or 'none'} (only X-rays are kept)"
        elif row["view"].lower() not in FRONTAL_VIEWS:
            first_by_name[name] = record
            record.reason = f"excluded view: {printable(row['view']) or 'none'} (not frontal)"
        elif folder != COHEN_IMAGES:
            first_by_name[name] = record
            record.reason = f"image folder {printable(folder)!r} is not read (only {COHEN_IMAGES}/)"
        elif not patient:  # a group per file could put one patient's images in two splits
            first_by_name[name] = record
            record.reason = f"{COHEN_CSV} row {row_number}: empty patientid (cannot be split by patient)"
        else:
            first_by_name[name] = record
            record.label, record.reason = label, label_reason
    if not image_dir.is_dir():
        echo(f"warning: {printable(str(image_dir))} is missing; its rows will be reported as missing files")
        return records
    for path in sorted(image_dir.iterdir()):
        if path.name in first_by_name:
            continue
        if path.is_dir() and not path.is_symlink():
            reason = "a folder: images in sub-folders of images/ are not read"
        else:
            reason = f"not listed in {COHEN_CSV}"
        records.append(SourceRecord(source_file=path.name, csv_fields={}, source_dir=image_dir,
                                    group=f"file:{path.name}", reason=reason))
    return records


# --- Kermany ----------------------------------------------------------------------------------------------------

def _kermany_root(path: Path) -> Path | None:
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
    root = _kermany_root(path)
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
