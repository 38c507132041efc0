"""The Cohen *COVID-19 image data collection* layout: `metadata.csv` + `images/`.

The class comes from the `finding` column through `COHEN_FINDINGS`, only frontal X-rays are kept, patients are
`patientid`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import printable
from .records import SourceRecord, read_csv_rows, unsafe_name_reason

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


def cohen_label(finding: str) -> tuple[str | None, str]:
    """("normal" | "virus" | None, reason) for a Cohen `finding` (see COHEN_FINDINGS)."""
    parts = [part.strip() for part in re.split(r"[,/]", finding) if part.strip()]
    shown = printable(finding)
    if not parts:
        return None, "empty finding"
    kinds = {COHEN_FINDINGS.get(part.lower(), "unknown") for part in parts}
    if "unknown" in kinds:
        unknown = next(part for part in parts if part.lower() not in COHEN_FINDINGS)
        return None, f"unknown finding: {printable(unknown)} (not in hfxray.data.cohen.COHEN_FINDINGS)"
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
