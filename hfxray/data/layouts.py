"""One interface over the source layouts `hfxray data prepare` accepts: detect a folder's format, name the
sources, read one into `SourceRecord`s.

Every row of a metadata file and every entry of an image folder becomes one record: kept, or skipped with its
reason, so that nothing disappears silently. A new layout is a module beside `coronahack`, `cohen` and `kermany`
plus one line in `read_source`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import printable
from .cohen import COHEN_CSV, COHEN_IMAGES, read_cohen
from .coronahack import CSV_NAME, IMAGE_ROOT, SOURCE_FOLDERS, coronahack_records, read_metadata
from .kermany import KERMANY_SPLITS, kermany_root, read_kermany
from .records import DataError, SourceRecord

FORMATS = ("coronahack", "cohen", "kermany")


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
    if kermany_root(path) is not None:
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


def read_source(spec: SourceSpec, echo) -> list[SourceRecord]:
    """Records of one source (labels, patient groups, source split or none, reasons for skipping)."""
    if spec.format == "coronahack":
        csv_path = spec.path / CSV_NAME
        records = coronahack_records(read_metadata(csv_path), csv_path, spec.path / IMAGE_ROOT, echo)
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


def read_folders(source: Path) -> list[Path]:
    """Every folder under `source` that a layout could read images from, whatever its format: `prepare` never
    writes into one of them."""
    folders = [source / IMAGE_ROOT / f for f in SOURCE_FOLDERS.values()] + [source / COHEN_IMAGES]
    return folders + [source / prefix / split for prefix in ("", "chest_xray") for split in KERMANY_SPLITS]
